//! The renewal engine: a [`RenewingGuard`] and the thread that renews it.
//!
//! One engine renews every hold that is renewed in the background: the
//! guards of [`Client::lock_renewing`] and [`Election`](super::Election),
//! and any hold handed to [`Client::renew`], as `distlockd run` hands its
//! own. A hold is [`Held`] through the pool or, as a [`SessionLease`], on a
//! connection of its own.
//!
//! The guard owns one background thread that sends EXTEND every TTL / n
//! ([`Renewal::renewals_per_ttl`], by default the client's
//! [`ClientBuilder::renewals_per_ttl`](super::ClientBuilder::renewals_per_ttl),
//! 3) until the guard is dropped or unlocked, or the lease is lost. Guard
//! and thread share one [`State`] under a mutex; the condition variable
//! wakes the thread when the guard stops it and wakes
//! [`RenewingGuard::wait_lost`] when the lease is renewed or lost. The
//! thread tells each step to the [`Renewal::on_event`] observer, if any.
//!
//! The timing rule for loss is documented on [`RenewingGuard`].

use std::any::Any;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::calls::MS_FIELD_MAX;
use super::{
    Binding, Client, Error, Lease, LockOptions, NotHeldCause, RENEWALS_PER_TTL_MAX,
    RENEWALS_PER_TTL_MIN, Result, SESSION_PROBE_INTERVAL, SessionLease, invalid, not_held_text,
};
use crate::protocol::NotHeldReason;

/// The shortest gap between two renewals, so a tiny granted TTL cannot make
/// the thread spin.
const RENEW_INTERVAL_MIN: Duration = Duration::from_millis(1);

/// How a lease was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lost {
    /// The server answered a renewal with NOT_HELD: the hold expired or was
    /// released (e.g. by another process holding its owner and token).
    NotHeld(NotHeldReason),
    /// No renewal was confirmed before the lease's end (see
    /// [`RenewingGuard`]); `last_error` is why the latest renewal failed, `None`
    /// if it was still under way.
    LeaseEnded { last_error: Option<String> },
    /// A SESSION hold's connection closed or failed (`error` says how),
    /// before the lease's end: the server releases a SESSION hold the
    /// moment its connection closes, so it may already have granted the
    /// lock to someone else.
    SessionClosed { error: String },
    /// The [`Renewal::on_event`] observer panicked (`message` is the
    /// panic's): the engine stopped calling it and stopped renewing, so
    /// the hold lasts until its TTL unless the guard releases it. A bug
    /// in the observer, told here because the program would otherwise
    /// only learn it at the lease's end.
    ObserverPanicked { message: String },
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::NotHeld(reason) => write!(
                f,
                "the server refused to renew the lease: {}",
                not_held_text(NotHeldCause::Server(*reason))
            ),
            Lost::LeaseEnded { last_error: None } => f.write_str(
                "the lease ended before a renewal was confirmed (one was still under way)",
            ),
            Lost::LeaseEnded {
                last_error: Some(error),
            } => write!(
                f,
                "the lease ended before a renewal was confirmed; the last renewal failed: {error}"
            ),
            Lost::SessionClosed { error } => write!(
                f,
                "the SESSION connection was lost ({error}); the server released the lock at the disconnect"
            ),
            Lost::ObserverPanicked { message } => write!(
                f,
                "the renewal observer (Renewal::on_event) panicked ({message}), so renewals stopped; fix the observer, it must not panic"
            ),
        }
    }
}

impl std::error::Error for Lost {}

type LostCallback = Box<dyn FnOnce(&Lost) + Send>;
type EventObserver = Box<dyn FnMut(&RenewalEvent) + Send>;

/// A hold to renew: through the client's pool, or a SESSION hold on a
/// connection of its own. More kinds of hold may come, so a `match` on it
/// needs a `_` arm:
///
/// ```
/// use distlockd::client::Held;
///
/// fn kind(held: &Held) -> &'static str {
///     match held {
///         Held::Pooled(_) => "pooled",
///         Held::Session(_) => "session",
///         _ => "another kind",
///     }
/// }
/// ```
///
/// Without it the match does not compile:
///
/// ```compile_fail,E0004
/// # use distlockd::client::Held;
/// fn kind(held: &Held) -> &'static str {
///     match held {
///         Held::Pooled(_) => "pooled",
///         Held::Session(_) => "session",
///     }
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Held {
    Pooled(Lease),
    Session(SessionLease),
}

impl Held {
    pub fn lease(&self) -> &Lease {
        match self {
            Held::Pooled(lease) => lease,
            Held::Session(session) => &session.lease,
        }
    }
}

