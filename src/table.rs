//! The lock table: a deterministic state machine.
//!
//! State changes only through the commands below, each taking `now_ms` (a
//! monotonic millisecond clock owned by the caller): [`LockTable::acquire`],
//! [`LockTable::release`], [`LockTable::extend`], [`LockTable::open_session`],
//! [`LockTable::close_session`] and [`LockTable::advance`] (expiry and wait
//! deadlines). The same commands in the same order always give the same
//! replies, events and tokens; nothing here reads a clock or touches a socket.
//!
//! Layout:
//! - `locks`: a slab of held locks. A lock exists only while held; its key
//!   buffer stores the name followed by the holder's owner id.
//! - `index`: a hash table of slab indices, hashed by name with a randomly
//!   keyed SipHash (a client cannot choose names that collide).
//! - `waiters`: a slab of queued ACQUIREs, linked per lock in FIFO order.
//! - `sessions`: one per connection; lists its SESSION holds and its one
//!   queued ACQUIRE (a connection's later requests wait behind it).
//! - `wheel`: lock expiries and wait deadlines.
//!
//! Replies that come later (a queued ACQUIRE granted or timed out) are pushed
//! to `events`, which the caller drains after each command.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use slab::Slab;

use crate::limits::{Limits, OWNER_LEN_CEILING};
use crate::protocol::{Acquire, FLAG_SESSION, FLAGS_KNOWN, NotHeldReason};
use crate::wheel::{TimerHandle, TimerWheel};

const NIL: u32 = u32::MAX;

