//! Wire-level tests of the server with raw frames: what a client that does
//! not use our client library sees.

#![cfg(feature = "server")]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use distlockd::limits::Limits;
use distlockd::protocol::{Acquire, ErrorCode, FLAG_SESSION, NotHeldReason, Reply, Request, kind};
use distlockd::server::{Config, Server, ServerHandle};

mod common;
use common::wire::Wire;

fn start(limits: Limits) -> ServerHandle {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits,
        token_seed: None,
        ..Config::default()
    };
    Server::spawn(config).unwrap()
}

impl Wire {
    /// The next reply, as an owned debug-friendly value.
    fn reply(&mut self) -> OwnedReply {
        self.next_reply()
            .expect("connection closed while a reply was expected")
    }

    /// Whether the server closed the connection (EOF within 2 s).
    fn closed_by_server(&mut self) -> bool {
        self.conn
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        self.conn.read_to_close().is_ok()
    }

    fn acquire(&mut self, name: &[u8], owner: &[u8], ttl_ms: u32, wait_ms: u32) -> OwnedReply {
        self.send(Request::Acquire(Acquire {
            name,
            owner,
            ttl_ms,
            wait_ms,
            flags: 0,
        }));
        self.reply()
    }
}

#[derive(Debug, PartialEq)]
enum OwnedReply {
    Granted(u64, u32),
    Busy(u32, u32),
    Timeout(u32),
    Released,
    Extended(u32),
    NotHeld(NotHeldReason),
    Error(ErrorCode, String),
    Pong,
    Hello(u16),
    Authed,
    Status(u32),
}

impl From<Reply<'_>> for OwnedReply {
    fn from(reply: Reply<'_>) -> Self {
        match reply {
            Reply::Granted { token, ttl_ms, .. } => OwnedReply::Granted(token, ttl_ms),
            Reply::Busy {
                remaining_ms,
                waiters,
            } => OwnedReply::Busy(remaining_ms, waiters),
            Reply::Timeout { waited_ms } => OwnedReply::Timeout(waited_ms),
            Reply::Released => OwnedReply::Released,
            Reply::Extended { ttl_ms } => OwnedReply::Extended(ttl_ms),
            Reply::NotHeld { reason } => OwnedReply::NotHeld(reason),
            Reply::Error { code, message } => {
                OwnedReply::Error(code, String::from_utf8_lossy(message).into_owned())
            }
            Reply::Pong { .. } => OwnedReply::Pong,
            Reply::Hello(h) => OwnedReply::Hello(h.version),
            Reply::Authed => OwnedReply::Authed,
            Reply::Status(status) => OwnedReply::Status(status.total),
        }
    }
}

fn token(reply: OwnedReply) -> u64 {
    match reply {
        OwnedReply::Granted(token, _) => token,
        other => panic!("expected GRANTED, got {other:?}"),
    }
}

#[test]
fn hello_and_ping() {
    let server = start(Limits::default());
    let mut c = Wire::connect(server.local_addr());
    c.send(Request::Hello {
        version: 1,
        client_name: b"wire-test",
    });
    assert_eq!(c.reply(), OwnedReply::Hello(1));
    c.send(Request::Hello {
        version: 9,
        client_name: b"",
    });
    assert_eq!(
        c.reply(),
        OwnedReply::Hello(2),
        "the server answers the version both speak"
    );
    c.send(Request::Hello {
        version: 0,
        client_name: b"",
    });
    assert!(matches!(
        c.reply(),
        OwnedReply::Error(ErrorCode::UnsupportedVersion, _)
    ));
    c.send(Request::Ping);
    assert_eq!(c.reply(), OwnedReply::Pong);
}

#[test]
fn a_waiter_that_disconnects_leaves_the_queue() {
    let server = start(Limits::default());
    let mut holder = Wire::connect(server.local_addr());
    let t = token(holder.acquire(b"q", b"holder", 60_000, 0));
    let mut gone = Wire::connect(server.local_addr());
    gone.send(Request::Acquire(Acquire {
        name: b"q",
        owner: b"gone",
        ttl_ms: 60_000,
        wait_ms: 30_000,
        flags: 0,
    }));
    std::thread::sleep(Duration::from_millis(100));
    drop(gone);
    std::thread::sleep(Duration::from_millis(100));
    let mut next = Wire::connect(server.local_addr());
    assert_eq!(
        next.acquire(b"q", b"next", 1000, 0).busy_waiters(),
        Some(0),
        "the waiter left"
    );
    holder.send(Request::Release {
        name: b"q",
        owner: b"holder",
        token: t,
    });
    assert_eq!(holder.reply(), OwnedReply::Released);
    // The departed waiter must not have been handed the lock.
    assert!(matches!(
        next.acquire(b"q", b"next", 1000, 0),
        OwnedReply::Granted(..)
    ));
}