impl From<Lease> for Held {
    fn from(lease: Lease) -> Held {
        Held::Pooled(lease)
    }
}

impl From<SessionLease> for Held {
    fn from(session: SessionLease) -> Held {
        Held::Session(session)
    }
}

/// How the engine renews a hold: when, how hard, and who hears of each
/// step. [`Renewal::new`] is what [`Client::lock_renewing`] uses.
pub struct Renewal {
    /// `None`: the client's.
    renewals_per_ttl: Option<u32>,
    /// After a failed renewal, the next one comes this long after; `None`:
    /// after the client's backoff (50 ms, doubling per failure up to 1 s).
    retry_after_failure: Option<Duration>,
    /// Retries of a failed connection within one renewal through the pool.
    retries: u32,
    observer: Option<EventObserver>,
}

impl Renewal {
    /// Renew every TTL / the client's
    /// [`renewals_per_ttl`](super::ClientBuilder::renewals_per_ttl); one
    /// attempt per renewal, the next after the client's backoff if it
    /// failed; no observer.
    pub fn new() -> Renewal {
        Renewal {
            renewals_per_ttl: None,
            retry_after_failure: None,
            retries: 0,
            observer: None,
        }
    }

    /// While renewals succeed, renew every granted TTL / `n`, counted from
    /// when the last confirmed renewal (or the grant) was sent; from 2 to
    /// 100.
    pub fn renewals_per_ttl(mut self, n: u32) -> Self {
        self.renewals_per_ttl = Some(n);
        self
    }

    /// After a failed renewal, send the next one `delay` later (default:
    /// after the client's backoff). At most the lease's TTL:
    /// [`Client::renew`] refuses a longer one, after which no renewal
    /// could follow a failure before the lease ends.
    pub fn retry_after_failure(mut self, delay: Duration) -> Self {
        self.retry_after_failure = Some(delay);
        self
    }

    /// A renewal through the pool retries a failed connection up to
    /// `retries` times with the client's backoff, as any request of the
    /// client does, but never past the lease's end (default 0: the
    /// renewals themselves are the retries).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Calls `f` on the renewal thread at each step: before each EXTEND is
    /// sent, when it is confirmed or fails, and once when the lease is lost
    /// (the last event). Keep `f` short: the next renewal waits for it.
    /// Never called once the guard's drop or `unlock` has returned.
    ///
    /// `f` must not panic. If it does, the engine stops calling it and
    /// stops renewing, and the lease is lost with
    /// [`Lost::ObserverPanicked`] (told to `on_lost` and `wait_lost`; the
    /// guard's drop still releases the hold).
    pub fn on_event(mut self, f: impl FnMut(&RenewalEvent) + Send + 'static) -> Self {
        self.observer = Some(Box::new(f));
        self
    }
}

impl Default for Renewal {
    fn default() -> Renewal {
        Renewal::new()
    }
}

impl fmt::Debug for Renewal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renewal")
            .field("renewals_per_ttl", &self.renewals_per_ttl)
            .field("retry_after_failure", &self.retry_after_failure)
            .field("retries", &self.retries)
            .field("observed", &self.observer.is_some())
            .finish()
    }
}

/// One step of the renewal engine, as [`Renewal::on_event`] hears it.
#[derive(Debug)]
#[non_exhaustive]
pub enum RenewalEvent {
    /// An EXTEND is about to be sent; the server cannot start its TTL
    /// before `sent_at`.
    Sending { sent_at: Instant },
    /// The EXTEND sent at `sent_at` was confirmed with `ttl`: the server
    /// cannot expire the hold before `sent_at + ttl`.
    Renewed { sent_at: Instant, ttl: Duration },
    /// The EXTEND failed (the connection, or the server refused it); the
    /// next follows unless the lease is lost first.
    Failed(Error),
    /// The lease is lost: no more renewals. The last event.
    Lost(Lost),
}

