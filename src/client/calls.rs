//! The operations: each public request of [`Client`], the [`Op`] it sends
//! and the [`Answer`] it reads back.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::debug;

use super::connection::CLIENT_NAME;
use super::{Client, Error, Lease, LockGuard, NotHeldCause, Result, invalid};
use crate::limits::{NAME_LEN_CEILING, OWNER_LEN_CEILING, PROTOCOL_VERSION, WAIT_MS_UNBOUNDED};
use crate::protocol::{
    Acquire, ErrorCode, FLAG_WAIT_FOREVER, HelloReply, NotHeldReason, Reply, Request, StatusEntry,
};

/// A wait with no deadline: `client.acquire(name, WAIT_FOREVER)` waits in
/// the server's queue until the lock is granted, keeping its place (one
/// request, not a loop of shorter waits). Needs a server without a
/// `--wait-max-ms` bound. If the connection breaks, the retry joins the
/// queue again at its tail.
pub const WAIT_FOREVER: Duration = Duration::MAX;

/// The longest finite wait the protocol carries: `wait_ms` is a u32 (about
/// 49.7 days). Longer finite waits are refused; use [`WAIT_FOREVER`].
pub const WAIT_FINITE_MAX: Duration = Duration::from_millis(u32::MAX as u64);

/// One held lock, as STATUS shows it (owners are never shown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockStatus {
    /// The name, with bytes that are not UTF-8 replaced.
    pub name: String,
    pub token: u64,
    /// Time until the hold expires unless extended or released.
    pub remaining: Duration,
    /// ACQUIREs queued on the lock.
    pub waiters: u32,
    /// The hold ends when the connection that took it closes.
    pub session: bool,
}

impl From<&StatusEntry<'_>> for LockStatus {
    fn from(e: &StatusEntry<'_>) -> LockStatus {
        LockStatus {
            name: String::from_utf8_lossy(e.name).into_owned(),
            token: e.token,
            remaining: Duration::from_millis(e.remaining_ms as u64),
            waiters: e.waiters,
            session: e.session,
        }
    }
}

/// A page of held locks from [`Client::list_locks`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockList {
    /// Locks held on the server.
    pub total: u32,
    pub locks: Vec<LockStatus>,
    /// More locks follow (the listing stopped at `limit`).
    pub truncated: bool,
}

/// The server's version and limits, from its HELLO reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub protocol_version: u16,
    pub server_version: String,
    pub frame_size_max: usize,
    pub name_len_max: usize,
    pub owner_len_max: usize,
    pub lock_ttl_default: Duration,
    pub lock_ttl_max: Duration,
    /// The longest wait the server takes; `None`: no bound, and
    /// [`WAIT_FOREVER`] is taken.
    pub wait_max: Option<Duration>,
}

impl From<&HelloReply<'_>> for ServerInfo {
    fn from(h: &HelloReply<'_>) -> ServerInfo {
        ServerInfo {
            protocol_version: h.version,
            server_version: String::from_utf8_lossy(h.server_version).into_owned(),
            frame_size_max: h.frame_size_max as usize,
            name_len_max: h.name_len_max as usize,
            owner_len_max: h.owner_len_max as usize,
            lock_ttl_default: Duration::from_millis(h.lock_ttl_ms_default as u64),
            lock_ttl_max: Duration::from_millis(h.lock_ttl_ms_max as u64),
            wait_max: (h.wait_ms_max != WAIT_MS_UNBOUNDED)
                .then(|| Duration::from_millis(h.wait_ms_max as u64)),
        }
    }
}

impl Client {
    /// Whether the server answers PING, right now: one attempt, no retries
    /// and no backoff. Never panics; the reason for `false` is logged at
    /// debug level.
    pub fn check_server_health(&self) -> bool {
        match self.call(&Op::Ping, 0) {
            Ok(Answer::Pong) => true,
            Ok(other) => {
                debug!("health check of {}: answered {other:?}", self.addr);
                false
            }
            Err(e) => {
                debug!("health check of {}: {e}", self.addr);
                false
            }
        }
    }

    /// PING: whether the server serves this client's requests, with the
    /// reason if not (for example [`ErrorCode::Auth`] from a server that
    /// needs a secret this client does not have; HELLO alone is answered
    /// before AUTH, so [`Client::server_info`] cannot tell).
    pub fn ping(&self) -> Result<()> {
        match self.call(&Op::Ping, self.retries)? {
            Answer::Pong => Ok(()),
            Answer::Error { code, message } => Err(Error::Server { code, message }),
            other => unreachable!("Op::accepts admitted {other:?} for PING"),
        }
    }

