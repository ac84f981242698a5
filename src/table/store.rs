//! Compact storage of held locks and queued waiters.
//!
//! A held lock costs one 48-byte [`LockRecord`] plus its index slot in the
//! table's hash index; nothing is allocated per lock unless its name is
//! longer than [`NAME_INLINE_LEN_MAX`] bytes. To get there:
//!
//! - the owner is kept as a 64-bit keyed digest, not as bytes (see
//!   `LockTable`'s docs for why that is safe);
//! - the lock's expiry timer is linked through the record itself (the wheel
//!   is intrusive, see [`crate::wheel::WheelCore`]);
//! - names up to 15 bytes live inside the record;
//! - the rarely used parts (SESSION binding, wait queue) live in a side map,
//!   flagged by a bit in the record.
//!
//! ```text
//! LockRecord (48 bytes)
//! +---------+---------+-------------+------+------+------+---------------+
//! | token 8 | owner 8 | deadline 6  | meta | prev | next | name 16       |
//! |         | digest  | (ms, 48 bit)| 2    | 4    | 4    | len + 15 bytes|
//! +---------+---------+-------------+------+------+------+---------------+
//! meta: slot (6 bits) | level (3 bits) | LIVE | HAS_EXTRA | PENDING
//! name: byte 0 = length 0..=15 and the bytes inline, or LONG_NAME, the
//!       length (byte 1) and a u32 slot index (bytes 4..8) in `long_names`.
//! ```
//!
//! A held lock's expiry is linked in the wheel, or pending (PENDING set, the
//! deadline in the record and its position in the table's pending list in
//! `prev`; see `table::pending`).
//!
//! Vacant records are threaded into a doubly linked free list through `prev`
//! and `next` (free for that use: only held locks are in the wheel), and
//! vacant waiters through their queue links, so that any vacant slot can
//! leave its free list in O(1).
//!
//! # Giving memory back
//!
//! Records and waiters are referenced by index (the hash index, timer links,
//! wait queues, session lists), so their vectors cannot just be truncated.
//! When one is sparse (fewer live than a quarter of its capacity, above a
//! floor) the table compacts it a step at a time in
//! `LockTable::run_deferred`: a vacant last slot leaves its free list and is
//! popped; a live last slot is moved into a vacant one and every reference
//! to it is fixed. Once the vector is no longer than twice its live slots,
//! its chunks beyond that are freed, one per step (records are kept in
//! chunks so no step copies or frees them all). Growing back to the old size takes twice as many live
//! slots and shrinking again half as many, so the cost stays amortized O(1)
//! per insert and remove, and nothing shrinks under the floor: a small steady
//! load never reallocates.
//!
//! One wheel serves both kinds of timers: keys below [`WAITER_KEY_BIT`] are
//! lock records, keys with it set are waiters.

use super::chunked::ChunkedVec;
use super::names::{NameArena, NameSlot};
use crate::wheel::{NIL_KEY, TimerLinks, TimerStore};

pub const NIL: u32 = NIL_KEY;

/// Wheel keys with this bit name waiters; without it, lock records.
pub const WAITER_KEY_BIT: u32 = 1 << 31;

/// Names up to this length are stored inside the lock record.
pub const NAME_INLINE_LEN_MAX: usize = 15;

/// Most lock records: their indexes must stay below the waiter key bit.
pub const LOCK_RECORDS_MAX: usize = WAITER_KEY_BIT as usize - 1;

/// Record chunks: 256 records (12 KiB) first, doubling up to 32768 (1.5 MiB,
/// allocated and freed in about 0.3 ms, and big enough that the C allocator
/// maps it apart and gives its pages back to the kernel when it is freed).
type Records = ChunkedVec<LockRecord, 256, 32768>;

/// Record capacity kept however empty the table gets (the first chunk,
/// 12 KiB): below it a table never compacts or reallocates, whatever its
/// load pattern. At least the first chunk, or a shrink could free nothing
/// and compaction would never end.
pub const RECORDS_CAPACITY_MIN: usize = 256;
const _: () = assert!(RECORDS_CAPACITY_MIN == Records::SHAPE.capacity_of_first());

