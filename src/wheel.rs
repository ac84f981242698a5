//! Hierarchical timer wheel: every lock expiry and wait deadline, in
//! milliseconds. Pure: time is a `u64` of milliseconds passed in, never read.
//!
//! # Why a wheel
//!
//! The lock table arms and disarms a timer on nearly every request (a lock's
//! TTL, a waiter's deadline), and most timers are cancelled before they fire.
//! A wheel makes insert and cancel O(1), and gives the event loop its poll
//! timeout through [`WheelCore::next_deadline`] without scanning timers.
//!
//! # Layout: core and store
//!
//! ```text
//! WheelCore (no entries, fixed size, never allocates):
//!   level 5: 64 slots of 2^30 ms   occupied: u64 (bit s set <=> slot s list non-empty)
//!   level 4: 64 slots of 2^24 ms   occupied: u64
//!     ...
//!   level 0: 64 slots of 1 ms      occupied: u64
//!   per slot: heads[s], tails[s] (keys), earliest_ms[s]
//!
//! TimerStore (owned by the caller), one TimerLinks per linked key:
//!   deadline_ms, prev, next (keys; NIL_KEY = u32::MAX ends a list), level, slot
//!
//! one slot list:
//!   core: heads[s] = a                                  tails[s] = c
//!   store:   links(a) <-> links(b) <-> links(c)
//! ```
//!
//! The wheel is split so that timers can be linked *intrusively*: the
//! [`WheelCore`] holds only the levels, and every method that touches a timer
//! takes the [`TimerStore`] that holds its [`TimerLinks`]. A key is whatever
//! the store says it is, and keys are stored nowhere but in slot heads, tails
//! and links. The lock table keeps a held lock's links inside its own 48-byte
//! record, keyed by the record's index, instead of paying for a separate
//! ~40-byte wheel entry plus a handle to it in the record. [`TimerWheel`] is
//! the same core over a [`Slab`] store whose entries carry the links, a
//! generation and a value: the general-purpose wheel, and the reference the
//! core is tested through. The core is generic over the store (no `dyn`), so
//! both run one algorithm with the store accesses inlined.
//!
//! Links make cancel O(1) in safe code, and once the store has reached its
//! high-water mark nothing allocates: the levels are fixed-size arrays.
//!
//! A key that is not linked holds [`TimerLinks::UNLINKED`]: stores start
//! their keys with it and `unlink` and `poll` put it back. That is what lets
//! [`WheelCore::is_linked`] answer, and `link`/`unlink` catch misuse in debug
//! builds.
//!
//! # Slot math
//!
//! A deadline is placed relative to `elapsed` (the time the wheel has been
//! advanced to; every live deadline is `>= elapsed`). Read both as 6-bit
//! groups; the timer goes to
//!
//! ```text
//! level = index of the highest 6-bit group where elapsed ^ deadline differs
//! slot  = (deadline >> 6 * level) & 63
//! ```
//!
//! So a level-0 slot holds exactly one deadline, and every deadline at a level
//! is later than every deadline at the levels below it: the earliest timers
//! are always in the first occupied slot (counting from elapsed's own slot)
//! of the lowest non-empty level. Found with `rotate_right` +
//! `trailing_zeros` on that level's bitmap.
//!
//! When elapsed reaches the first millisecond of an occupied slot above level
//! 0, that slot is cascaded: its timers are placed again relative to the new
//! elapsed, which moves them to lower levels. Elapsed only moves to the start
//! of the next occupied slot or to a time before it, so no other timer's
//! (level, slot) changes when it moves.
//!
//! A cascade can be long (a million locks taken within one 4-second span
//! share one level-2 slot), so [`WheelCore::poll_bounded`] does it a bounded
//! number of timers at a time: elapsed stays at the slot's start, the slot
//! keeps the timers not yet placed (up to a recorded last key), and a
//! deadline linked meanwhile that falls in the slot's span joins them at the
//! tail instead of going lower, so the firing order is the same as with one
//! unbounded cascade.
//!
//! Deadlines outside elapsed's current top-level lap (2^36 ms, about 795 days)
//! are clamped: they wait in the top level's last slot (or, from inside that
//! last slot, in the next lap's slot), get cascaded when it is reached, and
//! still fire at their exact deadline.
//!
//! # Order
//!
//! [`WheelCore::poll`] (and so [`TimerWheel::poll`]) returns timers in
//! nondecreasing deadline order, and timers with equal deadlines in link
//! order: all timers with the same deadline always sit in one slot list
//! (placement is a function of elapsed and the deadline), lists are appended
//! at the tail, and a cascade moves a whole list in order into slots that are
//! empty at that moment. The lock table is a deterministic state machine and
//! its FIFO wait queues rely on this.

use slab::Slab;
use std::fmt;

/// Slots per level: one `u64` bitmap per level marks the non-empty slots.
pub const WHEEL_SLOT_COUNT: usize = 64;
/// Levels: 64^6 ms = 2^36 ms (about 795 days) before a deadline is clamped.
pub const WHEEL_LEVEL_COUNT: usize = 6;
/// Span of one lap of the top level. Deadlines further than this from
/// `elapsed` are clamped to the last level (and still fire at their exact
/// deadline, possibly after extra cascades). Precisely, clamping applies to
/// deadlines outside elapsed's current lap, which some nearer ones are too:
/// those cost one extra cascade.
pub const WHEEL_HORIZON_MS: u64 = 1 << 36;

/// Ends a slot list: the `prev` of its head and `next` of its tail. Never a
/// valid key.
pub const NIL_KEY: u32 = u32::MAX;

/// Bits of a time that index the slots of one level.
const SLOT_BITS: u32 = WHEEL_SLOT_COUNT.trailing_zeros();
const SLOT_MASK: u64 = WHEEL_SLOT_COUNT as u64 - 1;
const TOP_LEVEL: usize = WHEEL_LEVEL_COUNT - 1;
const LAST_SLOT: usize = WHEEL_SLOT_COUNT - 1;
const HORIZON_BITS: u32 = SLOT_BITS * WHEEL_LEVEL_COUNT as u32;

/// Most live timers in a [`TimerWheel`]: slab keys are `u32` and `NIL_KEY`
/// is reserved.
const TIMERS_MAX: usize = NIL_KEY as usize;
/// Latest time elapsed may reach: slot starts are computed up to two top-level
/// laps ahead of elapsed, and must not overflow. About 584 million years.
const ELAPSED_MS_MAX: u64 = u64::MAX - 2 * WHEEL_HORIZON_MS;

const _: () = assert!(
    WHEEL_SLOT_COUNT == u64::BITS as usize,
    "one u64 bitmap per level"
);
const _: () = assert!(WHEEL_SLOT_COUNT.is_power_of_two(), "slot = shift and mask");
const _: () = assert!(
    WHEEL_HORIZON_MS == 1 << HORIZON_BITS,
    "horizon = 64^levels ms"
);
const _: () = assert!(WHEEL_LEVEL_COUNT <= u8::MAX as usize, "level stored as u8");
const _: () = assert!(WHEEL_SLOT_COUNT <= u8::MAX as usize, "slot stored as u8");

