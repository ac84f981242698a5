//! The operations: each request the client sends, as a type that names
//! the answers it may get ([`Call`]), and the [`Client`] methods that send
//! them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::debug;

use super::options::ttl_to_ms;
use super::{Client, Error, Lease, LockGuard, LockOptions, NotHeldCause, Result, invalid};
use crate::limits::{NAME_LEN_CEILING, OWNER_LEN_CEILING, PROTOCOL_VERSION, WAIT_MS_UNBOUNDED};
use crate::protocol::{
    self, FLAG_WAIT_FOREVER, HelloReply, NotHeldReason, Reply, Request, StatusEntry,
};

/// A wait with no deadline: `client.acquire(name, WAIT_FOREVER)` waits in
/// the server's queue until the lock is granted, keeping its place (one
/// request, not a loop of shorter waits). Needs a server without a
/// `--wait-max-ms` bound. If the connection breaks, the retry joins the
/// queue again at its tail.
///
/// The reply is read with no timeout. A server that dies closes the
/// connection, but a server whose host vanishes (powered off, cut off,
/// no FIN or RST) is noticed only by TCP keepalive, which the client sets
/// with the `keepalive` feature (on with `server`). Without it such a
/// wait is **not bounded**: nothing is outstanding on the connection, so
/// the operating system never gives up on it. Enable `keepalive` for
/// waits without deadline.
pub const WAIT_FOREVER: Duration = Duration::MAX;

/// The longest duration a request's millisecond field carries: `wait_ms` and
/// `ttl_ms` are u32s (about 49.7 days). Longer TTLs are refused.
pub(super) const MS_FIELD_MAX: Duration = Duration::from_millis(u32::MAX as u64);