/// Waiter capacity kept however few wait (about 5 KiB).
pub const WAITERS_CAPACITY_MIN: usize = 64;

/// Deadlines are stored in 48 bits: about 8900 years of milliseconds.
const DEADLINE_MS_MAX: u64 = (1 << 48) - 1;

const META_SLOT_MASK: u16 = 0x3f;
const META_LEVEL_SHIFT: u16 = 6;
const META_LEVEL_MASK: u16 = 0x7 << META_LEVEL_SHIFT;
const META_LIVE: u16 = 1 << 9;
const META_HAS_EXTRA: u16 = 1 << 10;
/// The expiry is set but not linked in the wheel yet: it waits in the
/// table's list of expiries set this millisecond (see `table::pending`), at
/// the position kept in `prev`.
const META_PENDING: u16 = 1 << 11;
const LONG_NAME: u8 = 0xff;

const _: () = assert!(std::mem::size_of::<LockRecord>() == 48);
const _: () = assert!(crate::wheel::WHEEL_LEVEL_COUNT <= 8, "level fits 3 bits");
const _: () = assert!(crate::wheel::WHEEL_SLOT_COUNT <= 64, "slot fits 6 bits");

#[derive(Clone, Copy)]
pub struct LockRecord {
    pub token: u64,
    pub owner: u64,
    deadline_lo: u32,
    deadline_hi: u16,
    meta: u16,
    prev: u32,
    next: u32,
    name: [u8; 16],
}

impl LockRecord {
    const VACANT: LockRecord = LockRecord {
        token: 0,
        owner: 0,
        deadline_lo: 0,
        deadline_hi: 0,
        meta: 0,
        prev: NIL,
        next: NIL,
        name: [0; 16],
    };

    pub fn is_live(&self) -> bool {
        self.meta & META_LIVE != 0
    }

    pub fn has_extra(&self) -> bool {
        self.meta & META_HAS_EXTRA != 0
    }

    pub fn set_has_extra(&mut self, on: bool) {
        if on {
            self.meta |= META_HAS_EXTRA;
        } else {
            self.meta &= !META_HAS_EXTRA;
        }
    }

    /// The expiry deadline, linked in the wheel or pending.
    pub fn deadline_ms(&self) -> u64 {
        (self.deadline_hi as u64) << 32 | self.deadline_lo as u64
    }

    fn set_deadline_ms(&mut self, deadline_ms: u64) {
        assert!(
            deadline_ms <= DEADLINE_MS_MAX,
            "deadline {deadline_ms} ms past 48 bits"
        );
        self.deadline_lo = deadline_ms as u32;
        self.deadline_hi = (deadline_ms >> 32) as u16;
    }

    fn long_name(&self) -> Option<NameSlot> {
        (self.name[0] == LONG_NAME).then(|| NameSlot {
            len: self.name[1],
            index: u32::from_le_bytes([self.name[4], self.name[5], self.name[6], self.name[7]]),
        })
    }
}

/// A queued ACQUIRE.
#[derive(Clone, Copy)]
pub struct Waiter {
    pub lock: u32,
    pub session: u32,
    pub owner: u64,
    pub ttl_ms: u32,
    pub flags: u8,
    pub enqueued_at_ms: u64,
    /// Neighbours in the lock's FIFO queue.
    pub queue_prev: u32,
    pub queue_next: u32,
    links: TimerLinks,
}

impl Waiter {
    pub fn new(lock: u32, session: u32, owner: u64, ttl_ms: u32, flags: u8, now_ms: u64) -> Waiter {
        Waiter {
            lock,
            session,
            owner,
            ttl_ms,
            flags,
            enqueued_at_ms: now_ms,
            queue_prev: NIL,
            queue_next: NIL,
            links: TimerLinks::UNLINKED,
        }
    }

    /// The wait deadline, as linked in the wheel.
    pub fn deadline_ms(&self) -> u64 {
        self.links.deadline_ms
    }

    fn is_live(&self) -> bool {
        self.lock != NIL
    }
}

