//! The lock table: a deterministic state machine.
//!
//! State changes only through the commands below, each taking `now_ms` (a
//! monotonic millisecond clock owned by the caller): [`LockTable::acquire`],
//! [`LockTable::release`], [`LockTable::release_by_owner`],
//! [`LockTable::extend`], [`LockTable::open_session`],
//! [`LockTable::close_session`] and [`LockTable::advance`] (expiry and wait
//! deadlines). The same commands in the same order always give the same
//! replies, events and tokens; nothing here reads a clock or touches a socket.
//!
//! Layout (see [`store`] for the byte layout of a held lock):
//! - `store`: held locks as 48-byte records, and queued ACQUIREs; a lock
//!   exists only while held.
//! - `index`: a hash table of record indexes, hashed by name with a randomly
//!   keyed SipHash (a client cannot choose names that collide; see the
//!   `siphash` module).
//! - `extras`: SESSION bindings and FIFO wait queues, for the locks that have
//!   them.
//! - `sessions`: one per connection; lists its SESSION holds and its one
//!   queued ACQUIRE (a connection's later requests wait behind it).
//! - `wheel`: lock expiries and wait deadlines, linked through the records.
//!
//! Owners are compared by a 64-bit keyed digest (SipHash-1-3 under a random
//! key drawn when the table is made) instead of being stored: it keeps every
//! record the same small size. Equal owners always match. Two different
//! owners would match only if their digests collided: a chance of 2^-64 per
//! comparison, which a client cannot raise, since it never learns the key.
//!
//! Replies that come later (a queued ACQUIRE granted or timed out) are pushed
//! to `events`, which the caller drains after each command.
//!
//! Memory follows the load back down: after a burst, every growable part
//! (records, waiters, the hash index, `extras`, `sessions`, `events`, the
//! long-name arena) gives back what it no longer needs, in bounded steps run
//! by [`LockTable::run_deferred`] (and `events` when cleared). Each shrinks
//! only when well under its capacity and above a small floor, to twice what
//! it holds, so a steady load never reallocates and a load that swings
//! reallocates at most once per halving or doubling (see [`store`]).

mod chunked;
pub mod effects;
mod names;
mod pending;
mod shards;
mod siphash;
mod status;
mod store;

use slab::Slab;

use crate::limits::{Limits, WAIT_MS_UNBOUNDED};
use crate::protocol::{Acquire, FLAG_SESSION, FLAG_WAIT_FOREVER, FLAGS_KNOWN, NotHeldReason};
use crate::wheel::{PollStep, WHEEL_HORIZON_MS, WheelCore};
use pending::Pending;
use shards::{Extras, NameIndex};
use siphash::SipKey;
use store::{CompactStep, LockExtra, NIL, Store, WAITER_KEY_BIT, Waiter, waiter_key};

/// SESSION holds that [`LockTable::close_session`] releases itself; the rest
/// are left to [`LockTable::run_deferred`]. Most connections hold a few, so
/// they are released at the close as before, while a close costs at most
/// this many releases (about 100 ns each).
pub const SESSION_CLOSE_RELEASES_MAX: usize = 64;

/// Steps an ACQUIRE of a new name may take, on a table at locks_max, to end
/// holds that ended without being freed yet (deferred SESSION releases, due
/// expiries) and so make room: about 0.1 ms at most.
const MAKE_ROOM_STEPS_MAX: usize = 1024;

/// What rehashing a hash-table shard counts for in
/// [`LockTable::run_deferred`]'s budget (about as much as 16 moves of a
/// record).
pub const MEMORY_FREE_STEPS: usize = 16;

/// Bytes of memory freed per step of [`LockTable::run_deferred`]'s budget:
/// returning pages costs the kernel about as much per 768 bytes as a move of
/// a record, so a 12 KiB chunk counts 16 steps and a 1.5 MiB one 2048 (one
/// per call at the server's budget).
const FREED_BYTES_PER_STEP: usize = 768;

fn free_steps(bytes: usize) -> usize {
    (bytes / FREED_BYTES_PER_STEP).max(1)
}

/// The deadline of a waiter that waits with no deadline (WAIT_FOREVER):
/// 2^62 ms (146 million years) after the clock's origin, a time the server
/// never reaches, so it never fires. Linked in the wheel like any deadline
/// (parked in its top level), the waiter is moved, cancelled and handed
/// the lock by the same code as every other.
const WAIT_FOREVER_DEADLINE_MS: u64 = 1 << 62;
const _: () = assert!(WAIT_FOREVER_DEADLINE_MS <= u64::MAX - 2 * WHEEL_HORIZON_MS);

/// Session slots kept however few sessions are open (about 3 KiB).
const SESSIONS_CAPACITY_MIN: usize = 64;
/// Event capacity kept after a clear (2 KiB).
const EVENTS_CAPACITY_MIN: usize = 64;

/// Identifies one session (connection) to the table. Carries a generation so
/// that an id kept after its session closed can never reach a reused slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionId {
    key: u32,
    generation: u32,
}

/// The immediate answer to a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `reentered`: the owner held the lock already (same token, TTL
    /// restarted), as opposed to a new hold.
    Granted {
        token: u64,
        ttl_ms: u32,
        reentered: bool,
    },
    Busy {
        remaining_ms: u32,
        waiters: u32,
    },
    /// The ACQUIRE waits in the lock's queue; its answer comes as an [`Event`].
    Queued,
    Released,
    Extended {
        ttl_ms: u32,
    },
    NotHeld(NotHeldReason),
    Rejected(ArgError),
}

