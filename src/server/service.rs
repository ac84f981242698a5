//! Serving a lock-protocol connection, the request path step by step:
//! read its socket ([`read_available`]) → decode, execute and encode up to
//! [`FRAMES_PER_TURN_MAX`] frames ([`process_frames`], one at a time by
//! [`execute::step_gated`]) → list it for the turn's one write
//! ([`Server::write_pending`], [`flush`]). Also the lock table's later
//! answers to queued ACQUIREs ([`Server::deliver_table_events`]), and
//! closing.

use std::io;
use std::time::Instant;

use log::{debug, warn};
use mio::Interest;

use super::connection::{Conn, close_gently, ended_reason, flush, read_available};
use super::{Server, Source};
use crate::auth::Auth;
use crate::execute::{self, Context, Refusal, Step};
use crate::limits::{FRAMES_PER_TURN_MAX, REPLY_SIZE_MAX};
use crate::metrics::{CloseReason, Metrics};
use crate::protocol::Reply;
use crate::table::EventKind;

impl Server {
    /// Reads, decodes, executes and writes for one connection, within the
    /// per-turn bounds; re-queues it if work is left.
    pub(super) fn service(&mut self, key: usize) {
        let now = self.clock_ms;
        let conn = &mut self.conns[key];
        if conn.is_closing() {
            return;
        }
        // Read even while an ACQUIRE waits: a read of 0 bytes is how a
        // waiter's disconnect is seen, and it must leave the queue at once.
        // With a full input buffer that read cannot happen; the RDHUP hint
        // covers it (see `hang_up`).
        if conn.want_read {
            self.input_pool.lend(&mut conn.input);
            if let Err(error) = read_available(conn, now) {
                self.close_ended(key, Some(&error), now);
                return;
            }
        }
        // The clock is read after the bytes: see `tick`.
        let started = Instant::now();
        let now = self.tick_at(started);
        let conn = &mut self.conns[key];
        if conn.output.is_empty() {
            // The write timeout counts from when replies start to wait.
            conn.write_progress_ms = now;
        }
        if !conn.input.is_empty() {
            self.output_pool.lend(&mut conn.output);
        }
        let mut ctx = Context {
            table: &mut self.table,
            session: conn.session,
            version: conn.version,
            now_ms: now,
            uptime_ms: started.duration_since(self.started).as_millis() as u64,
        };
        let frames = process_frames(conn, &mut ctx, self.auth.as_ref(), &mut self.metrics);
        let elapsed_ns = started.elapsed().as_nanos() as u64;
        self.metrics.observe_handling(elapsed_ns, frames.executed);
        let more = match frames.end {
            Ok(more) => more,
            Err(refusal) => {
                self.metrics.count_close(match refusal {
                    Refusal::Decode(_) => CloseReason::ProtocolError,
                    Refusal::Unauthenticated => CloseReason::AuthFailed,
                });
                if self.persist() {
                    let _ = flush(&mut self.conns[key], now);
                }
                self.mark_closing(key, now);
                return;
            }
        };
        self.deliver_table_events();
        self.queue_write(key);
        let conn = &mut self.conns[key];
        self.input_pool.reclaim(&mut conn.input);
        self.output_pool.reclaim(&mut conn.output);
        let can_read = conn.want_read && !conn.input.is_full();
        if (more || can_read) && conn.can_decode() {
            self.queue_ready(key);
        }
        self.arm_deadline(key, now);
    }

    /// The peer closed or the socket failed (epoll's RDHUP/ERR hint):
    /// closes the connection without reading, under the reason the socket's
    /// pending error tells, if any.
    pub(super) fn hang_up(&mut self, key: usize) {
        let now = self.clock_ms;
        let conn = &self.conns[key];
        if conn.is_closing() {
            return;
        }
        let error = conn.stream.take_error().ok().flatten();
        self.close_ended(key, error.as_ref(), now);
    }

    fn queue_ready(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.in_ready {
            conn.in_ready = true;
            self.ready.push(key);
        }
    }

    fn queue_write(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.output.is_empty() && !conn.in_writes {
            conn.in_writes = true;
            self.writes.push(key);
        }
    }

    /// Writes every connection's replies of this turn. A connection whose
    /// output was too full to decode more is put back on the ready list
    /// once it has room.
    pub(super) fn write_pending(&mut self, now: u64) {
        for i in 0..self.writes.len() {
            let key = self.writes[i];
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            debug_assert!(conn.in_writes, "connection {key} on `writes` unflagged");
            conn.in_writes = false;
            if conn.is_closing() {
                continue;
            }
            // A connection closed earlier in this loop may have handed a
            // SESSION hold to a waiter whose GRANTED is in this output: it
            // goes out only once that change is in the log (a no-op when
            // nothing changed since the last persist).
            if !self.persist() {
                continue;
            }
            let conn = &mut self.conns[key];
            if let Err(e) = flush(conn, now) {
                self.close_ended(key, Some(&e), now);
                continue;
            }
            if self.update_write_interest(key).is_err() {
                self.close_ended(key, None, now);
                continue;
            }
            let conn = &mut self.conns[key];
            self.output_pool.reclaim(&mut conn.output);
            let has_work = conn.want_read || !conn.input.is_empty();
            if has_work && conn.can_decode() {
                self.queue_ready(key);
            }
            self.arm_deadline(key, now);
        }
        self.writes.clear();
    }

    /// Asks for WRITABLE events exactly while output is pending.
    pub(super) fn update_write_interest(&mut self, key: usize) -> io::Result<()> {
        let conn = &mut self.conns[key];
        let want = !conn.output.is_empty();
        if want == conn.write_interest {
            return Ok(());
        }
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        self.poll
            .registry()
            .reregister(&mut conn.stream, Source::Lock(key).token(), interest)?;
        conn.write_interest = want;
        Ok(())
    }