/// Queued ACQUIREs by index. Vacant slots have `lock == NIL` and are linked
/// into the free list through `queue_prev`/`queue_next`.
pub struct Waiters {
    slots: Vec<Waiter>,
    free_head: u32,
    live: usize,
}

impl Default for Waiters {
    fn default() -> Waiters {
        Waiters {
            slots: Vec::new(),
            free_head: NIL,
            live: 0,
        }
    }
}

impl Waiters {
    const VACANT: Waiter = Waiter {
        lock: NIL,
        session: NIL,
        owner: 0,
        ttl_ms: 0,
        flags: 0,
        enqueued_at_ms: 0,
        queue_prev: NIL,
        queue_next: NIL,
        links: TimerLinks::UNLINKED,
    };

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn insert(&mut self, waiter: Waiter) -> usize {
        debug_assert!(waiter.is_live());
        self.live += 1;
        match self.free_head {
            NIL => {
                self.slots.push(waiter);
                self.slots.len() - 1
            }
            index => {
                self.unlink_free(index);
                self.slots[index as usize] = waiter;
                index as usize
            }
        }
    }

    pub fn remove(&mut self, index: usize) -> Waiter {
        let waiter = self.slots[index];
        assert!(waiter.is_live(), "removing vacant waiter {index}");
        self.slots[index] = Waiters::VACANT;
        self.push_free(index as u32);
        self.live -= 1;
        waiter
    }

    fn push_free(&mut self, index: u32) {
        let head = self.free_head;
        self.slots[index as usize].queue_next = head;
        if head != NIL {
            self.slots[head as usize].queue_prev = index;
        }
        self.free_head = index;
    }

    fn unlink_free(&mut self, index: u32) {
        let Waiter {
            queue_prev: prev,
            queue_next: next,
            ..
        } = self.slots[index as usize];
        match prev {
            NIL => self.free_head = next,
            prev => self.slots[prev as usize].queue_next = next,
        }
        if next != NIL {
            self.slots[next as usize].queue_prev = prev;
        }
        self.slots[index as usize].queue_prev = NIL;
        self.slots[index as usize].queue_next = NIL;
    }

    /// Fewer live waiters than a quarter of the capacity, above the floor.
    pub fn is_sparse(&self) -> bool {
        self.slots.capacity() > WAITERS_CAPACITY_MIN && self.live * 4 < self.slots.capacity()
    }

    /// One step of compaction (see the module docs). `Some((from, to))`
    /// when the live last waiter must move: the caller calls
    /// [`Waiters::move_last`] and fixes the references, its timer's too.
    pub fn compact_step(&mut self) -> Option<(u32, u32)> {
        let target = (2 * self.live).max(WAITERS_CAPACITY_MIN / 2);
        if self.slots.len() <= target {
            self.slots.shrink_to(target);
            return None;
        }
        let last = (self.slots.len() - 1) as u32;
        if !self.slots[last as usize].is_live() {
            self.unlink_free(last);
            self.slots.pop();
            return None;
        }
        // More slots than twice the live ones, the last live: a vacant slot
        // exists below it.
        debug_assert_ne!(self.free_head, NIL);
        Some((last, self.free_head))
    }

    /// Moves the last waiter, links and all, into the vacant slot `to` and
    /// pops the last slot; the caller rekeys its timer.
    pub fn move_last(&mut self, to: u32) -> Waiter {
        self.unlink_free(to);
        let waiter = self.slots.pop().expect("a last waiter");
        self.slots[to as usize] = waiter;
        waiter
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }
}

impl std::ops::Index<usize> for Waiters {
    type Output = Waiter;
    fn index(&self, index: usize) -> &Waiter {
        let waiter = &self.slots[index];
        debug_assert!(waiter.is_live(), "waiter {index} is vacant");
        waiter
    }
}

impl std::ops::IndexMut<usize> for Waiters {
    fn index_mut(&mut self, index: usize) -> &mut Waiter {
        let waiter = &mut self.slots[index];
        debug_assert!(waiter.is_live(), "waiter {index} is vacant");
        waiter
    }
}

