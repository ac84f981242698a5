//! A lock-protocol connection: its socket, buffers and state, and the
//! reads and writes of its socket.
//!
//! Its state is one [`Phase`] (serving, waiting in a lock's queue, closing)
//! and a few flags, each saying what it mirrors. [`Conn::invariants`]
//! checks what they imply about each other and the buffers,
//! `Server::conn_invariants` what they imply about the lock table and the
//! timer wheel (a debug build checks both wherever a step of the loop ends
//! for a connection), and `Server::invariants` (for tests, O(connections))
//! the loop's lists against the flags that mirror them.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use log::debug;
use mio::net::TcpStream;

use super::Server;
use super::timeouts::next_timeout;
use crate::buffer::ConnBuffer;
use crate::buffer::pool::BufferPool;
use crate::execute::{VERSION_BEFORE_HELLO, write_error_for};
use crate::limits::{
    CONN_INPUT_BUFFER_SIZE, REPLY_SIZE_MAX, TCP_KEEPALIVE_IDLE_S, TCP_KEEPALIVE_INTERVAL_S,
};
use crate::metrics::CloseReason;
use crate::protocol::ErrorCode;
use crate::table::SessionId;
use crate::wheel::TimerHandle;

/// Where a connection is in its life: one value, so that it cannot be
/// waiting and closing at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Its frames are decoded as they arrive.
    Serving,
    /// Its ACQUIRE waits in a lock's queue (the table's session is a
    /// waiter): nothing more is decoded until the answer, so that replies
    /// leave in request order, but its socket is still read so that a close
    /// is seen at once.
    Waiting,
    /// Its session is closed and its key is on `Server::closing`: nothing
    /// more is served (read into its buffer, decoded, written); its slot is
    /// freed at the end of the turn, when no event of the turn can name it
    /// any more.
    Closing,
}

/// A lock-protocol connection, from its accept to its close.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) session: SessionId,
    pub(super) input: ConnBuffer,
    pub(super) output: ConnBuffer,
    pub(super) phase: Phase,
    /// The socket may have unread bytes (edge-triggered: set by a readable
    /// event, cleared when a read finds the socket drained).
    pub(super) want_read: bool,
    /// On `Server::ready`: served again in a coming pass of the loop.
    pub(super) in_ready: bool,
    /// On `Server::writes`: its replies are written at the end of the turn.
    pub(super) in_writes: bool,
    /// Registered for WRITABLE too: only while replies wait in `output`.
    /// Always asking for it would wake the loop on every ACK that frees
    /// send-buffer space, which is most of them on a busy connection.
    pub(super) write_interest: bool,
    /// Sent the right AUTH, or the server requires none.
    pub(super) authenticated: bool,
    /// The protocol version negotiated by HELLO (see
    /// [`crate::execute::Context::version`]).
    pub(super) version: u16,
    /// When the incomplete frame at the front of `input` began to arrive.
    pub(super) partial_since_ms: Option<u64>,
    /// Last time the kernel took reply bytes or there were none to write.
    pub(super) write_progress_ms: u64,
    /// Last time the kernel took reply bytes (or the accept): unlike
    /// `write_progress_ms`, a look at a connection with nothing to write
    /// does not move it, so it can tell idleness.
    pub(super) replied_ms: u64,
    /// Last time bytes arrived.
    pub(super) read_ms: u64,
    /// When the connection was accepted (for auth_timeout_ms).
    pub(super) accepted_ms: u64,
    /// This connection's entry in `Server::deadlines`, and when it fires.
    /// Lazy: a deadline that moved later is found when the entry fires and
    /// re-armed then, so the common path never touches the wheel.
    pub(super) deadline: Option<(TimerHandle, u64)>,
}

impl Conn {
    /// Whether it may decode its next frame: it is serving (not waiting in a
    /// lock's queue, not closing) and its output has room for one more
    /// reply (else backpressure: it is not read).
    pub(super) fn can_decode(&self) -> bool {
        self.phase == Phase::Serving && self.output.free_space() >= REPLY_SIZE_MAX
    }

