//! The bounded connection pool, and the request loop over it: check a
//! connection out, send, read, retry connection failures with backoff.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use log::debug;

use super::calls::Call;
use super::connection::is_dead_connection;
use super::{Client, Conn, Error, Failure, POOL_SIZE_MIN, Result};

/// First retry delay; doubles per retry.
pub(super) const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Longest delay between retries (before jitter): a restarting server is
/// usually back within seconds, and a caller should not sleep much longer.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Client {
    /// Sends `op` and returns its reply, retrying connection failures up to
    /// `retries` times with backoff.
    pub(super) fn call<C: Call>(&self, op: &C, retries: u32) -> Result<C::Answer> {
        self.call_within(op, retries, None)
    }

    /// [`Client::call`], and with a `deadline` no attempt starts at or after
    /// it, each attempt's connect and read timeouts end by it, and backoff
    /// sleeps stop at it. Writes keep the client's timeout: a request frame
    /// is small enough for an empty socket buffer, so a write does not block.
    pub(super) fn call_within<C: Call>(
        &self,
        op: &C,
        retries: u32,
        deadline: Option<Instant>,
    ) -> Result<C::Answer> {
        self.call_sent(op, retries, deadline)
            .map(|(answer, _)| answer)
    }

    /// [`Client::call_within`], and when the attempt that was answered was
    /// sent (read just before its request was written, after connecting).
    pub(super) fn call_sent<C: Call>(
        &self,
        op: &C,
        retries: u32,
        deadline: Option<Instant>,
    ) -> Result<(C::Answer, Instant)> {
        let started = Instant::now();
        let mut attempts = 0u32;
        let mut stale_retry_used = false;
        loop {
            let mut slot = self.inner.pool.checkout(op.may_wait());
            // After checkout: time spent waiting for a connection counts
            // against the caller's wait too.
            let wait_ms = op.wait_ms_left(started.elapsed());
            let reused = slot.conn.is_some();
            let io_timeout = match deadline {
                None => self.inner.timeout,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Connection {
                            addr: self.inner.addr.clone(),
                            attempts,
                            source: io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("{} not sent: its deadline passed", C::KIND),
                            ),
                        });
                    }
                    left.min(self.inner.timeout)
                }
            };
            let error = match self.attempt(&mut slot, op, wait_ms, io_timeout) {
                Ok(answer) => return Ok(answer),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Io(e)) => e,
            };
            drop(slot);
            if reused && !stale_retry_used && is_dead_connection(&error) {
                // A pooled connection the server closed while idle (a
                // restart, a stop): the others are likely dead too. This is
                // not a failure to reach the server, so it costs no attempt.
                stale_retry_used = true;
                self.inner.pool.discard_idle();
                debug!(
                    "{}: pooled connection was closed ({error}); reconnecting",
                    self.inner.addr
                );
                continue;
            }
            attempts += 1;
            if attempts > retries {
                return Err(Error::Connection {
                    addr: self.inner.addr.clone(),
                    attempts,
                    source: error,
                });
            }
            let mut delay = self.backoff(attempts);
            if let Some(deadline) = deadline {
                delay = delay.min(deadline.saturating_duration_since(Instant::now()));
            }
            debug!(
                "{}: attempt {attempts} failed: {error}; retrying in {delay:?}",
                self.inner.addr
            );
            std::thread::sleep(delay);
        }
    }

    /// One request on one connection, and when it was sent. On a failure
    /// that leaves its next bytes unknown the connection is dropped (it is
    /// not in `slot`), so the pool never holds one out of step.
    /// `io_timeout` bounds connecting and each read (plus the server's wait
    /// for a waiting ACQUIRE).
    pub(super) fn attempt<C: Call>(
        &self,
        slot: &mut Slot<'_>,
        op: &C,
        wait_ms: u32,
        io_timeout: Duration,
    ) -> Result<(C::Answer, Instant), Failure> {
        let mut conn = match slot.conn.take() {
            Some(conn) => conn,
            None => self.connect(io_timeout)?,
        };
        let sent = Instant::now();
        let answer = self.exchange_op(&mut conn, op, wait_ms, io_timeout);
        if answer.as_ref().err().is_none_or(Failure::keeps_connection) {
            slot.conn = Some(conn);
        }
        answer.map(|answer| (answer, sent))
    }

    /// Exponential backoff with up to 50% jitter, so clients that failed
    /// together do not retry together.
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        let delay = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_MAX);
        let jitter_ms = self.next_random() % (delay.as_millis() as u64 / 2 + 1);
        delay + Duration::from_millis(jitter_ms)
    }

    pub(super) fn next_random(&self) -> u64 {
        let mut x = self.inner.jitter.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.inner.jitter.store(x, Ordering::Relaxed);
        x
    }
}

