//! Held locks: a [`Lease`], the [`LockGuard`] that releases it on drop,
//! and a [`SessionLease`]: a SESSION hold with a connection of its own (a
//! [`Binding`]).

use std::fmt;
use std::io;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::debug;

use super::calls::{Call, Extend, Release, released};
use super::connection::connection_survives;
use super::options::ttl_to_ms;
use super::{Client, Conn, Error, Failure, LockOptions, Result};

/// One granted hold: what RELEASE and EXTEND need to name it, and when
/// its TTL began at the earliest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub(super) name: String,
    pub(super) owner: String,
    pub(super) token: u64,
    pub(super) ttl: Duration,
    pub(super) reentered: bool,
    /// Just before the request that set `ttl` was sent; `None`: unknown.
    pub(super) sent_at: Option<Instant>,
    /// That request was an ACQUIRE that may have waited in the server's
    /// queue, so the TTL began at some unknown moment after `sent_at`.
    pub(super) may_have_waited: bool,
}

impl Lease {
    /// A lease known by its parts, e.g. from another process (the lock
    /// CLI's `release --owner --token`), to release or extend it. It has
    /// no send time ([`Lease::sent_at`] is `None`): when its TTL began is
    /// unknown, so [`Client::renew`] renews it once before it starts,
    /// rather than guess.
    pub fn from_parts(name: &str, owner: &str, token: u64, ttl: Duration) -> Lease {
        Lease {
            name: name.to_owned(),
            owner: owner.to_owned(),
            token,
            ttl,
            reentered: false,
            sent_at: None,
            may_have_waited: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The owner id the server knows this hold by.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The fencing token: larger than every token granted before it.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The TTL the server granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the request that granted [`ttl`](Lease::ttl) was sent, read
    /// from this process's monotonic clock just before the write: the
    /// ACQUIRE's last attempt (the one the server answered), or the EXTEND
    /// of [`SessionLease::extend`] or of [`Client::renew`]'s first renewal.
    /// The server starts the TTL when the request arrives, so it cannot
    /// expire the hold before `sent_at + ttl` (clocks running at the same
    /// rate), unless it was extended to a shorter TTL since by a call
    /// that does not update this lease ([`Client::extend`]). After a wait
    /// in the queue the TTL began later, at the grant. `None` for a lease
    /// from [`Lease::from_parts`].
    pub fn sent_at(&self) -> Option<Instant> {
        self.sent_at
    }

    /// Whether the server said this owner held the lock already when the
    /// ACQUIRE arrived: a re-entry of that hold (same token, TTL restarted
    /// from the ACQUIRE), not a new grant. Owners are per acquisition unless
    /// [`ClientBuilder::client_id`](super::ClientBuilder::client_id) or
    /// [`LockOptions::owner`] makes two acquisitions share one; a retry
    /// after a lost reply also re-enters the hold its first attempt took.
    /// Always false from a server that speaks only protocol version 1,
    /// which cannot say.
    pub fn reentered(&self) -> bool {
        self.reentered
    }

    /// The hold was extended to `ttl` by an EXTEND sent at `sent`.
    pub(super) fn extended(&mut self, ttl: Duration, sent: Instant) {
        self.ttl = ttl;
        self.sent_at = Some(sent);
        self.may_have_waited = false;
    }
}

/// A held lock that is released when dropped (the original's `with
/// client.lock(...)`). A release that fails on drop never panics: it is
/// logged, counted in [`Client::drop_release_errors`] and handed to the
/// callback set with
/// [`ClientBuilder::on_drop_release_error`](super::ClientBuilder::on_drop_release_error);
/// [`LockGuard::unlock`] returns the error instead.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct LockGuard<'a> {
    pub(super) client: &'a Client,
    pub(super) lease: Lease,
    pub(super) released: bool,
}

impl LockGuard<'_> {
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    pub fn token(&self) -> u64 {
        self.lease.token
    }

    pub fn name(&self) -> &str {
        &self.lease.name
    }

    /// Sets the hold's remaining TTL to `ttl` from now.
    pub fn extend(&self, ttl: Duration) -> Result<Duration> {
        self.client.extend(&self.lease, ttl)
    }

    /// Releases now and reports the outcome.
    pub fn unlock(mut self) -> Result<()> {
        self.released = true;
        self.client.release_lease(&self.lease)
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Err(e) = self.client.release_lease(&self.lease) {
            self.client.report_drop_release(&self.lease, e);
        }
    }
}