/// Where one timer's links live. Keys are u32; the store decides what a key
/// names. Only the wheel writes them; a store just keeps them (in any layout
/// it likes, as long as `links` returns what `set_links` was given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerLinks {
    /// Never earlier than elapsed: `link` raises past deadlines to it.
    pub deadline_ms: u64,
    pub prev: u32,
    pub next: u32,
    /// Where the timer is linked, so unlink is O(1).
    pub level: u8,
    pub slot: u8,
}

impl TimerLinks {
    /// What a key that is not linked holds (see the module docs).
    pub const UNLINKED: TimerLinks = TimerLinks {
        deadline_ms: 0,
        prev: NIL_KEY,
        next: NIL_KEY,
        level: 0,
        slot: 0,
    };
}

/// Storage of the timers' links, owned by the caller (e.g. inside lock
/// records). The wheel only asks it about keys the caller gave the wheel and
/// the neighbours they are linked to. A key given to `link` must hold
/// [`TimerLinks::UNLINKED`] (new keys start with it; `unlink` and `poll`
/// leave it); while it is linked, only the wheel may change its links.
pub trait TimerStore {
    fn links(&self, key: u32) -> TimerLinks;
    fn set_links(&mut self, key: u32, links: TimerLinks);

    /// Sets only `next` (a neighbour's link changes on every link and
    /// unlink). A store that packs its links overrides this and `set_prev`
    /// to write the one field instead of unpacking and repacking them all.
    fn set_next(&mut self, key: u32, next: u32) {
        let links = self.links(key);
        self.set_links(key, TimerLinks { next, ..links });
    }

    fn set_prev(&mut self, key: u32, prev: u32) {
        let links = self.links(key);
        self.set_links(key, TimerLinks { prev, ..links });
    }
}

struct Level {
    /// Bit `s` set exactly when slot `s` has timers.
    occupied: u64,
    heads: [u32; WHEEL_SLOT_COUNT],
    tails: [u32; WHEEL_SLOT_COUNT],
    /// Per slot, the earliest deadline linked into it since it was last empty:
    /// exact unless that timer was unlinked, then a lower bound. Lets
    /// `next_deadline` answer better than the slot's first millisecond.
    earliest_ms: [u64; WHEEL_SLOT_COUNT],
}

impl Level {
    const EMPTY: Level = Level {
        occupied: 0,
        heads: [NIL_KEY; WHEEL_SLOT_COUNT],
        tails: [NIL_KEY; WHEEL_SLOT_COUNT],
        earliest_ms: [u64::MAX; WHEEL_SLOT_COUNT],
    };

    fn is_occupied(&self, slot: usize) -> bool {
        self.occupied & (1 << slot) != 0
    }

    fn clear(&mut self, slot: usize) {
        self.occupied &= !(1 << slot);
        self.heads[slot] = NIL_KEY;
        self.tails[slot] = NIL_KEY;
        self.earliest_ms[slot] = u64::MAX;
    }
}

/// The wheel proper: levels, bitmaps, elapsed. Holds no timers; every method
/// that touches them takes the store holding their links.
pub struct WheelCore {
    levels: [Level; WHEEL_LEVEL_COUNT],
    /// The time the wheel has been advanced to; see the module docs.
    elapsed_ms: u64,
    /// A cascade that [`WheelCore::poll_bounded`] left unfinished.
    cascade: Option<Cascade>,
}

/// A cascade in progress: elapsed is at the start of this slot, and its
/// list, from the head up to and including `last`, still has to be placed
/// again. Keys after `last` belong in the slot (clamped top-level deadlines
/// placed back into it). While it lasts, `link` puts a deadline of this
/// slot's span (any deadline, for a top-level slot) right after `last` and
/// makes it `last`, instead of placing it, so that equal deadlines keep
/// their link order however the cascade is split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cascade {
    level: u8,
    slot: u8,
    last: u32,
}

/// What one call of [`WheelCore::poll_bounded`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollStep<K> {
    /// Popped this timer, `(deadline, key or value)`, as `poll` would.
    Fired(u64, K),
    /// Nothing is due at `now_ms`; elapsed was advanced to it.
    Idle,
    /// The budget ran out first; call again (timers may be due).
    Budget,
}

// The small non-generic methods are `#[inline]`: without it, callers in other
// crates or codegen units (every `TimerWheel<T>` user) call them out of line,
// which cost `next_deadline` about 20%. The generic ones are instantiated, and
// can be inlined, where they are used.
impl WheelCore {
    /// An empty wheel whose elapsed time starts at `now_ms`.
    pub fn new(now_ms: u64) -> WheelCore {
        WheelCore {
            levels: [Level::EMPTY; WHEEL_LEVEL_COUNT],
            elapsed_ms: now_ms.min(ELAPSED_MS_MAX),
            cascade: None,
        }
    }

    /// Links `key`, which must not be linked, to fire at `deadline_ms`, after
    /// every key already linked with the same deadline. A deadline before
    /// [`elapsed_ms`](Self::elapsed_ms) is raised to it (fires at the next
    /// poll). Returns the deadline stored in the key's links.
    pub fn link<S: TimerStore + ?Sized>(
        &mut self,
        store: &mut S,
        key: u32,
        deadline_ms: u64,
    ) -> u64 {
        debug_assert_ne!(key, NIL_KEY, "NIL_KEY is never a key");
        debug_assert!(
            !self.is_linked(store, key),
            "linking key {key}: linked already, or its links are not UNLINKED"
        );
        // Every live deadline >= elapsed is what the slot math relies on.
        let deadline_ms = deadline_ms.max(self.elapsed_ms);
        match self.cascade {
            // Below the top level, only deadlines of the cascading slot's
            // span place below it, so only they could share a deadline with a
            // timer still waiting there. A top-level slot may also hold
            // clamped deadlines of any later lap: everything waits behind it.
            Some(c)
                if usize::from(c.level) == TOP_LEVEL
                    || slot_for(self.elapsed_ms, deadline_ms).0 < usize::from(c.level) =>
            {
                self.insert_after_last(store, key, deadline_ms, c);
                self.cascade = Some(Cascade { last: key, ..c });
            }
            _ => self.link_placed(store, key, deadline_ms),
        }
        deadline_ms
    }

    /// Unlinks `key`, which the caller guarantees is linked, and sets its
    /// links to [`TimerLinks::UNLINKED`]. O(1).
    pub fn unlink<S: TimerStore + ?Sized>(&mut self, store: &mut S, key: u32) {
        debug_assert!(
            self.is_linked(store, key),
            "unlinking key {key}, not linked"
        );
        if let Some(c) = self.cascade.filter(|c| c.last == key) {
            // The key before it is the last left to place; none: all placed.
            let prev = store.links(key).prev;
            self.cascade = (prev != NIL_KEY).then_some(Cascade { last: prev, ..c });
        }
        self.remove(store, key);
    }