/// Released key buffers kept for reuse, so steady acquire/release traffic
/// allocates nothing; bounded so memory returns after a burst of locks.
const SPARE_KEYS_MAX: usize = 1024;

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
    Granted {
        token: u64,
        ttl_ms: u32,
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
    NameTooLong { len: usize, max: usize },
    OwnerEmpty,
    OwnerTooLong { len: usize, max: usize },
    TtlTooLarge { ttl_ms: u32, max: u32 },
    WaitTooLarge { wait_ms: u32, max: u32 },
    UnknownFlags { flags: u8 },
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
            ArgError::UnknownFlags { flags } => {
                write!(
                    f,
                    "flags 0x{flags:02x} has unknown bits; known flags: 0x01 SESSION"
                )
            }
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

#[derive(Clone, Copy, Debug)]
enum Timer {
    Expiry { lock: u32 },
    WaitDeadline { waiter: u32 },
}

struct Lock {
    /// Name bytes followed by the holder's owner bytes.
    key: Vec<u8>,
    name_len: u8,
    token: u64,
    ttl_ms: u32,
    expires_at_ms: u64,
    expiry: TimerHandle,
    /// Session whose close releases this hold, or NIL.
    session: u32,
    session_prev: u32,
    session_next: u32,
    waiters_head: u32,
    waiters_tail: u32,
    waiter_count: u32,
}

impl Lock {
    fn name(&self) -> &[u8] {
        &self.key[..self.name_len as usize]
    }
    fn owner(&self) -> &[u8] {
        &self.key[self.name_len as usize..]
    }
}

struct Waiter {
    lock: u32,
    session: u32,
    owner: [u8; OWNER_LEN_CEILING],
    owner_len: u8,
    ttl_ms: u32,
    flags: u8,
    enqueued_at_ms: u64,
    deadline_ms: u64,
    timer: TimerHandle,
    prev: u32,
    next: u32,
}

struct Session {
    tag: u64,
    generation: u32,
    locks_head: u32,
    waiter: u32,
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
    locks: Slab<Lock>,
    index: HashTable<u32>,
    hasher: RandomState,
    waiters: Slab<Waiter>,
    sessions: Slab<Session>,
    session_generation: u32,
    wheel: TimerWheel<Timer>,
    next_token: u64,
    events: Vec<Event>,
    spare_keys: Vec<Vec<u8>>,
    stats: Stats,
}

impl LockTable {
    /// `token_seed` is the first fencing token to hand out; the server seeds it
    /// from the wall clock so tokens keep increasing across restarts.
    pub fn new(limits: Limits, token_seed: u64, now_ms: u64) -> LockTable {
        LockTable {
            limits,
            locks: Slab::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
            waiters: Slab::new(),
            sessions: Slab::new(),
            session_generation: 0,
            wheel: TimerWheel::new(now_ms),
            next_token: token_seed,
            events: Vec::new(),
            spare_keys: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Locks currently held.
    pub fn len(&self) -> usize {
        self.locks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    /// ACQUIREs currently queued.
    pub fn waiter_count(&self) -> usize {
        self.waiters.len()
    }

    /// The token the next grant will carry.
    pub fn next_token(&self) -> u64 {
        self.next_token
    }

    /// The earliest expiry or wait deadline, for the caller's poll timeout.
    pub fn next_deadline(&self) -> Option<u64> {
        self.wheel.next_deadline()
    }

    /// Later answers produced by the last commands; the caller must drain
    /// them (see [`LockTable::clear_events`]) before the next command.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn clear_events(&mut self) {
        self.events.clear();
    }

    pub fn open_session(&mut self, tag: u64) -> SessionId {
        self.session_generation = self.session_generation.wrapping_add(1);
        let generation = self.session_generation;
        let key = self.sessions.insert(Session {
            tag,
            generation,
            locks_head: NIL,
            waiter: NIL,
        });
        SessionId {
            key: key as u32,
            generation,
        }
    }

    /// Drops the session's queued ACQUIRE and releases its SESSION holds,
    /// handing each to its next waiter.
    pub fn close_session(&mut self, id: SessionId, now_ms: u64) {
        self.advance(now_ms);
        let session = self.session_key(id);
        let waiter = self.sessions[session as usize].waiter;
        if waiter != NIL {
            self.remove_waiter(waiter);
        }
        loop {
            let lock = self.sessions[session as usize].locks_head;
            if lock == NIL {
                break;
            }
            self.stats.releases += 1;
            self.free_lock(lock, now_ms, now_ms, None);
        }
        self.sessions.remove(session as usize);
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
        self.advance(now_ms);
        let ttl_ms = self.effective_ttl(req.ttl_ms);
        let session_bind = if req.flags & FLAG_SESSION != 0 {
            session
        } else {
            NIL
        };
        let hash = self.hasher.hash_one(req.name);
        let Some(lock) = self.find_hashed(hash, req.name) else {
            let token = self.take_token();
            let lock = self.insert_lock(hash, req, token, ttl_ms, now_ms);
            self.bind_session(lock, session_bind);
            return Outcome::Granted { token, ttl_ms };
        };
        let l = &self.locks[lock as usize];
        if l.owner() == req.owner {
            // Same owner again: a retry after a lost reply. Keep the token,
            // reset the TTL, take the new request's session binding.
            let token = l.token;
            self.set_expiry(lock, ttl_ms, now_ms);
            self.bind_session(lock, session_bind);
            self.stats.grants += 1;
            return Outcome::Granted { token, ttl_ms };
        }
        if req.wait_ms == 0 {
            return Outcome::Busy {
                remaining_ms: clamp_u32(l.expires_at_ms.saturating_sub(now_ms)),
                waiters: l.waiter_count,
            };
        }
        self.enqueue(lock, session, req, ttl_ms, now_ms);
        Outcome::Queued
    }

    pub fn release(&mut self, name: &[u8], owner: &[u8], token: u64, now_ms: u64) -> Outcome {
        self.advance(now_ms);
        let hash = self.hasher.hash_one(name);
        let lock = match self.find_held(hash, name, owner, token) {
            Ok(lock) => lock,
            Err(outcome) => return outcome,
        };
        self.stats.releases += 1;
        self.free_lock(lock, now_ms, now_ms, Some(hash));
        Outcome::Released
    }

    /// RELEASE for the original protocol, which has no tokens: the hold is
    /// released if `owner` holds it, whatever its token.
    pub fn release_by_owner(&mut self, name: &[u8], owner: &[u8], now_ms: u64) -> Outcome {
        self.advance(now_ms);
        let hash = self.hasher.hash_one(name);
        let Some(lock) = self.find_hashed(hash, name) else {
            return Outcome::NotHeld(NotHeldReason::Free);
        };
        if self.locks[lock as usize].owner() != owner {
            return Outcome::NotHeld(NotHeldReason::OtherOwner);
        }
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
            return Outcome::Rejected(ArgError::TtlTooLarge {
                ttl_ms,
                max: self.limits.lock_ttl_ms_max,
            });
        }
        self.advance(now_ms);
        let hash = self.hasher.hash_one(name);
        let lock = match self.find_held(hash, name, owner, token) {
            Ok(lock) => lock,
            Err(outcome) => return outcome,
        };
        let ttl_ms = self.effective_ttl(ttl_ms);
        self.set_expiry(lock, ttl_ms, now_ms);
        Outcome::Extended { ttl_ms }
    }

    /// Fires every expiry and wait deadline due at or before `now_ms`, in
    /// deadline order. Each fires at its own deadline: a waiter is granted a
    /// lock that expired before the waiter's deadline even if this call
    /// comes late.
    pub fn advance(&mut self, now_ms: u64) {
        while let Some((at_ms, timer)) = self.wheel.poll(now_ms) {
            match timer {
                Timer::Expiry { lock } => {
                    debug_assert_eq!(self.locks[lock as usize].expires_at_ms, at_ms);
                    self.stats.expiries += 1;
                    self.free_lock(lock, at_ms, now_ms, None);
                }
                Timer::WaitDeadline { waiter } => self.time_out_waiter(waiter, at_ms),
            }
        }
    }

    /// Validates an ACQUIRE's fields against the limits.
    fn check_acquire(&self, req: &Acquire<'_>) -> Result<(), ArgError> {
        self.check_name_owner(req.name, req.owner)?;
        if req.ttl_ms > self.limits.lock_ttl_ms_max {
            return Err(ArgError::TtlTooLarge {
                ttl_ms: req.ttl_ms,
                max: self.limits.lock_ttl_ms_max,
            });
        }
        if req.wait_ms > self.limits.wait_ms_max {
            return Err(ArgError::WaitTooLarge {
                wait_ms: req.wait_ms,
                max: self.limits.wait_ms_max,
            });
        }
        if req.flags & !FLAGS_KNOWN != 0 {
            return Err(ArgError::UnknownFlags { flags: req.flags });
        }
        Ok(())
    }

    /// Validates a name and an owner against the limits (RELEASE and EXTEND
    /// with bad fields cannot match a hold, but still deserve a clear error).
    pub fn check_name_owner(&self, name: &[u8], owner: &[u8]) -> Result<(), ArgError> {
        if name.is_empty() {
            return Err(ArgError::NameEmpty);
        }
        if name.len() > self.limits.name_len_max {
            return Err(ArgError::NameTooLong {
                len: name.len(),
                max: self.limits.name_len_max,
            });
        }
        if owner.is_empty() {
            return Err(ArgError::OwnerEmpty);
        }
        if owner.len() > self.limits.owner_len_max {
            return Err(ArgError::OwnerTooLong {
                len: owner.len(),
                max: self.limits.owner_len_max,
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
            session.is_some_and(|s| s.generation == id.generation),
            "stale session id {id:?}"
        );
        id.key
    }

    fn find(&self, name: &[u8]) -> Option<u32> {
        self.find_hashed(self.hasher.hash_one(name), name)
    }

    fn find_hashed(&self, hash: u64, name: &[u8]) -> Option<u32> {
        self.index
            .find(hash, |&i| self.locks[i as usize].name() == name)
            .copied()
    }

    /// The lock held by `owner` under `token`, or the NOT_HELD reason.
    fn find_held(&self, hash: u64, name: &[u8], owner: &[u8], token: u64) -> Result<u32, Outcome> {
        let Some(lock) = self.find_hashed(hash, name) else {
            return Err(Outcome::NotHeld(NotHeldReason::Free));
        };
        let l = &self.locks[lock as usize];
        if l.owner() != owner {
            return Err(Outcome::NotHeld(NotHeldReason::OtherOwner));
        }
        if l.token != token {
            return Err(Outcome::NotHeld(NotHeldReason::TokenMismatch));
        }
        Ok(lock)
    }

    /// Creates a held lock with its expiry timer and indexes it.
    fn insert_lock(
        &mut self,
        hash: u64,
        req: &Acquire<'_>,
        token: u64,
        ttl_ms: u32,
        now_ms: u64,
    ) -> u32 {
        let mut key = self.spare_keys.pop().unwrap_or_default();
        key.clear();
        key.extend_from_slice(req.name);
        key.extend_from_slice(req.owner);
        let expires_at_ms = now_ms + ttl_ms as u64;
        let entry = self.locks.vacant_entry();
        let lock = entry.key() as u32;
        let expiry = self.wheel.insert(expires_at_ms, Timer::Expiry { lock });
        entry.insert(Lock {
            key,
            name_len: req.name.len() as u8,
            token,
            ttl_ms,
            expires_at_ms,
            expiry,
            session: NIL,
            session_prev: NIL,
            session_next: NIL,
            waiters_head: NIL,
            waiters_tail: NIL,
            waiter_count: 0,
        });
        let (locks, hasher) = (&self.locks, &self.hasher);
        self.index
            .insert_unique(hash, lock, |&i| hasher.hash_one(locks[i as usize].name()));
        lock
    }

    /// The next fencing token; every grant takes one.
    fn take_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.stats.grants += 1;
        token
    }

    /// Gives `lock` (already carrying its new owner) a fresh token and TTL.
    fn grant(&mut self, lock: u32, session: u32, ttl_ms: u32, now_ms: u64) {
        let token = self.take_token();
        self.locks[lock as usize].token = token;
        self.set_expiry(lock, ttl_ms, now_ms);
        self.bind_session(lock, session);
    }

    fn set_expiry(&mut self, lock: u32, ttl_ms: u32, now_ms: u64) {
        let expires_at_ms = now_ms + ttl_ms as u64;
        let old = self.locks[lock as usize].expiry;
        self.wheel.cancel(old);
        let handle = self.wheel.insert(expires_at_ms, Timer::Expiry { lock });
        let l = &mut self.locks[lock as usize];
        l.expiry = handle;
        l.ttl_ms = ttl_ms;
        l.expires_at_ms = expires_at_ms;
    }

    /// Moves the lock onto `session`'s list of SESSION holds (NIL: none).
    fn bind_session(&mut self, lock: u32, session: u32) {
        if self.locks[lock as usize].session == session {
            return;
        }
        self.unbind_session(lock);
        if session == NIL {
            return;
        }
        let head = self.sessions[session as usize].locks_head;
        if head != NIL {
            self.locks[head as usize].session_prev = lock;
        }
        let l = &mut self.locks[lock as usize];
        l.session = session;
        l.session_prev = NIL;
        l.session_next = head;
        self.sessions[session as usize].locks_head = lock;
    }

    fn unbind_session(&mut self, lock: u32) {
        let l = &self.locks[lock as usize];
        let (session, prev, next) = (l.session, l.session_prev, l.session_next);
        if session == NIL {
            return;
        }
        if prev == NIL {
            self.sessions[session as usize].locks_head = next;
        } else {
            self.locks[prev as usize].session_next = next;
        }
        if next != NIL {
            self.locks[next as usize].session_prev = prev;
        }
        let l = &mut self.locks[lock as usize];
        l.session = NIL;
        l.session_prev = NIL;
        l.session_next = NIL;
    }

    /// The holder is gone (release, expiry or session close at `at_ms`):
    /// grant the first waiter whose deadline is after `at_ms`, time out the
    /// ones whose deadline passed, or delete the lock if nobody waits.
    /// `hash` is the name's hash when the caller has it.
    fn free_lock(&mut self, lock: u32, at_ms: u64, now_ms: u64, hash: Option<u64>) {
        self.unbind_session(lock);
        let expiry = self.locks[lock as usize].expiry;
        self.wheel.cancel(expiry);
        loop {
            let waiter = self.locks[lock as usize].waiters_head;
            if waiter == NIL {
                self.delete_lock(lock, hash);
                return;
            }
            if at_ms < self.waiters[waiter as usize].deadline_ms {
                self.grant_waiter(lock, waiter, now_ms);
                return;
            }
            let deadline = self.waiters[waiter as usize].deadline_ms;
            self.time_out_waiter(waiter, deadline);
        }
    }

    fn grant_waiter(&mut self, lock: u32, waiter: u32, now_ms: u64) {
        let w = self.remove_waiter(waiter);
        let l = &mut self.locks[lock as usize];
        l.key.truncate(l.name_len as usize);
        l.key.extend_from_slice(&w.owner[..w.owner_len as usize]);
        let session = if w.flags & FLAG_SESSION != 0 {
            w.session
        } else {
            NIL
        };
        self.grant(lock, session, w.ttl_ms, now_ms);
        let token = self.locks[lock as usize].token;
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
        self.stats.wait_timeouts += 1;
        let waited_ms = clamp_u32(at_ms.saturating_sub(w.enqueued_at_ms));
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
        let l = self.locks.remove(lock as usize);
        debug_assert_eq!(l.waiter_count, 0);
        debug_assert_eq!(l.session, NIL);
        let hash = hash.unwrap_or_else(|| self.hasher.hash_one(l.name()));
        match self.index.find_entry(hash, |&i| i == lock) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => unreachable!("lock {lock} missing from the index"),
        }
        if self.spare_keys.len() < SPARE_KEYS_MAX {
            self.spare_keys.push(l.key);
        }
    }

    fn enqueue(&mut self, lock: u32, session: u32, req: &Acquire<'_>, ttl_ms: u32, now_ms: u64) {
        let deadline_ms = now_ms + req.wait_ms as u64;
        let mut owner = [0u8; OWNER_LEN_CEILING];
        owner[..req.owner.len()].copy_from_slice(req.owner);
        let tail = self.locks[lock as usize].waiters_tail;
        let entry = self.waiters.vacant_entry();
        let waiter = entry.key() as u32;
        let timer = self
            .wheel
            .insert(deadline_ms, Timer::WaitDeadline { waiter });
        entry.insert(Waiter {
            lock,
            session,
            owner,
            owner_len: req.owner.len() as u8,
            ttl_ms,
            flags: req.flags,
            enqueued_at_ms: now_ms,
            deadline_ms,
            timer,
            prev: tail,
            next: NIL,
        });
        if tail == NIL {
            self.locks[lock as usize].waiters_head = waiter;
        } else {
            self.waiters[tail as usize].next = waiter;
        }
        let l = &mut self.locks[lock as usize];
        l.waiters_tail = waiter;
        l.waiter_count += 1;
        self.sessions[session as usize].waiter = waiter;
    }

    /// Unlinks a waiter from its lock's queue and its session, cancels its
    /// deadline, and returns it.
    fn remove_waiter(&mut self, waiter: u32) -> Waiter {
        let w = self.waiters.remove(waiter as usize);
        self.wheel.cancel(w.timer);
        let l = &mut self.locks[w.lock as usize];
        if w.prev == NIL {
            l.waiters_head = w.next;
        } else {
            self.waiters[w.prev as usize].next = w.next;
        }
        let l = &mut self.locks[w.lock as usize];
        if w.next == NIL {
            l.waiters_tail = w.prev;
        } else {
            self.waiters[w.next as usize].prev = w.prev;
        }
        self.locks[w.lock as usize].waiter_count -= 1;
        self.sessions[w.session as usize].waiter = NIL;
        w
    }

    /// Checks every structural invariant. For tests; O(locks + waiters).
    pub fn invariants(&self) {
        assert_eq!(self.index.len(), self.locks.len());
        let mut waiters_seen = 0;
        for (i, l) in &self.locks {
            assert_eq!(
                self.find(l.name()),
                Some(i as u32),
                "index finds every lock"
            );
            assert!(!l.owner().is_empty());
            assert!(l.token < self.next_token);
            assert_eq!(self.wheel.deadline(l.expiry), Some(l.expires_at_ms));
            let mut count = 0;
            let mut prev = NIL;
            let mut w = l.waiters_head;
            while w != NIL {
                let waiter = &self.waiters[w as usize];
                assert_eq!(waiter.lock, i as u32);
                assert_eq!(waiter.prev, prev);
                assert_eq!(self.sessions[waiter.session as usize].waiter, w);
                assert_eq!(self.wheel.deadline(waiter.timer), Some(waiter.deadline_ms));
                prev = w;
                w = waiter.next;
                count += 1;
            }
            assert_eq!(l.waiters_tail, prev);
            assert_eq!(l.waiter_count, count);
            waiters_seen += count as usize;
            if l.session != NIL {
                assert!(self.sessions.contains(l.session as usize));
            }
        }
        assert_eq!(waiters_seen, self.waiters.len());
        assert_eq!(self.wheel.len(), self.locks.len() + self.waiters.len());
        for (s, session) in &self.sessions {
            let mut lock = session.locks_head;
            let mut prev = NIL;
            while lock != NIL {
                let l = &self.locks[lock as usize];
                assert_eq!(l.session, s as u32);
                assert_eq!(l.session_prev, prev);
                prev = lock;
                lock = l.session_next;
            }
        }
    }
}

fn clamp_u32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

#[cfg(test)]
mod tests;
