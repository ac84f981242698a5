//! A reference model of the lock semantics of docs/PROTOCOL.md, written to
//! be obviously right rather than fast: a sorted map from name to its holder
//! and a FIFO queue of waiters, scanned in full whenever time moves.
//!
//! It shares no code with [`crate::table`]. Where the protocol leaves an
//! order open, the model fixes the one the table documents, so that replies,
//! tokens and later answers can be compared exactly:
//! - timers due together fire in deadline order, equal deadlines in the
//!   order they were set (the wheel's order);
//! - a connection's SESSION holds are released on close newest binding
//!   first.

use std::collections::{BTreeMap, VecDeque};

use crate::limits::Limits;
use crate::table::EXPIRY_ROUNDING_MS;

/// Numbers a connection for the model; never reused.
pub type Conn = usize;

/// Error codes the model answers (docs/PROTOCOL.md, Errors).
pub const CODE_BAD_ARGUMENT: u16 = 4;
pub const CODE_LIMIT: u16 = 6;

/// NOT_HELD reasons.
pub const NOT_HELD_FREE: u8 = 0;
pub const NOT_HELD_OTHER_OWNER: u8 = 1;
pub const NOT_HELD_TOKEN_MISMATCH: u8 = 2;

/// The immediate answer to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Granted {
        token: u64,
        ttl_ms: u32,
        /// The owner held it already.
        reentered: bool,
    },
    Busy {
        remaining_ms: u32,
        waiters: u32,
    },
    /// No reply yet: a [`Later`] answer follows.
    Queued,
    Released,
    Extended {
        ttl_ms: u32,
    },
    NotHeld {
        reason: u8,
    },
    Error {
        code: u16,
    },
}

/// The later answer to a queued ACQUIRE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Later {
    Granted { token: u64, ttl_ms: u32 },
    TimedOut { waited_ms: u32 },
}

#[derive(Debug)]
struct Hold {
    owner: Vec<u8>,
    token: u64,
    expires_at_ms: u64,
    /// When the expiry was set, in timer order.
    timer_seq: u64,
    /// The connection a SESSION hold is bound to, and when it was bound.
    bound: Option<(Conn, u64)>,
}

#[derive(Debug)]
struct Waiter {
    conn: Conn,
    owner: Vec<u8>,
    ttl_ms: u32,
    session_flag: bool,
    arrived_at_ms: u64,
    deadline_ms: u64,
    timer_seq: u64,
}

#[derive(Debug)]
struct Lock {
    hold: Hold,
    waiters: VecDeque<Waiter>,
}

/// Which timer fires next: a lock's expiry or a waiter's deadline.
enum Timer {
    Expiry(Vec<u8>),
    WaitDeadline(Vec<u8>, usize),
}

pub struct Model {
    limits: Limits,
    locks: BTreeMap<Vec<u8>, Lock>,
    next_token: u64,
    /// Counts timers set, and SESSION bindings made, for the orders above.
    seq: u64,
    /// Later answers not yet taken, in the order they were given.
    later: Vec<(Conn, Later)>,
}

impl Model {
    pub fn new(limits: Limits, token_seed: u64) -> Model {
        Model {
            limits,
            locks: BTreeMap::new(),
            next_token: token_seed.max(1),
            seq: 0,
            later: Vec::new(),
        }
    }

    pub fn next_token(&self) -> u64 {
        self.next_token
    }

    pub fn lock_count(&self) -> usize {
        self.locks.len()
    }

    pub fn waiter_count(&self) -> usize {
        self.locks.values().map(|l| l.waiters.len()).sum()
    }

    pub fn is_waiting(&self, conn: Conn) -> bool {
        self.locks
            .values()
            .any(|l| l.waiters.iter().any(|w| w.conn == conn))
    }

    /// The holder's token, if `name` is held (for choosing requests).
    pub fn token_of(&self, name: &[u8]) -> Option<u64> {
        self.locks.get(name).map(|l| l.hold.token)
    }

    /// The holder's owner, if `name` is held (for choosing requests).
    pub fn owner_of(&self, name: &[u8]) -> Option<&[u8]> {
        self.locks.get(name).map(|l| &l.hold.owner[..])
    }

    /// Later answers given since the last call, oldest first.
    pub fn take_later(&mut self) -> Vec<(Conn, Later)> {
        std::mem::take(&mut self.later)
    }