/// A held lock that a background thread keeps renewing until the guard is
/// dropped or [unlocked](RenewingGuard::unlock), or the lease is lost.
/// See [`Client::lock_renewing`].
///
/// Dropping or unlocking stops the renewal thread and joins it *before* the
/// RELEASE is sent, so no renewal is ever sent once drop or `unlock`
/// returns. If an EXTEND is in flight at that moment, drop waits for it,
/// which takes at most the client's timeout and never past the lease's end.
/// A release that fails on drop never panics: it is reported as for a
/// [`LockGuard`](super::LockGuard) (logged, counted in
/// [`Client::drop_release_errors`], handed to
/// [`ClientBuilder::on_drop_release_error`](super::ClientBuilder::on_drop_release_error)'s
/// callback). No release is sent after the server said the hold was gone,
/// and none that fails after a SESSION hold's connection closed counts as
/// failed: the close ended the hold ([`Lost::SessionClosed`]).
///
/// Loss is told three ways: [`is_lost`](RenewingGuard::is_lost) to poll,
/// [`wait_lost`](RenewingGuard::wait_lost) to block, and
/// [`on_lost`](RenewingGuard::on_lost) to be called back. After a loss the
/// thread stops renewing; the hold may still exist on the server until its
/// TTL, and dropping the guard still releases it unless the server already
/// said it was not held.
///
/// # SESSION holds
///
/// A guard for a lock taken with
/// [`LockOptions::session`](super::LockOptions::session) (or from a client
/// built with [`session(true)`](super::ClientBuilder::session)), for a
/// [`SessionLease`] handed to [`Client::renew`], and every
/// [`Leadership`](super::Leadership) holds a SESSION hold. The server
/// releases it the moment the connection that acquired it closes, whatever
/// its TTL, so the guard keeps that connection to itself, out of the pool:
/// renewals and the release go over it and no other request can break it.
/// A renewal waits for its reply until the lease's end, not the client's
/// timeout, because giving up would mean closing the connection (a server
/// paused for less than the remaining lease costs nothing). Any failure of
/// that connection ends the lease at once ([`Lost::SessionClosed`]).
///
/// This trades the timing rule below for fast release when the holder
/// dies: a connection can close at any moment (a network failure, the
/// server's `idle_timeout_ms` or `write_timeout_ms`), and the server may
/// grant the lock to the next waiter before the holder can know. The guard
/// learns of a close the server made (its FIN arrived) within
/// 100 ms, by probing the idle connection between renewals (and on every
/// [`is_lost`](RenewingGuard::is_lost)); of a connection that went silent,
/// at the next renewal's failure or the lease's end. Only fencing tokens
/// protect a resource across that gap.
///
/// # When the lease counts as lost
///
/// The client cannot see the server's clock, so it keeps the earliest moment
/// at which the server may expire the hold, `valid_until`: the moment the
/// last confirmed ACQUIRE or EXTEND was *sent* (for an ACQUIRE, the attempt
/// the server answered, [`Lease::sent_at`]; for an EXTEND, before any of
/// its retries), plus the TTL the server granted. The server started that
/// TTL on receiving the request, which is no earlier (assuming both clocks
/// run at the same rate). A grant that may have come after a wait in the
/// queue, and a lease with no send time, are renewed once before the guard
/// is returned, because the TTL's start is unknown. The lease is lost:
///
/// - when the server answers an EXTEND with NOT_HELD ([`Lost::NotHeld`]), or
/// - at `valid_until` if no EXTEND was confirmed before it
///   ([`Lost::LeaseEnded`]), even if the server has not expired it yet: past
///   that moment the holder can no longer know.
///
/// Loss is final: an EXTEND confirmed after `valid_until` does not bring the
/// lease back, because someone may already have seen it lost.
/// [`RenewingGuard::is_lost`] reads the clock itself, so it is exact for
/// the lease's end even while the renewal thread is blocked in I/O (for a
/// SESSION hold's connection closing, see above). The thread's connect and
/// read timeouts end at `valid_until` too, so the
/// [`RenewingGuard::on_lost`] callback and [`RenewingGuard::wait_lost`] learn
/// of a loss at `valid_until` at the latest, give or take scheduling (and
/// unless the thread is still waiting for a free pooled connection, which
/// other threads' requests hold for at most their own timeouts).
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RenewingGuard {
    /// Its own handle on the client, so the guard may outlive the caller's.
    client: Client,
    lease: Lease,
    /// A SESSION hold's own connection.
    binding: Option<Arc<Binding>>,
    shared: Arc<Shared>,
    /// `None` once stopped (in `unlock` or drop).
    renewer: Option<JoinHandle<()>>,
    released: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    /// Set by the guard: the thread exits without sending anything more.
    stopping: bool,
    /// The earliest moment the server may expire the hold.
    valid_until: Instant,
    /// Final once set.
    lost: Option<Lost>,
    /// Why the latest renewal failed, cleared by a success.
    last_error: Option<String>,
    on_lost: Option<LostCallback>,
    /// The thread has handed the loss to `on_lost` (or found none set), so
    /// a callback set from now on runs at once on the caller's thread.
    loss_delivered: bool,
}

impl State {
    /// The loss, declaring it first if the lease's end has passed.
    fn check(&mut self, now: Instant) -> Option<&Lost> {
        if self.lost.is_none() && now >= self.valid_until {
            self.lost = Some(Lost::LeaseEnded {
                last_error: self.last_error.clone(),
            });
        }
        debug_assert!(self.lost.is_some() || !self.loss_delivered);
        self.lost.as_ref()
    }