    /// The server's version and limits.
    pub fn server_info(&self) -> Result<ServerInfo> {
        match self.call(&Op::Hello, self.retries)? {
            Answer::Hello(info) => Ok(info),
            Answer::Error { code, message } => Err(Error::Server { code, message }),
            other => unreachable!("Op::accepts admitted {other:?} for HELLO"),
        }
    }

    /// The state of lock `name`: `None` if nobody holds it.
    pub fn status(&self, name: &str) -> Result<Option<LockStatus>> {
        check_name(name)?;
        match self.call(&Op::Status { name, cursor: 0 }, self.retries)? {
            Answer::Status { locks, .. } => Ok(locks.into_iter().next()),
            Answer::Error { code, message } => Err(Error::Server { code, message }),
            other => unreachable!("Op::accepts admitted {other:?} for STATUS"),
        }
    }

    /// Up to `limit` held locks, fetched page by page. A listing that spans
    /// changes may miss or repeat locks taken or released meanwhile.
    pub fn list_locks(&self, limit: usize) -> Result<LockList> {
        let mut list = LockList {
            total: 0,
            locks: Vec::new(),
            truncated: false,
        };
        let mut cursor = 0;
        loop {
            let op = Op::Status { name: "", cursor };
            let (total, next_cursor, locks) = match self.call(&op, self.retries)? {
                Answer::Status {
                    total,
                    next_cursor,
                    locks,
                } => (total, next_cursor, locks),
                Answer::Error { code, message } => return Err(Error::Server { code, message }),
                other => unreachable!("Op::accepts admitted {other:?} for STATUS"),
            };
            list.total = total;
            for lock in locks {
                if list.locks.len() == limit {
                    list.truncated = true;
                    return Ok(list);
                }
                list.locks.push(lock);
            }
            if next_cursor == 0 {
                return Ok(list);
            }
            cursor = next_cursor;
        }
    }

    /// Takes `name`, waiting on the server (in FIFO order with other waiters)
    /// for up to `wait`, or with no deadline for [`WAIT_FOREVER`].
    /// `Err(AcquireTimeout)` if it stayed held; a finite wait over
    /// [`WAIT_FINITE_MAX`] is `Err(InvalidArgument)`.
    pub fn acquire(&self, name: &str, wait: Duration) -> Result<Lease> {
        let started = Instant::now();
        match self.acquire_inner(name, wait, self.flags)? {
            Some(lease) => Ok(lease),
            None => Err(Error::AcquireTimeout {
                name: name.to_owned(),
                waited: started.elapsed(),
            }),
        }
    }

    /// Takes `name` if it is free: `Ok(None)` if someone else holds it.
    pub fn try_acquire(&self, name: &str) -> Result<Option<Lease>> {
        self.acquire_inner(name, Duration::ZERO, self.flags)
    }

