//! Lock expiries set during the wheel's current millisecond, linked into the
//! wheel only once time moves on.
//!
//! Most holds are short, and a pipelining client releases a lock
//! microseconds after it took it. Linking the hold's expiry into the wheel
//! and unlinking it again was about a tenth of the instructions of a
//! pipelined acquire+release. So an expiry set while the wheel's elapsed
//! time is `e`, with a deadline after `e`, is only recorded: the deadline in
//! the lock record (flagged pending, with its position here) and the
//! record's index in this list. A release before time moves on forgets it
//! in O(1): it clears the record's flag, and the entry goes stale.
//!
//! The first [`super::LockTable::advance_bounded`] at a later time first
//! links every expiry still pending, in the order they were set, before the
//! wheel moves, so each lands in the slot linking at once would have chosen
//! (elapsed has not moved since they were set, but for expiries set by
//! grants during a poll, whose deadlines are later than any it reached).
//! Those links are outside the call's timer budget: at most
//! [`PENDING_EXPIRIES_MAX`], work the requests would have done at once.
//! Timers with equal deadlines fire in the order
//! they were set (tokens of the waiters they grant depend on it), so any
//! other timer linked with a deadline after `e` (a waiter's) first has every
//! pending expiry linked; so does an expiry set when the list is full. Both
//! do at most [`PENDING_EXPIRIES_MAX`] links, the bound of an ACQUIRE that
//! makes room (`MAKE_ROOM_STEPS_MAX`). Until then
//! the table's `next_deadline` counts the earliest deadline set here (a
//! lower bound once that hold is released, as the wheel's own answer is),
//! and `settle` reads the deadline from the record as before, so a pending
//! expiry is never missed or late.
//!
//! The list holds at most [`PENDING_EXPIRIES_MAX`] entries (4 KiB). It is
//! emptied, keeping its capacity, whenever no entry is live, so a steady
//! load does not allocate.

#[cfg(any(test, feature = "internals"))]
use super::store::Store;

/// Most entries waiting to be linked (live or stale); an expiry set when
/// the list is full first links them all.
pub const PENDING_EXPIRIES_MAX: usize = 1024;

pub struct Pending {
    /// Record indexes, in the order their expiries were set. Entry `i` is
    /// live while its record is pending at position `i`
    /// (`Store::is_pending_at`).
    keys: Vec<u32>,
    /// Live entries.
    live: usize,
    /// The earliest deadline pushed since the list was last empty.
    earliest_ms: u64,
}

impl Default for Pending {
    fn default() -> Pending {
        Pending {
            keys: Vec::new(),
            live: 0,
            earliest_ms: u64::MAX,
        }
    }
}

impl Pending {
    /// Whether some expiry waits to be linked.
    #[inline]
    pub fn any(&self) -> bool {
        self.live > 0
    }

    #[inline]
    pub fn has_room(&self) -> bool {
        self.keys.len() < PENDING_EXPIRIES_MAX
    }

    /// Never later than the earliest live deadline; `None` when none is.
    #[inline]
    pub fn earliest_ms(&self) -> Option<u64> {
        self.any().then_some(self.earliest_ms)
    }

    /// Appends `lock`, whose deadline is `deadline_ms`, and returns its
    /// position.
    #[inline]
    pub fn push(&mut self, lock: u32, deadline_ms: u64) -> u32 {
        debug_assert!(self.has_room());
        self.keys.push(lock);
        self.live += 1;
        self.earliest_ms = self.earliest_ms.min(deadline_ms);
        (self.keys.len() - 1) as u32
    }

    /// A live entry stopped being pending (its record's flag was cleared).
    #[inline]
    pub fn forget(&mut self) {
        self.live -= 1;
        if self.live == 0 {
            self.keys.clear();
            self.earliest_ms = u64::MAX;
        }
    }

    /// The record pending at `pos` moved to slot `to`.
    pub fn repoint(&mut self, pos: u32, to: u32) {
        self.keys[pos as usize] = to;
    }

    /// Every entry, live or stale, by position, for the caller to link the
    /// live ones; then it must call [`Pending::give_back_empty`].
    pub fn take_keys(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.keys)
    }

    /// All entries were linked: the list is empty again, and keeps the
    /// vector's memory.
    pub fn give_back_empty(&mut self, mut keys: Vec<u32>) {
        keys.clear();
        *self = Pending {
            keys,
            ..Pending::default()
        };
    }

    #[cfg(any(test, feature = "internals"))]
    /// Checks the live count against the records, and returns it.
    pub fn invariants(&self, store: &Store) -> usize {
        let live = (0..self.keys.len())
            .filter(|&pos| store.is_pending_at(self.keys[pos], pos as u32))
            .count();
        assert_eq!(live, self.live, "live pending expiries");
        assert!(self.live > 0 || self.keys.is_empty(), "not emptied");
        for pos in 0..self.keys.len() {
            let lock = self.keys[pos];
            if store.is_pending_at(lock, pos as u32) {
                assert!(store.record(lock).deadline_ms() >= self.earliest_ms);
            }
        }
        live
    }
}