    /// [`State::check`], and a SESSION hold whose connection closed before
    /// the lease's end is lost too.
    fn check_binding(&mut self, now: Instant, binding: Option<&Binding>) -> Option<&Lost> {
        if self.check(now).is_none()
            && let Some(error) = binding.and_then(Binding::closed)
        {
            self.lost = Some(Lost::SessionClosed { error });
        }
        self.lost.as_ref()
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A user callback never runs under this lock, and every update is
        // complete before anything that could panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// When renewals are sent, resolved against the client's settings.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    renewals_per_ttl: u32,
    retry_after_failure: Option<Duration>,
    retries: u32,
}

impl Schedule {
    /// Time between renewals for a hold granted `ttl`.
    fn interval(&self, ttl: Duration) -> Duration {
        (ttl / self.renewals_per_ttl).max(RENEW_INTERVAL_MIN)
    }

    /// Whether the schedule can renew a hold granted `ttl`: a delay after
    /// a failure longer than the TTL would leave no renewal before the
    /// lease's end (and would overflow the clock for `Duration::MAX`).
    fn check_for(&self, ttl: Duration) -> Result<()> {
        match self.retry_after_failure {
            Some(delay) if delay > ttl => invalid(format!(
                "retry_after_failure {delay:?}: over the lease's TTL of {ttl:?}, so no renewal would follow a failed one before the lease ends; use at most the TTL (e.g. TTL/10)"
            )),
            _ => Ok(()),
        }
    }

    /// Time from the `failures`th failed renewal in a row to the next.
    fn retry_delay(&self, client: &Client, failures: u32) -> Duration {
        match self.retry_after_failure {
            Some(delay) => delay.max(RENEW_INTERVAL_MIN),
            None => client.backoff(failures),
        }
    }
}

/// What the renewal thread woke up for.
enum Wake {
    Stop,
    Lost,
    /// Renew now; no I/O past this moment (the lease's end).
    Renew {
        deadline: Instant,
    },
}

impl Client {
    /// [`Client::lock`] with a guard that renews the hold in the background
    /// every TTL / [`renewals_per_ttl`](super::ClientBuilder::renewals_per_ttl)
    /// until it is dropped, unlocked or lost. The renewal thread keeps a
    /// handle on the client (a clone), so the guard may outlive this one.
    ///
    /// A grant that may have come after a wait in the queue (a wait was
    /// given) is renewed once before this returns: its TTL counts from the
    /// grant, which the client cannot see, and renewing pins it. If that
    /// renewal fails the hold is released (best effort) and the error
    /// returned. See [`Client::renew`].
    ///
    /// # Panics
    ///
    /// If the operating system cannot start a thread (after releasing the
    /// hold), as [`std::thread::spawn`] does.
    pub fn lock_renewing(&self, name: &str, wait: Duration) -> Result<RenewingGuard> {
        self.lock_renewing_with(name, &LockOptions::new().wait(wait))
    }

    /// [`Client::lock_renewing`] with the lock's own TTL, wait, SESSION
    /// setting or owner ([`LockOptions`]). Renewals ask for the TTL the
    /// server granted.
    ///
    /// # Panics
    ///
    /// As [`Client::lock_renewing`].
    pub fn lock_renewing_with(&self, name: &str, options: &LockOptions) -> Result<RenewingGuard> {
        let held = match options.is_session(self.inner.session) {
            true => Held::Session(self.acquire_session(name, options)?),
            false => Held::Pooled(self.acquire_with(name, options)?),
        };
        self.renew(held, Renewal::new())
    }