    /// [`Client::acquire`] returning a guard that releases on drop.
    pub fn lock(&self, name: &str, wait: Duration) -> Result<LockGuard<'_>> {
        let lease = self.acquire(name, wait)?;
        Ok(LockGuard {
            client: self,
            lease,
            released: false,
        })
    }

    /// Releases this client's latest hold on `name`.
    ///
    /// With threads sharing a `Client`, this releases whichever hold of this
    /// client on `name` is the most recent, which may be another thread's if
    /// ours expired and that thread took the name since; prefer
    /// [`LockGuard`] or [`Client::release_lease`] there.
    pub fn release(&self, name: &str) -> Result<()> {
        let lease = self.holds().get(name).cloned();
        match lease {
            Some(lease) => self.release_lease(&lease),
            None => Err(Error::NotHeld {
                name: name.to_owned(),
                reason: NotHeldCause::NotAcquiredHere,
            }),
        }
    }

    /// Releases the hold described by `lease`.
    ///
    /// If a retry was needed because the first attempt's reply was lost, that
    /// attempt may have released it already and the retry answers NotHeld.
    pub fn release_lease(&self, lease: &Lease) -> Result<()> {
        let op = Op::Release {
            name: &lease.name,
            owner: &lease.owner,
            token: lease.token,
        };
        let answer = self.call(&op, self.retries)?;
        // Released or refused, the hold is not ours any more; a connection
        // failure keeps the record so the caller can release again.
        self.forget(lease);
        release_answer(lease, answer)
    }

    /// Sets the remaining TTL of `lease`'s hold to `ttl` from now; returns the
    /// TTL the server applied. `Err(NotHeld)` if the hold was lost.
    pub fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Duration> {
        self.extend_within(lease, ttl, self.retries, None)
    }

    /// [`Client::extend`] with `retries` and, if given, no I/O past
    /// `deadline` (see [`Client::call_within`]).
    pub(super) fn extend_within(
        &self,
        lease: &Lease,
        ttl: Duration,
        retries: u32,
        deadline: Option<Instant>,
    ) -> Result<Duration> {
        if ttl.is_zero() {
            // On the wire 0 means "the server's default", which is not what
            // a caller passing zero means.
            return invalid("extend ttl 0: use a positive TTL; release the lock to give it up");
        }
        let op = Op::Extend {
            name: &lease.name,
            owner: &lease.owner,
            token: lease.token,
            ttl_ms: duration_to_ms(ttl),
        };
        let answer = self.call_within(&op, retries, deadline)?;
        self.extend_answer(lease, answer)
    }

    /// What an EXTEND's answer means for `lease`.
    pub(super) fn extend_answer(&self, lease: &Lease, answer: Answer) -> Result<Duration> {
        match answer {
            Answer::Extended { ttl_ms } => Ok(Duration::from_millis(ttl_ms as u64)),
            Answer::NotHeld(reason) => {
                self.forget(lease);
                Err(Error::NotHeld {
                    name: lease.name.clone(),
                    reason: NotHeldCause::Server(reason),
                })
            }
            Answer::Error { code, message } => Err(Error::Server { code, message }),
            other => unreachable!("Op::accepts admitted {other:?} for EXTEND"),
        }
    }

    /// `Ok(None)`: still held by another owner when the wait ended.
    pub(super) fn acquire_inner(
        &self,
        name: &str,
        wait: Duration,
        flags: u8,
    ) -> Result<Option<Lease>> {
        self.acquire_as(name, self.next_owner(), wait, flags)
    }

    /// ACQUIRE under `owner` exactly, rather than one of this client's own
    /// per-acquisition owners: for the lock CLI, whose `--owner` names the
    /// owner that `release` and `extend` then take, so that an `acquire` of
    /// a lock the same owner holds re-enters it. `Ok(None)`: still held by
    /// another owner when the wait ended.
    pub(crate) fn acquire_as(
        &self,
        name: &str,
        owner: String,
        wait: Duration,
        flags: u8,
    ) -> Result<Option<Lease>> {
        check_name(name)?;
        check_wait(wait)?;
        check_owner(&owner)?;
        let op = Op::Acquire {
            name,
            owner: &owner,
            ttl_ms: self.ttl_ms,
            wait,
            flags,
        };
        let answer = self.call(&op, self.retries)?;
        self.acquired(name, owner, answer)
    }

    /// The lease an ACQUIRE's `answer` grants, recorded for
    /// [`Client::release`]; `Ok(None)` if it was not granted.
    pub(super) fn acquired(
        &self,
        name: &str,
        owner: String,
        answer: Answer,
    ) -> Result<Option<Lease>> {
        match answer {
            Answer::Granted {
                token,
                ttl_ms,
                reentered,
            } => {
                let lease = Lease {
                    name: name.to_owned(),
                    owner,
                    token,
                    ttl: Duration::from_millis(ttl_ms as u64),
                    reentered: reentered.unwrap_or(false),
                };
                self.holds().insert(lease.name.clone(), lease.clone());
                Ok(Some(lease))
            }
            // BUSY answers a wait of zero, including a retry whose wait was
            // used up by failed attempts.
            Answer::Busy | Answer::Timeout => Ok(None),
            Answer::Error { code, message } => Err(Error::Server { code, message }),
            other => unreachable!("Op::accepts admitted {other:?} for ACQUIRE"),
        }
    }

    pub(super) fn next_owner(&self) -> String {
        let n = self.owner_counter.fetch_add(1, Ordering::Relaxed);
        let owner = format!("{}:{n}", self.client_id);
        debug_assert!(owner.len() <= OWNER_LEN_CEILING);
        owner
    }

    pub(super) fn holds(&self) -> MutexGuard<'_, HashMap<String, Lease>> {
        // A panic elsewhere while holding this lock cannot leave the map
        // half-updated (every update is one insert or remove).
        self.holds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the record of `lease` unless the name has been re-acquired since.
    pub(super) fn forget(&self, lease: &Lease) {
        let mut holds = self.holds();
        if holds
            .get(&lease.name)
            .is_some_and(|held| held.token == lease.token && held.owner == lease.owner)
        {
            holds.remove(&lease.name);
        }
    }
}