/// At most `size` connections; idle ones wait in `idle`.
pub(super) struct Pool {
    pub(super) size: usize,
    pub(super) state: Mutex<PoolState>,
    pub(super) changed: Condvar,
}

pub(super) struct PoolState {
    pub(super) idle: Vec<Conn>,
    /// Connections open or being opened, idle or not.
    pub(super) open: usize,
    /// Slots checked out for an ACQUIRE that may wait on the server.
    pub(super) waiting_acquires: usize,
    /// Threads blocked in `checkout`: a returned slot wakes them only when
    /// there are some, so an uncontended request makes no futex syscall.
    pub(super) sleepers: usize,
}

impl PoolState {
    fn invariants(&self, size: usize) {
        debug_assert!(self.idle.len() <= self.open);
        debug_assert!(self.open <= size);
        debug_assert!(self.waiting_acquires < size);
    }
}

/// A checked-out share of the pool. `conn: None` means a connection may be
/// opened under this slot. On drop the connection (if any) goes back to the
/// idle list; without one, the slot's share is freed.
pub(super) struct Slot<'a> {
    pub(super) pool: &'a Pool,
    pub(super) conn: Option<Conn>,
    pub(super) waits: bool,
}

impl Pool {
    pub(super) fn new(size: usize) -> Pool {
        assert!(size >= POOL_SIZE_MIN);
        Pool {
            size,
            state: Mutex::new(PoolState {
                idle: Vec::with_capacity(size),
                open: 0,
                waiting_acquires: 0,
                sleepers: 0,
            }),
            changed: Condvar::new(),
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, PoolState> {
        // Nothing panics while this lock is held; if it ever did, the counts
        // are still consistent (each update is a single statement).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until a connection (or room to open one) is free. A request
    /// that may wait on the server (`waits`) only gets one while fewer than
    /// `size - 1` such requests are out: the last share is kept for
    /// requests that answer at once, such as the RELEASE the waiters need.
    pub(super) fn checkout(&self, waits: bool) -> Slot<'_> {
        let mut state = self.state();
        loop {
            state.invariants(self.size);
            let allowed = !waits || state.waiting_acquires < self.size - 1;
            if allowed {
                let conn = state.idle.pop();
                if conn.is_some() || state.open < self.size {
                    if conn.is_none() {
                        state.open += 1;
                    }
                    state.waiting_acquires += waits as usize;
                    return Slot {
                        pool: self,
                        conn,
                        waits,
                    };
                }
            }
            state.sleepers += 1;
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.sleepers -= 1;
        }
    }

    /// Closes every idle connection.
    pub(super) fn discard_idle(&self) {
        let idle = {
            let mut state = self.state();
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len();
            idle
        };
        drop(idle); // close the sockets outside the lock
        self.changed.notify_all();
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.state();
        state.waiting_acquires -= self.waits as usize;
        match self.conn.take() {
            Some(conn) => state.idle.push(conn),
            None => state.open -= 1,
        }
        state.invariants(self.pool.size);
        let sleepers = state.sleepers;
        drop(state);
        // Waiters differ in what they need (any slot, or a waiting slot),
        // so wake them all rather than risk waking one that cannot proceed.
        if sleepers > 0 {
            self.pool.changed.notify_all();
        }
    }
}