impl OwnedReply {
    /// BUSY's time left depends on timing; tests compare the waiter count.
    fn busy_waiters(&self) -> Option<u32> {
        match self {
            OwnedReply::Busy(_, w) => Some(*w),
            _ => None,
        }
    }
}

#[test]
fn queued_waiters_are_counted_and_served_in_order() {
    let server = start(Limits::default());
    let mut holder = Wire::connect(server.local_addr());
    let t = token(holder.acquire(b"fifo", b"h", 60_000, 0));
    let mut waiters: Vec<Wire> = (0..3).map(|_| Wire::connect(server.local_addr())).collect();
    let mut probe = Wire::connect(server.local_addr());
    for (i, w) in waiters.iter_mut().enumerate() {
        let owner = format!("w{i}");
        w.send(Request::Acquire(Acquire {
            name: b"fifo",
            owner: owner.as_bytes(),
            ttl_ms: 60_000,
            wait_ms: 10_000,
            flags: 0,
        }));
        // Queue them one at a time: the next is sent only once this one is
        // counted, so the queue order is the order of `waiters`.
        let deadline = Instant::now() + Duration::from_secs(5);
        while probe.acquire(b"fifo", b"probe", 1, 0).busy_waiters() != Some(i as u32 + 1) {
            assert!(Instant::now() < deadline, "waiter {i} never queued");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    holder.send(Request::Release {
        name: b"fifo",
        owner: b"h",
        token: t,
    });
    assert_eq!(holder.reply(), OwnedReply::Released);
    let mut last = t;
    for (i, w) in waiters.iter_mut().enumerate() {
        let granted = token(w.reply());
        assert!(granted > last);
        last = granted;
        let owner = format!("w{i}");
        w.send(Request::Release {
            name: b"fifo",
            owner: owner.as_bytes(),
            token: granted,
        });
        assert_eq!(w.reply(), OwnedReply::Released);
    }
}

#[test]
fn requests_behind_a_waiting_acquire_wait_for_it() {
    let server = start(Limits::default());
    let mut holder = Wire::connect(server.local_addr());
    token(holder.acquire(b"block", b"h", 60_000, 0));
    let mut c = Wire::connect(server.local_addr());
    // Pipeline: a waiting ACQUIRE (300 ms) then a PING. The PING's reply must
    // come after the TIMEOUT, not before.
    c.send(Request::Acquire(Acquire {
        name: b"block",
        owner: b"c",
        ttl_ms: 1,
        wait_ms: 300,
        flags: 0,
    }));
    c.send(Request::Ping);
    let start = Instant::now();
    assert_eq!(c.reply(), OwnedReply::Timeout(300));
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(c.reply(), OwnedReply::Pong);
}

#[test]
fn session_hold_is_released_when_its_connection_closes() {
    let server = start(Limits::default());
    let mut a = Wire::connect(server.local_addr());
    a.send(Request::Acquire(Acquire {
        name: b"sess",
        owner: b"a",
        ttl_ms: 60_000,
        wait_ms: 0,
        flags: FLAG_SESSION,
    }));
    token(a.reply());
    let mut b = Wire::connect(server.local_addr());
    b.send(Request::Acquire(Acquire {
        name: b"sess",
        owner: b"b",
        ttl_ms: 1000,
        wait_ms: 5000,
        flags: 0,
    }));
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    drop(a);
    token(b.reply());
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn bad_arguments_get_an_error_and_the_connection_stays_open() {
    let server = start(Limits {
        lock_ttl_ms_max: 60_000,
        legacy_ttl_ms: 60_000,
        ..Limits::default()
    });
    let mut c = Wire::connect(server.local_addr());
    let OwnedReply::Error(ErrorCode::BadArgument, message) = c.acquire(b"x", b"o", 60_001, 0)
    else {
        panic!("expected BAD_ARGUMENT");
    };
    assert!(
        message.contains("ttl_ms 60001") && message.contains("60000"),
        "{message}"
    );
    let OwnedReply::Error(ErrorCode::BadArgument, message) = c.acquire(b"", b"o", 1, 0) else {
        panic!("expected BAD_ARGUMENT");
    };
    assert!(message.contains("name is empty"), "{message}");
    c.send(Request::Release {
        name: b"x",
        owner: b"",
        token: 1,
    });
    assert!(matches!(
        c.reply(),
        OwnedReply::Error(ErrorCode::BadArgument, _)
    ));
    assert!(matches!(
        c.acquire(b"x", b"o", 1000, 0),
        OwnedReply::Granted(..)
    ));
}

/// Each kind of bad input gets its error frame and only that connection is
/// closed; a bystander's lock and connection are untouched.
#[test]
fn bad_frames_close_only_their_connection() {
    let server = start(Limits::default());
    let mut bystander = Wire::connect(server.local_addr());
    let held = token(bystander.acquire(b"keep", b"bystander", 60_000, 0));
    let cases: [(&[u8], ErrorCode); 5] = [
        (b"GET / HTTP/1.1\r\n\r\n", ErrorCode::UnknownKind),
        (&[0x04, 0x00, 0x03, 0x00, 0x02], ErrorCode::UnknownKind),
        (&[kind::ACQUIRE, 0xff, 0xff], ErrorCode::FrameTooLarge),
        (
            &[kind::ACQUIRE, 0x00, 0x02, 0x00, 0x00],
            ErrorCode::Protocol,
        ),
        (&[kind::PING, 0x00, 0x01, 0x00], ErrorCode::Protocol),
    ];
    for (bytes, code) in cases {
        let mut bad = Wire::connect(server.local_addr());
        bad.send_raw(bytes);
        let OwnedReply::Error(got, message) = bad.reply() else {
            panic!("no error for {bytes:?}")
        };
        assert_eq!(got, code, "{message}");
        assert!(!message.is_empty());
        assert!(
            bad.closed_by_server(),
            "connection stays open after {bytes:?}"
        );
    }
    assert!(
        matches!(bystander.acquire(b"keep", b"bystander", 60_000, 0), OwnedReply::Granted(t, _) if t == held)
    );
}

#[test]
fn connections_past_the_limit_are_refused_with_an_error() {
    let server = start(Limits {
        connections_max: 2,
        ..Limits::default()
    });
    let mut a = Wire::connect(server.local_addr());
    let mut b = Wire::connect(server.local_addr());
    a.send(Request::Ping);
    b.send(Request::Ping);
    assert_eq!(a.reply(), OwnedReply::Pong);
    assert_eq!(b.reply(), OwnedReply::Pong);
    let mut c = Wire::connect(server.local_addr());
    let OwnedReply::Error(ErrorCode::Limit, message) = c.reply() else {
        panic!("not refused")
    };
    assert!(message.contains("connections_max 2"), "{message}");
    assert!(c.closed_by_server());
    drop(a);
    std::thread::sleep(Duration::from_millis(100));
    let mut d = Wire::connect(server.local_addr());
    d.send(Request::Ping);
    assert_eq!(d.reply(), OwnedReply::Pong, "a freed slot is usable again");
}

/// A client that pipelines far more than the per-turn bound still gets every
/// reply, in order, and another client is served meanwhile.
#[test]
fn deep_pipelines_are_served_in_order() {
    let server = start(Limits::default());
    let mut c = Wire::connect(server.local_addr());
    let mut frames = Vec::new();
    let count = 2_000;
    for i in 0..count {
        let name = format!("p{}", i % 7);
        Request::Acquire(Acquire {
            name: name.as_bytes(),
            owner: b"o",
            ttl_ms: 60_000,
            wait_ms: 0,
            flags: 0,
        })
        .encode_to_vec(&mut frames);
        Request::Ping.encode_to_vec(&mut frames);
    }
    let writer = {
        let mut stream = c.stream().try_clone().unwrap();
        std::thread::spawn(move || stream.write_all(&frames).unwrap())
    };
    let mut other = Wire::connect(server.local_addr());
    other.send(Request::Ping);
    assert_eq!(other.reply(), OwnedReply::Pong);
    let mut tokens = std::collections::HashMap::new();
    for i in 0..count {
        let t = token(c.reply());
        // Same owner re-acquires: one token per name.
        assert_eq!(*tokens.entry(i % 7).or_insert(t), t);
        assert_eq!(c.reply(), OwnedReply::Pong);
    }
    writer.join().unwrap();
}

#[test]
fn locks_past_locks_max_get_a_limit_error() {
    let server = start(Limits {
        locks_max: 3,
        ..Limits::default()
    });
    let mut c = Wire::connect(server.local_addr());
    for name in [&b"l1"[..], b"l2", b"l3"] {
        token(c.acquire(name, b"o", 60_000, 0));
    }
    let OwnedReply::Error(ErrorCode::Limit, message) = c.acquire(b"l4", b"o", 60_000, 0) else {
        panic!("a lock past locks_max was granted");
    };
    assert!(
        message.contains("locks_max 3") && message.contains("--locks-max"),
        "{message}"
    );
    c.send(Request::Ping);
    assert_eq!(c.reply(), OwnedReply::Pong, "the connection stays open");
}

fn ping(wire: &mut Wire) {
    wire.send(Request::Ping);
    assert_eq!(wire.reply(), OwnedReply::Pong);
}

/// Slow-loris: a frame that starts and never completes gets a LIMIT error
/// after frame_timeout_ms and its connection is closed; a slow sender that
/// completes its frames in time, and every other connection, are served.
#[test]
fn a_frame_left_incomplete_past_frame_timeout_closes_its_connection() {
    let server = start(Limits {
        frame_timeout_ms: 1500,
        ..Limits::default()
    });
    let mut loris = Wire::connect(server.local_addr());
    let mut slow = Wire::connect(server.local_addr());
    let mut normal = Wire::connect(server.local_addr());
    let started = Instant::now();
    loris.send_raw(&[kind::ACQUIRE, 0, 40, 0]);
    // The slow client sends a PING byte by byte, 100 ms apart: each frame
    // is whole within the timeout.
    for byte in [b'P', 0, 0] {
        slow.send_raw(&[byte]);
        std::thread::sleep(Duration::from_millis(100));
        ping(&mut normal);
    }
    assert_eq!(slow.reply(), OwnedReply::Pong);
    match loris.reply() {
        OwnedReply::Error(ErrorCode::Limit, message) => {
            assert!(message.contains("frame_timeout_ms 1500"), "{message}")
        }
        other => panic!("expected ERROR LIMIT, got {other:?}"),
    }
    assert!(loris.closed_by_server());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "closed after {elapsed:?}, before frame_timeout_ms"
    );
    ping(&mut slow);
    ping(&mut normal);
}

/// More than a deaf connection's input buffer, output buffer and kernel
/// buffers can hold (4 KiB + 16 KiB + 192 KiB + 128 KiB), so the server
/// must have stopped reading before it closed.
const DEAF_CLOSE_BYTES_MIN: usize = 1 << 20;

fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
    )
}