/// A request with owned-by-caller fields, re-encoded on each attempt because
/// a waiting ACQUIRE's wait shrinks by the time already spent.
pub(super) enum Op<'a> {
    Hello,
    Ping,
    Acquire {
        name: &'a str,
        owner: &'a str,
        ttl_ms: u32,
        wait: Duration,
        flags: u8,
    },
    Release {
        name: &'a str,
        owner: &'a str,
        token: u64,
    },
    Extend {
        name: &'a str,
        owner: &'a str,
        token: u64,
        ttl_ms: u32,
    },
    Status {
        name: &'a str,
        cursor: u32,
    },
}

impl Op<'_> {
    /// Whether the server may hold the reply back (a waiting ACQUIRE).
    pub(super) fn may_wait(&self) -> bool {
        matches!(self, Op::Acquire { wait, .. } if !wait.is_zero())
    }

    /// `wait_ms` for the next attempt; 0 for a wait with no deadline,
    /// which [`Op::request`] sends as flag WAIT_FOREVER instead.
    pub(super) fn wait_ms_left(&self, elapsed: Duration) -> u32 {
        match self {
            Op::Acquire { wait, .. } if *wait == WAIT_FOREVER => 0,
            Op::Acquire { wait, .. } => duration_to_ms(wait.saturating_sub(elapsed)),
            _ => 0,
        }
    }

    /// An ACQUIRE that waits with no deadline.
    pub(super) fn waits_forever(&self) -> bool {
        matches!(self, Op::Acquire { wait, .. } if *wait == WAIT_FOREVER)
    }

    pub(super) fn request(&self, wait_ms: u32) -> Request<'_> {
        match *self {
            Op::Hello => Request::Hello {
                version: PROTOCOL_VERSION,
                client_name: CLIENT_NAME.as_bytes(),
            },
            Op::Ping => Request::Ping,
            Op::Acquire {
                name,
                owner,
                ttl_ms,
                flags,
                ..
            } => Request::Acquire(Acquire {
                name: name.as_bytes(),
                owner: owner.as_bytes(),
                ttl_ms,
                wait_ms,
                flags: match self.waits_forever() {
                    true => flags | FLAG_WAIT_FOREVER,
                    false => flags,
                },
            }),
            Op::Release { name, owner, token } => Request::Release {
                name: name.as_bytes(),
                owner: owner.as_bytes(),
                token,
            },
            Op::Extend {
                name,
                owner,
                token,
                ttl_ms,
            } => Request::Extend {
                name: name.as_bytes(),
                owner: owner.as_bytes(),
                token,
                ttl_ms,
            },
            Op::Status { name, cursor } => Request::Status {
                name: name.as_bytes(),
                cursor,
            },
        }
    }

    pub(super) fn kind_name(&self) -> &'static str {
        match self {
            Op::Hello => "HELLO",
            Op::Ping => "PING",
            Op::Acquire { .. } => "ACQUIRE",
            Op::Release { .. } => "RELEASE",
            Op::Extend { .. } => "EXTEND",
            Op::Status { .. } => "STATUS",
        }
    }

    /// Whether `answer` is a possible reply to this request; anything else
    /// means the stream is out of step and the connection must go.
    pub(super) fn accepts(&self, answer: &Answer) -> bool {
        matches!(
            (self, answer),
            (_, Answer::Error { .. })
                | (Op::Hello, Answer::Hello(_))
                | (Op::Ping, Answer::Pong)
                | (
                    Op::Acquire { .. },
                    Answer::Granted { .. } | Answer::Busy | Answer::Timeout
                )
                | (Op::Release { .. }, Answer::Released | Answer::NotHeld(_))
                | (
                    Op::Extend { .. },
                    Answer::Extended { .. } | Answer::NotHeld(_)
                )
                | (Op::Status { .. }, Answer::Status { .. })
        )
    }
}

