//! The no-op reference server of `distlockd test compare`
//! (`distlockd test noop-server`): the ceiling a lock server could reach on
//! this machine.
//!
//! One thread, one mio poll, connections in a slab, fixed buffers, frames
//! decoded in place with [`crate::protocol`], exactly like our server, but
//! every request gets a fixed valid reply and nothing else happens: no lock
//! table, no timer wheel, no deadlines, no metrics. GRANTED for ACQUIRE
//! (tokens from a counter), RELEASED, EXTENDED, PONG, HELLO's reply with the
//! default limits, AUTHED, and an empty STATUS page. So it cannot wait,
//! refuse or hold anything: it measures only uncontended and pipelined
//! traffic.
//!
//! Syscalls per request are the fewest a straightforward server makes (the
//! same as ours): a read that fills less than the space offered has drained
//! the socket, so no second read is made to see `WouldBlock`
//! (edge-triggered epoll reports any later byte as a new event); replies
//! are written at once, one write per batch read.
//!
//! Not for production: no limits beyond the buffers, no timeouts, no auth.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::protocol::{
    self, ErrorCode, FRAME_SIZE_CEILING, HelloReply, PROTOCOL_VERSION, REPLY_SIZE_MAX, Reply,
    Request, StatusWriter,
};
use crate::server::{CONN_INPUT_BUFFER_SIZE, CONN_OUTPUT_BUFFER_SIZE, Limits};

/// PONG's and HELLO's server version: says which server answered.
pub const NOOP_SERVER_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " no-op reference");
/// The version a connection speaks before HELLO (as our server).
const VERSION_BEFORE_HELLO: u16 = 1;
/// Same buffers as our server's, so that the two read and write alike.
const INPUT_BUFFER_SIZE: usize = CONN_INPUT_BUFFER_SIZE;
const OUTPUT_BUFFER_SIZE: usize = CONN_OUTPUT_BUFFER_SIZE;
/// Events taken per poll.
const EVENTS_PER_POLL_MAX: usize = 1024;
const LISTENER: Token = Token(usize::MAX);

// A full input buffer always holds a whole frame (or a refused header), so
// answering always makes room to read.
const _: () = assert!(INPUT_BUFFER_SIZE >= FRAME_SIZE_CEILING);
const _: () = assert!(OUTPUT_BUFFER_SIZE >= REPLY_SIZE_MAX);

/// What the no-op server keeps across requests: the next GRANTED token,
/// and the limits its HELLO reports (built once, not per request).
#[derive(Debug)]
pub struct Answerer {
    next_token: u64,
    limits: Limits,
}

impl Default for Answerer {
    fn default() -> Self {
        Answerer {
            next_token: 1,
            limits: Limits::default(),
        }
    }
}

impl Answerer {
    /// Encodes the fixed reply to `request` into `out` (at least
    /// REPLY_SIZE_MAX bytes); returns its length. `version` is the
    /// connection's protocol version; HELLO sets it.
    pub fn answer(&mut self, request: Request<'_>, version: &mut u16, out: &mut [u8]) -> usize {
        let limits = &self.limits;
        match request {
            Request::Hello { version: 0, .. } => Reply::Error {
                code: ErrorCode::UnsupportedVersion,
                message: b"protocol version 0 is not supported",
            }
            .encode(out),
            Request::Hello { version: asked, .. } => {
                *version = asked.min(PROTOCOL_VERSION);
                Reply::Hello(HelloReply::new(
                    *version,
                    limits,
                    NOOP_SERVER_VERSION.as_bytes(),
                ))
                .encode(out)
            }
            Request::Ping => Reply::Pong {
                uptime_ms: 0,
                server_version: NOOP_SERVER_VERSION.as_bytes(),
            }
            .encode(out),
            Request::Acquire(acquire) => {
                let token = self.next_token;
                self.next_token += 1;
                let ttl_ms = match acquire.ttl_ms {
                    0 => limits.lock_ttl_ms_default,
                    ttl_ms => ttl_ms,
                };
                Reply::granted(*version, token, ttl_ms, false).encode(out)
            }
            Request::Release { .. } => Reply::Released.encode(out),
            Request::Extend { ttl_ms, .. } => Reply::Extended { ttl_ms }.encode(out),
            Request::Auth { .. } => Reply::Authed.encode(out),
            Request::Status { .. } => StatusWriter::begin(out, 0).finish(0),
        }
    }
}

/// One client connection: its socket and two fixed buffers.
struct Conn {
    stream: TcpStream,
    version: u16,
    /// Received bytes `input[read_at..filled]` not yet decoded.
    input: Box<[u8]>,
    read_at: usize,
    filled: usize,
    /// Replies `output[written..queued]` not yet written.
    output: Box<[u8]>,
    written: usize,
    queued: usize,
}