    /// Starts the renewal engine on a hold the caller took: the guard
    /// renews it as `renewal` says until it is dropped, unlocked or lost,
    /// and releases it then. Renewals ask for the lease's TTL.
    ///
    /// The engine counts the lease from [`Lease::sent_at`], which the
    /// client read just before it sent the request that granted the hold:
    /// the server cannot expire the hold before `sent_at + ttl`, and the
    /// first renewal is due a renewal interval after it. When that moment
    /// is not known, the hold is renewed once before this returns, and the
    /// lease counted from that renewal: a lease from [`Lease::from_parts`]
    /// (no send time), a grant that may have come after a wait in the
    /// queue (its TTL began at the grant, which the client cannot see),
    /// and a lease whose first renewal is due already. If that renewal
    /// fails the hold is released (best effort, not after `NotHeld`) and
    /// the error returned. Do not hand it a lease whose hold was extended
    /// to a shorter TTL by [`Client::extend`] since (that call does not
    /// update the lease); [`SessionLease::extend`] does update it.
    ///
    /// A [`SessionLease`] is renewed through its own client (the one that
    /// took it, whose connection carries the hold), whatever `self` is; a
    /// pooled [`Lease`] through `self`.
    ///
    /// A lease or `renewal` the engine cannot follow (a TTL of zero or
    /// over what an EXTEND carries, `renewals_per_ttl` out of range, a
    /// `retry_after_failure` over the TTL) is `Err(InvalidArgument)`, after
    /// the hold is released (best effort).
    ///
    /// # Panics
    ///
    /// As [`Client::lock_renewing`].
    pub fn renew(&self, held: impl Into<Held>, renewal: Renewal) -> Result<RenewingGuard> {
        let (client, mut lease, binding) = match held.into() {
            Held::Pooled(lease) => (self.clone(), lease, None),
            Held::Session(session) => (session.client, session.lease, Some(session.binding)),
        };
        let schedule = match client.schedule(&renewal, &lease) {
            Ok(schedule) => schedule,
            Err(e) => {
                if let Err(release) = release(&client, &lease, binding.as_deref()) {
                    warn!(
                        "releasing lock {:?} after a refused renewal schedule: {release}",
                        lease.name
                    );
                }
                return Err(e);
            }
        };
        let confirmed_at = match lease.sent_at {
            Some(sent)
                if !lease.may_have_waited && sent.elapsed() < schedule.interval(lease.ttl) =>
            {
                sent
            }
            _ => pin(&client, &mut lease, binding.as_deref())?,
        };
        RenewingGuard::start(
            client,
            lease,
            binding,
            confirmed_at,
            schedule,
            renewal.observer,
        )
    }