/// A client that sends but never reads fills its output buffer; the server
/// stops reading it, and closes it once its replies made no progress for
/// write_timeout_ms. Other clients are served meanwhile.
#[test]
fn a_client_that_never_reads_is_closed_after_write_timeout() {
    let server = start(Limits {
        write_timeout_ms: 300,
        ..Limits::default()
    });
    let mut normal = Wire::connect(server.local_addr());
    let mut deaf = Wire::connect(server.local_addr());
    deaf.stream().set_nonblocking(true).unwrap();
    let pings = [b'P', 0, 0].repeat(10_000);
    let mut sent = 0usize;
    let mut blocked_since: Option<Instant> = None;
    // Write until the server has stopped reading for 200 ms (bounded).
    while sent < 512 << 20 {
        match deaf.stream().write(&pings) {
            Ok(n) => {
                sent += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(200) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            // The client's own send buffer grows to megabytes, so on a slow
            // machine the write timeout may close it while it still writes:
            // fine, once more than the server's buffers could take went out.
            Err(e) if is_reset(&e) && sent > DEAF_CLOSE_BYTES_MIN => {
                ping(&mut normal);
                return;
            }
            Err(e) => panic!("closed before the buffers filled, after {sent} bytes: {e}"),
        }
        ping(&mut normal);
    }
    assert!(blocked_since.is_some(), "never blocked after {sent} bytes");
    deaf.stream().set_nonblocking(false).unwrap();
    // 10x write_timeout_ms: reading before the close would be progress and
    // keep the connection open, so the close must have happened by now even
    // on a loaded machine.
    std::thread::sleep(Duration::from_millis(3000));
    ping(&mut normal);
    // The replies written before the close can be read; then EOF or reset.
    deaf.conn
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match deaf.stream().read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(e) => panic!("connection still open past write_timeout_ms: {e}"),
        }
    };
    assert!(ended);
}