/// Why a connection closes.
enum End {
    Peer,
    Socket,
    Protocol,
}

/// The no-op reference server: bind, then [`NoopServer::run`] forever.
pub struct NoopServer {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    answerer: Answerer,
}

impl NoopServer {
    pub fn bind(addr: SocketAddr) -> io::Result<NoopServer> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(addr)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(NoopServer {
            poll,
            listener,
            conns: Slab::new(),
            answerer: Answerer::default(),
        })
    }

    #[cfg(test)]
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process is killed or poll fails.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL_MAX);
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    Token(key) => {
                        let gone = event.is_read_closed() || event.is_error();
                        self.service(key, gone);
                    }
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of file descriptors or similar: retried at the next
                // connection's event; the reference is for benchmarks only.
                Err(_) => return,
            };
            if stream.set_nodelay(true).is_err() {
                continue;
            }
            let entry = self.conns.vacant_entry();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut stream, Token(entry.key()), interest)
                .is_err()
            {
                continue;
            }
            entry.insert(Conn {
                stream,
                version: VERSION_BEFORE_HELLO,
                input: vec![0; INPUT_BUFFER_SIZE].into_boxed_slice(),
                read_at: 0,
                filled: 0,
                output: vec![0; OUTPUT_BUFFER_SIZE].into_boxed_slice(),
                written: 0,
                queued: 0,
            });
        }
    }

    fn service(&mut self, key: usize, gone: bool) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let result = drive(conn, &mut self.answerer);
        if result.is_err() || gone {
            if !matches!(result, Err(End::Socket | End::Peer)) {
                let _ = flush(conn);
            }
            let mut conn = self.conns.remove(key);
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }
}

/// Reads, answers and writes until the socket is drained or the peer stops
/// taking replies (a WRITABLE event resumes it).
fn drive(conn: &mut Conn, answerer: &mut Answerer) -> Result<(), End> {
    loop {
        let drained = read(conn)?;
        answer_frames(conn, answerer)?;
        if !flush(conn)? || drained {
            return Ok(());
        }
    }
}