/// The parts of a lock only some locks need: a SESSION binding and a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockExtra {
    pub session: u32,
    pub session_prev: u32,
    pub session_next: u32,
    pub waiters_head: u32,
    pub waiters_tail: u32,
    pub waiter_count: u32,
}

impl LockExtra {
    pub const NONE: LockExtra = LockExtra {
        session: NIL,
        session_prev: NIL,
        session_next: NIL,
        waiters_head: NIL,
        waiters_tail: NIL,
        waiter_count: 0,
    };

    pub fn is_none(&self) -> bool {
        self.session == NIL && self.waiter_count == 0
    }
}

/// What one [`Store::compact_step`] did, or left to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactStep {
    /// Gave one chunk of records back, of `bytes` (0: found none to give).
    FreedChunk { bytes: usize },
    /// Dropped a vacant last slot.
    Popped,
    /// The live last record must move to the vacant slot `to`: the caller
    /// calls [`Store::move_last`] and fixes the references, its timer's
    /// too.
    Move { from: u32, to: u32 },
}

/// Lock records, long names and waiters: everything the wheel links.
pub struct Store {
    /// In chunks, so that growing and shrinking never copy them all (see
    /// [`super::chunked`]).
    records: Records,
    /// Head of the vacant records' free list.
    free_head: u32,
    live: usize,
    long_names: NameArena,
    pub waiters: Waiters,
}

impl Default for Store {
    fn default() -> Store {
        Store {
            records: Records::new(),
            free_head: NIL,
            live: 0,
            long_names: NameArena::default(),
            waiters: Waiters::default(),
        }
    }
}

impl Store {
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn record(&self, lock: u32) -> &LockRecord {
        let record = &self.records[lock as usize];
        debug_assert!(record.is_live(), "lock {lock} is vacant");
        record
    }

    pub fn record_mut(&mut self, lock: u32) -> &mut LockRecord {
        let record = &mut self.records[lock as usize];
        debug_assert!(record.is_live(), "lock {lock} is vacant");
        record
    }

    #[inline]
    pub fn name(&self, lock: u32) -> &[u8] {
        let record = self.record(lock);
        match record.long_name() {
            Some(slot) => self.long_names.get(slot),
            None => &record.name[1..1 + record.name[0] as usize],
        }
    }

    /// Sets a live record's expiry without linking it in the wheel: it
    /// waits at position `pos` of the table's pending expiries. The record
    /// must not be linked or pending.
    #[inline]
    pub fn set_pending(&mut self, lock: u32, deadline_ms: u64, pos: u32) {
        let r = self.record_mut(lock);
        debug_assert!(r.meta & META_PENDING == 0 && r.prev == NIL && r.next == NIL);
        r.set_deadline_ms(deadline_ms);
        r.prev = pos;
        r.meta |= META_PENDING;
    }

    /// Whether `lock` is a live record whose expiry waits at position `pos`
    /// of the pending expiries. Any `lock` may be asked: positions of
    /// records freed or moved since are stale, and answer false.
    #[inline]
    pub fn is_pending_at(&self, lock: u32, pos: u32) -> bool {
        if lock as usize >= self.records.len() {
            return false;
        }
        let r = &self.records[lock as usize];
        let flags = META_LIVE | META_PENDING;
        r.meta & flags == flags && r.prev == pos
    }

    /// If `lock` is pending at position `pos` ([`Store::is_pending_at`]):
    /// makes it unlinked, as [`Store::take_pending`] does, and returns its
    /// deadline.
    #[inline]
    pub fn take_pending_at(&mut self, lock: u32, pos: u32) -> Option<u64> {
        if !self.is_pending_at(lock, pos) {
            return None;
        }
        self.take_pending(lock)
    }

    /// If `lock`'s expiry is pending: makes it unlinked (as
    /// [`TimerLinks::UNLINKED`]) and returns its deadline.
    #[inline]
    pub fn take_pending(&mut self, lock: u32) -> Option<u64> {
        let r = self.record_mut(lock);
        if r.meta & META_PENDING == 0 {
            return None;
        }
        let deadline_ms = r.deadline_ms();
        r.meta &= !META_PENDING;
        r.prev = NIL;
        r.set_deadline_ms(0);
        Some(deadline_ms)
    }

