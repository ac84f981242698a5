//! One connection to the server: connect (trying each address in turn),
//! HELLO and AUTH, and the loop that writes a request frame and reads one
//! whole reply.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::calls::{Auth, Call, Hello};
use super::{Client, Error, Result, servers};
use crate::limits::{FRAME_SIZE_CEILING, PROTOCOL_VERSION};
use crate::protocol::{ErrorCode, GRANTED_FLAGS_VERSION, Reply, decode_reply};

impl Client {
    /// Sends `call` on `conn` and reads its answer. On `Err` the
    /// connection's next bytes are unknown and it must be dropped, unless
    /// [`Failure::keeps_connection`] says otherwise.
    pub(super) fn exchange_op<C: Call>(
        &self,
        conn: &mut Conn,
        call: &C,
        wait_ms: u32,
        io_timeout: Duration,
    ) -> Result<C::Answer, Failure> {
        if call.waits_forever() && conn.version < GRANTED_FLAGS_VERSION {
            return Err(Failure::Fatal(Error::InvalidArgument {
                what: format!(
                    "wait WAIT_FOREVER: the server at {} speaks protocol version {}, which cannot wait without a deadline; pass a finite wait or upgrade the server",
                    self.inner.addr, conn.version
                ),
            }));
        }
        let mut frame = Vec::with_capacity(64);
        call.request(wait_ms).encode_to_vec(&mut frame);
        // No deadline, no read timeout: the reply comes when the lock is
        // granted. A server that dies closes the connection; a host that
        // vanishes is found by TCP keepalive (see `handshake`).
        let read_timeout = (!call.waits_forever())
            .then(|| io_timeout.saturating_add(Duration::from_millis(wait_ms as u64)));
        conn.exchange(&frame, read_timeout, |reply| match *reply {
            Reply::Error { code, message } => Err(Failure::Fatal(Error::Server {
                code,
                message: String::from_utf8_lossy(message).into_owned(),
            })),
            _ => C::answer(reply).ok_or_else(|| {
                Failure::Fatal(Error::Protocol {
                    message: format!("{} answered {} with {reply:?}", self.inner.addr, C::KIND),
                })
            }),
        })?
    }

    /// Opens a connection to the first server that accepts one, in the
    /// order given, and exchanges HELLO.
    pub(super) fn connect(&self, io_timeout: Duration) -> Result<Conn, Failure> {
        let mut tried = Vec::with_capacity(self.inner.servers.len());
        for server in &self.inner.servers {
            match servers::connect(server, io_timeout) {
                Ok(stream) => return self.handshake(stream, server, io_timeout),
                Err(e) => tried.push((server.as_str(), e)),
            }
        }
        Err(Failure::Io(servers::unreachable(tried)))
    }

    pub(super) fn handshake(
        &self,
        stream: TcpStream,
        server: &str,
        io_timeout: Duration,
    ) -> Result<Conn, Failure> {
        // Requests are single small frames; Nagle would hold each one back
        // waiting for an ACK.
        stream.set_nodelay(true).map_err(Failure::Io)?;
        set_keepalive(&stream).map_err(Failure::Io)?;
        stream
            .set_write_timeout(Some(self.inner.timeout))
            .map_err(Failure::Io)?;
        let mut conn = Conn {
            server: server.to_owned(),
            stream,
            input: vec![0; FRAME_SIZE_CEILING].into_boxed_slice(),
            read_timeout: None,
            version: 1,
        };
        let info = self.exchange_op(&mut conn, &Hello, 0, io_timeout)?;
        if !(1..=PROTOCOL_VERSION).contains(&info.protocol_version) {
            return Err(Failure::Fatal(Error::Protocol {
                message: format!(
                    "{server} chose protocol version {} for our version {PROTOCOL_VERSION}",
                    info.protocol_version
                ),
            }));
        }
        conn.version = info.protocol_version;
        if let Some(secret) = &self.inner.auth_secret {
            let auth = Auth {
                secret: secret.as_bytes(),
            };
            self.exchange_op(&mut conn, &auth, 0, io_timeout)?;
        }
        Ok(conn)
    }
}

/// A wait without deadline reads with no timeout: keepalive finds a server
/// whose host vanished (a server that dies closes the socket).
#[cfg(feature = "keepalive")]
fn set_keepalive(stream: &TcpStream) -> io::Result<()> {
    use crate::limits::{TCP_KEEPALIVE_IDLE_S, TCP_KEEPALIVE_INTERVAL_S};
    socket2::SockRef::from(stream).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(TCP_KEEPALIVE_IDLE_S))
            .with_interval(Duration::from_secs(TCP_KEEPALIVE_INTERVAL_S)),
    )
}