/// A request field out of range. Each names the field and the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgError {
    NameEmpty,
    NameTooLong {
        len: usize,
        max: usize,
    },
    OwnerEmpty,
    OwnerTooLong {
        len: usize,
        max: usize,
    },
    TtlTooLarge {
        ttl_ms: u32,
        max: u32,
    },
    WaitTooLarge {
        wait_ms: u32,
        max: u32,
    },
    UnknownFlags {
        flags: u8,
    },
    /// WAIT_FOREVER with a nonzero `wait_ms`: which one was meant?
    WaitForeverWithWaitMs {
        wait_ms: u32,
    },
    /// WAIT_FOREVER on a server whose wait_ms_max bounds waits.
    WaitForeverBounded {
        max: u32,
    },
    /// The table holds locks_max locks; a new name cannot be added.
    LocksFull {
        max: usize,
    },
    /// The lock has waiters_per_lock_max ACQUIREs queued already.
    WaitersFull {
        max: usize,
    },
}

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ArgError::NameEmpty => write!(f, "lock name is empty; use 1 or more bytes"),
            ArgError::NameTooLong { len, max } => {
                write!(
                    f,
                    "lock name is {len} bytes, over name_len_max {max}; use a shorter name"
                )
            }
            ArgError::OwnerEmpty => write!(f, "owner is empty; use 1 or more bytes"),
            ArgError::OwnerTooLong { len, max } => {
                write!(
                    f,
                    "owner is {len} bytes, over owner_len_max {max}; use a shorter owner id"
                )
            }
            ArgError::TtlTooLarge { ttl_ms, max } => write!(
                f,
                "ttl_ms {ttl_ms} is over lock_ttl_ms_max {max}; use a shorter TTL and EXTEND it"
            ),
            ArgError::WaitTooLarge { wait_ms, max } => {
                write!(
                    f,
                    "wait_ms {wait_ms} is over wait_ms_max {max}; wait less and retry"
                )
            }
            ArgError::LocksFull { max } => write!(
                f,
                "the server holds locks_max {max} locks; release some, or raise --locks-max"
            ),
            ArgError::WaitersFull { max } => write!(
                f,
                "the lock has waiters_per_lock_max {max} ACQUIREs queued; retry later, or raise --waiters-per-lock-max"
            ),
            ArgError::UnknownFlags { flags } => {
                write!(
                    f,
                    "flags 0x{flags:02x} has unknown bits; known flags: 0x01 SESSION, 0x02 WAIT_FOREVER"
                )
            }
            ArgError::WaitForeverWithWaitMs { wait_ms } => write!(
                f,
                "flag WAIT_FOREVER with wait_ms {wait_ms}: a wait with no deadline takes wait_ms 0; send one or the other"
            ),
            ArgError::WaitForeverBounded { max } => write!(
                f,
                "flag WAIT_FOREVER refused: this server bounds waits to wait_ms_max {max} ms (its --wait-max-ms); wait at most that long"
            ),
        }
    }
}

/// A later answer to a queued ACQUIRE, for the session that sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub session: SessionId,
    /// The caller's tag given to [`LockTable::open_session`].
    pub tag: u64,
    pub kind: EventKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Granted { token: u64, ttl_ms: u32 },
    TimedOut { waited_ms: u32 },
}

struct Session {
    tag: u64,
    generation: u32,
    /// SESSION holds bound to it, listed from `locks_head`.
    holds: u32,
    locks_head: u32,
    waiter: u32,
    /// Set when the session closed with SESSION holds left to release (see
    /// [`LockTable::run_deferred`]); its slot stays reserved until they are.
    closed: Option<Closed>,
}

/// How a hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Expired,
    /// Released by its session's close.
    Released,
}

/// When and how a hold that expires at `expiry_ms` ended: released at its
/// session's close (`closed_at_ms`) if that came first.
fn ended_at(closed_at_ms: Option<u64>, expiry_ms: u64) -> (u64, Ended) {
    match closed_at_ms {
        Some(closed_at_ms) if closed_at_ms < expiry_ms => (closed_at_ms, Ended::Released),
        _ => (expiry_ms, Ended::Expired),
    }
}

/// A closed session's place in the table's list of deferred releases.
#[derive(Clone, Copy)]
struct Closed {
    at_ms: u64,
    prev: u32,
    next: u32,
}

/// Counters for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub grants: u64,
    pub releases: u64,
    pub expiries: u64,
    pub wait_timeouts: u64,
}

pub struct LockTable {
    limits: Limits,
    store: Store,
    index: NameIndex,
    name_key: SipKey,
    owner_key: SipKey,
    extras: Extras,
    sessions: Slab<Session>,
    session_generation: u32,
    /// Closed sessions whose SESSION holds are still to be released, oldest
    /// close first, linked through `Session::closed`.
    closed_head: u32,
    closed_tail: u32,
    /// SESSION holds of closed sessions whose release is still deferred.
    deferred_holds: usize,
    /// Sessions removed since `sessions` last shrank: slab keys cannot move,
    /// so a shrink (O(capacity)) only drops vacant slots at its end, and is
    /// tried again only after this reaches a quarter of the capacity
    /// (amortized O(1) per session).
    sessions_removed: usize,
    wheel: WheelCore,
    /// Hold expiries set this millisecond, not linked in the wheel yet.
    pending: Pending,
    next_token: u64,
    events: Vec<Event>,
    /// Changes to holds, encoded, while recording (see [`effects`]).
    effects: Option<Vec<u8>>,
    stats: Stats,
}