    /// The pending position of `lock`, moved into another slot with its
    /// record.
    pub fn pending_pos(&self, lock: u32) -> Option<u32> {
        let r = self.record(lock);
        (r.meta & META_PENDING != 0).then_some(r.prev)
    }

    /// Record slots, live or vacant: indexes are below it.
    pub fn slot_count(&self) -> u32 {
        self.records.len() as u32
    }

    /// Whether record slot `lock` (below [`Store::slot_count`]) is held.
    pub fn is_live(&self, lock: u32) -> bool {
        self.records[lock as usize].is_live()
    }

    /// Iterates over the indexes of live records.
    pub fn live_locks(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.records.len() as u32).filter(|&i| self.records[i as usize].is_live())
    }

    /// Stores a new live record (not yet linked in the wheel).
    pub fn insert(&mut self, name: &[u8], owner: u64, token: u64) -> u32 {
        // The record is built from whole values and copied into its slot;
        // an inline name's bytes are then written in the slot itself. Built
        // byte by byte on the stack and copied whole, the record stalled the
        // processor on every new lock (a wide read of narrow writes just
        // made: store forwarding fails).
        let name_field = if name.len() <= NAME_INLINE_LEN_MAX {
            name.len() as u128
        } else {
            let slot = self.long_names.insert(name);
            LONG_NAME as u128 | (slot.len as u128) << 8 | (slot.index as u128) << 32
        };
        let record = LockRecord {
            token,
            owner,
            meta: META_LIVE,
            name: name_field.to_le_bytes(),
            ..LockRecord::VACANT
        };
        self.live += 1;
        let lock = match self.free_head {
            NIL => {
                assert!(
                    self.records.len() < LOCK_RECORDS_MAX,
                    "lock records exhausted"
                );
                self.records.push(record);
                (self.records.len() - 1) as u32
            }
            lock => {
                // The head of the free list: `unlink_free` less the writes
                // the new record overwrites (a record access per write
                // counts on every ACQUIRE of a new name).
                let slot = &mut self.records[lock as usize];
                debug_assert!(!slot.is_live() && slot.prev == NIL);
                let next = slot.next;
                *slot = record;
                self.free_head = next;
                if next != NIL {
                    self.records[next as usize].prev = NIL;
                }
                lock
            }
        };
        if name.len() <= NAME_INLINE_LEN_MAX {
            self.records[lock as usize].name[1..1 + name.len()].copy_from_slice(name);
        }
        lock
    }

    /// Frees a record (already unlinked from the wheel).
    pub fn remove(&mut self, lock: u32) {
        let head = self.free_head;
        let slot = &mut self.records[lock as usize];
        assert!(slot.is_live(), "removing vacant lock {lock}");
        let long_name = slot.long_name();
        // Vacant, at the head of the free list.
        *slot = LockRecord {
            next: head,
            ..LockRecord::VACANT
        };
        if head != NIL {
            self.records[head as usize].prev = lock;
        }
        self.free_head = lock;
        if let Some(name) = long_name {
            self.long_names.remove(name);
        }
        self.live -= 1;
    }

    fn unlink_free(&mut self, lock: u32) {
        let LockRecord { prev, next, .. } = self.records[lock as usize];
        match prev {
            NIL => self.free_head = next,
            prev => self.records[prev as usize].next = next,
        }
        if next != NIL {
            self.records[next as usize].prev = prev;
        }
        self.records[lock as usize].prev = NIL;
        self.records[lock as usize].next = NIL;
    }

    #[cfg(any(test, feature = "internals"))]
    /// Checks that the vacant records form one doubly linked free list from
    /// its head, and that the live count is right. For tests; O(records).
    pub fn invariants(&self) {
        let (mut vacant, mut prev, mut lock) = (0, NIL, self.free_head);
        while lock != NIL {
            let record = &self.records[lock as usize];
            assert!(!record.is_live(), "live record {lock} on the free list");
            assert_eq!(record.prev, prev, "free list: prev of record {lock}");
            (vacant, prev, lock) = (vacant + 1, lock, record.next);
            assert!(vacant <= self.records.len(), "free list: a cycle");
        }
        assert_eq!(
            vacant + self.live,
            self.records.len(),
            "free list: vacant records missing"
        );
    }

    /// Long names hold memory to give back (see [`Store::free_name_chunk`]).
    pub fn has_spare_name_chunks(&self) -> bool {
        self.long_names.has_spare_chunks()
    }

    /// Gives back one chunk of long-name storage no name uses; returns its
    /// bytes.
    pub fn free_name_chunk(&mut self) -> usize {
        self.long_names.free_spare_chunk()
    }

    /// Fewer live records than a quarter of the capacity, above the floor.
    pub fn is_sparse(&self) -> bool {
        self.records.capacity() > RECORDS_CAPACITY_MIN && self.live * 4 < self.records.capacity()
    }

    /// One step of compaction (see the module docs).
    pub fn compact_step(&mut self) -> CompactStep {
        let target = (2 * self.live).max(RECORDS_CAPACITY_MIN / 2);
        if self.records.len() <= target {
            let bytes = self.records.free_chunk(target);
            return CompactStep::FreedChunk { bytes };
        }
        let last = (self.records.len() - 1) as u32;
        if !self.records[last as usize].is_live() {
            self.unlink_free(last);
            self.records.pop();
            return CompactStep::Popped;
        }
        // More records than twice the live ones, the last live: a vacant one
        // exists below it.
        debug_assert_ne!(self.free_head, NIL);
        CompactStep::Move {
            from: last,
            to: self.free_head,
        }
    }

    /// Moves the last record, links and all, into the vacant slot `to` and
    /// pops the last slot; the caller rekeys its timer or repoints its
    /// pending entry. Its long name, if any, moves with it.
    pub fn move_last(&mut self, to: u32) {
        self.unlink_free(to);
        let record = self.records.pop().expect("a last record");
        debug_assert!(record.is_live());
        self.records[to as usize] = record;
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.records.capacity()
    }
}