/// A SESSION hold with a connection of its own, from
/// [`Client::acquire_session`].
///
/// The server releases a SESSION hold the moment the connection that took
/// it closes, whatever its TTL. This hold's connection stays out of the
/// client's pool, so no other request can close it: it carries only this
/// hold's EXTENDs and its RELEASE, and any failure on it ends the hold (the
/// client closes it, so the server releases the hold if it has not
/// already; [`closed`](SessionLease::closed) says why).
///
/// Dropping the lease closes the connection, which releases the hold;
/// [`release`](SessionLease::release) also says whether it was still held.
/// Renew it with [`extend`](SessionLease::extend), or hand it to
/// [`Client::renew`] for the renewal engine, which probes the connection
/// between renewals (as `distlockd run --session` does).
///
/// What this costs: a connection can close at any moment (a network
/// failure, the server's `idle_timeout_ms` or `write_timeout_ms`), and the
/// server may grant the lock to the next waiter before the holder can know.
/// Only fencing tokens protect a resource across that gap.
#[derive(Debug)]
pub struct SessionLease {
    pub(super) client: Client,
    pub(super) lease: Lease,
    pub(super) binding: Arc<Binding>,
}

impl SessionLease {
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    pub fn name(&self) -> &str {
        &self.lease.name
    }

    /// The fencing token.
    pub fn token(&self) -> u64 {
        self.lease.token
    }

    /// Sets the hold's remaining TTL to `ttl` from now over its own
    /// connection; returns the TTL the server applied, which
    /// [`lease`](SessionLease::lease)`().ttl()` tells from then on (and
    /// `sent_at()` when it was asked for). One
    /// attempt, reading the reply for up to the client's timeout: a new
    /// connection cannot carry the hold, and a failure closes this one,
    /// which ends the hold (`Err(Connection)`, and
    /// [`closed`](SessionLease::closed) says why).
    pub fn extend(&mut self, ttl: Duration) -> Result<Duration> {
        let sent = Instant::now();
        let granted = self
            .client
            .extend_bound(&self.binding, &self.lease, ttl, None)?;
        self.lease.extended(granted, sent);
        Ok(granted)
    }

    /// Releases the hold over its own connection, or, if that connection
    /// closed, through the pool (the server released the hold at the close
    /// or will when it sees it; a RELEASE in between frees it sooner, and
    /// otherwise answers NOT_HELD). `Err(NotHeld)` if it was gone already.
    pub fn release(self) -> Result<()> {
        self.client.release_bound(&self.binding, &self.lease)
    }

    /// Why the hold's connection closed (the server released the hold then,
    /// or will when it sees the close), or `None` while it is open. Looks,
    /// without blocking, whether the server closed it; a connection that
    /// broke without the server's close reaching this client is only found
    /// by the next request on it.
    pub fn closed(&self) -> Option<String> {
        self.binding.probe();
        self.binding.closed()
    }
}

impl Client {
    /// Takes `name` as a SESSION hold on a connection of its own, out of
    /// the pool: see [`SessionLease`]. `options` as for
    /// [`Client::acquire_with`], except that the hold is a SESSION hold
    /// whatever they say. `Err(AcquireTimeout)` if another owner held it
    /// for the whole wait.
    ///
    /// Connection failures are retried on a new connection with the same
    /// owner, which is safe: if a lost reply had granted the hold to the
    /// closed connection, the server either released it at the close or
    /// rebinds it to the new one on the same-owner ACQUIRE.
    pub fn acquire_session(&self, name: &str, options: &LockOptions) -> Result<SessionLease> {
        let started = Instant::now();
        match self.acquire_bound(name, options)? {
            Some((lease, binding)) => Ok(SessionLease {
                client: self.clone(),
                lease,
                binding: Arc::new(binding),
            }),
            None => Err(Error::AcquireTimeout {
                name: name.to_owned(),
                waited: started.elapsed(),
            }),
        }
    }