    /// A connection accepted at `now`, serving, on no list, holding no
    /// buffer storage; its socket may already hold its first request.
    pub(super) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        session: SessionId,
        output_buffer_size: usize,
        authenticated: bool,
        now: u64,
    ) -> Conn {
        Conn {
            stream,
            peer,
            session,
            input: ConnBuffer::detached(CONN_INPUT_BUFFER_SIZE),
            output: ConnBuffer::detached(output_buffer_size),
            phase: Phase::Serving,
            want_read: true,
            in_ready: false,
            in_writes: false,
            write_interest: false,
            authenticated,
            version: VERSION_BEFORE_HELLO,
            partial_since_ms: None,
            write_progress_ms: now,
            replied_ms: now,
            read_ms: now,
            accepted_ms: now,
            deadline: None,
        }
    }

    pub(super) fn is_closing(&self) -> bool {
        self.phase == Phase::Closing
    }

    /// Its ACQUIRE was queued: decode nothing more until the answer.
    pub(super) fn wait_in_queue(&mut self) {
        debug_assert_eq!(self.phase, Phase::Serving, "queued from {:?}", self.phase);
        self.phase = Phase::Waiting;
    }

    /// The answer to its queued ACQUIRE (a grant or a timeout) is written:
    /// decode again.
    pub(super) fn answered(&mut self) {
        debug_assert_eq!(self.phase, Phase::Waiting, "answered in {:?}", self.phase);
        self.phase = Phase::Serving;
    }

    /// Its session is closed: nothing more is served. Once only.
    pub(super) fn mark_closing(&mut self) {
        debug_assert_ne!(self.phase, Phase::Closing, "closed twice");
        self.phase = Phase::Closing;
    }

    /// What holds between the loop's steps (not within one) for this
    /// connection alone: Err names what broke. A closing connection is
    /// freed at the end of the turn whatever it holds, so only what a
    /// serving or waiting one promises is checked for it.
    pub(super) fn invariants(&self) -> Result<(), &'static str> {
        check(
            self.partial_since_ms.is_none() || !self.input.is_empty(),
            "an incomplete frame is timed, but the input buffer is empty",
        )?;
        if self.is_closing() {
            return Ok(());
        }
        // Storage is lent only while bytes are in flight.
        check(
            !(self.input.is_attached() && self.input.is_empty()),
            "input storage held with no unread bytes",
        )?;
        check(
            !(self.output.is_attached() && self.output.is_empty()),
            "output storage held with no reply waiting",
        )?;
        check(
            !self.write_interest || !self.output.is_empty(),
            "registered for WRITABLE with nothing to write",
        )?;
        // Replies are written at the end of the turn (`writes`), when the
        // socket has room (WRITABLE), or after a pass that will list them
        // for writing (`ready`): never left with none of the three.
        check(
            self.output.is_empty() || self.in_writes || self.write_interest || self.in_ready,
            "replies wait, but nothing will write them",
        )
    }
}

impl Server {
    /// [`Conn::invariants`], and what the connection's state says about the
    /// rest of the server: its ACQUIRE is queued in the lock table exactly
    /// while it is waiting, and its deadline is in the timer wheel, armed
    /// no later than its earliest timeout (or, if that has passed, than
    /// now) unless it is listed ready (the coming pass arms it). Like
    /// [`Conn::invariants`], it holds between the loop's steps.
    pub(super) fn conn_invariants(&self, key: usize) -> Result<(), &'static str> {
        let conn = &self.conns[key];
        conn.invariants()?;
        if conn.is_closing() {
            return Ok(());
        }
        check(
            self.table.is_waiting(conn.session) == (conn.phase == Phase::Waiting),
            "waiting without an ACQUIRE queued in the table, or not waiting with one",
        )?;
        if let Some((handle, at)) = conn.deadline {
            check(
                self.deadlines.deadline(handle) == Some(at),
                "its deadline is not in the timer wheel",
            )?;
        }
        if conn.in_ready {
            return Ok(());
        }
        match (next_timeout(conn, self.table.limits()), conn.deadline) {
            (None, _) => Ok(()),
            (Some(_), None) => Err("a timeout applies but no deadline is armed"),
            (Some((due, _)), Some((_, at))) => check(
                at <= due.max(self.clock_ms),
                "its deadline is armed later than its earliest timeout",
            ),
        }
    }
}