/// One read into the free end of the input. Ok(true): the socket is
/// drained (a short read or WouldBlock).
fn read(conn: &mut Conn) -> Result<bool, End> {
    let spare = &mut conn.input[conn.filled..];
    if spare.is_empty() {
        return Ok(false);
    }
    let offered = spare.len();
    loop {
        match conn.stream.read(spare) {
            Ok(0) => return Err(End::Peer),
            Ok(n) => {
                conn.filled += n;
                return Ok(n < offered);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(End::Socket),
        }
    }
}

/// Answers every whole frame while the output has room for a reply, then
/// moves the rest of the input to the front.
fn answer_frames(conn: &mut Conn, answerer: &mut Answerer) -> Result<(), End> {
    let result = loop {
        if conn.output.len() - conn.queued < REPLY_SIZE_MAX {
            break Ok(());
        }
        let out = &mut conn.output[conn.queued..];
        match protocol::decode_request(&conn.input[conn.read_at..conn.filled], FRAME_SIZE_CEILING) {
            Ok(None) => break Ok(()),
            Ok(Some((request, used))) => {
                conn.queued += answerer.answer(request, &mut conn.version, out);
                conn.read_at += used;
            }
            Err(e) => {
                let mut message = [0u8; 128];
                let len = format_into(&mut message, format_args!("{e}"));
                conn.queued += Reply::Error {
                    code: e.code(),
                    message: &message[..len],
                }
                .encode(out);
                break Err(End::Protocol);
            }
        }
    };
    conn.input.copy_within(conn.read_at..conn.filled, 0);
    conn.filled -= conn.read_at;
    conn.read_at = 0;
    result
}

/// Writes queued replies. Ok(true): all written; Ok(false): the socket
/// takes no more now.
fn flush(conn: &mut Conn) -> Result<bool, End> {
    while conn.written < conn.queued {
        match conn.stream.write(&conn.output[conn.written..conn.queued]) {
            Ok(0) => return Err(End::Socket),
            Ok(n) => conn.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(End::Socket),
        }
    }
    conn.written = 0;
    conn.queued = 0;
    Ok(true)
}

/// Formats into `buf`, cut at its length; returns the bytes written.
fn format_into(buf: &mut [u8], args: std::fmt::Arguments<'_>) -> usize {
    let mut cursor = io::Cursor::new(buf);
    let _ = cursor.write_fmt(args);
    cursor.position() as usize
}

/// `distlockd test noop-server`: serves on `addr` until killed.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    let mut server = NoopServer::bind(addr).map_err(|e| {
        format!("test noop-server: cannot listen on {addr}: {e}; pick another --port")
    })?;
    server
        .run()
        .map_err(|e| format!("test noop-server on {addr}: poll failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Acquire, decode_reply};

    /// Every request kind, one at a time and all pipelined in one write, gets
    /// its fixed valid reply from the no-op reference; a malformed frame gets
    /// an ERROR and the connection closes.
    #[test]
    fn noop_reference_answers_every_request_kind_with_a_valid_reply() {
        use std::net::TcpStream;
        use std::time::Duration;

        use crate::protocol::blocking::Connection;

        let mut server = NoopServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        // Serves until the test process ends.
        std::thread::spawn(move || server.run());
        let requests = [
            Request::Ping,
            Request::Hello {
                version: 2,
                client_name: b"test",
            },
            Request::Acquire(Acquire {
                name: b"job",
                owner: b"me",
                ttl_ms: 5_000,
                wait_ms: 100,
                flags: 0,
            }),
            Request::Release {
                name: b"job",
                owner: b"me",
                token: 1,
            },
            Request::Extend {
                name: b"job",
                owner: b"me",
                token: 1,
                ttl_ms: 7_000,
            },
            Request::Auth { secret: b"s" },
            Request::Status {
                name: b"",
                cursor: 0,
            },
        ];
        let check = |request: &Request<'_>, reply: Reply<'_>| match (request, reply) {
            (Request::Ping, Reply::Pong { server_version, .. }) => {
                assert!(server_version.ends_with(b"no-op reference"))
            }
            (Request::Hello { .. }, Reply::Hello(h)) => assert_eq!(h.version, 2),
            (Request::Acquire(_), Reply::Granted { ttl_ms, .. }) => assert_eq!(ttl_ms, 5_000),
            (Request::Release { .. }, Reply::Released) => {}
            (Request::Extend { .. }, Reply::Extended { ttl_ms }) => assert_eq!(ttl_ms, 7_000),
            (Request::Auth { .. }, Reply::Authed) => {}
            (Request::Status { .. }, Reply::Status(s)) => assert_eq!(s.entries().count(), 0),
            (request, reply) => panic!("{request:?} answered {reply:?}"),
        };
        let mut conn = Connection::new(TcpStream::connect(addr).unwrap());
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        for request in &requests {
            check(
                request,
                conn.exchange(request).expect("a reply within 10 s"),
            );
            assert!(conn.buffered().is_empty(), "no reply without a request");
        }
        let mut frames = Vec::new();
        for request in &requests {
            request.encode_to_vec(&mut frames);
        }
        conn.send_raw(&frames).unwrap();
        for request in &requests {
            check(request, conn.read_reply().expect("a reply within 10 s"));
        }
        assert!(conn.buffered().is_empty(), "no reply without a request");
        // An unknown kind: ERROR, then the server closes.
        conn.send_raw(b"Z\x00\x00").unwrap();
        match conn.read_reply().expect("a reply within 10 s") {
            Reply::Error { code, .. } => assert_eq!(code, ErrorCode::UnknownKind),
            other => panic!("unknown kind answered {other:?}"),
        }
        assert_eq!(conn.fill().expect("closed within 10 s"), 0);
    }

    fn reply_kind(request: Request<'_>, version: &mut u16, answerer: &mut Answerer) -> u8 {
        let mut out = [0u8; REPLY_SIZE_MAX];
        let len = answerer.answer(request, version, &mut out);
        let (_, used) = decode_reply(&out[..len]).unwrap().unwrap();
        assert_eq!(used, len);
        out[0]
    }

    #[test]
    fn tokens_grow_and_hello_sets_the_version() {
        let mut answerer = Answerer::default();
        let mut version = VERSION_BEFORE_HELLO;
        let acquire = Request::Acquire(Acquire {
            name: b"n",
            owner: b"o",
            ttl_ms: 0,
            wait_ms: 0,
            flags: 0,
        });
        let mut out = [0u8; REPLY_SIZE_MAX];
        let mut grant = |answerer: &mut Answerer, version: &mut u16| {
            let len = answerer.answer(acquire, version, &mut out);
            match decode_reply(&out[..len]).unwrap().unwrap().0 {
                Reply::Granted {
                    token,
                    ttl_ms,
                    reentered,
                } => (token, ttl_ms, reentered),
                other => panic!("{other:?}"),
            }
        };
        let (first, ttl_ms, reentered) = grant(&mut answerer, &mut version);
        assert_eq!(ttl_ms, Limits::default().lock_ttl_ms_default);
        assert_eq!(reentered, None, "version 1 has no GRANTED flags");
        let hello = Request::Hello {
            version: PROTOCOL_VERSION,
            client_name: b"t",
        };
        assert_eq!(
            reply_kind(hello, &mut version, &mut answerer),
            protocol::kind::HELLO_REPLY
        );
        assert_eq!(version, PROTOCOL_VERSION);
        let (second, _, reentered) = grant(&mut answerer, &mut version);
        assert!(second > first);
        assert_eq!(reentered, Some(false));
    }
}