    /// Writes the later answers of queued ACQUIREs and wakes their
    /// connections so they decode their next frames.
    pub(super) fn deliver_table_events(&mut self) {
        for i in 0..self.table.events().len() {
            let event = self.table.events()[i];
            let key = event.tag as usize;
            let Some(conn) = self
                .conns
                .get_mut(key)
                .filter(|c| c.session == event.session && !c.is_closing())
            else {
                // mark_closing delivers what is due before it closes a
                // session, so this is a bug; a debug build stops on it, a
                // release build drops the answer rather than every lock.
                if cfg!(debug_assertions) {
                    panic!("event for a closed session: {event:?}");
                }
                warn!("dropped an answer for a closed connection: {event:?}");
                continue;
            };
            conn.answered();
            if conn.output.is_empty() {
                conn.write_progress_ms = self.clock_ms;
            }
            self.output_pool.lend(&mut conn.output);
            let reply = match event.kind {
                // A waiter is never the holder: its grant is a new hold.
                EventKind::Granted { token, ttl_ms } => {
                    Reply::granted(conn.version, token, ttl_ms, false)
                }
                EventKind::TimedOut { waited_ms } => Reply::Timeout { waited_ms },
            };
            conn.output
                .write_with(REPLY_SIZE_MAX, |out| reply.encode(out));
            self.queue_ready(key);
        }
        self.table.clear_events();
    }

    /// Closes a connection whose peer closed it or whose socket failed
    /// (`error`, if one is known), counted under the reason it tells.
    pub(super) fn close_ended(&mut self, key: usize, error: Option<&io::Error>, now: u64) {
        let conn = &self.conns[key];
        let reason = ended_reason(conn, error, now);
        if reason == CloseReason::WriteTimeout {
            debug!(
                "{}: the kernel gave up on replies the peer did not take for {} ms (write_timeout_ms); closing (connection {key})",
                conn.peer,
                self.table.limits().write_timeout_ms
            );
        }
        self.metrics.count_close(reason);
        self.mark_closing(key, now);
    }

    /// Ends the connection's session at once (its queued ACQUIRE leaves the
    /// queue, its SESSION holds pass to their waiters) so that nothing is
    /// granted to it in the rest of this turn; its slab slot is freed at the
    /// end of the turn, when no event of this turn can name it any more.
    pub(super) fn mark_closing(&mut self, key: usize, now: u64) {
        if self.conns[key].is_closing() {
            return;
        }
        // Answers already made go out first: one for the session closed
        // below would have nowhere to go. (close_session fires no timer, so
        // it makes none for this session.)
        self.deliver_table_events();
        let conn = &mut self.conns[key];
        conn.mark_closing();
        let session = conn.session;
        self.closing.push(key);
        self.table.close_session(session, now);
        self.deliver_table_events();
    }

    pub(super) fn close(&mut self, key: usize, now: u64) {
        self.mark_closing(key, now);
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        debug_assert!(conn.is_closing());
        self.input_pool.reclaim_discarding(&mut conn.input);
        self.output_pool.reclaim_discarding(&mut conn.output);
        if let Some((handle, _)) = conn.deadline {
            self.deadlines.cancel(handle);
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        close_gently(&mut conn.stream);
        debug!("{}: closed (connection {key})", conn.peer);
    }
}

/// What [`process_frames`] did.
struct Frames {
    /// Requests executed.
    executed: u64,
    /// Ok(true): frames may be left that this turn did not reach. Err: the
    /// input was refused (answered if possible) and the connection must
    /// close.
    end: Result<bool, Refusal>,
}

/// Decodes and executes up to FRAMES_PER_TURN_MAX frames.
fn process_frames(
    conn: &mut Conn,
    ctx: &mut Context<'_>,
    auth: Option<&Auth>,
    metrics: &mut Metrics,
) -> Frames {
    let mut executed = 0;
    let end = process_frames_counted(conn, ctx, auth, metrics, &mut executed);
    conn.version = ctx.version;
    Frames { executed, end }
}

fn process_frames_counted(
    conn: &mut Conn,
    ctx: &mut Context<'_>,
    auth: Option<&Auth>,
    metrics: &mut Metrics,
    executed: &mut u64,
) -> Result<bool, Refusal> {
    for _ in 0..FRAMES_PER_TURN_MAX {
        if !conn.can_decode() {
            return Ok(false);
        }
        let input = conn.input.unread();
        let first_byte = input.first().copied().unwrap_or(0);
        match execute::step_gated(input, ctx, auth, &mut conn.authenticated, &mut conn.output) {
            Ok(Step::NeedMore) => {
                if conn.input.is_empty() {
                    conn.partial_since_ms = None;
                } else if conn.partial_since_ms.is_none() {
                    conn.partial_since_ms = Some(ctx.now_ms);
                }
                return Ok(false);
            }
            Ok(Step::Executed { used, queued }) => {
                conn.input.consume(used);
                if queued {
                    conn.wait_in_queue();
                }
                conn.partial_since_ms = None;
                metrics.count_command(first_byte);
                *executed += 1;
            }
            Err(refusal) => {
                match refusal {
                    Refusal::Decode(e) => debug!("{}: protocol error: {e}", conn.peer),
                    Refusal::Unauthenticated => {
                        debug!("{}: not authenticated; closing", conn.peer)
                    }
                }
                return Err(refusal);
            }
        }
    }
    Ok(true)
}