impl LockTable {
    /// `token_seed` is the first fencing token to hand out (0 is raised to 1:
    /// tokens are never 0); the server seeds it from the wall clock so tokens
    /// keep increasing across restarts.
    pub fn new(limits: Limits, token_seed: u64, now_ms: u64) -> LockTable {
        LockTable {
            limits,
            store: Store::default(),
            index: NameIndex::default(),
            name_key: SipKey::random(),
            owner_key: SipKey::random(),
            extras: Extras::default(),
            sessions: Slab::new(),
            session_generation: 0,
            closed_head: NIL,
            closed_tail: NIL,
            deferred_holds: 0,
            sessions_removed: 0,
            wheel: WheelCore::new(now_ms),
            pending: Pending::default(),
            next_token: token_seed.max(1),
            events: Vec::new(),
            effects: None,
            stats: Stats::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Locks currently held. The SESSION holds of closed sessions whose
    /// release is deferred (see [`LockTable::run_deferred`]) are not
    /// counted: no command sees them held. Holds whose expiry is due but not
    /// yet fired (see [`LockTable::advance_bounded`]) still are.
    pub fn len(&self) -> usize {
        self.store.len() - self.deferred_holds
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// ACQUIREs currently queued.
    pub fn waiter_count(&self) -> usize {
        self.store.waiters.len()
    }

    /// The token the next grant will carry.
    pub fn next_token(&self) -> u64 {
        self.next_token
    }

    /// The earliest expiry or wait deadline, for the caller's poll timeout:
    /// never later than it, and exact unless the timer that was earliest
    /// has been cancelled since (see [`WheelCore::next_deadline`]).
    pub fn next_deadline(&self) -> Option<u64> {
        match (self.wheel.next_deadline(), self.pending.earliest_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Later answers produced by the last commands; the caller must drain
    /// them (see [`LockTable::clear_events`]) before the next command.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn clear_events(&mut self) {
        let len = self.events.len();
        self.events.clear();
        if self.events.capacity() > EVENTS_CAPACITY_MIN && len * 4 < self.events.capacity() {
            self.events.shrink_to((2 * len).max(EVENTS_CAPACITY_MIN));
        }
    }

    pub fn open_session(&mut self, tag: u64) -> SessionId {
        self.session_generation = self.session_generation.wrapping_add(1);
        let generation = self.session_generation;
        let key = self.sessions.insert(Session {
            tag,
            generation,
            holds: 0,
            locks_head: NIL,
            waiter: NIL,
            closed: None,
        });
        SessionId {
            key: key as u32,
            generation,
        }
    }

    /// Drops the session's queued ACQUIRE and ends the session. Up to
    /// [`SESSION_CLOSE_RELEASES_MAX`] of its SESSION holds are released at
    /// once, each handed to its next waiter; the rest later, a bounded
    /// number at a time, by [`LockTable::run_deferred`], so that closing a
    /// connection with a million holds does not stall the caller. Until then
    /// no command sees them held: a command that touches one releases it
    /// first, and a timer of one (its expiry, a waiter's deadline) releases
    /// it when it fires.
    pub fn close_session(&mut self, id: SessionId, now_ms: u64) {
        let session = self.session_key(id);
        let waiter = self.sessions[session as usize].waiter;
        if waiter != NIL {
            self.remove_waiter(waiter);
        }
        if self.sessions[session as usize].locks_head == NIL {
            self.remove_session(session);
            return;
        }
        // The slot stays reserved (and the id invalid) until the holds are
        // released, so a new session can never inherit them.
        let tail = self.closed_tail;
        self.sessions[session as usize].closed = Some(Closed {
            at_ms: now_ms,
            prev: tail,
            next: NIL,
        });
        match tail {
            NIL => self.closed_head = session,
            tail => self.closed_mut(tail).next = session,
        }
        self.closed_tail = session;
        self.deferred_holds += self.sessions[session as usize].holds as usize;
        for _ in 0..SESSION_CLOSE_RELEASES_MAX {
            let lock = self.sessions[session as usize].locks_head;
            let last = self.extra(lock).session_next == NIL;
            // Releasing the last hold retires the session.
            self.settle(lock, now_ms, None);
            if last {
                return;
            }
        }
    }

    /// Whether closed sessions still have SESSION holds to release, or
    /// memory is to be given back: the caller should call
    /// [`LockTable::run_deferred`] soon (and not sleep). A few compares.
    pub fn has_deferred_work(&self) -> bool {
        self.has_deferred_releases() || self.has_memory_to_return()
    }

    /// Does up to `budget` steps of deferred work and returns how many it
    /// did (it fires no timer: see [`LockTable::advance_bounded`]). First it
    /// releases SESSION holds of closed sessions, oldest close first, handing
    /// each to its next waiter (answers go to [`LockTable::events`]); a
    /// waiter is eligible if its deadline comes after the close, as if the
    /// hold had been released at the close, and its grant counts from
    /// `now_ms`. Then, with the budget left, it gives memory back: one step
    /// moves one record or waiter, or shrinks one structure (the hash index
    /// and `extras` by one rehash of at most an eighth of one shard's
    /// capacity). Giving memory back changes no reply, token or event.
    pub fn run_deferred(&mut self, now_ms: u64, budget: usize) -> usize {
        let mut done = 0;
        while done < budget && self.closed_head != NIL {
            let lock = self.sessions[self.closed_head as usize].locks_head;
            debug_assert_ne!(lock, NIL, "a closed session left with no holds");
            self.settle(lock, now_ms, None);
            done += 1;
        }
        while done < budget && self.has_memory_to_return() {
            done += self.return_memory_step();
        }
        done.min(budget)
    }

    /// Closed sessions still have SESSION holds to release.
    fn has_deferred_releases(&self) -> bool {
        self.closed_head != NIL
    }

    fn has_memory_to_return(&self) -> bool {
        self.store.waiters.is_sparse()
            || self.store.is_sparse()
            || self.store.has_spare_name_chunks()
            || self.index.has_sparse_shard()
            || self.extras.has_sparse_shard()
            || self.sessions_are_sparse()
    }

    fn sessions_are_sparse(&self) -> bool {
        let capacity = self.sessions.capacity();
        capacity > SESSIONS_CAPACITY_MIN
            && self.sessions.len() * 4 < capacity
            && self.sessions_removed * 4 >= capacity
    }

    /// One bounded step of giving memory back (see [`store`]); returns its
    /// cost in steps: one to move or drop a slot, [`MEMORY_FREE_STEPS`] to
    /// free a chunk or rehash a shard.
    fn return_memory_step(&mut self) -> usize {
        if self.store.waiters.is_sparse() {
            if let Some((from, to)) = self.store.waiters.compact_step() {
                self.move_last_waiter(from, to);
            }
            1
        } else if self.store.is_sparse() {
            match self.store.compact_step() {
                CompactStep::Move { from, to } => self.move_last_record(from, to),
                CompactStep::Popped => {}
                CompactStep::FreedChunk { bytes } => return free_steps(bytes),
            }
            1
        } else if self.store.has_spare_name_chunks() {
            free_steps(self.store.free_name_chunk())
        } else if self.index.has_sparse_shard() {
            self.index.shrink_one();
            MEMORY_FREE_STEPS
        } else if self.extras.has_sparse_shard() {
            self.extras.shrink_one();
            MEMORY_FREE_STEPS
        } else {
            debug_assert!(self.sessions_are_sparse());
            self.sessions.shrink_to_fit();
            self.sessions_removed = 0;
            MEMORY_FREE_STEPS
        }
    }

    /// Moves the last waiter to the vacant slot `to`. Its timer keeps its
    /// place in the wheel under the new key, so timers of one millisecond
    /// keep their order (it decides which waiter's grant gets the lower
    /// token).
    fn move_last_waiter(&mut self, from: u32, to: u32) {
        let w = self.store.waiters.move_last(to);
        self.wheel
            .rekey(&mut self.store, waiter_key(from), waiter_key(to));
        match w.queue_prev {
            NIL => self.update_extra(w.lock, |e| e.waiters_head = to),
            prev => self.store.waiters[prev as usize].queue_next = to,
        }
        match w.queue_next {
            NIL => self.update_extra(w.lock, |e| e.waiters_tail = to),
            next => self.store.waiters[next as usize].queue_prev = to,
        }
        self.sessions[w.session as usize].waiter = to;
    }

    /// Moves the last lock record to the vacant slot `to` and points every
    /// reference at it: the hash index, its timer (rekeyed in place, as for
    /// a waiter, or its pending entry), its `extras` entry, its neighbours
    /// on its session's list and its waiters.
    fn move_last_record(&mut self, from: u32, to: u32) {
        let pending = self.store.pending_pos(from);
        self.store.move_last(to);
        match pending {
            Some(pos) => self.pending.repoint(pos, to),
            None => self.wheel.rekey(&mut self.store, from, to),
        }
        let hash = self.name_key.hash(self.store.name(to));
        let indexed = self.index.repoint(hash, from, to);
        assert!(indexed, "moved lock {from} missing from the index");
        if !self.store.record(to).has_extra() {
            return;
        }
        let extra = self.extras.remove(from).expect("a flagged extra");
        self.extras.insert(to, extra);
        if extra.session != NIL {
            match extra.session_prev {
                NIL => self.sessions[extra.session as usize].locks_head = to,
                prev => self.update_extra(prev, |e| e.session_next = to),
            }
            if extra.session_next != NIL {
                self.update_extra(extra.session_next, |e| e.session_prev = to);
            }
        }
        let mut waiter = extra.waiters_head;
        while waiter != NIL {
            let w = &mut self.store.waiters[waiter as usize];
            w.lock = to;
            waiter = w.queue_next;
        }
    }

    fn remove_session(&mut self, session: u32) {
        self.sessions.remove(session as usize);
        self.sessions_removed += 1;
    }

    /// Whether the session has an ACQUIRE queued.
    pub fn is_waiting(&self, id: SessionId) -> bool {
        self.sessions[self.session_key(id) as usize].waiter != NIL
    }

    pub fn acquire(&mut self, id: SessionId, req: &Acquire<'_>, now_ms: u64) -> Outcome {
        let session = self.session_key(id);
        if let Err(e) = self.check_acquire(req) {
            return Outcome::Rejected(e);
        }
        assert_eq!(
            self.sessions[session as usize].waiter, NIL,
            "a session sends nothing while its ACQUIRE waits"
        );
        let ttl_ms = self.effective_ttl(req.ttl_ms);
        let session_bind = if req.flags & FLAG_SESSION != 0 {
            session
        } else {
            NIL
        };
        let (hash, owner) = self.name_key.hash_pair(req.name, &self.owner_key, req.owner);
        let Some(lock) = self.find_settled(hash, req.name, now_ms) else {
            self.make_room(now_ms);
            if self.store.len() >= self.limits.locks_max {
                return Outcome::Rejected(ArgError::LocksFull {
                    max: self.limits.locks_max,
                });
            }
            let token = self.take_token();
            let lock = self.insert_lock(hash, req.name, owner, token, ttl_ms, now_ms);
            if session_bind != NIL {
                // A new lock is bound to no session yet.
                self.bind_session(lock, session_bind);
            }
            return Outcome::Granted {
                token,
                ttl_ms,
                reentered: false,
            };
        };
        let record = self.store.record(lock);
        if record.owner == owner {
            // Same owner again: a retry after a lost reply. Keep the token,
            // reset the TTL, take the new request's session binding.
            let token = record.token;
            self.set_expiry(lock, ttl_ms, now_ms);
            self.bind_session(lock, session_bind);
            self.stats.grants += 1;
            return Outcome::Granted {
                token,
                ttl_ms,
                reentered: true,
            };
        }
        let forever = req.flags & FLAG_WAIT_FOREVER != 0;
        if req.wait_ms == 0 && !forever {
            return Outcome::Busy {
                remaining_ms: remaining_ms(record.deadline_ms(), now_ms),
                waiters: self.extra(lock).waiter_count,
            };
        }
        let max = self.limits.waiters_per_lock_max;
        if self.extra(lock).waiter_count as usize >= max {
            return Outcome::Rejected(ArgError::WaitersFull { max });
        }
        let waiter = Waiter::new(lock, session, owner, ttl_ms, req.flags, now_ms);
        let deadline_ms = if forever {
            WAIT_FOREVER_DEADLINE_MS
        } else {
            wait_deadline_ms(now_ms, req.wait_ms)
        };
        self.enqueue(waiter, deadline_ms);
        Outcome::Queued
    }

    pub fn release(&mut self, name: &[u8], owner: &[u8], token: u64, now_ms: u64) -> Outcome {
        let (lock, hash) = match self.find_held(name, owner, Some(token), now_ms) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        self.stats.releases += 1;
        self.free_lock(lock, now_ms, now_ms, Some(hash));
        Outcome::Released
    }

    /// RELEASE for the original protocol, which has no tokens: the hold is
    /// released if `owner` holds it, whatever its token.
    pub fn release_by_owner(&mut self, name: &[u8], owner: &[u8], now_ms: u64) -> Outcome {
        let (lock, hash) = match self.find_held(name, owner, None, now_ms) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        self.stats.releases += 1;
        self.free_lock(lock, now_ms, now_ms, Some(hash));
        Outcome::Released
    }

    pub fn extend(
        &mut self,
        name: &[u8],
        owner: &[u8],
        token: u64,
        ttl_ms: u32,
        now_ms: u64,
    ) -> Outcome {
        if ttl_ms > self.limits.lock_ttl_ms_max {
            let max = self.limits.lock_ttl_ms_max;
            return Outcome::Rejected(ArgError::TtlTooLarge { ttl_ms, max });
        }
        let (lock, _) = match self.find_held(name, owner, Some(token), now_ms) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        let ttl_ms = self.effective_ttl(ttl_ms);
        self.set_expiry(lock, ttl_ms, now_ms);
        Outcome::Extended { ttl_ms }
    }

    #[cfg(any(test, feature = "internals"))]
    /// Fires every expiry and wait deadline due at or before `now_ms`, in
    /// deadline order. Each fires at its own deadline: a waiter is granted a
    /// lock that expired before the waiter's deadline even if this call
    /// comes late. Unbounded: a server calls [`LockTable::advance_bounded`].
    pub fn advance(&mut self, now_ms: u64) {
        while self.advance_bounded(now_ms, usize::MAX) == usize::MAX {}
    }

    /// [`LockTable::advance`] doing at most `budget` steps (a timer fired,
    /// or one placed again by the wheel's cascade), and returning how many
    /// it did: `budget` means there may be more to do at `now_ms`. Commands
    /// never fire timers other than their own lock's, so a caller that runs
    /// this once per turn with a bounded budget keeps every turn bounded,
    /// whatever expires at once: a lock whose expiry is due but not fired
    /// yet is freed by the first command that touches it (see
    /// [`LockTable::settle`]), and a waiter whose deadline passed is
    /// answered by a later call, in deadline order. When `now_ms` is past
    /// the wheel's elapsed time, the pending expiries (see [`pending`]) are
    /// linked first, outside the budget: at most [`pending::PENDING_EXPIRIES_MAX`].
    pub fn advance_bounded(&mut self, now_ms: u64, budget: usize) -> usize {
        if now_ms > self.wheel.elapsed_ms() {
            // Outside the budget: at most PENDING_EXPIRIES_MAX links, work
            // the requests that set them would have done at once.
            self.link_all_pending();
        }
        let mut left = budget;
        loop {
            let (at_ms, key) = match self.wheel.poll_bounded(&mut self.store, now_ms, &mut left) {
                PollStep::Fired(at_ms, key) => (at_ms, key),
                PollStep::Idle => return budget - left,
                PollStep::Budget => return budget,
            };
            if key & WAITER_KEY_BIT != 0 {
                self.fire_wait_deadline(key, at_ms, now_ms);
            } else {
                // Already unlinked by poll: free_unlinked_lock must not unlink.
                let (at_ms, ended) = ended_at(self.deferred_release(key), at_ms);
                self.count_end(ended);
                self.free_unlinked_lock(key, at_ms, now_ms, None);
            }
        }
    }

    /// Links every pending expiry (see [`pending`]), in the order they were
    /// set: before the wheel moves on, and before a timer is linked
    /// directly, so that equal deadlines keep that order. At most
    /// [`pending::PENDING_EXPIRIES_MAX`] entries, live or stale.
    fn link_all_pending(&mut self) {
        if !self.pending.any() {
            return;
        }
        let keys = self.pending.take_keys();
        for (pos, &lock) in keys.iter().enumerate() {
            if let Some(deadline_ms) = self.store.take_pending_at(lock, pos as u32) {
                self.wheel.link(&mut self.store, lock, deadline_ms);
            }
        }
        self.pending.give_back_empty(keys);
    }

    /// Sets a hold's expiry, which is not linked: pending if it is after
    /// elapsed (see [`pending`]), else linked at once.
    fn arm(&mut self, lock: u32, deadline_ms: u64) {
        if deadline_ms <= self.wheel.elapsed_ms() {
            // Due at the next poll: no pending deadline can equal it.
            self.wheel.link(&mut self.store, lock, deadline_ms);
            return;
        }
        if !self.pending.has_room() {
            self.link_all_pending();
        }
        let pos = self.pending.push(lock, deadline_ms);
        self.store.set_pending(lock, deadline_ms, pos);
    }

    /// Clears a hold's expiry, pending or linked.
    fn disarm(&mut self, lock: u32) {
        if self.store.take_pending(lock).is_some() {
            self.pending.forget();
        } else {
            self.wheel.unlink(&mut self.store, lock);
        }
    }

    /// A waiter's deadline fired (its timer unlinked by poll).
    fn fire_wait_deadline(&mut self, key: u32, at_ms: u64, now_ms: u64) {
        let lock = self.store.waiters[(key & !WAITER_KEY_BIT) as usize].lock;
        if self.deferred_release(lock).is_some() {
            // The lock is free since its session closed, maybe before this
            // deadline: hand it on first. The waiter, linked again at its
            // deadline, is granted now if it is the head and its deadline
            // came after the close, or times out on the next poll.
            self.wheel.link(&mut self.store, key, at_ms);
            self.settle(lock, now_ms, None);
            return;
        }
        let w = self.remove_unlinked_waiter(key & !WAITER_KEY_BIT);
        self.report_timeout(&w, at_ms);
    }

    /// Validates an ACQUIRE's fields against the limits.
    fn check_acquire(&self, req: &Acquire<'_>) -> Result<(), ArgError> {
        self.check_name_owner(req.name, req.owner)?;
        let limits = &self.limits;
        if req.ttl_ms > limits.lock_ttl_ms_max {
            return Err(ArgError::TtlTooLarge {
                ttl_ms: req.ttl_ms,
                max: limits.lock_ttl_ms_max,
            });
        }
        if req.wait_ms > limits.wait_ms_max {
            return Err(ArgError::WaitTooLarge {
                wait_ms: req.wait_ms,
                max: limits.wait_ms_max,
            });
        }
        if req.flags & !FLAGS_KNOWN != 0 {
            return Err(ArgError::UnknownFlags { flags: req.flags });
        }
        if req.flags & FLAG_WAIT_FOREVER != 0 {
            if req.wait_ms != 0 {
                return Err(ArgError::WaitForeverWithWaitMs {
                    wait_ms: req.wait_ms,
                });
            }
            if limits.wait_ms_max != WAIT_MS_UNBOUNDED {
                return Err(ArgError::WaitForeverBounded {
                    max: limits.wait_ms_max,
                });
            }
        }
        Ok(())
    }

    /// Validates a name and an owner against the limits (RELEASE and EXTEND
    /// with bad fields cannot match a hold, but still deserve a clear error).
    pub fn check_name_owner(&self, name: &[u8], owner: &[u8]) -> Result<(), ArgError> {
        let limits = &self.limits;
        if name.is_empty() {
            return Err(ArgError::NameEmpty);
        }
        if name.len() > limits.name_len_max {
            return Err(ArgError::NameTooLong {
                len: name.len(),
                max: limits.name_len_max,
            });
        }
        if owner.is_empty() {
            return Err(ArgError::OwnerEmpty);
        }
        if owner.len() > limits.owner_len_max {
            return Err(ArgError::OwnerTooLong {
                len: owner.len(),
                max: limits.owner_len_max,
            });
        }
        Ok(())
    }

    fn effective_ttl(&self, ttl_ms: u32) -> u32 {
        if ttl_ms == 0 {
            self.limits.lock_ttl_ms_default
        } else {
            ttl_ms
        }
    }

    fn session_key(&self, id: SessionId) -> u32 {
        let session = self.sessions.get(id.key as usize);
        assert!(
            session.is_some_and(|s| s.generation == id.generation && s.closed.is_none()),
            "stale session id {id:?}"
        );
        id.key
    }

    fn find_hashed(&self, hash: u64, name: &[u8]) -> Option<u32> {
        self.index.find(hash, |i| self.store.name(i) == name)
    }

    /// The lock held by `owner` (under `token`, if given) and its name's
    /// hash, or the NOT_HELD reason.
    fn find_held(
        &mut self,
        name: &[u8],
        owner: &[u8],
        token: Option<u64>,
        now_ms: u64,
    ) -> Result<(u32, u64), Outcome> {
        // Both hashes at once (see `hash_pair`): the owner's is needed
        // whenever the name is held, which is nearly always.
        let (hash, owner) = self.name_key.hash_pair(name, &self.owner_key, owner);
        let Some(lock) = self.find_settled(hash, name, now_ms) else {
            return Err(Outcome::NotHeld(NotHeldReason::Free));
        };
        let record = self.store.record(lock);
        if record.owner != owner {
            return Err(Outcome::NotHeld(NotHeldReason::OtherOwner));
        }
        if token.is_some_and(|token| token != record.token) {
            return Err(Outcome::NotHeld(NotHeldReason::TokenMismatch));
        }
        Ok((lock, hash))
    }

    /// The lock named `name`, if held, after ending its hold first if it
    /// ended without its record being freed yet (see [`LockTable::settle`]):
    /// commands never see such a hold held.
    fn find_settled(&mut self, hash: u64, name: &[u8], now_ms: u64) -> Option<u32> {
        let lock = self.find_hashed(hash, name)?;
        if !self.settle(lock, now_ms, Some(hash)) {
            return Some(lock);
        }
        // Deleted, or handed to a waiter, whose hold has not ended.
        self.find_hashed(hash, name)
    }

    /// Ends the hold on `lock` if it ended by `now_ms` though its record is
    /// still held: its expiry is due but not fired yet (timers fire a
    /// bounded number at a time), or its session closed and the release is
    /// deferred; whichever came first. The lock goes to the first waiter
    /// eligible at that time, granted at `now_ms`, or is deleted. Returns
    /// whether it did. `hash` is the name's hash when the caller has it.
    fn settle(&mut self, lock: u32, now_ms: u64, hash: Option<u64>) -> bool {
        let deadline_ms = self.store.record(lock).deadline_ms();
        let closed_at_ms = self.deferred_release(lock);
        if deadline_ms > now_ms && closed_at_ms.is_none() {
            return false;
        }
        let expiry_ms = if deadline_ms <= now_ms {
            deadline_ms
        } else {
            u64::MAX
        };
        let (at_ms, ended) = ended_at(closed_at_ms, expiry_ms);
        self.count_end(ended);
        self.free_lock(lock, at_ms, now_ms, hash);
        true
    }

    fn count_end(&mut self, ended: Ended) {
        match ended {
            Ended::Expired => self.stats.expiries += 1,
            Ended::Released => self.stats.releases += 1,
        }
    }

    /// A new name needs room under locks_max; holds that ended (deferred
    /// releases, due expiries) do not count against it, so end them until
    /// there is room, at most [`MAKE_ROOM_STEPS_MAX`] steps: each one frees
    /// a lock or hands it to a waiter.
    fn make_room(&mut self, now_ms: u64) {
        for _ in 0..MAKE_ROOM_STEPS_MAX {
            if self.store.len() < self.limits.locks_max {
                return;
            }
            if self.closed_head != NIL {
                self.run_deferred(now_ms, 1);
            } else if self.advance_bounded(now_ms, 1) == 0 {
                return;
            }
        }
    }

    /// When `lock` is a SESSION hold of a closed session, its release still
    /// deferred: the time that session closed.
    fn deferred_release(&self, lock: u32) -> Option<u64> {
        // The common case (no closed session waits) costs one compare.
        if self.closed_head == NIL || !self.store.record(lock).has_extra() {
            return None;
        }
        let session = self.extras.get(lock).expect("a flagged extra").session;
        if session == NIL {
            return None;
        }
        self.sessions[session as usize].closed.map(|c| c.at_ms)
    }

    fn closed(&self, session: u32) -> &Closed {
        self.sessions[session as usize]
            .closed
            .as_ref()
            .expect("session on the closed list")
    }

    fn closed_mut(&mut self, session: u32) -> &mut Closed {
        self.sessions[session as usize]
            .closed
            .as_mut()
            .expect("session on the closed list")
    }

    /// A closed session's last hold is gone: frees its slot.
    fn retire_closed(&mut self, session: u32) {
        let closed = *self.closed(session);
        match closed.prev {
            NIL => self.closed_head = closed.next,
            prev => self.closed_mut(prev).next = closed.next,
        }
        match closed.next {
            NIL => self.closed_tail = closed.prev,
            next => self.closed_mut(next).prev = closed.prev,
        }
        self.remove_session(session);
    }

    /// Creates a held lock, links its expiry and indexes it.
    #[inline]
    fn insert_lock(
        &mut self,
        hash: u64,
        name: &[u8],
        owner: u64,
        token: u64,
        ttl_ms: u32,
        now_ms: u64,
    ) -> u32 {
        let lock = self.store.insert(name, owner, token);
        self.arm(lock, expiry_ms(now_ms, ttl_ms));
        self.index.insert(hash, lock);
        self.note_hold(lock, ttl_ms);
        lock
    }

    /// The next fencing token; every grant takes one.
    fn take_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.stats.grants += 1;
        token
    }

    fn set_expiry(&mut self, lock: u32, ttl_ms: u32, now_ms: u64) {
        self.disarm(lock);
        self.arm(lock, expiry_ms(now_ms, ttl_ms));
        self.note_hold(lock, ttl_ms);
    }

    /// The lock's side data, or the empty one.
    fn extra(&self, lock: u32) -> LockExtra {
        if self.store.record(lock).has_extra() {
            *self.extras.get(lock).expect("a flagged extra")
        } else {
            LockExtra::NONE
        }
    }

    /// Stores the lock's side data, dropping the entry when it is empty.
    fn set_extra(&mut self, lock: u32, extra: LockExtra) {
        let has = !extra.is_none();
        self.store.record_mut(lock).set_has_extra(has);
        if has {
            self.extras.insert(lock, extra);
        } else {
            self.extras.remove(lock);
        }
    }

    fn update_extra(&mut self, lock: u32, f: impl FnOnce(&mut LockExtra)) {
        let mut extra = self.extra(lock);
        f(&mut extra);
        self.set_extra(lock, extra);
    }

    /// Moves the lock onto `session`'s list of SESSION holds (NIL: none).
    fn bind_session(&mut self, lock: u32, session: u32) {
        if self.extra(lock).session == session {
            return;
        }
        self.unbind_session(lock);
        if session == NIL {
            return;
        }
        let head = self.sessions[session as usize].locks_head;
        if head != NIL {
            self.update_extra(head, |e| e.session_prev = lock);
        }
        self.update_extra(lock, |e| {
            e.session = session;
            e.session_prev = NIL;
            e.session_next = head;
        });
        let s = &mut self.sessions[session as usize];
        debug_assert!(s.closed.is_none(), "binding to a closed session");
        s.locks_head = lock;
        s.holds += 1;
    }

    fn unbind_session(&mut self, lock: u32) {
        let extra = self.extra(lock);
        if extra.session == NIL {
            return;
        }
        let (prev, next) = (extra.session_prev, extra.session_next);
        let session = &mut self.sessions[extra.session as usize];
        session.holds -= 1;
        if session.closed.is_some() {
            self.deferred_holds -= 1;
        }
        if prev == NIL {
            let session = &mut self.sessions[extra.session as usize];
            session.locks_head = next;
            if next == NIL && session.closed.is_some() {
                self.retire_closed(extra.session);
            }
        } else {
            self.update_extra(prev, |e| e.session_next = next);
        }
        if next != NIL {
            self.update_extra(next, |e| e.session_prev = prev);
        }
        self.update_extra(lock, |e| {
            e.session = NIL;
            e.session_prev = NIL;
            e.session_next = NIL;
        });
    }

    /// The holder is gone (release or session close at `at_ms`): unlinks its
    /// expiry, then hands the lock on (see `free_unlinked_lock`). `hash` is
    /// the name's hash when the caller has it.
    fn free_lock(&mut self, lock: u32, at_ms: u64, now_ms: u64, hash: Option<u64>) {
        self.disarm(lock);
        self.free_unlinked_lock(lock, at_ms, now_ms, hash);
    }

    /// Grants the first waiter whose deadline is after `at_ms`, times out the
    /// ones whose deadline passed, or deletes the lock if nobody waits. The
    /// lock's expiry is not linked.
    fn free_unlinked_lock(&mut self, lock: u32, at_ms: u64, now_ms: u64, hash: Option<u64>) {
        if !self.store.record(lock).has_extra() {
            // Bound to no session, and nobody waits: the common case, in one
            // look at the record.
            self.delete_lock(lock, hash);
            return;
        }
        self.unbind_session(lock);
        loop {
            let waiter = self.extra(lock).waiters_head;
            if waiter == NIL {
                self.delete_lock(lock, hash);
                return;
            }
            let deadline_ms = self.store.waiters[waiter as usize].deadline_ms();
            if at_ms < deadline_ms {
                self.grant_waiter(lock, waiter, now_ms);
                return;
            }
            self.time_out_waiter(waiter, deadline_ms);
        }
    }

    fn grant_waiter(&mut self, lock: u32, waiter: u32, now_ms: u64) {
        let w = self.remove_waiter(waiter);
        let token = self.take_token();
        let record = self.store.record_mut(lock);
        record.owner = w.owner;
        record.token = token;
        self.arm(lock, expiry_ms(now_ms, w.ttl_ms));
        self.note_hold(lock, w.ttl_ms);
        let session = if w.flags & FLAG_SESSION != 0 {
            w.session
        } else {
            NIL
        };
        self.bind_session(lock, session);
        self.push_event(
            w.session,
            EventKind::Granted {
                token,
                ttl_ms: w.ttl_ms,
            },
        );
    }

    fn time_out_waiter(&mut self, waiter: u32, at_ms: u64) {
        let w = self.remove_waiter(waiter);
        self.report_timeout(&w, at_ms);
    }

    fn report_timeout(&mut self, w: &Waiter, at_ms: u64) {
        self.stats.wait_timeouts += 1;
        // `at_ms` is the deadline: the wait asked for, plus the rounding
        // millisecond that is not the client's.
        let waited_ms = clamp_u32(at_ms.saturating_sub(w.enqueued_at_ms + EXPIRY_ROUNDING_MS));
        self.push_event(w.session, EventKind::TimedOut { waited_ms });
    }

    fn push_event(&mut self, session: u32, kind: EventKind) {
        let s = &self.sessions[session as usize];
        let id = SessionId {
            key: session,
            generation: s.generation,
        };
        self.events.push(Event {
            session: id,
            tag: s.tag,
            kind,
        });
    }

    fn delete_lock(&mut self, lock: u32, hash: Option<u64>) {
        debug_assert!(self.extra(lock).is_none());
        let hash = hash.unwrap_or_else(|| self.name_key.hash(self.store.name(lock)));
        let indexed = self.index.remove(hash, lock);
        assert!(indexed, "lock {lock} missing from the index");
        self.note_free(lock);
        self.store.remove(lock);
    }

    /// Appends a waiter to its lock's queue and links its deadline.
    fn enqueue(&mut self, mut waiter: Waiter, deadline_ms: u64) {
        let (lock, session) = (waiter.lock, waiter.session);
        let tail = self.extra(lock).waiters_tail;
        waiter.queue_prev = tail;
        let index = self.store.waiters.insert(waiter) as u32;
        assert!(index < WAITER_KEY_BIT, "waiter slots exhausted");
        // Behind every expiry set before it (see [`pending`]).
        self.link_all_pending();
        self.wheel
            .link(&mut self.store, waiter_key(index), deadline_ms);
        if tail != NIL {
            self.store.waiters[tail as usize].queue_next = index;
        }
        self.update_extra(lock, |e| {
            if tail == NIL {
                e.waiters_head = index;
            }
            e.waiters_tail = index;
            e.waiter_count += 1;
        });
        self.sessions[session as usize].waiter = index;
    }

    /// Unlinks a waiter from its lock's queue, its session and the wheel,
    /// and returns it.
    fn remove_waiter(&mut self, waiter: u32) -> Waiter {
        self.wheel.unlink(&mut self.store, waiter_key(waiter));
        self.remove_unlinked_waiter(waiter)
    }

    fn remove_unlinked_waiter(&mut self, waiter: u32) -> Waiter {
        let w = self.store.waiters.remove(waiter as usize);
        if w.queue_prev != NIL {
            self.store.waiters[w.queue_prev as usize].queue_next = w.queue_next;
        }
        if w.queue_next != NIL {
            self.store.waiters[w.queue_next as usize].queue_prev = w.queue_prev;
        }
        self.update_extra(w.lock, |e| {
            if w.queue_prev == NIL {
                e.waiters_head = w.queue_next;
            }
            if w.queue_next == NIL {
                e.waiters_tail = w.queue_prev;
            }
            e.waiter_count -= 1;
        });
        self.sessions[w.session as usize].waiter = NIL;
        w
    }

    #[cfg(any(test, feature = "internals"))]
    /// Checks every structural invariant. For tests; O(locks + waiters).
    pub fn invariants(&self) {
        self.store.invariants();
        assert_eq!(self.index.len(), self.store.len());
        let linked = self.wheel.invariants(&self.store);
        let pending = self.pending.invariants(&self.store);
        assert_eq!(
            linked + pending,
            self.store.len() + self.store.waiters.len(),
            "one timer each, linked or pending"
        );
        let mut waiters_seen = 0;
        let mut extras_seen = 0;
        for lock in self.store.live_locks() {
            let record = self.store.record(lock);
            assert_eq!(
                self.find_hashed(
                    self.name_key.hash(self.store.name(lock)),
                    self.store.name(lock)
                ),
                Some(lock)
            );
            assert!(record.token < self.next_token);
            let extra = self.extra(lock);
            if record.has_extra() {
                extras_seen += 1;
                assert!(!extra.is_none(), "empty extra kept for lock {lock}");
            }
            waiters_seen += self.queue_invariants(lock, &extra);
            if extra.session != NIL {
                assert!(self.sessions.contains(extra.session as usize));
            }
        }
        assert_eq!(extras_seen, self.extras.len());
        self.index
            .invariants(|i| self.name_key.hash(self.store.name(i)));
        self.extras.invariants();
        assert_eq!(waiters_seen, self.store.waiters.len());
        self.closed_invariants();
        let mut deferred = 0;
        for (s, session) in &self.sessions {
            let (mut lock, mut prev, mut holds) = (session.locks_head, NIL, 0);
            while lock != NIL {
                let extra = self.extra(lock);
                assert_eq!(extra.session, s as u32);
                assert_eq!(extra.session_prev, prev);
                (prev, lock, holds) = (lock, extra.session_next, holds + 1);
            }
            assert_eq!(session.holds, holds, "session {s}'s hold count");
            if session.closed.is_some() {
                deferred += holds as usize;
            }
        }
        assert_eq!(self.deferred_holds, deferred, "deferred holds");
    }

    #[cfg(any(test, feature = "internals"))]
    /// The closed list holds exactly the closed sessions, each with holds
    /// left and no waiter, in close order.
    fn closed_invariants(&self) {
        let (mut count, mut prev, mut s, mut at_ms) = (0, NIL, self.closed_head, 0);
        while s != NIL {
            let session = &self.sessions[s as usize];
            let closed = self.closed(s);
            assert_eq!(closed.prev, prev);
            assert!(closed.at_ms >= at_ms, "closed list out of close order");
            assert_ne!(
                session.locks_head, NIL,
                "closed session {s} kept with no holds"
            );
            assert_eq!(session.waiter, NIL);
            (count, prev, s, at_ms) = (count + 1, s, closed.next, closed.at_ms);
        }
        assert_eq!(self.closed_tail, prev);
        let closed = self.sessions.iter().filter(|(_, s)| s.closed.is_some());
        assert_eq!(closed.count(), count);
    }

    #[cfg(any(test, feature = "internals"))]
    /// Checks one lock's wait queue; returns its length.
    fn queue_invariants(&self, lock: u32, extra: &LockExtra) -> usize {
        let (mut count, mut prev, mut w) = (0, NIL, extra.waiters_head);
        while w != NIL {
            let waiter = &self.store.waiters[w as usize];
            assert_eq!(waiter.lock, lock);
            assert_eq!(waiter.queue_prev, prev);
            assert_eq!(self.sessions[waiter.session as usize].waiter, w);
            (prev, w, count) = (w, waiter.queue_next, count + 1);
        }
        assert_eq!(extra.waiters_tail, prev);
        assert_eq!(extra.waiter_count as usize, count);
        count
    }
}

/// The clock the table is given counts whole milliseconds, rounded down: a
/// hold granted, or a wait begun, during millisecond `now_ms` may have begun
/// up to 1 ms after it. Expiring at `now_ms + ttl_ms + 1` means a hold never
/// ends before its full TTL has passed, and timing out at
/// `now_ms + wait_ms + 1` that a wait never ends before its full wait, as
/// the server promises (each fires within one 1 ms tick after that).
pub const EXPIRY_ROUNDING_MS: u64 = 1;

/// When a hold of `ttl_ms` granted or extended at `now_ms` expires.
fn expiry_ms(now_ms: u64, ttl_ms: u32) -> u64 {
    now_ms + ttl_ms as u64 + EXPIRY_ROUNDING_MS
}

/// When a wait of `wait_ms` begun at `now_ms` times out.
fn wait_deadline_ms(now_ms: u64, wait_ms: u32) -> u64 {
    now_ms + wait_ms as u64 + EXPIRY_ROUNDING_MS
}

/// The TTL a live hold expiring at `deadline_ms` has left at `now_ms`, as
/// clients count it (the rounding millisecond is not theirs), and at least
/// 1: a hold is live until its deadline, so in the rounding millisecond it
/// still holds (up to 1 ms more), and 0 would read as already expired.
fn remaining_ms(deadline_ms: u64, now_ms: u64) -> u32 {
    clamp_u32(deadline_ms.saturating_sub(now_ms + EXPIRY_ROUNDING_MS)).max(1)
}

fn clamp_u32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

#[cfg(test)]
mod tests;