/// The longest finite wait the protocol carries: `wait_ms` is a u32 (about
/// 49.7 days). Longer finite waits are refused; use [`WAIT_FOREVER`].
pub const WAIT_FINITE_MAX: Duration = MS_FIELD_MAX;

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
        match self.call(&Ping, 0) {
            Ok(()) => true,
            Err(e) => {
                debug!("health check of {}: {e}", self.inner.addr);
                false
            }
        }
    }

    /// PING: whether the server serves this client's requests, with the
    /// reason if not (for example
    /// [`ErrorCode::Auth`](crate::protocol::ErrorCode::Auth) from a server
    /// that needs a secret this client does not have; HELLO alone is
    /// answered before AUTH, so [`Client::server_info`] cannot tell).
    pub fn ping(&self) -> Result<()> {
        self.call(&Ping, self.inner.retries)
    }

    /// The server's version and limits.
    pub fn server_info(&self) -> Result<ServerInfo> {
        self.call(&Hello, self.inner.retries)
    }

    /// The state of lock `name`: `None` if nobody holds it.
    pub fn status(&self, name: &str) -> Result<Option<LockStatus>> {
        check_name(name)?;
        let page = self.call(&Status { name, cursor: 0 }, self.inner.retries)?;
        Ok(page.locks.into_iter().next())
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
            let page = self.call(&Status { name: "", cursor }, self.inner.retries)?;
            list.total = page.total;
            for lock in page.locks {
                if list.locks.len() == limit {
                    list.truncated = true;
                    return Ok(list);
                }
                list.locks.push(lock);
            }
            if page.next_cursor == 0 {
                return Ok(list);
            }
            cursor = page.next_cursor;
        }
    }

    /// Takes `name`, waiting on the server (in FIFO order with other waiters)
    /// for up to `wait`, or with no deadline for [`WAIT_FOREVER`].
    /// `Err(AcquireTimeout)` if it stayed held; a finite wait over
    /// [`WAIT_FINITE_MAX`] is `Err(InvalidArgument)`.
    pub fn acquire(&self, name: &str, wait: Duration) -> Result<Lease> {
        self.acquire_with(name, &LockOptions::new().wait(wait))
    }

    /// Takes `name` if it is free: `Ok(None)` if someone else holds it.
    pub fn try_acquire(&self, name: &str) -> Result<Option<Lease>> {
        self.take(name, &LockOptions::new())
    }

    /// [`Client::acquire`] returning a guard that releases on drop.
    pub fn lock(&self, name: &str, wait: Duration) -> Result<LockGuard<'_>> {
        self.lock_with(name, &LockOptions::new().wait(wait))
    }

    /// Takes `name` with its own TTL, wait, SESSION setting or owner
    /// ([`LockOptions`]; what is not set is the client's). With no wait set
    /// it fails at once if the lock is held: `Err(AcquireTimeout)`, as for a
    /// wait that ran out.
    pub fn acquire_with(&self, name: &str, options: &LockOptions) -> Result<Lease> {
        let started = Instant::now();
        match self.take(name, options)? {
            Some(lease) => Ok(lease),
            None => Err(Error::AcquireTimeout {
                name: name.to_owned(),
                waited: started.elapsed(),
            }),
        }
    }

    /// [`Client::acquire_with`] returning a guard that releases on drop.
    pub fn lock_with(&self, name: &str, options: &LockOptions) -> Result<LockGuard<'_>> {
        let lease = self.acquire_with(name, options)?;
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
        let answer = self.call(&Release { lease }, self.inner.retries);
        // Released or refused, the hold is not ours any more; a connection
        // failure keeps the record so the caller can release again.
        if matches!(answer, Ok(_) | Err(Error::Server { .. })) {
            self.forget(lease);
        }
        released(lease, answer?)
    }

    /// Sets the remaining TTL of `lease`'s hold to `ttl` from now; returns the
    /// TTL the server applied. `Err(NotHeld)` if the hold was lost.
    /// `lease` is not changed: its [`ttl`](Lease::ttl) and
    /// [`sent_at`](Lease::sent_at) still tell the grant's. [`Client::renew`]
    /// trusts them, so a lease extended here to a shorter TTL must not be
    /// handed to it.
    pub fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Duration> {
        self.extend_within(lease, ttl, self.inner.retries, None)
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
        let op = Extend {
            lease,
            ttl_ms: ttl_to_ms(ttl, "extend ttl")?,
        };
        let answer = self.call_within(&op, retries, deadline)?;
        self.extended(lease, answer)
    }

    /// What an EXTEND's answer means for `lease`.
    pub(super) fn extended(
        &self,
        lease: &Lease,
        answer: Result<u32, NotHeldReason>,
    ) -> Result<Duration> {
        match answer {
            Ok(ttl_ms) => Ok(Duration::from_millis(ttl_ms as u64)),
            Err(reason) => {
                self.forget(lease);
                Err(Error::NotHeld {
                    name: lease.name.clone(),
                    reason: NotHeldCause::Server(reason),
                })
            }
        }
    }

    /// ACQUIRE of `name` as `options` say, through the pool. `Ok(None)`:
    /// still held by another owner when the wait ended.
    pub(super) fn take(&self, name: &str, options: &LockOptions) -> Result<Option<Lease>> {
        let op = self.acquire_op(name, options)?;
        let (grant, sent) = self.call_sent(&op, self.inner.retries, None)?;
        Ok(self.acquired(op, grant, sent))
    }

    /// The ACQUIRE that takes `name` as `options` say, checked. Its owner
    /// is fixed here, so every retry sends the same one.
    pub(super) fn acquire_op<'a>(
        &self,
        name: &'a str,
        options: &LockOptions,
    ) -> Result<Acquire<'a>> {
        check_name(name)?;
        let wait = options.checked_wait()?;
        let owner = match options.owner_given()? {
            Some(owner) => owner.to_owned(),
            None => self.next_owner(),
        };
        Ok(Acquire {
            name,
            owner,
            ttl_ms: options.ttl_ms(self.inner.ttl_ms)?,
            wait,
            flags: options.flags(self.inner.session),
        })
    }

    /// The lease `grant` gives in answer to `op`, whose answered attempt
    /// was sent at `sent`, recorded for [`Client::release`]; `None` if it
    /// was not granted.
    pub(super) fn acquired(&self, op: Acquire<'_>, grant: Grant, sent: Instant) -> Option<Lease> {
        let granted = grant?;
        let lease = Lease {
            name: op.name.to_owned(),
            token: granted.token,
            ttl: Duration::from_millis(granted.ttl_ms as u64),
            reentered: granted.reentered.unwrap_or(false),
            sent_at: Some(sent),
            may_have_waited: op.may_wait(),
            owner: op.owner,
        };
        self.holds().insert(lease.name.clone(), lease.clone());
        Some(lease)
    }

    pub(super) fn next_owner(&self) -> String {
        let n = self.inner.owner_counter.fetch_add(1, Ordering::Relaxed);
        let owner = format!("{}:{n}", self.inner.client_id);
        debug_assert!(owner.len() <= OWNER_LEN_CEILING);
        owner
    }

    pub(super) fn holds(&self) -> MutexGuard<'_, HashMap<String, Lease>> {
        // A panic elsewhere while holding this lock cannot leave the map
        // half-updated (every update is one insert or remove).
        self.inner
            .holds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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