    /// `renewal`'s schedule for `lease`, checked, with the client's
    /// settings for what it leaves unset.
    fn schedule(&self, renewal: &Renewal, lease: &Lease) -> Result<Schedule> {
        let ttl = lease.ttl;
        // Renewals ask for the lease's TTL, which an EXTEND carries.
        if ttl.is_zero() || ttl > MS_FIELD_MAX {
            return invalid(format!(
                "lease ttl {ttl:?} for lock {:?}: renewals ask for the lease's TTL, which must be positive and at most {MS_FIELD_MAX:?} (an EXTEND's u32 of milliseconds); give the TTL the server granted, e.g. Lease::from_parts(name, owner, token, Duration::from_secs(10))",
                lease.name
            ));
        }
        let renewals_per_ttl = renewal
            .renewals_per_ttl
            .unwrap_or(self.inner.renewals_per_ttl);
        if !(RENEWALS_PER_TTL_MIN..=RENEWALS_PER_TTL_MAX).contains(&renewals_per_ttl) {
            return invalid(format!(
                "renewals_per_ttl {renewals_per_ttl}: use {RENEWALS_PER_TTL_MIN} to {RENEWALS_PER_TTL_MAX} (3 renews every TTL/3)"
            ));
        }
        let schedule = Schedule {
            renewals_per_ttl,
            retry_after_failure: renewal.retry_after_failure,
            retries: renewal.retries,
        };
        schedule.check_for(ttl)?;
        Ok(schedule)
    }
}

impl RenewingGuard {
    /// Starts renewing `lease` (over `binding` for a SESSION hold), granted
    /// or last renewed by a request sent at `confirmed_at`.
    fn start(
        client: Client,
        lease: Lease,
        binding: Option<Arc<Binding>>,
        confirmed_at: Instant,
        schedule: Schedule,
        observer: Option<EventObserver>,
    ) -> Result<RenewingGuard> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stopping: false,
                // A TTL past the clock's range counts as over at once.
                valid_until: confirmed_at.checked_add(lease.ttl).unwrap_or(confirmed_at),
                lost: None,
                last_error: None,
                on_lost: None,
                loss_delivered: false,
            }),
            changed: Condvar::new(),
        });
        let renewer = Renewer {
            client: client.clone(),
            lease: lease.clone(),
            binding: binding.clone(),
            shared: Arc::clone(&shared),
            next: confirmed_at
                .checked_add(schedule.interval(lease.ttl))
                .unwrap_or(confirmed_at),
            schedule,
            observer,
        };
        let spawned = std::thread::Builder::new()
            .name("distlockd-renew".to_owned())
            .spawn(move || renewer.run());
        let renewer = match spawned {
            Ok(handle) => handle,
            Err(e) => {
                let name = &lease.name;
                if let Err(release) = release(&client, &lease, binding.as_deref()) {
                    warn!("releasing lock {name:?} after a failed thread start: {release}");
                }
                panic!("cannot start the renewal thread for lock {name:?}: {e}");
            }
        };
        Ok(RenewingGuard {
            client,
            lease,
            binding,
            shared,
            renewer: Some(renewer),
            released: false,
        })
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The fencing token; it does not change when the hold is renewed.
    pub fn token(&self) -> u64 {
        self.lease.token
    }

    pub fn name(&self) -> &str {
        &self.lease.name
    }

    /// Whether the lease is lost. Exact for the lease's end: reads the
    /// clock, so true from then on, even while a renewal is still under way.
    /// For a SESSION hold it also looks whether the server closed the hold's
    /// connection (true if it did); a connection that broke without the
    /// server's close reaching the client is only found by the next renewal
    /// (see [SESSION holds](RenewingGuard#session-holds)).
    pub fn is_lost(&self) -> bool {
        self.lost().is_some()
    }

    /// How the lease was lost, or `None` while it is held. Looks as
    /// [`is_lost`](RenewingGuard::is_lost) does.
    pub fn lost(&self) -> Option<Lost> {
        if let Some(binding) = &self.binding {
            binding.probe();
        }
        let mut state = self.shared.state();
        let was_lost = state.lost.is_some();
        let lost = state
            .check_binding(Instant::now(), self.binding.as_deref())
            .cloned();
        drop(state);
        if !was_lost && lost.is_some() {
            // The renewal thread delivers it (on_lost, wait_lost).
            self.shared.changed.notify_all();
        }
        lost
    }

    /// Blocks until the lease is lost (returning how) or `timeout` passes
    /// (returning `None`); `Duration::MAX` waits for the loss with no
    /// deadline.
    pub fn wait_lost(&self, timeout: Duration) -> Option<Lost> {
        // `None`: a timeout past the clock's range (Duration::MAX), which
        // is no deadline.
        let give_up = Instant::now().checked_add(timeout);
        let mut state = self.shared.state();
        loop {
            let now = Instant::now();
            if let Some(lost) = state.check(now) {
                return Some(lost.clone());
            }
            if give_up.is_some_and(|give_up| now >= give_up) {
                return None;
            }
            // Renewals move `valid_until` and notify; wake at it regardless.
            let until = give_up.map_or(state.valid_until, |give_up| give_up.min(state.valid_until));
            state = self
                .shared
                .changed
                .wait_timeout(state, until - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Calls `f` once when the lease is lost, on the renewal thread, which
    /// waits for it (so must the guard's drop: keep `f` short, e.g. set a
    /// flag or send on a channel). If the loss was already handed on, `f`
    /// runs at once on this thread. A later call replaces an earlier `f`
    /// that has not run. Never called after the guard is dropped or
    /// unlocked, nor for a guard that was not lost. A panic in `f` on the
    /// renewal thread is caught and logged; on this thread it reaches the
    /// caller.
    pub fn on_lost(&self, f: impl FnOnce(&Lost) + Send + 'static) {
        let mut state = self.shared.state();
        if state.loss_delivered {
            let lost = state.lost.clone().expect("a delivered loss is recorded");
            drop(state);
            f(&lost);
            return;
        }
        let replaced = state.on_lost.replace(Box::new(f));
        drop(state);
        drop(replaced); // outside the lock: its drop is user code
    }

    /// Stops renewing, releases now and reports the outcome: `NotHeld` if the
    /// hold was already gone.
    pub fn unlock(mut self) -> Result<()> {
        self.stop_renewing();
        self.released = true;
        self.release_now()
    }

    /// Sends the RELEASE. A SESSION hold whose connection closed ended with
    /// it (the server releases it at the close, or when it sees the close):
    /// the RELEASE may free it sooner, and whatever it meets, the answer is
    /// that the hold is gone, not a connection error.
    fn release_now(&self) -> Result<()> {
        let ended_with_connection = self.binding.as_ref().is_some_and(|b| b.closed().is_some());
        match release(&self.client, &self.lease, self.binding.as_deref()) {
            Err(e) if ended_with_connection => {
                debug!(
                    "releasing lock {:?} (token {}) after its SESSION connection closed: {e}",
                    self.lease.name, self.lease.token
                );
                Err(Error::NotHeld {
                    name: self.lease.name.clone(),
                    reason: NotHeldCause::SessionClosed,
                })
            }
            other => other,
        }
    }

    /// Stops the renewal thread and waits for it; returns the loss, if any.
    fn stop_renewing(&mut self) -> Option<Lost> {
        if let Some(renewer) = self.renewer.take() {
            let callback = {
                let mut state = self.shared.state();
                state.stopping = true;
                state.on_lost.take()
            };
            self.shared.changed.notify_all();
            drop(callback);
            if let Some(binding) = &self.binding {
                binding.stop();
            }
            if renewer.join().is_err() {
                // The observer and on_lost run under catch_unwind and are
                // named where they panic; only the drop of one of them (or
                // a bug in the engine) gets here. The panic hook printed
                // the message.
                warn!(
                    "the renewal thread of lock {:?} (token {}) panicked while dropping a callback or in the engine itself",
                    self.lease.name, self.lease.token
                );
            }
        }
        self.shared.state().lost.clone()
    }
}

impl Drop for RenewingGuard {
    fn drop(&mut self) {
        let lost = self.stop_renewing();
        if self.released || matches!(lost, Some(Lost::NotHeld(_))) {
            return;
        }
        match self.release_now() {
            // Nothing is left behind: the connection's close ended the hold.
            Ok(())
            | Err(Error::NotHeld {
                reason: NotHeldCause::SessionClosed,
                ..
            }) => {}
            Err(e) => self.client.report_drop_release(&self.lease, e),
        }
    }
}

impl fmt::Debug for RenewingGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenewingGuard")
            .field("lease", &self.lease)
            .field("lost", &self.shared.state().lost)
            .field("renewing", &self.renewer.is_some())
            .finish()
    }
}