/// With idle_timeout_ms set, a silent connection is closed; one that
/// talks, and one whose ACQUIRE waits longer than the timeout, are not.
#[test]
fn idle_connections_are_closed_when_idle_timeout_is_set() {
    // Margins of 10× around the timeout: a slow machine cannot make a
    // talking connection look idle.
    let server = start(Limits {
        idle_timeout_ms: 1000,
        ..Limits::default()
    });
    let mut holder = Wire::connect(server.local_addr());
    assert!(matches!(
        holder.acquire(b"idle", b"holder", 60_000, 0),
        OwnedReply::Granted(..)
    ));
    let mut silent = Wire::connect(server.local_addr());
    let mut waiter = Wire::connect(server.local_addr());
    let mut chatty = Wire::connect(server.local_addr());
    waiter.send(Request::Acquire(Acquire {
        name: b"idle",
        owner: b"waiter",
        ttl_ms: 0,
        wait_ms: 1800,
        flags: 0,
    }));
    for _ in 0..16 {
        std::thread::sleep(Duration::from_millis(100));
        ping(&mut chatty);
    }
    assert!(matches!(waiter.reply(), OwnedReply::Timeout(_)));
    ping(&mut waiter);
    assert!(silent.closed_by_server(), "silent connection left open");
    ping(&mut chatty);
}