    /// The store moved linked key `from`'s links to key `to`, which was
    /// not linked, and `from` is gone: points its neighbours, its slot's
    /// head or tail and a cascade in progress at `to`. The timer keeps its
    /// place in its slot list, so equal deadlines keep their order. O(1).
    pub fn rekey<S: TimerStore + ?Sized>(&mut self, store: &mut S, from: u32, to: u32) {
        debug_assert_ne!(to, NIL_KEY, "NIL_KEY is never a key");
        let links = store.links(to);
        let lists = &mut self.levels[usize::from(links.level)];
        let slot = usize::from(links.slot);
        debug_assert!(lists.is_occupied(slot), "rekeying {from}: not linked");
        match links.prev {
            NIL_KEY => {
                debug_assert_eq!(lists.heads[slot], from);
                lists.heads[slot] = to;
            }
            prev => store.set_next(prev, to),
        }
        match links.next {
            NIL_KEY => {
                debug_assert_eq!(lists.tails[slot], from);
                lists.tails[slot] = to;
            }
            next => store.set_prev(next, to),
        }
        if let Some(c) = self.cascade.as_mut().filter(|c| c.last == from) {
            c.last = to;
        }
    }

    /// Whether `key` is linked, given that unlinked keys hold
    /// [`TimerLinks::UNLINKED`]. (A linked key holds exactly that only as the
    /// sole timer of level 0, slot 0, with deadline 0.)
    pub fn is_linked<S: TimerStore + ?Sized>(&self, store: &S, key: u32) -> bool {
        store.links(key) != TimerLinks::UNLINKED || self.levels[0].heads[0] == key
    }

    /// A poll timeout: never later than the earliest linked deadline and never
    /// earlier than elapsed. Exact, except after the earliest timer of a slot
    /// above level 0 was unlinked: then it may be that timer's deadline, and
    /// polling at it cascades the slot and makes the next answer exact.
    /// Polling at the returned time always either fires a timer or makes the
    /// next answer strictly later, so an event loop never spins on it.
    #[inline]
    pub fn next_deadline(&self) -> Option<u64> {
        if self.cascade.is_some() {
            // Unfinished work, and its timers' earliest is not tracked.
            return Some(self.elapsed_ms);
        }
        let (level, slot) = self.next_slot()?;
        let earliest_ms = self.levels[level].earliest_ms[slot];
        debug_assert!(earliest_ms >= slot_start(self.elapsed_ms, level, slot));
        Some(earliest_ms)
    }

    /// Pops one timer with deadline `<= now_ms` as `(deadline, key)`: the
    /// earliest, and among equal deadlines the first linked. It is unlinked
    /// (its links set to [`TimerLinks::UNLINKED`]). Returns `None` when none
    /// is due, after advancing elapsed to `now_ms` (it never moves back;
    /// `now_ms` is capped at about 584 million years). Call it until it
    /// returns `None`. Its work is not bounded: reaching a slot above level
    /// 0 places every timer of that slot again; see
    /// [`WheelCore::poll_bounded`].
    pub fn poll<S: TimerStore + ?Sized>(
        &mut self,
        store: &mut S,
        now_ms: u64,
    ) -> Option<(u64, u32)> {
        let mut budget = usize::MAX;
        loop {
            match self.poll_bounded(store, now_ms, &mut budget) {
                PollStep::Fired(deadline_ms, key) => return Some((deadline_ms, key)),
                PollStep::Idle => return None,
                PollStep::Budget => {}
            }
        }
    }

    /// [`WheelCore::poll`] doing at most `budget` steps of work, and taking
    /// them off `budget`: one per timer popped, and one per timer a cascade
    /// places again. A cascade the budget cuts short goes on at the next
    /// call; meanwhile nothing fires, `next_deadline` answers elapsed, and
    /// links and unlinks work as usual. Timers fire in exactly the order
    /// `poll` would fire them, whatever the budgets.
    pub fn poll_bounded<S: TimerStore + ?Sized>(
        &mut self,
        store: &mut S,
        now_ms: u64,
        budget: &mut usize,
    ) -> PollStep<u32> {
        let now_ms = now_ms.min(ELAPSED_MS_MAX);
        loop {
            if self.cascade.is_some() {
                if !self.cascade_some(store, budget) {
                    return PollStep::Budget;
                }
                continue;
            }
            let Some((level, slot)) = self.next_slot() else {
                self.advance_to(now_ms);
                return PollStep::Idle;
            };
            let start_ms = slot_start(self.elapsed_ms, level, slot);
            if start_ms > now_ms {
                self.advance_to(now_ms);
                return PollStep::Idle;
            }
            if *budget == 0 {
                return PollStep::Budget;
            }
            // This is the first occupied slot, so no slot starts between
            // elapsed and start_ms: moving there relocates nothing else.
            debug_assert!(start_ms >= self.elapsed_ms);
            self.elapsed_ms = start_ms;
            if level == 0 {
                *budget -= 1;
                let (deadline_ms, key) = self.pop_front(store, slot);
                return PollStep::Fired(deadline_ms, key);
            }
            let last = self.levels[level].tails[slot];
            // From now on it tracks the keys placed back into this slot.
            self.levels[level].earliest_ms[slot] = u64::MAX;
            self.cascade = Some(Cascade {
                level: level as u8,
                slot: slot as u8,
                last,
            });
        }
    }

    /// The time the wheel has been advanced to by `poll`. Every linked
    /// deadline is at or after it.
    #[inline]
    pub fn elapsed_ms(&self) -> u64 {
        self.elapsed_ms
    }