    /// Takes `name` as a SESSION hold over a new connection that stays out
    /// of the pool (a [`Binding`]), so no other request can break it.
    /// `Ok(None)`: still held by another owner when the wait ended.
    ///
    /// Connection failures are retried on a new connection with the same
    /// owner, which is safe: if a lost reply had granted the hold to the
    /// closed connection, the server either released it at the close or
    /// rebinds it to the new one on the same-owner ACQUIRE.
    pub(super) fn acquire_bound(
        &self,
        name: &str,
        options: &LockOptions,
    ) -> Result<Option<(Lease, Binding)>> {
        let op = self.acquire_op(name, &options.with_session())?;
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            let wait_ms = op.wait_ms_left(started.elapsed());
            let exchanged = self.connect(self.inner.timeout).and_then(|mut conn| {
                let sent = Instant::now();
                let answer = self.exchange_op(&mut conn, &op, wait_ms, self.inner.timeout)?;
                Ok((conn, answer, sent))
            });
            let error = match exchanged {
                Ok((conn, grant, sent)) => {
                    let Some(lease) = self.acquired(op, grant, sent) else {
                        return Ok(None);
                    };
                    let binding = Binding::new(conn).map_err(|e| Error::Connection {
                        addr: self.inner.addr.clone(),
                        attempts: attempts + 1,
                        source: e,
                    })?;
                    return Ok(Some((lease, binding)));
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Io(e)) => e,
            };
            attempts += 1;
            if attempts > self.inner.retries {
                return Err(Error::Connection {
                    addr: self.inner.addr.clone(),
                    attempts,
                    source: error,
                });
            }
            let delay = self.backoff(attempts);
            debug!(
                "{}: attempt {attempts} failed: {error}; retrying in {delay:?}",
                self.inner.addr
            );
            std::thread::sleep(delay);
        }
    }

    /// EXTEND of a SESSION hold over its own connection, waiting for the
    /// reply until `read_until` (the lease's end; `None`: the client's
    /// timeout) rather than the client's timeout: giving up would close the connection, and the server would
    /// release the hold at the close. One attempt: a new connection cannot
    /// carry the binding. Nothing is sent once [`Binding::stop`] was called.
    /// If the connection fails, [`Binding::closed`] says why.
    pub(super) fn extend_bound(
        &self,
        binding: &Binding,
        lease: &Lease,
        ttl: Duration,
        read_until: Option<Instant>,
    ) -> Result<Duration> {
        let op = Extend {
            lease,
            ttl_ms: ttl_to_ms(ttl, "extend ttl")?,
        };
        let answer = binding.request(self, &op, read_until, true)?;
        self.extended(lease, answer)
    }

    /// RELEASE of a SESSION hold: over its own connection while that is
    /// open, else through the pool (the server released the hold at the
    /// close, or will when it sees it; a RELEASE in between frees it
    /// sooner and otherwise answers NOT_HELD).
    pub(super) fn release_bound(&self, binding: &Binding, lease: &Lease) -> Result<()> {
        let op = Release { lease };
        let answer = match binding.request(self, &op, None, false) {
            Ok(answer) => answer,
            // Refused, the hold is not ours any more (as through the pool).
            Err(e @ Error::Server { .. }) if binding.closed().is_none() => {
                self.forget(lease);
                return Err(e);
            }
            // Stopping the renewals shut the socket down under a renewal in
            // flight: the server ended the hold at that disconnect, which is
            // the release asked for. The RELEASE through the pool then finds
            // the lock free (or already someone else's).
            Err(_) if binding.shut_by_stop() => {
                return match self.release_lease(lease) {
                    Err(Error::NotHeld { .. }) => Ok(()),
                    other => other,
                };
            }
            Err(_) if binding.closed().is_some() => return self.release_lease(lease),
            Err(e) => return Err(e),
        };
        self.forget(lease);
        released(lease, answer)
    }
}

/// How often the renewal engine looks, between renewals, whether the
/// server closed a SESSION hold's connection: a closed connection means
/// the hold is gone, and the holder should know within this long.
pub const SESSION_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// The connection a SESSION hold is bound to, kept out of the pool: the
/// server releases the hold the moment this connection closes, so only the
/// hold's own requests use it, and any failure on it counts as the end of
/// the hold (the client closes the connection, so the server releases the
/// hold if it has not already).
pub(super) struct Binding {
    /// `None` once closed.
    conn: Mutex<Option<Conn>>,
    /// Why the connection closed; set once, read without waiting for a
    /// request in flight.
    closed: Mutex<Option<String>>,
    /// Another handle on the socket, to shut it down while a request is
    /// blocked on it.
    socket: TcpStream,
    /// Set by [`Binding::stop`]: renewals send nothing more.
    stopping: std::sync::atomic::AtomicBool,
    /// A renewal is between its `stopping` check and its reply.
    renewal_in_flight: std::sync::atomic::AtomicBool,
    /// [`Binding::stop`] shut the socket down under a renewal: the server
    /// ended the hold at that disconnect, as a release would have.
    shut_by_stop: std::sync::atomic::AtomicBool,
}