/// Without the `keepalive` feature (std cannot set the intervals), a wait
/// without deadline on a vanished host lasts until the operating system
/// gives up on the connection.
#[cfg(not(feature = "keepalive"))]
fn set_keepalive(_: &TcpStream) -> io::Result<()> {
    Ok(())
}

/// How one attempt failed.
pub(super) enum Failure {
    /// The connection failed or timed out: worth another attempt.
    Io(io::Error),
    /// The server answered, or answered nonsense: retrying will not help.
    Fatal(Error),
}

impl Failure {
    /// Whether the connection is still in step after this failure, so it
    /// may carry another request.
    pub(super) fn keeps_connection(&self) -> bool {
        matches!(self, Failure::Fatal(e) if connection_survives(e))
    }
}

/// Whether the connection that got `e` stays open and in step: the server
/// refused the request with an ERROR after which it keeps the connection.
pub(super) fn connection_survives(e: &Error) -> bool {
    matches!(e, Error::Server { code, .. } if !closes_connection(*code))
}

/// The server closes the connection after these errors (frame boundaries
/// are lost, or the connection was refused).
fn closes_connection(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Protocol
            | ErrorCode::UnknownKind
            | ErrorCode::FrameTooLarge
            | ErrorCode::Limit
            | ErrorCode::ShuttingDown
            | ErrorCode::Auth
    )
}

pub(super) struct Conn {
    /// The address it was opened to, as configured, for messages.
    pub(super) server: String,
    pub(super) stream: TcpStream,
    /// One reply at a time: the server sends nothing unasked, so the buffer
    /// is empty between requests and one maximal frame always fits.
    pub(super) input: Box<[u8]>,
    /// The read timeout currently set on the socket, to skip the syscall
    /// when it does not change.
    pub(super) read_timeout: Option<Duration>,
    /// The protocol version HELLO chose.
    pub(super) version: u16,
}

impl Conn {
    /// Writes `frame` and reads one whole reply, which `read` turns into
    /// what the caller keeps while it is still in the read buffer;
    /// `read_timeout` `None` reads with no timeout.
    pub(super) fn exchange<T>(
        &mut self,
        frame: &[u8],
        read_timeout: Option<Duration>,
        read: impl FnOnce(&Reply<'_>) -> T,
    ) -> Result<T, Failure> {
        if self.read_timeout != read_timeout {
            self.stream
                .set_read_timeout(read_timeout)
                .map_err(Failure::Io)?;
            self.read_timeout = read_timeout;
        }
        self.stream
            .write_all(frame)
            .map_err(|e| Failure::Io(name_timeout(e, "sending a request")))?;
        let mut filled = 0;
        loop {
            match decode_reply(&self.input[..filled]) {
                Ok(Some((reply, used))) if used == filled => return Ok(read(&reply)),
                Ok(Some((reply, used))) => {
                    return Err(Failure::Fatal(Error::Protocol {
                        message: format!(
                            "server sent {} unexpected bytes after its reply {reply:?}",
                            filled - used
                        ),
                    }));
                }
                Ok(None) => {}
                Err(e) => match http_reply(&self.input[..filled]) {
                    Some(true) => {
                        return Err(Failure::Fatal(Error::HttpServer {
                            addr: self.server.clone(),
                        }));
                    }
                    // Could still be "HTTP/": read on to tell.
                    None => {}
                    Some(false) => {
                        return Err(Failure::Fatal(Error::Protocol {
                            message: format!("undecodable reply: {e}"),
                        }));
                    }
                },
            }
            // decode_reply rejects frames over FRAME_SIZE_CEILING from the
            // header, so an incomplete frame always has room left.
            debug_assert!(filled < self.input.len());
            match self.stream.read(&mut self.input[filled..]) {
                Ok(0) => {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection before replying",
                    )));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let waited = match read_timeout {
                        Some(t) => format!("waiting {:.3}s for a reply", t.as_secs_f64()),
                        None => "waiting for a reply".to_owned(),
                    };
                    return Err(Failure::Io(name_timeout(e, &waited)));
                }
            }
        }
    }
}

/// Whether `received`, the start of a reply, is an HTTP response:
/// `None` while it is too short to tell.
pub(super) fn http_reply(received: &[u8]) -> Option<bool> {
    const STATUS_LINE_START: &[u8] = b"HTTP/";
    if received.len() < STATUS_LINE_START.len() {
        if STATUS_LINE_START.starts_with(received) {
            None
        } else {
            Some(false)
        }
    } else {
        Some(received.starts_with(STATUS_LINE_START))
    }
}

/// Socket timeouts surface as WouldBlock on Unix ("Resource temporarily
/// unavailable"); say what timed out instead.
pub(super) fn name_timeout(e: io::Error, doing: &str) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(io::ErrorKind::TimedOut, format!("timed out {doing}"))
        }
        _ => e,
    }
}

pub(super) fn is_dead_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}