/// RELEASE over a SESSION hold's own connection, or through the pool.
fn release(client: &Client, lease: &Lease, binding: Option<&Binding>) -> Result<()> {
    match binding {
        Some(binding) => client.release_bound(binding, lease),
        None => client.release_lease(lease),
    }
}

/// EXTEND over a SESSION hold's own connection (reading until `deadline`),
/// or through the pool (`retries`, no I/O past `deadline`).
fn extend(
    client: &Client,
    lease: &Lease,
    binding: Option<&Binding>,
    retries: u32,
    deadline: Option<Instant>,
) -> Result<Duration> {
    match binding {
        Some(binding) => client.extend_bound(binding, lease, lease.ttl, deadline),
        None => client.extend_within(lease, lease.ttl, retries, deadline),
    }
}

/// Renews a hold whose TTL began at an unknown moment (after a wait, or
/// for a lease known by its parts), so the lease's end is counted from a
/// moment known to be before the TTL began. Returns when that renewal was
/// sent, which `lease` records with the TTL it got. If it fails the hold
/// is released (best effort) and the error returned.
fn pin(client: &Client, lease: &mut Lease, binding: Option<&Binding>) -> Result<Instant> {
    let sent = Instant::now();
    // The grant's own moment is unknown, so the lease's end is too: wait no
    // longer than the client's timeout.
    match extend(client, lease, binding, client.inner.retries, None) {
        Ok(ttl) => {
            lease.extended(ttl, sent);
            Ok(sent)
        }
        Err(e) => {
            if !matches!(e, Error::NotHeld { .. })
                && let Err(release) = release(client, lease, binding)
            {
                warn!(
                    "releasing lock {:?} (token {}) after its first renewal failed: {release}",
                    lease.name, lease.token
                );
            }
            Err(e)
        }
    }
}

/// The renewal thread's side.
struct Renewer {
    client: Client,
    lease: Lease,
    binding: Option<Arc<Binding>>,
    shared: Arc<Shared>,
    /// When to send the next EXTEND.
    next: Instant,
    schedule: Schedule,
    observer: Option<EventObserver>,
}