    #[cfg(any(test, feature = "internals"))]
    /// No timer is linked.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(|level| level.occupied == 0)
    }

    #[cfg(any(test, feature = "internals"))]
    /// Asserts every structural invariant over `store` and returns the number
    /// of linked keys. O(linked timers): for tests.
    pub fn invariants<S: TimerStore + ?Sized>(&self, store: &S) -> usize {
        assert!(self.elapsed_ms <= ELAPSED_MS_MAX);
        if let Some(c) = self.cascade {
            let level = &self.levels[usize::from(c.level)];
            assert!(level.is_occupied(usize::from(c.slot)), "cascading {c:?}");
        }
        let mut linked = 0;
        for level in 0..WHEEL_LEVEL_COUNT {
            for slot in 0..WHEEL_SLOT_COUNT {
                linked += self.slot_invariants(store, level, slot);
            }
        }
        linked
    }

    #[cfg(any(test, feature = "internals"))]
    /// Checks one slot list and returns how many keys it links.
    fn slot_invariants<S: TimerStore + ?Sized>(
        &self,
        store: &S,
        level: usize,
        slot: usize,
    ) -> usize {
        let lists = &self.levels[level];
        let occupied = lists.is_occupied(slot);
        assert_eq!(
            occupied,
            lists.heads[slot] != NIL_KEY,
            "bit {level}/{slot} vs head"
        );
        assert_eq!(
            occupied,
            lists.tails[slot] != NIL_KEY,
            "bit {level}/{slot} vs tail"
        );
        if !occupied {
            assert_eq!(lists.earliest_ms[slot], u64::MAX, "empty {level}/{slot}");
            return 0;
        }
        let cascading = self
            .cascade
            .filter(|c| (usize::from(c.level), usize::from(c.slot)) == (level, slot));
        if let Some(c) = cascading {
            return self.cascading_slot_invariants(store, c);
        }
        let start_ms = slot_start(self.elapsed_ms, level, slot);
        assert!(
            start_ms >= self.elapsed_ms,
            "slot {level}/{slot} is behind elapsed"
        );
        assert!(
            lists.earliest_ms[slot] >= start_ms,
            "earliest before slot {level}/{slot}"
        );
        self.walk_slot(store, level, slot, |_, links| {
            assert_eq!(slot_for(self.elapsed_ms, links.deadline_ms), (level, slot));
            assert!(links.deadline_ms >= lists.earliest_ms[slot]);
            assert!(
                level > 0 || links.deadline_ms == start_ms,
                "level 0 slot = 1 ms"
            );
        })
    }

    #[cfg(any(test, feature = "internals"))]
    /// Walks one slot list, checking its links, calls `check` on each key,
    /// and returns how many it links.
    fn walk_slot<S: TimerStore + ?Sized>(
        &self,
        store: &S,
        level: usize,
        slot: usize,
        mut check: impl FnMut(u32, &TimerLinks),
    ) -> usize {
        let lists = &self.levels[level];
        // No length bound is needed to stop on a cycle: the first key visited
        // twice is reached from a key other than its recorded `prev`.
        let (mut count, mut prev, mut key) = (0, NIL_KEY, lists.heads[slot]);
        while key != NIL_KEY {
            let links = store.links(key);
            assert_eq!(links.prev, prev, "prev link of key {key}");
            assert_eq!(
                (usize::from(links.level), usize::from(links.slot)),
                (level, slot)
            );
            check(key, &links);
            (count, prev, key) = (count + 1, key, links.next);
        }
        assert_eq!(lists.tails[slot], prev, "tail of slot {level}/{slot}");
        count
    }

    #[cfg(any(test, feature = "internals"))]
    /// Checks the slot a cascade is placing again: elapsed at its start, its
    /// keys up to `last` due in its span (so placed lower once cascaded),
    /// the keys after `last` belonging to it. Returns how many it links.
    fn cascading_slot_invariants<S: TimerStore + ?Sized>(&self, store: &S, c: Cascade) -> usize {
        let (level, slot) = (usize::from(c.level), usize::from(c.slot));
        assert!(level > 0, "level 0 slots are popped, never cascaded");
        assert_eq!(slot_of(self.elapsed_ms, level), slot);
        let span_ms = 1u64 << (SLOT_BITS as usize * level);
        assert_eq!(self.elapsed_ms % span_ms, 0, "elapsed at the slot's start");
        let mut pending = true;
        let count = self.walk_slot(store, level, slot, |key, links| {
            let placed = slot_for(self.elapsed_ms, links.deadline_ms);
            if pending {
                assert!(links.deadline_ms >= self.elapsed_ms);
                assert!(placed.0 < level || level == TOP_LEVEL, "key {key}");
            } else {
                assert_eq!(placed, (level, slot), "key {key} after the last");
            }
            pending &= key != c.last;
        });
        assert!(!pending, "the cascade's last key {} is in its slot", c.last);
        count
    }

    /// The slot with the earliest deadlines: the first occupied slot of the
    /// lowest non-empty level (see the module docs for why).
    #[inline]
    fn next_slot(&self) -> Option<(usize, usize)> {
        (0..WHEEL_LEVEL_COUNT)
            .find_map(|level| self.first_occupied(level).map(|slot| (level, slot)))
    }

    /// The occupied slot of `level` reached first from elapsed.
    #[inline]
    fn first_occupied(&self, level: usize) -> Option<usize> {
        let occupied = self.levels[level].occupied;
        if occupied == 0 {
            return None;
        }
        // Level 0's current slot holds deadlines equal to elapsed: due first.
        // A higher level's current slot can only hold next-lap deadlines
        // (top level, clamped): due last.
        let current = slot_of(self.elapsed_ms, level);
        let from = if level == 0 {
            current
        } else {
            (current + 1) % WHEEL_SLOT_COUNT
        };
        let distance = occupied.rotate_right(from as u32).trailing_zeros() as usize;
        Some((from + distance) % WHEEL_SLOT_COUNT)
    }

    #[inline]
    fn advance_to(&mut self, now_ms: u64) {
        // A clock that steps back must not move elapsed back: linked
        // deadlines would fall behind it.
        self.elapsed_ms = self.elapsed_ms.max(now_ms);
    }

    /// Unlinks and returns the first (oldest) timer of a due level-0 slot.
    fn pop_front<S: TimerStore + ?Sized>(&mut self, store: &mut S, slot: usize) -> (u64, u32) {
        let key = self.levels[0].heads[slot];
        debug_assert_ne!(key, NIL_KEY, "popping an empty slot");
        let deadline_ms = self.remove(store, key);
        debug_assert_eq!(deadline_ms, self.elapsed_ms);
        (deadline_ms, key)
    }

    /// Places again, in list order, the timers of the slot being cascaded,
    /// as many as `budget` allows. Returns whether the cascade is done.
    /// Their targets below are empty at the cascade's start (every lower
    /// level is, or this slot would not be first) and `link` sends new
    /// deadlines of this span behind them, so equal deadlines keep their
    /// link order.
    fn cascade_some<S: TimerStore + ?Sized>(&mut self, store: &mut S, budget: &mut usize) -> bool {
        let Some(c) = self.cascade else {
            return true;
        };
        let (level, slot) = (usize::from(c.level), usize::from(c.slot));
        while *budget > 0 {
            *budget -= 1;
            let key = self.levels[level].heads[slot];
            debug_assert_ne!(key, NIL_KEY, "a cascade's last key is in its slot");
            let deadline_ms = self.remove(store, key);
            self.link_placed(store, key, deadline_ms);
            debug_assert!(
                usize::from(store.links(key).level) < level || level == TOP_LEVEL,
                "a cascade moves timers down (only clamped ones stay on top)"
            );
            if key == c.last {
                self.cascade = None;
                return true;
            }
        }
        false
    }

    /// Links `key` into the cascading slot right after the cascade's last
    /// key: after every key still to be placed, before the keys placed back
    /// into the slot (which a later pass must not move again, or equal
    /// deadlines would change order). Leaves the slot's earliest alone: it
    /// tracks only the keys that belong there.
    fn insert_after_last<S: TimerStore + ?Sized>(
        &mut self,
        store: &mut S,
        key: u32,
        deadline_ms: u64,
        c: Cascade,
    ) {
        let (level, slot) = (usize::from(c.level), usize::from(c.slot));
        let next = store.links(c.last).next;
        store.set_links(
            key,
            TimerLinks {
                deadline_ms,
                prev: c.last,
                next,
                level: c.level,
                slot: c.slot,
            },
        );
        store.set_next(c.last, key);
        match next {
            NIL_KEY => self.levels[level].tails[slot] = key,
            next => store.set_prev(next, key),
        }
    }

    /// Appends `key` to the tail of the slot `deadline_ms` maps to now.
    fn link_placed<S: TimerStore + ?Sized>(&mut self, store: &mut S, key: u32, deadline_ms: u64) {
        let (level, slot) = slot_for(self.elapsed_ms, deadline_ms);
        self.append(store, key, deadline_ms, level, slot);
    }

    /// Appends `key` to the tail of one slot list.
    fn append<S: TimerStore + ?Sized>(
        &mut self,
        store: &mut S,
        key: u32,
        deadline_ms: u64,
        level: usize,
        slot: usize,
    ) {
        let lists = &mut self.levels[level];
        let tail = lists.tails[slot];
        let links = TimerLinks {
            deadline_ms,
            prev: tail,
            next: NIL_KEY,
            // Both fit: their counts are asserted to fit u8.
            level: level as u8,
            slot: slot as u8,
        };
        store.set_links(key, links);
        lists.earliest_ms[slot] = lists.earliest_ms[slot].min(deadline_ms);
        lists.tails[slot] = key;
        if tail == NIL_KEY {
            lists.heads[slot] = key;
            lists.occupied |= 1 << slot;
        } else {
            store.set_next(tail, key);
        }
    }

    /// Takes `key` out of its slot list, clearing the slot if emptied, marks
    /// it unlinked and returns its deadline. (It reads the links itself and
    /// returns no struct: links passed in or out go through the stack, and
    /// that measurably slowed cancel.)
    fn remove<S: TimerStore + ?Sized>(&mut self, store: &mut S, key: u32) -> u64 {
        let links = store.links(key);
        store.set_links(key, TimerLinks::UNLINKED);
        let lists = &mut self.levels[usize::from(links.level)];
        let slot = usize::from(links.slot);
        debug_assert!(lists.is_occupied(slot), "linked key {key} in an empty slot");
        match (links.prev, links.next) {
            (NIL_KEY, NIL_KEY) => {
                debug_assert_eq!(lists.heads[slot], key);
                lists.clear(slot);
            }
            (NIL_KEY, next) => {
                lists.heads[slot] = next;
                store.set_prev(next, NIL_KEY);
            }
            (prev, NIL_KEY) => {
                lists.tails[slot] = prev;
                store.set_next(prev, NIL_KEY);
            }
            (prev, next) => {
                store.set_next(prev, next);
                store.set_prev(next, prev);
            }
        }
        links.deadline_ms
    }
}