/// Sent in HELLO so server logs say which client connected.
const CLIENT_NAME: &str = concat!("distlockd-rust/", env!("CARGO_PKG_VERSION"));
const _: () = assert!(CLIENT_NAME.len() <= u8::MAX as usize);

/// One request and the replies that answer it. Each request type names
/// what its replies mean in [`Call::Answer`], so a reply that does not
/// answer it is found in one place ([`Call::answer`] returns `None`: a
/// protocol error) and callers match only answers that can happen. An
/// ERROR reply answers any request; the exchange turns it into
/// `Failure::Fatal(Error::Server)` before asking the request.
///
/// A request borrows its fields from the caller and is encoded again for
/// each attempt, because a waiting ACQUIRE's wait shrinks by the time
/// already spent.
pub(super) trait Call {
    /// What the replies to this request mean, copied out of the read
    /// buffer.
    type Answer;
    /// The request's kind, for messages.
    const KIND: &'static str;

    /// The frame to send; `wait_ms` is what is left of a waiting ACQUIRE's
    /// wait ([`Call::wait_ms_left`]).
    fn request(&self, wait_ms: u32) -> Request<'_>;

    /// What `reply` means, or `None` if it does not answer this request.
    fn answer(reply: &Reply<'_>) -> Option<Self::Answer>;

    /// How long the server may hold the reply back: zero, except for a
    /// waiting ACQUIRE.
    fn wait(&self) -> Duration {
        Duration::ZERO
    }

    /// Whether the server may hold the reply back (a waiting ACQUIRE).
    fn may_wait(&self) -> bool {
        !self.wait().is_zero()
    }

    /// An ACQUIRE that waits with no deadline.
    fn waits_forever(&self) -> bool {
        self.wait() == WAIT_FOREVER
    }

    /// `wait_ms` for the next attempt; 0 for a wait with no deadline,
    /// which [`Acquire::request`] sends as flag WAIT_FOREVER instead.
    fn wait_ms_left(&self, elapsed: Duration) -> u32 {
        match self.wait() {
            WAIT_FOREVER => 0,
            wait => duration_to_ms(wait.saturating_sub(elapsed)),
        }
    }
}

/// HELLO: the server's version and limits.
pub(super) struct Hello;

impl Call for Hello {
    type Answer = ServerInfo;
    const KIND: &'static str = "HELLO";

    fn request(&self, _: u32) -> Request<'_> {
        Request::Hello {
            version: PROTOCOL_VERSION,
            client_name: CLIENT_NAME.as_bytes(),
        }
    }

    fn answer(reply: &Reply<'_>) -> Option<ServerInfo> {
        match reply {
            Reply::Hello(hello) => Some(ServerInfo::from(hello)),
            _ => None,
        }
    }
}

/// AUTH with the server's shared secret.
pub(super) struct Auth<'a> {
    pub(super) secret: &'a [u8],
}

impl Call for Auth<'_> {
    type Answer = ();
    const KIND: &'static str = "AUTH";

    fn request(&self, _: u32) -> Request<'_> {
        Request::Auth {
            secret: self.secret,
        }
    }

    fn answer(reply: &Reply<'_>) -> Option<()> {
        matches!(reply, Reply::Authed).then_some(())
    }
}

/// PING: whether the server serves this client's requests.
pub(super) struct Ping;

impl Call for Ping {
    type Answer = ();
    const KIND: &'static str = "PING";

    fn request(&self, _: u32) -> Request<'_> {
        Request::Ping
    }

    fn answer(reply: &Reply<'_>) -> Option<()> {
        matches!(reply, Reply::Pong { .. }).then_some(())
    }
}

pub(super) struct Acquire<'a> {
    pub(super) name: &'a str,
    pub(super) owner: String,
    /// 0: the server's default TTL.
    pub(super) ttl_ms: u32,
    pub(super) wait: Duration,
    pub(super) flags: u8,
}

/// An ACQUIRE's answer: the hold it granted, or `None` if another owner
/// held the lock for the whole wait (BUSY or TIMEOUT).
pub(super) type Grant = Option<Granted>;

/// What GRANTED carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Granted {
    pub(super) token: u64,
    pub(super) ttl_ms: u32,
    /// `None` from a version 1 server, which cannot say.
    pub(super) reentered: Option<bool>,
}

