//! A lock-protocol connection: its socket, buffers and state, and the
//! reads and writes of its socket.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use log::debug;
use mio::net::TcpStream;

use crate::buffer::ConnBuffer;
use crate::buffer::pool::BufferPool;
use crate::execute::write_error_for;
use crate::limits::{TCP_KEEPALIVE_IDLE_S, TCP_KEEPALIVE_INTERVAL_S};
use crate::metrics::CloseReason;
use crate::protocol::ErrorCode;
use crate::table::SessionId;
use crate::wheel::TimerHandle;

pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) session: SessionId,
    pub(super) input: ConnBuffer,
    pub(super) output: ConnBuffer,
    /// The socket may have unread bytes (edge-triggered: set by a readable
    /// event, cleared when a read returns WouldBlock).
    pub(super) want_read: bool,
    /// An ACQUIRE of this connection is queued; nothing more is decoded,
    /// but the socket is still read so that a close is noticed at once.
    pub(super) waiting: bool,
    /// The peer closed or the socket failed (epoll's RDHUP/ERR hint).
    pub(super) peer_gone: bool,
    pub(super) closing: bool,
    pub(super) in_ready: bool,
    /// Registered for WRITABLE too: only while replies wait in `output`.
    /// Always asking for it would wake the loop on every ACK that frees
    /// send-buffer space, which is most of them on a busy connection.
    pub(super) write_interest: bool,
    /// Listed in `Server::writes` for this turn.
    pub(super) in_writes: bool,
    /// Sent the right AUTH, or the server requires none.
    pub(super) authenticated: bool,
    /// The protocol version negotiated by HELLO (see [`Context::version`]).
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