impl fmt::Debug for WheelCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WheelCore")
            .field("elapsed_ms", &self.elapsed_ms)
            .field("next_deadline_ms", &self.next_deadline())
            .finish_non_exhaustive()
    }
}

/// Names one inserted timer. A stale handle (its timer fired or was cancelled,
/// and the slab entry maybe reused) never cancels or reads anything: the
/// generation no longer matches. Generations wrap after 2^32 inserts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerHandle {
    key: u32,
    generation: u32,
}

/// One timer of a [`TimerWheel`]: its links, generation and value. The links
/// are kept as loose fields rather than a `TimerLinks` so `generation` fills
/// what would be that struct's padding: 32 bytes instead of 40 for a `u64`
/// value, which the hot paths' cache misses feel.
struct Entry<T> {
    deadline_ms: u64,
    prev: u32,
    next: u32,
    generation: u32,
    level: u8,
    slot: u8,
    value: T,
}

impl<T> Entry<T> {
    fn unlinked(generation: u32, value: T) -> Entry<T> {
        let links = TimerLinks::UNLINKED;
        Entry {
            deadline_ms: links.deadline_ms,
            prev: links.prev,
            next: links.next,
            generation,
            level: links.level,
            slot: links.slot,
            value,
        }
    }
}

/// The slab is [`TimerWheel`]'s store: a key is a slab key.
impl<T> TimerStore for Slab<Entry<T>> {
    fn links(&self, key: u32) -> TimerLinks {
        let entry = &self[key as usize];
        TimerLinks {
            deadline_ms: entry.deadline_ms,
            prev: entry.prev,
            next: entry.next,
            level: entry.level,
            slot: entry.slot,
        }
    }

    fn set_links(&mut self, key: u32, links: TimerLinks) {
        let entry = &mut self[key as usize];
        entry.deadline_ms = links.deadline_ms;
        (entry.prev, entry.next) = (links.prev, links.next);
        (entry.level, entry.slot) = (links.level, links.slot);
    }
}

/// A hierarchical timer wheel of values `T` keyed by deadline in ms: a
/// [`WheelCore`] over a slab of entries, with generation-checked handles.
pub struct TimerWheel<T> {
    core: WheelCore,
    entries: Slab<Entry<T>>,
    /// Bumped on every insert; copied into the entry and its handle.
    generation: u32,
}

impl<T> TimerWheel<T> {
    #[cfg(any(test, feature = "internals"))]
    /// An empty wheel whose elapsed time starts at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self::with_capacity(now_ms, 0)
    }

    /// An empty wheel with room for `capacity` timers before it allocates.
    pub fn with_capacity(now_ms: u64, capacity: usize) -> Self {
        TimerWheel {
            core: WheelCore::new(now_ms),
            entries: Slab::with_capacity(capacity),
            generation: 0,
        }
    }

    /// Schedules `value` to fire at `deadline_ms`. A deadline before
    /// [`elapsed_ms`](Self::elapsed_ms) is raised to it (fires at the next
    /// poll); [`deadline`](Self::deadline) reports the raised value.
    pub fn insert(&mut self, deadline_ms: u64, value: T) -> TimerHandle {
        assert!(
            self.entries.len() < TIMERS_MAX,
            "timer wheel: {TIMERS_MAX} live timers, the most its u32 links can name"
        );
        self.generation = self.generation.wrapping_add(1);
        let entry = Entry::unlinked(self.generation, value);
        let key = self.entries.insert(entry);
        let key = u32::try_from(key).expect("slab key below TIMERS_MAX");
        self.core.link(&mut self.entries, key, deadline_ms);
        TimerHandle {
            key,
            generation: self.generation,
        }
    }

    /// Removes the timer and returns its value, or `None` if the handle is
    /// stale (fired, cancelled). O(1).
    pub fn cancel(&mut self, handle: TimerHandle) -> Option<T> {
        self.get(handle)?;
        self.core.unlink(&mut self.entries, handle.key);
        Some(self.entries.remove(handle.key as usize).value)
    }

    /// The timer's deadline (after raising a past one to elapsed), or `None`
    /// if the handle is stale.
    pub fn deadline(&self, handle: TimerHandle) -> Option<u64> {
        self.get(handle).map(|entry| entry.deadline_ms)
    }

    /// See [`WheelCore::next_deadline`].
    pub fn next_deadline(&self) -> Option<u64> {
        self.core.next_deadline()
    }

    /// Pops one timer with deadline `<= now_ms` as `(deadline, value)`: the
    /// earliest, and among equal deadlines the first inserted. Returns `None`
    /// when none is due, after advancing elapsed to `now_ms` (it never moves
    /// back; `now_ms` is capped at about 584 million years). Call it until
    /// it returns `None`.
    pub fn poll(&mut self, now_ms: u64) -> Option<(u64, T)> {
        let (deadline_ms, key) = self.core.poll(&mut self.entries, now_ms)?;
        Some((deadline_ms, self.entries.remove(key as usize).value))
    }

    #[cfg(any(test, feature = "internals"))]
    /// [`TimerWheel::poll`] within a budget: see [`WheelCore::poll_bounded`].
    pub fn poll_bounded(&mut self, now_ms: u64, budget: &mut usize) -> PollStep<T> {
        match self.core.poll_bounded(&mut self.entries, now_ms, budget) {
            PollStep::Fired(deadline_ms, key) => {
                PollStep::Fired(deadline_ms, self.entries.remove(key as usize).value)
            }
            PollStep::Idle => PollStep::Idle,
            PollStep::Budget => PollStep::Budget,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(any(test, feature = "internals"))]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The time the wheel has been advanced to by `poll`. Every live
    /// deadline is at or after it.
    pub fn elapsed_ms(&self) -> u64 {
        self.core.elapsed_ms()
    }

    #[cfg(any(test, feature = "internals"))]
    /// Asserts every structural invariant. O(live timers): for tests.
    pub fn invariants(&self) {
        let linked = self.core.invariants(&self.entries);
        // Each linked key is a live entry in one list (checked by the core),
        // so equal counts mean no entry is left out.
        assert_eq!(
            linked,
            self.entries.len(),
            "every timer is in one slot list"
        );
    }

    fn get(&self, handle: TimerHandle) -> Option<&Entry<T>> {
        let entry = self.entries.get(handle.key as usize)?;
        (entry.generation == handle.generation).then_some(entry)
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("elapsed_ms", &self.elapsed_ms())
            .field("len", &self.len())
            .field("next_deadline_ms", &self.next_deadline())
            .finish_non_exhaustive()
    }
}