impl TimerStore for Store {
    #[inline]
    fn links(&self, key: u32) -> TimerLinks {
        if key & WAITER_KEY_BIT != 0 {
            return self.waiters[(key & !WAITER_KEY_BIT) as usize].links;
        }
        let r = &self.records[key as usize];
        TimerLinks {
            deadline_ms: r.deadline_ms(),
            prev: r.prev,
            next: r.next,
            level: ((r.meta & META_LEVEL_MASK) >> META_LEVEL_SHIFT) as u8,
            slot: (r.meta & META_SLOT_MASK) as u8,
        }
    }

    #[inline]
    fn set_links(&mut self, key: u32, links: TimerLinks) {
        if key & WAITER_KEY_BIT != 0 {
            self.waiters[(key & !WAITER_KEY_BIT) as usize].links = links;
            return;
        }
        let r = &mut self.records[key as usize];
        r.set_deadline_ms(links.deadline_ms);
        r.prev = links.prev;
        r.next = links.next;
        r.meta = (r.meta & !(META_LEVEL_MASK | META_SLOT_MASK))
            | (links.level as u16) << META_LEVEL_SHIFT
            | links.slot as u16;
    }

    #[inline]
    fn set_next(&mut self, key: u32, next: u32) {
        if key & WAITER_KEY_BIT != 0 {
            self.waiters[(key & !WAITER_KEY_BIT) as usize].links.next = next;
        } else {
            self.records[key as usize].next = next;
        }
    }

    #[inline]
    fn set_prev(&mut self, key: u32, prev: u32) {
        if key & WAITER_KEY_BIT != 0 {
            self.waiters[(key & !WAITER_KEY_BIT) as usize].links.prev = prev;
        } else {
            self.records[key as usize].prev = prev;
        }
    }
}

pub fn waiter_key(waiter: u32) -> u32 {
    debug_assert!(waiter < WAITER_KEY_BIT);
    waiter | WAITER_KEY_BIT
}