impl Call for Acquire<'_> {
    type Answer = Grant;
    const KIND: &'static str = "ACQUIRE";

    fn request(&self, wait_ms: u32) -> Request<'_> {
        Request::Acquire(protocol::Acquire {
            name: self.name.as_bytes(),
            owner: self.owner.as_bytes(),
            ttl_ms: self.ttl_ms,
            wait_ms,
            flags: match self.waits_forever() {
                true => self.flags | FLAG_WAIT_FOREVER,
                false => self.flags,
            },
        })
    }

    fn answer(reply: &Reply<'_>) -> Option<Grant> {
        match *reply {
            Reply::Granted {
                token,
                ttl_ms,
                reentered,
            } => Some(Some(Granted {
                token,
                ttl_ms,
                reentered,
            })),
            // BUSY answers a wait of zero, including a retry whose wait was
            // used up by failed attempts.
            Reply::Busy { .. } | Reply::Timeout { .. } => Some(None),
            _ => None,
        }
    }

    fn wait(&self) -> Duration {
        self.wait
    }
}

/// RELEASE of the hold `lease` names.
pub(super) struct Release<'a> {
    pub(super) lease: &'a Lease,
}

impl Call for Release<'_> {
    /// `Err`: the server's NOT_HELD reason.
    type Answer = Result<(), NotHeldReason>;
    const KIND: &'static str = "RELEASE";

    fn request(&self, _: u32) -> Request<'_> {
        Request::Release {
            name: self.lease.name.as_bytes(),
            owner: self.lease.owner.as_bytes(),
            token: self.lease.token,
        }
    }

    fn answer(reply: &Reply<'_>) -> Option<Self::Answer> {
        match *reply {
            Reply::Released => Some(Ok(())),
            Reply::NotHeld { reason } => Some(Err(reason)),
            _ => None,
        }
    }
}

/// EXTEND of the hold `lease` names to `ttl_ms` from now.
pub(super) struct Extend<'a> {
    pub(super) lease: &'a Lease,
    pub(super) ttl_ms: u32,
}

impl Call for Extend<'_> {
    /// The TTL the server applied, in ms; `Err`: its NOT_HELD reason.
    type Answer = Result<u32, NotHeldReason>;
    const KIND: &'static str = "EXTEND";

    fn request(&self, _: u32) -> Request<'_> {
        Request::Extend {
            name: self.lease.name.as_bytes(),
            owner: self.lease.owner.as_bytes(),
            token: self.lease.token,
            ttl_ms: self.ttl_ms,
        }
    }

    fn answer(reply: &Reply<'_>) -> Option<Self::Answer> {
        match *reply {
            Reply::Extended { ttl_ms } => Some(Ok(ttl_ms)),
            Reply::NotHeld { reason } => Some(Err(reason)),
            _ => None,
        }
    }
}

/// STATUS of one lock (`name`), or a page of all of them (`name` empty).
pub(super) struct Status<'a> {
    pub(super) name: &'a str,
    pub(super) cursor: u32,
}

/// A STATUS reply's page.
pub(super) struct StatusPage {
    pub(super) total: u32,
    /// 0: the last page.
    pub(super) next_cursor: u32,
    pub(super) locks: Vec<LockStatus>,
}

impl Call for Status<'_> {
    type Answer = StatusPage;
    const KIND: &'static str = "STATUS";

    fn request(&self, _: u32) -> Request<'_> {
        Request::Status {
            name: self.name.as_bytes(),
            cursor: self.cursor,
        }
    }

    fn answer(reply: &Reply<'_>) -> Option<StatusPage> {
        match reply {
            Reply::Status(status) => Some(StatusPage {
                total: status.total,
                next_cursor: status.next_cursor,
                locks: status.entries().map(|e| LockStatus::from(&e)).collect(),
            }),
            _ => None,
        }
    }
}