/// What a RELEASE's answer means for `lease`.
pub(super) fn release_answer(lease: &Lease, answer: Answer) -> Result<()> {
    match answer {
        Answer::Released => Ok(()),
        Answer::NotHeld(reason) => Err(Error::NotHeld {
            name: lease.name.clone(),
            reason: NotHeldCause::Server(reason),
        }),
        Answer::Error { code, message } => Err(Error::Server { code, message }),
        other => unreachable!("Op::accepts admitted {other:?} for RELEASE"),
    }
}

/// A reply copied out of the read buffer.
#[derive(Debug)]
pub(super) enum Answer {
    Hello(ServerInfo),
    Pong,
    Granted {
        token: u64,
        ttl_ms: u32,
        reentered: Option<bool>,
    },
    Busy,
    Timeout,
    Released,
    Extended {
        ttl_ms: u32,
    },
    NotHeld(NotHeldReason),
    Error {
        code: ErrorCode,
        message: String,
    },
    Authed,
    Status {
        total: u32,
        next_cursor: u32,
        locks: Vec<LockStatus>,
    },
}

impl Answer {
    pub(super) fn from_reply(reply: &Reply<'_>) -> Answer {
        match *reply {
            Reply::Hello(ref hello) => Answer::Hello(ServerInfo::from(hello)),
            Reply::Pong { .. } => Answer::Pong,
            Reply::Granted {
                token,
                ttl_ms,
                reentered,
            } => Answer::Granted {
                token,
                ttl_ms,
                reentered,
            },
            Reply::Busy { .. } => Answer::Busy,
            Reply::Timeout { .. } => Answer::Timeout,
            Reply::Released => Answer::Released,
            Reply::Extended { ttl_ms } => Answer::Extended { ttl_ms },
            Reply::NotHeld { reason } => Answer::NotHeld(reason),
            Reply::Error { code, message } => Answer::Error {
                code,
                message: String::from_utf8_lossy(message).into_owned(),
            },
            Reply::Authed => Answer::Authed,
            Reply::Status(status) => Answer::Status {
                total: status.total,
                next_cursor: status.next_cursor,
                locks: status.entries().map(|e| LockStatus::from(&e)).collect(),
            },
        }
    }

    /// The server closes the connection after these errors (frame
    /// boundaries are lost, or the connection was refused).
    pub(super) fn closes_connection(&self) -> bool {
        matches!(
            self,
            Answer::Error {
                code: ErrorCode::Protocol
                    | ErrorCode::UnknownKind
                    | ErrorCode::FrameTooLarge
                    | ErrorCode::Limit
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Auth,
                ..
            }
        )
    }
}

/// A wait the protocol can carry: finite up to [`WAIT_FINITE_MAX`], or
/// [`WAIT_FOREVER`]. Longer finite waits are refused, not cut short.
pub(super) fn check_wait(wait: Duration) -> Result<()> {
    if wait > WAIT_FINITE_MAX && wait != WAIT_FOREVER {
        return invalid(format!(
            "wait {:.0}s is over the longest finite wait, {}s (wait_ms is a u32 of milliseconds); pass WAIT_FOREVER to wait with no deadline",
            wait.as_secs_f64(),
            WAIT_FINITE_MAX.as_secs()
        ));
    }
    Ok(())
}

pub(super) fn check_owner(owner: &str) -> Result<()> {
    if !(1..=OWNER_LEN_CEILING).contains(&owner.len()) {
        return invalid(format!(
            "owner is {} bytes; use 1 to {OWNER_LEN_CEILING} bytes",
            owner.len()
        ));
    }
    Ok(())
}

pub(super) fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return invalid(format!(
            "lock name is empty; use 1 to {NAME_LEN_CEILING} bytes"
        ));
    }
    if name.len() > NAME_LEN_CEILING {
        return invalid(format!(
            "lock name {:?}... is {} bytes, over {NAME_LEN_CEILING}; use a shorter name",
            name.chars().take(16).collect::<String>(),
            name.len()
        ));
    }
    Ok(())
}

/// Milliseconds for the wire: rounded up (a positive wait never becomes 0,
/// which would mean "do not wait") and saturated at u32::MAX.
pub(super) fn duration_to_ms(d: Duration) -> u32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    ms.min(u32::MAX as u128) as u32
}