impl Renewer {
    fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let deadline = match self.wait_until_due() {
                Wake::Stop => return,
                Wake::Lost => break,
                Wake::Renew { deadline } => deadline,
            };
            let sent = Instant::now();
            if let Some(message) = self.tell(&RenewalEvent::Sending { sent_at: sent }) {
                match self.lose_to_panic(message) {
                    true => break,
                    false => return,
                }
            }
            // No I/O past the lease's end. Unless the schedule asks for
            // retries, one attempt per round: the retries are the rounds
            // themselves, until the lease's end. Giving up after a count
            // would forfeit a lease that is still valid.
            let result = extend(
                &self.client,
                &self.lease,
                self.binding.as_deref(),
                self.schedule.retries,
                Some(deadline),
            );
            let mut state = self.shared.state();
            if state.stopping {
                return;
            }
            if let Err(e) = &result
                && !matches!(e, Error::NotHeld { .. })
            {
                state.last_error = Some(e.to_string());
            }
            if state
                .check_binding(Instant::now(), self.binding.as_deref())
                .is_some()
            {
                // The lease ended (a confirmation this late does not count:
                // the loss may have been seen), or its SESSION connection
                // failed.
                break;
            }
            let event = match result {
                Ok(ttl) => {
                    // The granted TTL is at most u32::MAX ms: in range.
                    state.valid_until = sent.checked_add(ttl).unwrap_or(state.valid_until);
                    state.last_error = None;
                    failures = 0;
                    self.next = sent
                        .checked_add(self.schedule.interval(ttl))
                        .unwrap_or(state.valid_until);
                    RenewalEvent::Renewed { sent_at: sent, ttl }
                }
                Err(Error::NotHeld {
                    reason: NotHeldCause::Server(reason),
                    ..
                }) => {
                    state.lost.get_or_insert(Lost::NotHeld(reason));
                    break;
                }
                Err(e) => {
                    debug!(
                        "renewing lock {:?} (token {}): {e}",
                        self.lease.name, self.lease.token
                    );
                    failures += 1;
                    let delay = self.schedule.retry_delay(&self.client, failures);
                    // check_for bounds the delay by the TTL; a clock that
                    // cannot go that far is the lease's end.
                    self.next = Instant::now()
                        .checked_add(delay)
                        .unwrap_or(state.valid_until);
                    RenewalEvent::Failed(e)
                }
            };
            drop(state);
            self.shared.changed.notify_all();
            if let Some(message) = self.tell(&event) {
                match self.lose_to_panic(message) {
                    true => break,
                    false => return,
                }
            }
        }
        self.deliver_loss();
    }

    /// Hands `event` to the observer, if any. An observer that panics is
    /// dropped, never to be called again, and its panic's message returned.
    fn tell(&mut self, event: &RenewalEvent) -> Option<String> {
        let observer = self.observer.as_mut()?;
        let payload = panic::catch_unwind(AssertUnwindSafe(|| observer(event))).err()?;
        self.observer = None;
        Some(panic_message(payload.as_ref()))
    }

    /// The observer panicked: the lease counts as lost with its message
    /// (unless it was lost already), so the program hears of it. `false`
    /// if the guard is stopping the thread: nothing is delivered then.
    fn lose_to_panic(&self, message: String) -> bool {
        warn!(
            "the renewal observer (Renewal::on_event) of lock {:?} (token {}) panicked: {message}; renewals stopped",
            self.lease.name, self.lease.token
        );
        let mut state = self.shared.state();
        if state.stopping {
            return false;
        }
        state.lost.get_or_insert(Lost::ObserverPanicked { message });
        true
    }

    /// Sleeps until the next renewal is due, the guard stops it, or the
    /// lease is lost (its end passes, or a SESSION hold's connection is
    /// found closed, looking every [`SESSION_PROBE_INTERVAL`]).
    fn wait_until_due(&self) -> Wake {
        loop {
            if let Some(binding) = &self.binding {
                binding.probe();
            }
            let mut state = self.shared.state();
            if state.stopping {
                return Wake::Stop;
            }
            let now = Instant::now();
            if state.check_binding(now, self.binding.as_deref()).is_some() {
                return Wake::Lost;
            }
            if now >= self.next {
                return Wake::Renew {
                    deadline: state.valid_until,
                };
            }
            let mut until = self.next.min(state.valid_until);
            if self.binding.is_some() {
                if let Some(probe) = now.checked_add(SESSION_PROBE_INTERVAL) {
                    until = until.min(probe);
                }
            }
            drop(
                self.shared
                    .changed
                    .wait_timeout(state, until - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0,
            );
        }
    }

    /// Wakes `wait_lost`, and tells the observer and the `on_lost`
    /// callback, outside the lock.
    fn deliver_loss(mut self) {
        let (callback, lost) = {
            let mut state = self.shared.state();
            state.loss_delivered = true;
            let lost = state.lost.clone().expect("the loop ends on a loss");
            (state.on_lost.take(), lost)
        };
        self.shared.changed.notify_all();
        warn!(
            "lock {:?} (token {}) lost: {lost}",
            self.lease.name, self.lease.token
        );
        if let Some(message) = self.tell(&RenewalEvent::Lost(lost.clone())) {
            warn!(
                "the renewal observer (Renewal::on_event) of lock {:?} (token {}) panicked at the loss: {message}",
                self.lease.name, self.lease.token
            );
        }
        if let Some(callback) = callback
            && let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| callback(&lost)))
        {
            warn!(
                "the on_lost callback of lock {:?} (token {}) panicked: {}",
                self.lease.name,
                self.lease.token,
                panic_message(payload.as_ref())
            );
        }
    }
}

/// What a panic said, from its payload.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    match payload.downcast_ref::<&str>() {
        Some(message) => (*message).to_owned(),
        None => match payload.downcast_ref::<String>() {
            Some(message) => message.clone(),
            None => "a panic without a message".to_owned(),
        },
    }
}