    /// The earliest expiry or wait deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.next_timer().map(|((deadline_ms, _), _)| deadline_ms)
    }

    /// Checks a name and an owner against the limits.
    pub fn check_name_owner(&self, name: &[u8], owner: &[u8]) -> Result<(), Answer> {
        let name_ok = (1..=self.limits.name_len_max).contains(&name.len());
        let owner_ok = (1..=self.limits.owner_len_max).contains(&owner.len());
        if name_ok && owner_ok {
            Ok(())
        } else {
            Err(Answer::Error {
                code: CODE_BAD_ARGUMENT,
            })
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn acquire(
        &mut self,
        conn: Conn,
        name: &[u8],
        owner: &[u8],
        ttl_ms: u32,
        wait_ms: u32,
        flags: u8,
        now_ms: u64,
    ) -> Answer {
        if let Err(answer) = self.check_name_owner(name, owner) {
            return answer;
        }
        let bad_argument = Answer::Error {
            code: CODE_BAD_ARGUMENT,
        };
        // Flags: 1 SESSION, 2 WAIT_FOREVER (with wait_ms 0, on a server
        // whose wait_ms_max is u32::MAX: no bound).
        let forever = flags & 2 != 0;
        if ttl_ms > self.limits.lock_ttl_ms_max
            || wait_ms > self.limits.wait_ms_max
            || flags & !3 != 0
            || forever && (wait_ms != 0 || self.limits.wait_ms_max != u32::MAX)
        {
            return bad_argument;
        }
        self.advance(now_ms);
        let ttl_ms = self.effective_ttl(ttl_ms);
        let session_flag = flags & 1 != 0;
        let seq = self.take_seq();
        let Some(lock) = self.locks.get_mut(name) else {
            if self.locks.len() >= self.limits.locks_max {
                return Answer::Error { code: CODE_LIMIT };
            }
            let token = self.take_token();
            let hold = Hold {
                owner: owner.to_vec(),
                token,
                expires_at_ms: now_ms + ttl_ms as u64 + EXPIRY_ROUNDING_MS,
                timer_seq: seq,
                bound: session_flag.then_some((conn, seq)),
            };
            let waiters = VecDeque::new();
            self.locks.insert(name.to_vec(), Lock { hold, waiters });
            return Answer::Granted {
                token,
                ttl_ms,
                reentered: false,
            };
        };
        let hold = &mut lock.hold;
        if hold.owner == owner {
            hold.expires_at_ms = now_ms + ttl_ms as u64 + EXPIRY_ROUNDING_MS;
            hold.timer_seq = seq;
            hold.bound = match (session_flag, hold.bound) {
                (false, _) => None,
                (true, Some((bound_conn, bound_seq))) if bound_conn == conn => {
                    Some((bound_conn, bound_seq))
                }
                (true, _) => Some((conn, seq)),
            };
            return Answer::Granted {
                token: hold.token,
                ttl_ms,
                reentered: true,
            };
        }
        if wait_ms == 0 && !forever {
            return Answer::Busy {
                // At least 1 while held (docs/PROTOCOL.md, BUSY), also in
                // the rounding millisecond before the expiry.
                remaining_ms: clamp_u32(hold.expires_at_ms - now_ms - EXPIRY_ROUNDING_MS).max(1),
                waiters: lock.waiters.len() as u32,
            };
        }
        lock.waiters.push_back(Waiter {
            conn,
            owner: owner.to_vec(),
            ttl_ms,
            session_flag,
            arrived_at_ms: now_ms,
            deadline_ms: match forever {
                true => u64::MAX,
                false => now_ms + wait_ms as u64 + EXPIRY_ROUNDING_MS,
            },
            timer_seq: seq,
        });
        Answer::Queued
    }

    /// RELEASE with a token; `token` None is the original protocol's
    /// release by owner alone.
    pub fn release(
        &mut self,
        name: &[u8],
        owner: &[u8],
        token: Option<u64>,
        now_ms: u64,
    ) -> Answer {
        if let Err(answer) = self.check_name_owner(name, owner) {
            return answer;
        }
        self.advance(now_ms);
        if let Err(answer) = self.check_held(name, owner, token) {
            return answer;
        }
        self.free(name, now_ms, now_ms);
        Answer::Released
    }

    pub fn extend(
        &mut self,
        name: &[u8],
        owner: &[u8],
        token: u64,
        ttl_ms: u32,
        now_ms: u64,
    ) -> Answer {
        if let Err(answer) = self.check_name_owner(name, owner) {
            return answer;
        }
        if ttl_ms > self.limits.lock_ttl_ms_max {
            return Answer::Error {
                code: CODE_BAD_ARGUMENT,
            };
        }
        self.advance(now_ms);
        if let Err(answer) = self.check_held(name, owner, Some(token)) {
            return answer;
        }
        let ttl_ms = self.effective_ttl(ttl_ms);
        let seq = self.take_seq();
        let hold = &mut self.locks.get_mut(name).expect("checked held").hold;
        hold.expires_at_ms = now_ms + ttl_ms as u64 + EXPIRY_ROUNDING_MS;
        hold.timer_seq = seq;
        Answer::Extended { ttl_ms }
    }

    /// The connection closed: its queued ACQUIRE leaves without an answer,
    /// then its SESSION holds are released.
    pub fn close(&mut self, conn: Conn, now_ms: u64) {
        self.advance(now_ms);
        for lock in self.locks.values_mut() {
            lock.waiters.retain(|w| w.conn != conn);
        }
        let mut bound: Vec<(u64, Vec<u8>)> = self
            .locks
            .iter()
            .filter_map(|(name, lock)| match lock.hold.bound {
                Some((c, bound_seq)) if c == conn => Some((bound_seq, name.clone())),
                _ => None,
            })
            .collect();
        bound.sort();
        for (_, name) in bound.iter().rev() {
            self.free(name, now_ms, now_ms);
        }
    }

    /// Fires every timer due at or before `now_ms`, each at its own
    /// deadline, earliest first.
    pub fn advance(&mut self, now_ms: u64) {
        while let Some(((at_ms, _), timer)) = self.next_timer().filter(|t| t.0.0 <= now_ms) {
            match timer {
                Timer::Expiry(name) => self.free(&name, at_ms, now_ms),
                Timer::WaitDeadline(name, index) => {
                    let lock = self.locks.get_mut(&name).expect("timer of a held lock");
                    let w = lock.waiters.remove(index).expect("timer of a waiter");
                    self.time_out(w);
                }
            }
        }
    }

    fn next_timer(&self) -> Option<((u64, u64), Timer)> {
        let mut best: Option<((u64, u64), Timer)> = None;
        for (name, lock) in &self.locks {
            let hold = &lock.hold;
            let mut candidates = vec![(
                (hold.expires_at_ms, hold.timer_seq),
                Timer::Expiry(name.clone()),
            )];
            for (i, w) in lock.waiters.iter().enumerate() {
                let key = (w.deadline_ms, w.timer_seq);
                candidates.push((key, Timer::WaitDeadline(name.clone(), i)));
            }
            for candidate in candidates {
                if best.as_ref().is_none_or(|b| candidate.0 < b.0) {
                    best = Some(candidate);
                }
            }
        }
        best
    }

    /// The holder of `name` is gone at `at_ms`: the head waiter whose
    /// deadline is still ahead gets the lock (its TTL counted from
    /// `now_ms`), the ones before it whose deadline passed time out, and
    /// with nobody left the lock is deleted.
    fn free(&mut self, name: &[u8], at_ms: u64, now_ms: u64) {
        loop {
            let lock = self.locks.get_mut(name).expect("freeing a held lock");
            let Some(w) = lock.waiters.pop_front() else {
                self.locks.remove(name);
                return;
            };
            if at_ms >= w.deadline_ms {
                self.time_out(w);
                continue;
            }
            let token = self.take_token();
            let seq = self.take_seq();
            let lock = self.locks.get_mut(name).expect("still held");
            lock.hold = Hold {
                owner: w.owner,
                token,
                expires_at_ms: now_ms + w.ttl_ms as u64 + EXPIRY_ROUNDING_MS,
                timer_seq: seq,
                bound: w.session_flag.then_some((w.conn, seq)),
            };
            let ttl_ms = w.ttl_ms;
            self.later.push((w.conn, Later::Granted { token, ttl_ms }));
            return;
        }
    }

    fn time_out(&mut self, w: Waiter) {
        let waited_ms = clamp_u32(w.deadline_ms - w.arrived_at_ms - EXPIRY_ROUNDING_MS);
        self.later.push((w.conn, Later::TimedOut { waited_ms }));
    }

    fn check_held(&self, name: &[u8], owner: &[u8], token: Option<u64>) -> Result<(), Answer> {
        let reason = match self.locks.get(name) {
            None => NOT_HELD_FREE,
            Some(lock) if lock.hold.owner != owner => NOT_HELD_OTHER_OWNER,
            Some(lock) if token.is_some_and(|t| t != lock.hold.token) => NOT_HELD_TOKEN_MISMATCH,
            Some(_) => return Ok(()),
        };
        Err(Answer::NotHeld { reason })
    }

    fn effective_ttl(&self, ttl_ms: u32) -> u32 {
        if ttl_ms == 0 {
            self.limits.lock_ttl_ms_default
        } else {
            ttl_ms
        }
    }

    fn take_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    fn take_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

fn clamp_u32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}