/// The 6-bit group of `time_ms` that indexes slots at `level`.
#[inline]
fn slot_of(time_ms: u64, level: usize) -> usize {
    ((time_ms >> (SLOT_BITS as usize * level)) & SLOT_MASK) as usize
}

/// The (level, slot) a deadline belongs in, relative to elapsed.
#[inline]
fn slot_for(elapsed_ms: u64, deadline_ms: u64) -> (usize, usize) {
    debug_assert!(deadline_ms >= elapsed_ms, "deadline behind elapsed");
    let lap = elapsed_ms >> HORIZON_BITS;
    let deadline_lap = deadline_ms >> HORIZON_BITS;
    if deadline_lap == lap {
        // `| SLOT_MASK` puts a deadline equal to elapsed at level 0.
        let differing = (elapsed_ms ^ deadline_ms) | SLOT_MASK;
        let level = ((u64::BITS - 1 - differing.leading_zeros()) / SLOT_BITS) as usize;
        return (level, slot_of(deadline_ms, level));
    }
    // Clamped. Parking in the last top slot keeps this placement unchanged
    // until elapsed reaches that slot; from inside it, the next lap's slots
    // are the ones ahead (all top-level slots are behind elapsed's then).
    let in_last_top_slot = slot_of(elapsed_ms, TOP_LEVEL) == LAST_SLOT;
    if in_last_top_slot && deadline_lap == lap + 1 {
        return (TOP_LEVEL, slot_of(deadline_ms, TOP_LEVEL));
    }
    (TOP_LEVEL, LAST_SLOT)
}

