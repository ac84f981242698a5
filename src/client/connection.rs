//! One connection to the server: connect (trying each address in turn),
//! HELLO and AUTH, and one request and its reply, through the protocol's
//! blocking [`Connection`] (the one loop that writes a frame and reads one
//! whole reply).

use std::io;
use std::net::TcpStream;
use std::time::Duration;

use super::calls::{Auth, Call, Hello};
use super::{Client, Error, Result, servers};
use crate::limits::PROTOCOL_VERSION;
use crate::protocol::blocking::{BadReply, Connection, INPUT_BUFFER_SIZE_MIN};
use crate::protocol::{ErrorCode, GRANTED_FLAGS_VERSION, Reply, Request};

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
        // No deadline, no read timeout: the reply comes when the lock is
        // granted. A server that dies closes the connection; a host that
        // vanishes is found by TCP keepalive (see `handshake`), and only
        // with the `keepalive` feature: without it, never.
        let read_timeout = (!call.waits_forever())
            .then(|| io_timeout.saturating_add(Duration::from_millis(wait_ms as u64)));
        conn.exchange(&call.request(wait_ms), read_timeout, |reply| match *reply {
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
            // One reply at a time: the server sends nothing unasked, so the
            // buffer is empty between requests and one largest reply fits.
            wire: Connection::with_input_buffer_size(stream, INPUT_BUFFER_SIZE_MIN),
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
/// without deadline on a vanished host is not bounded: with nothing
/// outstanding on the connection the operating system never gives up on
/// it, so the read blocks forever.
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
    /// The socket, and the protocol's one loop that writes a request and
    /// reads one whole reply.
    pub(super) wire: Connection<TcpStream>,
    /// The protocol version HELLO chose.
    pub(super) version: u16,
}

impl Conn {
    /// Writes `request` and reads one whole reply, which `read` turns into
    /// what the caller keeps while it is still in the read buffer;
    /// `read_timeout` `None` reads with no timeout.
    pub(super) fn exchange<T>(
        &mut self,
        request: &Request<'_>,
        read_timeout: Option<Duration>,
        read: impl FnOnce(&Reply<'_>) -> T,
    ) -> Result<T, Failure> {
        self.wire
            .set_read_timeout(read_timeout)
            .map_err(Failure::Io)?;
        let answer = self
            .wire
            .exchange(request)
            .map(|reply| read(&reply))
            .map_err(|e| self.failure(e))?;
        // The server sends nothing unasked: more bytes mean the stream is
        // out of step.
        match self.wire.buffered().len() {
            0 => Ok(answer),
            extra => Err(Failure::Fatal(Error::Protocol {
                message: format!("server sent {extra} unexpected bytes after its reply"),
            })),
        }
    }

    /// What an error of the exchange means: bytes that are no reply (an
    /// HTTP answer among them) are the server's doing, and retrying will
    /// not help; a broken or timed-out connection is worth another attempt.
    fn failure(&self, e: io::Error) -> Failure {
        if let Some(bad) = BadReply::of(&e) {
            return Failure::Fatal(match bad {
                BadReply::Http => Error::HttpServer {
                    addr: self.server.clone(),
                },
                BadReply::Undecodable(_) => Error::Protocol {
                    message: bad.to_string(),
                },
            });
        }
        match e.kind() {
            io::ErrorKind::InvalidData => Failure::Fatal(Error::Protocol {
                message: e.to_string(),
            }),
            io::ErrorKind::InvalidInput => Failure::Fatal(Error::InvalidArgument {
                what: e.to_string(),
            }),
            _ => Failure::Io(e),
        }
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