/// One ACQUIRE past waiters_per_lock_max gets a LIMIT error; the queue and
/// the connection are unharmed.
#[test]
fn waiters_past_the_limit_get_a_limit_error() {
    let server = start(Limits {
        waiters_per_lock_max: 2,
        ..Limits::default()
    });
    let mut holder = Wire::connect(server.local_addr());
    let granted = token(holder.acquire(b"q", b"holder", 60_000, 0));
    let mut waiters: Vec<Wire> = (0..2).map(|_| Wire::connect(server.local_addr())).collect();
    for (i, waiter) in waiters.iter_mut().enumerate() {
        waiter.send(Request::Acquire(Acquire {
            name: b"q",
            owner: format!("waiter-{i}").as_bytes(),
            ttl_ms: 0,
            wait_ms: 5_000,
            flags: 0,
        }));
    }
    let mut third = Wire::connect(server.local_addr());
    // The two waiters are queued once BUSY counts them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !matches!(third.acquire(b"q", b"probe", 0, 0), OwnedReply::Busy(_, 2)) {
        assert!(Instant::now() < deadline, "waiters never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    match third.acquire(b"q", b"third", 0, 5_000) {
        OwnedReply::Error(ErrorCode::Limit, message) => {
            assert!(message.contains("waiters_per_lock_max 2"), "{message}")
        }
        other => panic!("expected ERROR LIMIT, got {other:?}"),
    }
    ping(&mut third);
    holder.send(Request::Release {
        name: b"q",
        owner: b"holder",
        token: granted,
    });
    assert_eq!(holder.reply(), OwnedReply::Released);
    assert!(token(waiters[0].reply()) > granted);
}

/// A connection with thousands of SESSION holds closes: every hold ends
/// (in batches, or on the spot when asked for), its waiter is granted, and
/// nothing is left held.
#[test]
fn many_session_holds_all_end_when_their_connection_closes() {
    const HOLDS: usize = 5_000;
    let server = start(Limits::default());
    let names: Vec<Vec<u8>> = (0..HOLDS).map(|i| format!("s{i}").into_bytes()).collect();
    let mut holder = Wire::connect(server.local_addr());
    for chunk in names.chunks(500) {
        let mut frames = Vec::new();
        for name in chunk {
            Request::Acquire(Acquire {
                name,
                owner: b"holder",
                ttl_ms: 600_000,
                wait_ms: 0,
                flags: FLAG_SESSION,
            })
            .encode_to_vec(&mut frames);
        }
        holder.send_raw(&frames);
        for _ in chunk {
            assert!(matches!(holder.reply(), OwnedReply::Granted(..)));
        }
    }
    let mut waiter = Wire::connect(server.local_addr());
    // A name in the middle: not among the few released at the close itself.
    let middle = HOLDS / 2;
    waiter.send(Request::Acquire(Acquire {
        name: &names[middle],
        owner: b"waiter",
        ttl_ms: 0,
        wait_ms: 10_000,
        flags: 0,
    }));
    let mut other = Wire::connect(server.local_addr());
    assert!(matches!(
        other.acquire(&names[0], b"other", 0, 0),
        OwnedReply::Busy(..)
    ));
    drop(holder);
    assert!(matches!(waiter.reply(), OwnedReply::Granted(..)));
    for (_, name) in names.iter().enumerate().filter(|&(i, _)| i != middle) {
        match other.acquire(name, b"other", 0, 0) {
            OwnedReply::Granted(..) => {}
            reply => panic!(
                "{} still held after the close: {reply:?}",
                String::from_utf8_lossy(name)
            ),
        }
    }
}