impl Binding {
    fn new(conn: Conn) -> io::Result<Binding> {
        Ok(Binding {
            socket: conn.wire.get_ref().try_clone()?,
            conn: Mutex::new(Some(conn)),
            closed: Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
            renewal_in_flight: std::sync::atomic::AtomicBool::new(false),
            shut_by_stop: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Option<Conn>> {
        // Every update is one assignment: a panic cannot leave it half done.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why the connection closed (the server has released the hold, or
    /// will when it sees the close), or `None` while it is open.
    pub(super) fn closed(&self) -> Option<String> {
        self.closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn close(&self, conn: &mut Option<Conn>, why: String) {
        *conn = None;
        self.closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(why);
    }

    /// Looks, without blocking, whether the server closed the connection;
    /// `false` if it did (then [`Binding::closed`] says so). A request in
    /// flight is not disturbed: the probe is skipped and that request finds
    /// out itself.
    pub(super) fn probe(&self) -> bool {
        let Ok(mut conn) = self.conn.try_lock() else {
            return self.closed().is_none();
        };
        let Some(open) = conn.as_ref() else {
            return false;
        };
        let socket = open.wire.get_ref();
        let mut byte = [0u8; 1];
        let peeked = socket
            .set_nonblocking(true)
            .and_then(|()| socket.peek(&mut byte));
        let restored = socket.set_nonblocking(false);
        let why = match (peeked, restored) {
            (Ok(0), _) => "the server closed the connection".to_owned(),
            (Err(e), _) if e.kind() != io::ErrorKind::WouldBlock => e.to_string(),
            (_, Err(e)) => e.to_string(),
            // Open: nothing to read, or bytes the next request will see.
            _ => return true,
        };
        self.close(&mut conn, why);
        false
    }

    /// Sends no more renewals, and unblocks one in flight by shutting the
    /// socket down (which ends the hold on the server, as a release would).
    /// A renewal marks itself in flight before it checks `stopping`, and
    /// this sets `stopping` before it checks the mark, so either the
    /// renewal sees `stopping` or this sees the renewal (both SeqCst).
    /// Other holders of the connection lock (a probe) are not disturbed.
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if self.renewal_in_flight.load(Ordering::SeqCst) {
            self.shut_by_stop.store(true, Ordering::SeqCst);
            let _ = self.socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Whether [`Binding::stop`] ended the hold by shutting the socket down.
    pub(super) fn shut_by_stop(&self) -> bool {
        self.shut_by_stop.load(Ordering::SeqCst)
    }

    /// One request, reading until `read_until` (`None`: for the client's
    /// timeout); any failure closes the connection. `renewal`: refused once
    /// stopped.
    pub(super) fn request<C: Call>(
        &self,
        client: &Client,
        op: &C,
        read_until: Option<Instant>,
        renewal: bool,
    ) -> Result<C::Answer> {
        let mut conn = self.conn();
        let unsent = |why: String| Error::Connection {
            addr: client.inner.addr.clone(),
            attempts: 0,
            source: io::Error::new(
                io::ErrorKind::NotConnected,
                format!("{} not sent: {why}", C::KIND),
            ),
        };
        if renewal {
            self.renewal_in_flight.store(true, Ordering::SeqCst);
            if self.stopping.load(Ordering::SeqCst) {
                self.renewal_in_flight.store(false, Ordering::SeqCst);
                return Err(unsent("renewal stopped".to_owned()));
            }
        }
        let result = self.request_locked(client, op, read_until, &mut conn, unsent);
        if renewal {
            self.renewal_in_flight.store(false, Ordering::SeqCst);
        }
        result
    }

    fn request_locked<C: Call>(
        &self,
        client: &Client,
        op: &C,
        read_until: Option<Instant>,
        conn: &mut Option<Conn>,
        unsent: impl Fn(String) -> Error,
    ) -> Result<C::Answer> {
        let Some(open) = conn.as_mut() else {
            return Err(unsent(format!(
                "the SESSION connection was closed: {}",
                self.closed().unwrap_or_default()
            )));
        };
        // A timeout, not an instant: the client's may be as long as
        // Duration::MAX, which no Instant can be that far from now.
        let left = match read_until {
            Some(until) => until.saturating_duration_since(Instant::now()),
            None => client.inner.timeout,
        };
        if left.is_zero() {
            return Err(unsent("its deadline passed".to_owned()));
        }
        match client.exchange_op(open, op, 0, left) {
            Ok(answer) => Ok(answer),
            Err(Failure::Fatal(e)) if connection_survives(&e) => Err(e),
            Err(Failure::Io(e)) => {
                self.close(conn, e.to_string());
                Err(Error::Connection {
                    addr: client.inner.addr.clone(),
                    attempts: 1,
                    source: e,
                })
            }
            Err(Failure::Fatal(e)) => {
                self.close(conn, e.to_string());
                Err(e)
            }
        }
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binding")
            .field("closed", &self.closed())
            .finish_non_exhaustive()
    }
}