/// `Ok` if `holds`, else `Err(broken)`: for the invariants' checks.
pub(super) fn check(holds: bool, broken: &'static str) -> Result<(), &'static str> {
    if holds { Ok(()) } else { Err(broken) }
}

/// Reads until the socket is drained or the buffer is full. Err: EOF
/// (UnexpectedEof) or a socket error.
///
/// A read that fills less than the space offered has drained the socket:
/// no second read is made just to see WouldBlock. That is safe with
/// edge-triggered epoll, which reports any data (or FIN) arriving after this
/// read as a new event, and it saves a syscall per request on the common
/// path.
pub(super) fn read_available(conn: &mut Conn, now: u64) -> io::Result<()> {
    loop {
        let spare = conn.input.spare_mut();
        let offered = spare.len();
        if offered == 0 {
            return Ok(()); // full: want_read stays set; decoding makes room
        }
        match conn.stream.read(spare) {
            Ok(0) => {
                debug!("{}: peer closed", conn.peer);
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(n) => {
                conn.input.commit(n);
                conn.read_ms = now;
                if n < offered {
                    conn.want_read = false;
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.want_read = false;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!("{}: read failed: {e}", conn.peer);
                return Err(e);
            }
        }
    }
}

/// Writes buffered replies until WouldBlock. Err: the socket failed.
/// Any progress, or nothing to write, restarts the write timeout.
pub(super) fn flush(conn: &mut Conn, now: u64) -> io::Result<()> {
    if conn.output.is_empty() {
        conn.write_progress_ms = now;
    }
    while !conn.output.is_empty() {
        match conn.stream.write(conn.output.unread()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.output.consume(n);
                conn.write_progress_ms = now;
                conn.replied_ms = now;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!("{}: write failed: {e}", conn.peer);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Writes a last error (in the protocol the connection speaks) before the
/// server closes the connection, and tries once to send it.
pub(super) fn last_error(
    conn: &mut Conn,
    output_pool: &mut BufferPool,
    now: u64,
    code: ErrorCode,
    message: std::fmt::Arguments<'_>,
) {
    output_pool.lend(&mut conn.output);
    write_error_for(conn.input.unread(), &mut conn.output, code, message);
    let _ = flush(conn, now);
}

/// Bytes read and dropped before closing a connection we answered and are
/// done with: closing with unread bytes in the socket makes the kernel send
/// a reset, which can destroy our last reply before the peer reads it.
const CLOSE_DRAIN_BYTES_MAX: usize = 64 * 1024;

/// Reads (non-blocking, bounded) and drops what the peer already sent, then
/// sends FIN; the socket is closed when the caller drops it.
pub(super) fn close_gently(stream: &mut TcpStream) {
    let mut scratch = [0u8; 4096];
    let mut drained = 0;
    while drained < CLOSE_DRAIN_BYTES_MAX {
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// The soonest a keepalive probe can find a peer dead: the first probe
/// goes after TCP_KEEPALIVE_IDLE_S without a byte from the peer, the
/// verdict comes at the next. Keepalive probes only a connection with
/// nothing in flight, so by then every reply was acknowledged.
const KEEPALIVE_VERDICT_MS_MIN: u64 = (TCP_KEEPALIVE_IDLE_S + TCP_KEEPALIVE_INTERVAL_S) * 1000;

/// Why a connection whose socket ended is closed. With TCP_USER_TIMEOUT
/// set to write_timeout_ms, the kernel aborts a connection with ETIMEDOUT
/// when replies it holds stayed untaken that long (in a window the peer
/// keeps closed, or unacknowledged): a write timeout, as if the server's
/// own deadline had found it. Unanswered keepalive probes end in ETIMEDOUT
/// too, but never sooner than KEEPALIVE_VERDICT_MS_MIN after the last reply
/// the kernel took; such a close, like any other, is the peer's.
pub(super) fn ended_reason(conn: &Conn, error: Option<&io::Error>, now: u64) -> CloseReason {
    let timed_out = error.is_some_and(|e| e.kind() == io::ErrorKind::TimedOut);
    if timed_out && now.saturating_sub(conn.replied_ms) < KEEPALIVE_VERDICT_MS_MIN {
        CloseReason::WriteTimeout
    } else {
        CloseReason::Peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::table::LockTable;

    const OUTPUT_SIZE: usize = 1024;

    /// A connection over loopback, and its peer's end (kept open).
    fn connection() -> (Conn, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer_end = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, peer) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        let session = LockTable::new(Limits::default(), 1, 0).open_session(0);
        let stream = TcpStream::from_std(stream);
        (
            Conn::new(stream, peer, session, OUTPUT_SIZE, true, 0),
            peer_end,
        )
    }

    #[test]
    fn a_connection_serves_waits_is_answered_and_closes() {
        let (mut conn, _peer) = connection();
        assert_eq!((conn.phase, conn.invariants()), (Phase::Serving, Ok(())));
        conn.wait_in_queue();
        assert_eq!((conn.phase, conn.invariants()), (Phase::Waiting, Ok(())));
        conn.answered();
        assert_eq!(conn.phase, Phase::Serving);
        conn.wait_in_queue();
        conn.mark_closing();
        assert_eq!((conn.phase, conn.invariants()), (Phase::Closing, Ok(())));
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "queued from Waiting")]
    fn a_waiting_connection_cannot_queue_another_acquire() {
        let (mut conn, _peer) = connection();
        conn.wait_in_queue();
        conn.wait_in_queue();
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "answered in Serving")]
    fn only_a_waiting_connection_is_answered() {
        let (mut conn, _peer) = connection();
        conn.answered();
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "closed twice")]
    fn a_connection_is_marked_closing_once() {
        let (mut conn, _peer) = connection();
        conn.mark_closing();
        conn.mark_closing();
    }

    /// Each check of `invariants` fails on the state it guards against, and
    /// a closing connection is exempt from what only an open one promises.
    #[test]
    fn invariants_catch_flags_at_odds_with_the_buffers() {
        let (mut conn, _peer) = connection();
        let mut input_pool = BufferPool::new(CONN_INPUT_BUFFER_SIZE);
        let mut output_pool = BufferPool::new(OUTPUT_SIZE);

        input_pool.lend(&mut conn.input);
        assert_eq!(
            conn.invariants(),
            Err("input storage held with no unread bytes")
        );
        input_pool.reclaim(&mut conn.input);
        assert_eq!(conn.invariants(), Ok(()));

        conn.partial_since_ms = Some(0);
        assert_eq!(
            conn.invariants(),
            Err("an incomplete frame is timed, but the input buffer is empty")
        );
        conn.partial_since_ms = None;

        conn.write_interest = true;
        assert_eq!(
            conn.invariants(),
            Err("registered for WRITABLE with nothing to write")
        );
        conn.write_interest = false;

        output_pool.lend(&mut conn.output);
        assert_eq!(
            conn.invariants(),
            Err("output storage held with no reply waiting")
        );
        assert!(conn.output.push(b"a reply"));
        assert_eq!(
            conn.invariants(),
            Err("replies wait, but nothing will write them")
        );
        for listed in [
            |c: &mut Conn| c.in_writes = true,
            |c: &mut Conn| c.in_ready = true,
        ] {
            let (mut other, _peer) = connection();
            output_pool.lend(&mut other.output);
            assert!(other.output.push(b"a reply"));
            listed(&mut other);
            assert_eq!(other.invariants(), Ok(()));
            output_pool.reclaim_discarding(&mut other.output);
        }
        conn.write_interest = true;
        assert_eq!(conn.invariants(), Ok(()));

        conn.write_interest = false;
        conn.mark_closing();
        assert_eq!(conn.invariants(), Ok(()), "freed whatever it holds");
        output_pool.reclaim_discarding(&mut conn.output);
    }
}