/// The first millisecond of a slot's span as seen from elapsed. Only the top
/// level has slots behind elapsed's own (holding next-lap deadlines).
#[inline]
fn slot_start(elapsed_ms: u64, level: usize, slot: usize) -> u64 {
    let shift = SLOT_BITS as usize * level;
    let lap_bits = shift + SLOT_BITS as usize;
    let lap_start_ms = elapsed_ms >> lap_bits << lap_bits;
    let start_ms = lap_start_ms + ((slot as u64) << shift);
    let current = slot_of(elapsed_ms, level);
    let behind = if level == 0 {
        slot < current
    } else {
        slot <= current
    };
    if behind {
        start_ms + (1 << lap_bits)
    } else {
        start_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::wheel::{CoreTimers, compare_with_model};
    use crate::check::{Source, SplitMix64};

    /// Polls until `None`, checking invariants after every step.
    fn drain<T>(wheel: &mut TimerWheel<T>, now_ms: u64) -> Vec<(u64, T)> {
        let mut fired = Vec::new();
        while let Some(timer) = wheel.poll(now_ms) {
            wheel.invariants();
            fired.push(timer);
        }
        wheel.invariants();
        fired
    }

    #[test]
    fn fires_at_exact_deadline_and_not_before() {
        let mut wheel = TimerWheel::new(1000);
        let handle = wheel.insert(1010, "a");
        wheel.invariants();
        assert_eq!(wheel.deadline(handle), Some(1010));
        assert_eq!(wheel.next_deadline(), Some(1010));
        assert_eq!(wheel.poll(1009), None);
        assert_eq!(wheel.elapsed_ms(), 1009);
        assert_eq!(wheel.poll(1010), Some((1010, "a")));
        assert_eq!(wheel.poll(1010), None);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
        assert_eq!(wheel.deadline(handle), None);
        wheel.invariants();
    }

    #[test]
    fn cancel_before_fire_removes_the_timer() {
        let mut wheel = TimerWheel::new(0);
        let kept = wheel.insert(100, 1);
        let cancelled = wheel.insert(50, 2);
        assert_eq!(wheel.len(), 2);
        assert_eq!(wheel.cancel(cancelled), Some(2));
        wheel.invariants();
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.next_deadline(), Some(100));
        assert_eq!(drain(&mut wheel, 1_000_000), vec![(100, 1)]);
        assert_eq!(wheel.cancel(kept), None);
    }

    #[test]
    fn stale_handles_never_touch_a_reused_entry() {
        let mut wheel = TimerWheel::new(0);
        let fired = wheel.insert(5, 1);
        assert_eq!(wheel.poll(5), Some((5, 1)));
        let cancelled = wheel.insert(7, 2);
        assert_eq!(wheel.cancel(cancelled), Some(2));
        let live = wheel.insert(9, 3);
        // The slab reused one entry for all three: only generations differ.
        assert_eq!((fired.key, cancelled.key), (live.key, live.key));
        assert_eq!(wheel.cancel(fired), None);
        assert_eq!(wheel.cancel(cancelled), None);
        assert_eq!(wheel.deadline(fired), None);
        assert_eq!(wheel.deadline(cancelled), None);
        assert_eq!(wheel.deadline(live), Some(9));
        assert_eq!(wheel.len(), 1);
        wheel.invariants();
        assert_eq!(drain(&mut wheel, 9), vec![(9, 3)]);
    }

    const BOUNDARY_OFFSETS_MS: [u64; 22] = [
        0,
        1,
        63,
        64,
        65,
        4095,
        4096,
        4097,
        262_143,
        262_144,
        262_145,
        1 << 24,
        (1 << 30) - 1,
        1 << 30,
        (1 << 30) + 1,
        WHEEL_HORIZON_MS - 2,
        WHEEL_HORIZON_MS - 1,
        WHEEL_HORIZON_MS,
        WHEEL_HORIZON_MS + 1,
        2 * WHEEL_HORIZON_MS + 77,
        3 * WHEEL_HORIZON_MS + 12_345,
        40 * WHEEL_HORIZON_MS,
    ];

    /// Starts that put elapsed at awkward places, including inside the last
    /// top-level slot, where clamped deadlines use the next lap's slots.
    const STARTS_MS: [u64; 6] = [
        0,
        5,
        4095,
        (63 << 30) + 17,
        WHEEL_HORIZON_MS - 3,
        7 * WHEEL_HORIZON_MS + 123_456,
    ];

    #[test]
    fn boundary_deadlines_fire_exactly_when_probed_one_ms_before_and_at() {
        for start_ms in STARTS_MS {
            let mut wheel = TimerWheel::new(start_ms);
            let deadlines: Vec<u64> = BOUNDARY_OFFSETS_MS.iter().map(|o| start_ms + o).collect();
            for &deadline_ms in &deadlines {
                wheel.insert(deadline_ms, deadline_ms);
            }
            wheel.invariants();
            // Offset 0 is due at once; the rest are probed one by one.
            assert_eq!(drain(&mut wheel, start_ms), vec![(start_ms, start_ms)]);
            for &deadline_ms in &deadlines[1..] {
                assert_eq!(wheel.next_deadline(), Some(deadline_ms));
                assert_eq!(wheel.poll(deadline_ms - 1), None, "start {start_ms}");
                wheel.invariants();
                assert_eq!(
                    drain(&mut wheel, deadline_ms),
                    vec![(deadline_ms, deadline_ms)]
                );
            }
            assert!(wheel.is_empty());
        }
    }

    #[test]
    fn boundary_deadlines_fire_exactly_under_random_jumps() {
        let mut rng = SplitMix64(42);
        for start_ms in STARTS_MS {
            for _ in 0..8 {
                let mut wheel = TimerWheel::new(start_ms);
                let mut pending: Vec<u64> =
                    BOUNDARY_OFFSETS_MS.iter().map(|o| start_ms + o).collect();
                for &deadline_ms in &pending {
                    wheel.insert(deadline_ms, deadline_ms);
                }
                let mut now_ms = start_ms;
                while !pending.is_empty() {
                    let jumps_ms = [1, 60, 5000, 1 << 22, 1 << 31, 1 << 35, 3 << 36];
                    let jump_ms = jumps_ms[rng.below(7) as usize];
                    now_ms += rng.below(jump_ms);
                    // Exactly the due ones, in order; none early, none late.
                    let due: Vec<(u64, u64)> = pending
                        .iter()
                        .filter(|&&d| d <= now_ms)
                        .map(|&d| (d, d))
                        .collect();
                    pending.retain(|&d| d > now_ms);
                    assert_eq!(
                        drain(&mut wheel, now_ms),
                        due,
                        "start {start_ms} now {now_ms}"
                    );
                    assert_eq!(wheel.next_deadline(), pending.first().copied());
                }
            }
        }
    }

    #[test]
    fn past_deadlines_fire_at_the_next_poll_at_elapsed() {
        let mut wheel = TimerWheel::new(1000);
        assert_eq!(wheel.poll(2000), None);
        let past = wheel.insert(10, 'a');
        wheel.insert(1999, 'b');
        wheel.insert(2000, 'c');
        assert_eq!(wheel.deadline(past), Some(2000));
        assert_eq!(wheel.next_deadline(), Some(2000));
        assert_eq!(
            drain(&mut wheel, 2000),
            vec![(2000, 'a'), (2000, 'b'), (2000, 'c')]
        );
    }

    #[test]
    fn a_clock_stepping_back_neither_fires_nor_moves_elapsed_back() {
        let mut wheel = TimerWheel::new(500);
        wheel.insert(500, 1);
        assert_eq!(wheel.poll(499), None);
        assert_eq!(wheel.elapsed_ms(), 500);
        assert_eq!(wheel.poll(500), Some((500, 1)));
    }

    #[test]
    fn equal_deadlines_fire_in_insertion_order_across_levels() {
        let mut wheel = TimerWheel::new(3);
        let deadlines_ms = [70, 5000, 300_000, 70, 1 << 33, 5000, 70, 300_000, 1 << 33];
        for value in 0..90_usize {
            wheel.insert(deadlines_ms[value % deadlines_ms.len()], value);
        }
        let mut fired = Vec::new();
        for now_ms in [69, 70, 4999, 6000, 1 << 32, 1 << 34] {
            fired.extend(drain(&mut wheel, now_ms));
        }
        assert_eq!(fired.len(), 90);
        assert!(
            fired
                .windows(2)
                .all(|w| w[0].0 < w[1].0 || (w[0].0 == w[1].0 && w[0].1 < w[1].1))
        );
    }

    #[test]
    fn timers_added_while_a_deadline_drains_fire_after_its_earlier_ones() {
        let mut wheel = TimerWheel::new(0);
        for value in 0..3 {
            wheel.insert(100, value);
        }
        assert_eq!(wheel.poll(100), Some((100, 0)));
        wheel.insert(100, 3);
        wheel.insert(40, 4); // past: raised to elapsed = 100
        wheel.insert(101, 5);
        wheel.invariants();
        assert_eq!(
            drain(&mut wheel, 101),
            vec![(100, 1), (100, 2), (100, 3), (100, 4), (101, 5)]
        );
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let mut wheel = TimerWheel::new(u64::MAX - 5);
        assert_eq!(wheel.elapsed_ms(), ELAPSED_MS_MAX);
        wheel.insert(u64::MAX, 1);
        wheel.insert(0, 2);
        wheel.invariants();
        assert_eq!(drain(&mut wheel, u64::MAX), vec![(ELAPSED_MS_MAX, 2)]);
        assert_eq!(wheel.len(), 1, "deadlines past ELAPSED_MS_MAX never fire");
    }

    #[test]
    fn polling_at_next_deadline_always_makes_progress() {
        let mut rng = SplitMix64(7);
        let mut wheel = TimerWheel::new(0);
        let handles: Vec<TimerHandle> = (0..300_u64)
            .map(|value| wheel.insert(rng.log_uniform(34), value))
            .collect();
        // Cancelling stales the per-slot earliest, so answers are lower bounds.
        for handle in handles.iter().step_by(2) {
            wheel.cancel(*handle);
        }
        let mut wakeups = 0;
        while let Some(next_ms) = wheel.next_deadline() {
            wakeups += 1;
            let fired = drain(&mut wheel, next_ms);
            assert!(fired.iter().all(|&(deadline_ms, _)| deadline_ms == next_ms));
            if fired.is_empty() {
                assert!(wheel.next_deadline().is_none_or(|later| later > next_ms));
            }
        }
        assert!(
            wakeups <= 150 * WHEEL_LEVEL_COUNT,
            "{wakeups} wakeups for 150 timers"
        );
    }

    #[test]
    fn matches_model_with_cancels() {
        for seed in 1..=8 {
            compare_with_model::<TimerWheel<u64>>(&mut SplitMix64(seed), 2500, true);
        }
    }

    /// A slot of 100,000 timers far ahead is cascaded at most `budget`
    /// timers per call; timers linked and cancelled meanwhile, with the
    /// same deadlines, still fire in deadline and then link order.
    #[test]
    fn a_big_cascade_is_split_by_the_budget_and_keeps_the_order() {
        const TIMERS: u64 = 100_000;
        const BUDGET: usize = 1000;
        let mut wheel = TimerWheel::new(0);
        let mut order = Vec::new();
        // All in one level-2 slot (4096..8192 ms), deadlines repeating.
        let deadline = |i: u64| 5000 + i % 50;
        let mut handles = Vec::new();
        for i in 0..TIMERS {
            handles.push(wheel.insert(deadline(i), i));
        }
        let (mut calls, mut next) = (0, TIMERS);
        let mut fired = Vec::new();
        loop {
            let mut budget = BUDGET;
            match wheel.poll_bounded(6000, &mut budget) {
                PollStep::Fired(at, value) => fired.push((at, value)),
                PollStep::Idle => break,
                PollStep::Budget => {
                    assert_eq!(budget, 0);
                    calls += 1;
                    // In between: a cancel and a link of an equal deadline.
                    wheel.cancel(handles[calls * 7]);
                    handles.push(wheel.insert(deadline(next), next));
                    next += 1;
                    if calls % 20 == 0 {
                        wheel.invariants();
                    }
                }
            }
        }
        assert!(calls >= TIMERS as usize / BUDGET, "{calls} calls");
        for i in 0..next {
            if i >= TIMERS || !(1..=calls).any(|c| c * 7 == i as usize) {
                order.push((deadline(i), i));
            }
        }
        order.sort();
        assert_eq!(fired, order);
        assert!(wheel.is_empty());
        wheel.invariants();
    }

    /// Found by the fuzzer: a top-level slot holds clamped deadlines of a
    /// later lap; a timer linked while its cascade is cut short, with the
    /// same deadline as one still waiting there, must fire after it.
    #[test]
    fn a_split_top_level_cascade_keeps_the_order_of_clamped_deadlines() {
        let last_top_slot_ms = WHEEL_HORIZON_MS - (1 << 30);
        let mut wheel = TimerWheel::new(last_top_slot_ms - 5);
        let deadline = WHEEL_HORIZON_MS + WHEEL_HORIZON_MS / 2;
        for value in 0..5 {
            wheel.insert(deadline, value);
        }
        let mut budget = 2;
        assert_eq!(
            wheel.poll_bounded(last_top_slot_ms, &mut budget),
            PollStep::Budget
        );
        wheel.invariants();
        wheel.insert(deadline, 5);
        wheel.invariants();
        let fired: Vec<u64> = drain(&mut wheel, deadline)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(fired, (0..6).collect::<Vec<u64>>());
    }

    /// Found by the fuzzer (the input is in the fuzz corpus): clamped
    /// deadlines placed back into the top-level slot being cascaded, then
    /// timers linked while the cascade was cut short; the ones placed back
    /// were moved again behind them and fired out of order.
    #[test]
    fn fuzz_regression_split_top_level_cascade() {
        let data = include_bytes!("../fuzz/corpus/wheel/regression-split-top-level-cascade");
        crate::check::wheel::run(&mut crate::check::ByteSource::new(data), 5000);
    }

    #[test]
    fn matches_model_without_cancels_and_next_deadline_is_exact() {
        for seed in 100..=103 {
            compare_with_model::<TimerWheel<u64>>(&mut SplitMix64(seed), 2000, false);
        }
    }

    #[test]
    fn core_over_a_slice_store_matches_model_with_cancels() {
        for seed in 11..=18 {
            compare_with_model::<CoreTimers>(&mut SplitMix64(seed), 2500, true);
        }
    }

    #[test]
    fn core_over_a_slice_store_matches_model_without_cancels() {
        for seed in 110..=113 {
            compare_with_model::<CoreTimers>(&mut SplitMix64(seed), 2000, false);
        }
    }

    #[test]
    fn core_pops_keys_by_deadline_then_link_order_and_leaves_them_unlinked() {
        let mut links = vec![TimerLinks::UNLINKED; 8];
        let store = links.as_mut_slice();
        let mut core = WheelCore::new(100);
        // 150 is at level 1, 120 at level 0, 100_000 at level 2.
        let deadlines_ms = [150, 120, 150, 50, 150, 100_000, 120];
        for (key, deadline_ms) in (0..).zip(deadlines_ms) {
            core.link(store, key, deadline_ms);
        }
        assert_eq!(store[3].deadline_ms, 100, "past deadline raised to elapsed");
        assert_eq!(core.invariants(store), 7);
        // Unlink from the middle, the tail and a slot's only timer; relink
        // at an unchanged deadline: goes to the back of its list.
        for key in [2, 6, 4, 5] {
            core.unlink(store, key);
            assert_eq!(store[key as usize], TimerLinks::UNLINKED);
            assert!(!core.is_linked(store, key));
            core.invariants(store);
        }
        for key in [4, 6] {
            core.link(store, key, deadlines_ms[key as usize]);
        }
        assert!(core.is_linked(store, 0));
        assert_eq!(core.invariants(store), 5);
        assert_eq!(core.next_deadline(), Some(100));
        let mut fired = Vec::new();
        while let Some(timer) = core.poll(store, 1000) {
            core.invariants(store);
            fired.push(timer);
        }
        assert_eq!(fired, [(100, 3), (120, 1), (120, 6), (150, 0), (150, 4)]);
        assert!(core.is_empty());
        assert_eq!(core.elapsed_ms(), 1000);
        assert!(store.iter().all(|links| *links == TimerLinks::UNLINKED));
    }

    #[test]
    fn core_knows_a_timer_whose_links_look_unlinked_is_linked() {
        // The sole timer at level 0, slot 0 with deadline 0 holds exactly
        // UNLINKED; only the slot head tells it apart.
        let mut links = vec![TimerLinks::UNLINKED; 2];
        let store = links.as_mut_slice();
        let mut core = WheelCore::new(0);
        core.link(store, 1, 0);
        assert_eq!(store[1], TimerLinks::UNLINKED);
        assert!(core.is_linked(store, 1));
        assert!(!core.is_linked(store, 0));
        assert_eq!(core.invariants(store), 1);
        assert_eq!(core.poll(store, 0), Some((0, 1)));
        assert!(!core.is_linked(store, 1));
        assert!(core.is_empty());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "linking key 1: linked already")]
    fn core_catches_a_double_link_in_debug_builds() {
        let mut links = vec![TimerLinks::UNLINKED; 2];
        let mut core = WheelCore::new(0);
        core.link(links.as_mut_slice(), 1, 10);
        core.link(links.as_mut_slice(), 1, 20);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "unlinking key 0, not linked")]
    fn core_catches_unlinking_an_unlinked_key_in_debug_builds() {
        let mut links = vec![TimerLinks::UNLINKED; 2];
        let mut core = WheelCore::new(0);
        core.link(links.as_mut_slice(), 1, 10);
        core.unlink(links.as_mut_slice(), 0);
    }

    #[test]
    fn timer_wheel_entries_stay_32_bytes_for_a_u64_value() {
        // Loose link fields let the generation fill TimerLinks' padding.
        assert_eq!(std::mem::size_of::<Entry<u64>>(), 32);
    }
}