/// A RELEASE's answer for `lease`.
pub(super) fn released(lease: &Lease, answer: Result<(), NotHeldReason>) -> Result<()> {
    answer.map_err(|reason| Error::NotHeld {
        name: lease.name.clone(),
        reason: NotHeldCause::Server(reason),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, StatusReply};

    /// An EXTEND past what `ttl_ms` carries is refused before anything is
    /// sent (nothing listens at the address), not cut to 49.7 days.
    #[test]
    fn an_extend_past_what_a_request_carries_is_refused_not_cut() {
        let client = Client::new("127.0.0.1:9").unwrap();
        let lease = Lease::from_parts("job", "me", 1, Duration::from_secs(10));
        for ttl in [MS_FIELD_MAX + Duration::from_millis(1), Duration::MAX] {
            match client.extend(&lease, ttl) {
                Err(Error::InvalidArgument { what }) => {
                    assert!(what.contains("extend ttl"), "{what}")
                }
                other => panic!("extend by {ttl:?}: {other:?}"),
            }
        }
    }

    /// One reply of every kind (ERROR aside, which the exchange handles).
    fn replies() -> Vec<Reply<'static>> {
        vec![
            Reply::Hello(HelloReply {
                version: PROTOCOL_VERSION,
                frame_size_max: 1024,
                name_len_max: 64,
                owner_len_max: 64,
                lock_ttl_ms_default: 10_000,
                lock_ttl_ms_max: 60_000,
                wait_ms_max: WAIT_MS_UNBOUNDED,
                server_version: b"2.0.0",
            }),
            Reply::Pong {
                uptime_ms: 1,
                server_version: b"2.0.0",
            },
            Reply::Granted {
                token: 7,
                ttl_ms: 500,
                reentered: Some(true),
            },
            Reply::Busy {
                remaining_ms: 1,
                waiters: 0,
            },
            Reply::Timeout { waited_ms: 1 },
            Reply::Released,
            Reply::Extended { ttl_ms: 900 },
            Reply::NotHeld {
                reason: NotHeldReason::OtherOwner,
            },
            Reply::Authed,
            Reply::Status(StatusReply {
                total: 0,
                next_cursor: 0,
                count: 0,
                entries: &[],
            }),
        ]
    }

    /// The kinds of the replies `answer` takes, by their `Debug` names.
    fn answered<T>(answer: fn(&Reply<'_>) -> Option<T>) -> Vec<String> {
        replies()
            .iter()
            .filter(|r| answer(r).is_some())
            .map(|r| {
                format!("{r:?}")
                    .split([' ', '('])
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn each_request_takes_only_the_replies_that_answer_it() {
        assert_eq!(answered(Hello::answer), ["Hello"]);
        assert_eq!(answered(Auth::answer), ["Authed"]);
        assert_eq!(answered(Ping::answer), ["Pong"]);
        assert_eq!(answered(Acquire::answer), ["Granted", "Busy", "Timeout"]);
        assert_eq!(answered(Release::answer), ["Released", "NotHeld"]);
        assert_eq!(answered(Extend::answer), ["Extended", "NotHeld"]);
        assert_eq!(answered(Status::answer), ["Status"]);
        let error = Reply::Error {
            code: ErrorCode::BadArgument,
            message: b"no",
        };
        assert!(Acquire::answer(&error).is_none());
    }

    #[test]
    fn answers_carry_what_their_replies_say() {
        let granted = Reply::Granted {
            token: 7,
            ttl_ms: 500,
            reentered: None,
        };
        assert_eq!(
            Acquire::answer(&granted),
            Some(Some(Granted {
                token: 7,
                ttl_ms: 500,
                reentered: None
            }))
        );
        assert_eq!(
            Acquire::answer(&Reply::Timeout { waited_ms: 3 }),
            Some(None)
        );
        let not_held = Reply::NotHeld {
            reason: NotHeldReason::TokenMismatch,
        };
        assert_eq!(
            Release::answer(&not_held),
            Some(Err(NotHeldReason::TokenMismatch))
        );
        assert_eq!(
            Extend::answer(&Reply::Extended { ttl_ms: 900 }),
            Some(Ok(900))
        );
    }

    #[test]
    fn a_wait_forever_is_sent_as_a_flag() {
        let acquire = |wait| Acquire {
            name: "a",
            owner: "o".to_owned(),
            ttl_ms: 10,
            wait,
            flags: 0,
        };
        let forever = acquire(WAIT_FOREVER);
        assert!(forever.may_wait() && forever.waits_forever());
        assert_eq!(forever.wait_ms_left(Duration::from_secs(5)), 0);
        let Request::Acquire(sent) = forever.request(0) else {
            panic!("not an ACQUIRE");
        };
        assert_eq!(sent.flags, FLAG_WAIT_FOREVER);
        let finite = acquire(Duration::from_millis(1500));
        assert_eq!(finite.wait_ms_left(Duration::from_millis(1000)), 500);
        assert_eq!(finite.wait_ms_left(Duration::from_secs(2)), 0);
        assert!(!acquire(Duration::ZERO).may_wait());
        assert!(!Ping.may_wait());
    }
}
