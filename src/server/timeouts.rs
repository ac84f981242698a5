//! Per-connection timeouts: which applies ([`next_timeout`]), its entry in
//! `Server::deadlines` (armed lazily, keyed by [`Deadline`]), and the
//! verdict when it fires, after a last look at the socket. And how long a
//! poll may sleep.

use std::time::Duration;

use log::debug;

use super::Server;
use super::accept::ACCEPT_RETRY_MS;
use super::connection::{Conn, Phase, flush, last_error};
use crate::limits::{CONN_TIMEOUTS_PER_TURN_MAX, Limits};
use crate::metrics::CloseReason;
use crate::protocol::ErrorCode;

/// What an entry of `Server::deadlines` is for: the connection it looks at
/// when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Deadline {
    /// A lock-protocol connection's frame, write, idle or auth timeout (its
    /// key in `Server::conns`).
    Lock(usize),
    /// An HTTP connection's request or response timeout (its key in
    /// `Server::http_conns`).
    Http(usize),
}

/// Why a connection's deadline closed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expired {
    /// A frame began and stayed incomplete for frame_timeout_ms.
    Frame,
    /// Replies stayed unwritten for write_timeout_ms.
    Write,
    /// Nothing happened for idle_timeout_ms.
    Idle,
    /// No good AUTH within auth_timeout_ms of the accept.
    Auth,
}

impl Server {
    /// How long the next poll may sleep: not at all while work is left
    /// over, else until the earliest deadline of the lock table or of a
    /// connection, and at most ACCEPT_RETRY_MS after a failed accept.
    pub(super) fn poll_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() || self.table.has_deferred_work() || self.accept_more {
            return Some(Duration::ZERO);
        }
        let retry = self
            .accept_retry
            .then(|| Duration::from_millis(ACCEPT_RETRY_MS));
        let deadline = match (self.table.next_deadline(), self.deadlines.next_deadline()) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(d) => d,
                None => return retry,
            },
        };
        let until_deadline = poll_sleep(deadline, self.started.elapsed());
        Some(retry.map_or(until_deadline, |r| r.min(until_deadline)))
    }

    /// Makes sure the connection's entry in `deadlines` fires no later than
    /// its earliest timeout. An entry that would fire early is left alone:
    /// [`Server::expire_connections`] re-arms it when it fires. Every step
    /// of the loop that leaves a lock-protocol connection open ends here,
    /// so a debug build checks the connection's invariants here too.
    pub(super) fn arm_deadline(&mut self, key: usize, now: u64) {
        self.arm_earliest_timeout(key, now);
        debug_assert_eq!(self.conn_invariants(key), Ok(()), "connection {key}");
    }

    fn arm_earliest_timeout(&mut self, key: usize, now: u64) {
        let conn = &mut self.conns[key];
        let Some((due, _)) = next_timeout(conn, self.table.limits()) else {
            return;
        };
        if let Some((handle, at)) = conn.deadline {
            if at <= due {
                return;
            }
            self.deadlines.cancel(handle);
        }
        let at = due.max(now);
        conn.deadline = Some((self.deadlines.insert(at, Deadline::Lock(key)), at));
    }

    /// Closes the connections whose frame, write, idle or auth timeout has
    /// passed, and re-arms those whose deadline moved later: at most
    /// [`CONN_TIMEOUTS_PER_TURN_MAX`] per turn.
    ///
    /// A timeout judges what the client did, not how late the server
    /// looked: after a pause of the server (SIGSTOP, a VM pause, a long
    /// turn) what the client sent, and the room it made by reading, wait in
    /// the kernel, their events perhaps later in this very turn. So a
    /// connection found due is first caught up ([`Server::catch_up`]) and
    /// judged again on what that found.
    pub(super) fn expire_connections(&mut self, now: u64) {
        for _ in 0..CONN_TIMEOUTS_PER_TURN_MAX {
            let Some((_, deadline)) = self.deadlines.poll(now) else {
                break;
            };
            let key = match deadline {
                Deadline::Lock(key) => key,
                Deadline::Http(key) => {
                    self.expire_http(key);
                    continue;
                }
            };
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.deadline = None;
            if conn.is_closing() {
                continue;
            }
            let limits = self.table.limits();
            if next_timeout(conn, limits).is_none_or(|(due, _)| due > now) {
                self.arm_deadline(key, now);
                continue;
            }
            self.catch_up(key);
            let now = self.clock_ms;
            let Some(conn) = self.conns.get(key).filter(|c| !c.is_closing()) else {
                continue;
            };
            match next_timeout(conn, self.table.limits()) {
                Some((due, why)) if due <= now => self.expire(key, why, now),
                _ => self.arm_deadline(key, now),
            }
        }
    }

    /// Reads and serves what the connection's socket holds and writes what
    /// its peer has room for, as its events would have: the last look
    /// before one of its timeouts closes it.
    fn catch_up(&mut self, key: usize) {
        // Edge-triggered: the readiness may be in an event this turn has not
        // handled yet, or one that did not fit in this poll's events.
        self.conns[key].want_read = true;
        self.service(key);
        let now = self.clock_ms;
        if self.conns[key].is_closing() || !self.persist() {
            return;
        }
        let conn = &mut self.conns[key];
        if let Err(e) = flush(conn, now) {
            self.close_ended(key, Some(&e), now);
        } else if self.update_write_interest(key).is_err() {
            self.close_ended(key, None, now);
        } else {
            self.output_pool.reclaim(&mut self.conns[key].output);
        }
    }

    fn expire(&mut self, key: usize, why: Expired, now: u64) {
        // A last error flushes the replies before it too, which may reflect
        // changes (a hand-off by a close earlier this turn); with none
        // waiting, nothing needs the log first (an idle connection's
        // timeout costs no fsync).
        let may_write = self.conns[key].output.is_empty() || self.persist();
        self.metrics.count_close(match why {
            Expired::Frame => CloseReason::FrameTimeout,
            Expired::Write => CloseReason::WriteTimeout,
            Expired::Idle => CloseReason::IdleTimeout,
            Expired::Auth => CloseReason::AuthFailed,
        });
        let limits = self.table.limits();
        let conn = &mut self.conns[key];
        match why {
            Expired::Frame => {
                let ms = limits.frame_timeout_ms;
                debug!(
                    "{}: frame incomplete after {ms} ms; closing (connection {key})",
                    conn.peer
                );
                if may_write {
                    last_error(
                        conn,
                        &mut self.output_pool,
                        now,
                        ErrorCode::Limit,
                        format_args!(
                            "frame incomplete after {ms} ms (frame_timeout_ms {ms}); send each frame whole, or raise --frame-timeout-ms"
                        ),
                    );
                }
            }
            Expired::Write => debug!(
                "{}: replies unread for {} ms (write_timeout_ms); closing (connection {key})",
                conn.peer, limits.write_timeout_ms
            ),
            Expired::Idle => debug!(
                "{}: idle for {} ms (idle_timeout_ms); closing (connection {key})",
                conn.peer, limits.idle_timeout_ms
            ),
            Expired::Auth => {
                let ms = limits.auth_timeout_ms;
                debug!(
                    "{}: no AUTH within {ms} ms; closing (connection {key})",
                    conn.peer
                );
                if may_write {
                    last_error(
                        conn,
                        &mut self.output_pool,
                        now,
                        ErrorCode::Auth,
                        format_args!(
                            "not authenticated within {ms} ms (auth_timeout_ms {ms}); send AUTH with the server's secret first"
                        ),
                    );
                }
            }
        }
        self.mark_closing(key, now);
    }
}

