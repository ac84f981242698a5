//! Accepting: the listeners, and a new connection registered, or refused
//! past connections_max before any state is made for it.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Duration;

use log::{debug, warn};
use mio::Interest;
use mio::net::{TcpListener, TcpStream};

use super::connection::{Conn, close_gently};
use super::{Server, Source};
use crate::buffer::ConnBuffer;
use crate::execute::write_error;
use crate::limits::{
    FDS_RESERVED, Limits, REPLY_SIZE_MAX, TCP_KEEPALIVE_IDLE_S, TCP_KEEPALIVE_INTERVAL_S,
    TCP_RECEIVE_BUFFER_SIZE, TCP_SEND_BUFFER_SIZE,
};
use crate::protocol::ErrorCode;

/// Connections accepted per listener event before other work is served.
pub(super) const ACCEPTS_PER_TURN_MAX: usize = 256;

/// After accept fails (EMFILE: out of file descriptors), how long to wait
/// before trying again. The listener is edge-triggered: connections already
/// queued would otherwise wait for the next new arrival.
pub(super) const ACCEPT_RETRY_MS: u64 = 10;

/// Listen backlog for the kernel's accept queue.
const LISTEN_BACKLOG: i32 = 1024;

impl Server {
    /// Accepts what waits on the lock-protocol listener, at most
    /// ACCEPTS_PER_TURN_MAX at a time (`accept_more` brings the next turn
    /// back for the rest).
    pub(super) fn accept(&mut self, now: u64) {
        for _ in 0..ACCEPTS_PER_TURN_MAX {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_retry = false;
                    return;
                }
                Err(e) => {
                    // EMFILE and the like: the connection stays in the kernel
                    // queue; retry shortly rather than spin or forget it.
                    if !self.accept_retry {
                        warn!(
                            "accept failed: {e}; retrying every {ACCEPT_RETRY_MS} ms; check the open-file limit (ulimit -n) against --connections-max"
                        );
                    }
                    self.accept_retry = true;
                    return;
                }
            };
            if self.conns.len() >= self.table.limits().connections_max {
                refuse(stream, peer, self.table.limits().connections_max);
                self.metrics.connections_refused += 1;
                continue;
            }
            match self.register(stream, peer, now) {
                Ok(()) => self.metrics.connections_accepted += 1,
                Err(e) => debug!("{peer}: cannot register: {e}"),
            }
        }
        // More may be waiting; the listener is edge-triggered, so come back.
        self.accept_more = true;
    }

    fn register(&mut self, mut stream: TcpStream, peer: SocketAddr, now: u64) -> io::Result<()> {
        stream.set_nodelay(true)?;
        if let Err(e) = set_socket_options(&stream, self.table.limits()) {
            debug!("{peer}: cannot set socket options: {e}");
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.poll.registry().register(
            &mut stream,
            Source::Lock(key).token(),
            Interest::READABLE,
        )?;
        let session = self.table.open_session(key as u64);
        entry.insert(Conn::new(
            stream,
            peer,
            session,
            self.table.limits().output_buffer_size,
            self.auth.is_none(),
            now,
        ));
        self.arm_deadline(key, now);
        debug!("{peer}: connected (connection {key})");
        Ok(())
    }
}

/// Answers a connection over connections_max with an error frame, best
/// effort, before any state is created for it.
fn refuse(mut stream: TcpStream, peer: SocketAddr, max: usize) {
    let mut out = ConnBuffer::with_capacity(REPLY_SIZE_MAX);
    write_error(
        &mut out,
        ErrorCode::Limit,
        format_args!("server is at connections_max {max}; retry later or raise --connections-max"),
    );
    let _ = stream.write(out.unread());
    close_gently(&mut stream);
    debug!("{peer}: refused, at connections_max {max}");
}

/// Socket options of an accepted lock-protocol connection: keepalive finds
/// a peer whose host vanished; a fixed send buffer and TCP_USER_TIMEOUT
/// bound what replies the client does not read cost, and for how long (see
/// [`TCP_SEND_BUFFER_SIZE`]). The receive buffer is the listener's.
fn set_socket_options(stream: &TcpStream, limits: &Limits) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(TCP_KEEPALIVE_IDLE_S))
            .with_interval(Duration::from_secs(TCP_KEEPALIVE_INTERVAL_S)),
    )?;
    socket.set_send_buffer_size(TCP_SEND_BUFFER_SIZE)?;
    #[cfg(target_os = "linux")]
    socket.set_tcp_user_timeout(Some(Duration::from_millis(limits.write_timeout_ms as u64)))?;
    #[cfg(not(target_os = "linux"))]
    let _ = limits; // elsewhere the kernel's own retransmission limits apply
    Ok(())
}

/// Warns when connections_max cannot be reached under the process's
/// open-file limit (read from /proc; skipped where there is none).
pub(super) fn check_open_file_limit(connections_max: usize) {
    let Some(soft) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| open_file_soft_limit(&text))
    else {
        return;
    };
    if soft < connections_max.saturating_add(FDS_RESERVED) {
        warn!(
            "connections_max {connections_max} is above what the open-file limit {soft} (ulimit -n) allows; past about {} connections new ones wait in the kernel's queue; raise ulimit -n or lower --connections-max",
            soft.saturating_sub(FDS_RESERVED)
        );
    }
}

/// The soft "Max open files" of a /proc/PID/limits text.
pub(super) fn open_file_soft_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(usize::MAX),
        n => n.parse().ok(),
    }
}

pub(super) fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    // Before listen, so that accepted connections inherit it and their
    // window scale is chosen for it.
    socket.set_recv_buffer_size(TCP_RECEIVE_BUFFER_SIZE)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}