/// The connection's earliest timeout and its kind, if any applies:
/// - frame: an incomplete frame the server would decode if it were whole
///   (not while an ACQUIRE waits or replies fill the output buffer: then the
///   server, not the client, holds the frame back);
/// - write: replies pending and no progress in writing them;
/// - idle: nothing pending, nothing queued, nothing received and no reply
///   written (idle_timeout_ms 0 turns it off). An idle connection's SESSION
///   holds end with it;
/// - auth: on a server with a secret, no good AUTH yet, auth_timeout_ms
///   after the accept (a connection without the secret cannot sit on a
///   connection slot).
pub(super) fn next_timeout(conn: &Conn, limits: &Limits) -> Option<(u64, Expired)> {
    let frame = conn
        .partial_since_ms
        .filter(|_| conn.can_decode())
        .map(|since| (since + limits.frame_timeout_ms as u64, Expired::Frame));
    let write = (!conn.output.is_empty()).then(|| {
        (
            conn.write_progress_ms + limits.write_timeout_ms as u64,
            Expired::Write,
        )
    });
    let quiet = conn.phase != Phase::Waiting && conn.input.is_empty() && conn.output.is_empty();
    let idle = (limits.idle_timeout_ms > 0 && quiet).then(|| {
        let active = conn.read_ms.max(conn.replied_ms);
        (active + limits.idle_timeout_ms as u64, Expired::Idle)
    });
    let auth = (!conn.authenticated).then(|| {
        (
            conn.accepted_ms + limits.auth_timeout_ms as u64,
            Expired::Auth,
        )
    });
    [frame, write, idle, auth]
        .into_iter()
        .flatten()
        .min_by_key(|&(at, _)| at)
}

/// How long to sleep in poll, `elapsed` after the server started, so that
/// [`Server::tick`] reads at least `deadline_ms` on waking: the time left,
/// rounded up to whole milliseconds. epoll counts whole milliseconds (mio
/// rounds up too); rounding here makes the sleep asked for the sleep taken.
/// So a wake-up for a deadline is never before it and less than 1 ms after
/// it, plus the kernel's timer slack and the thread's scheduling delay.
pub(super) fn poll_sleep(deadline_ms: u64, elapsed: Duration) -> Duration {
    let left = Duration::from_millis(deadline_ms).saturating_sub(elapsed);
    Duration::from_millis(left.as_nanos().div_ceil(NANOS_PER_MS) as u64)
}

const NANOS_PER_MS: u128 = 1_000_000;
