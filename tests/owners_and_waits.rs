//! What a client is told about re-entry, and waits without a deadline, against a real server over loopback TCP: the Rust client and
//! raw frames. Every loop and wait is bounded.

#![cfg(feature = "server")]

use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use distlockd::client::{Client, Error, WAIT_FOREVER};
use distlockd::limits::Limits;
use distlockd::protocol::blocking::Connection;
use distlockd::protocol::{
    Acquire, DecodeError, ErrorCode, FLAG_WAIT_FOREVER, Reply, Request, decode_reply,
};
use distlockd::server::{Config, Server, ServerHandle};

fn start_with(limits: Limits) -> ServerHandle {
    Server::spawn(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits,
        ..Config::default()
    })
    .expect("start server on loopback")
}

fn start() -> ServerHandle {
    start_with(Limits::default())
}

fn client(addr: SocketAddr, client_id: &str) -> Client {
    Client::builder(addr)
        .client_id(client_id)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Sends `requests` on a new connection and returns the raw bytes of the
/// last reply (one reply per request).
fn raw_exchange(addr: SocketAddr, requests: &[Request<'_>]) -> Vec<u8> {
    let mut conn = Connection::new(TcpStream::connect(addr).unwrap());
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut frames = Vec::new();
    for request in requests {
        request.encode_to_vec(&mut frames);
    }
    conn.send_raw(&frames).unwrap();
    for _ in 1..requests.len() {
        conn.read_reply().expect("replies within 5 s");
    }
    conn.read_frame(|buf| {
        let whole = decode_reply(buf)?;
        Ok::<_, DecodeError>(whole.map(|(_, used)| (buf[..used].to_vec(), used)))
    })
    .expect("the last reply within 5 s")
}

fn acquire_request<'a>(name: &'a str, owner: &'a str) -> Request<'a> {
    Request::Acquire(Acquire {
        name: name.as_bytes(),
        owner: owner.as_bytes(),
        ttl_ms: 10_000,
        wait_ms: 0,
        flags: 0,
    })
}

#[test]
fn a_same_owner_acquire_is_reported_as_a_reentry() {
    let server = start();
    let addr = server.local_addr();
    // Two clients (two shells, two hosts) configured with the same id: their
    // first acquisitions share the owner "job-runner:0".
    let first = client(addr, "job-runner");
    let second = client(addr, "job-runner");
    let lease = first.acquire("nightly", Duration::ZERO).unwrap();
    assert!(!lease.reentered(), "a new hold is not a re-entry");
    let again = second.acquire("nightly", Duration::ZERO).unwrap();
    assert_eq!(again.owner(), lease.owner());
    assert_eq!(again.token(), lease.token());
    assert!(again.reentered(), "the same owner re-entered its hold");
    // Another owner's grant after the release is new again.
    first.release_lease(&lease).unwrap();
    let other = client(addr, "other");
    assert!(
        !other
            .acquire("nightly", Duration::ZERO)
            .unwrap()
            .reentered()
    );
}

#[test]
fn granted_carries_the_reentry_flag_from_protocol_version_2() {
    let server = start();
    let addr = server.local_addr();
    let hello = |version| Request::Hello {
        version,
        client_name: b"test",
    };
    let take = acquire_request("wire", "o:1");
    // No HELLO: version 1, a 12-byte body with no room for the flag.
    let v1 = raw_exchange(addr, &[take]);
    assert_eq!(&v1[..3], &[b'g', 0, 12], "{v1:?}");
    let v1_hello = raw_exchange(addr, &[hello(1), take]);
    assert_eq!(&v1_hello[..3], &[b'g', 0, 12], "{v1_hello:?}");
    // Version 2: the flags byte says it is a re-entry (the owner holds it).
    let v2 = raw_exchange(addr, &[hello(2), take]);
    assert_eq!(&v2[..3], &[b'g', 0, 13], "{v2:?}");
    match decode_reply(&v2).unwrap().unwrap().0 {
        Reply::Granted { reentered, .. } => assert_eq!(reentered, Some(true)),
        other => panic!("{other:?}"),
    }
    let fresh = raw_exchange(addr, &[hello(u16::MAX), acquire_request("wire-2", "o:1")]);
    match decode_reply(&fresh).unwrap().unwrap().0 {
        Reply::Granted { reentered, .. } => assert_eq!(reentered, Some(false)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_wait_forever_outlasts_the_client_timeout_and_keeps_its_place() {
    let server = start();
    let addr = server.local_addr();
    let holder = client(addr, "holder");
    let lease = holder.acquire("queue", Duration::ZERO).unwrap();
    // A client timeout far below the wait: a forever wait must not read
    // with it.
    let forever = Client::builder(addr)
        .client_id("forever")
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let (sent, got) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let started = Instant::now();
        let result = forever.acquire("queue", WAIT_FOREVER);
        sent.send(()).unwrap();
        (result, started.elapsed())
    });
    wait_for_waiters(&holder, "queue", 1);
    // A later finite waiter queues behind it.
    let (later_sent, later_got) = mpsc::channel();
    let later_client = client(addr, "later");
    let later = thread::spawn(move || {
        let result = later_client.acquire("queue", Duration::from_secs(30));
        later_sent.send(()).unwrap();
        result
    });
    wait_for_waiters(&holder, "queue", 2);
    // 5x the client's timeout: still waiting, still first.
    assert!(got.recv_timeout(Duration::from_secs(1)).is_err());
    holder.release_lease(&lease).unwrap();
    got.recv_timeout(Duration::from_secs(5))
        .expect("granted at the release");
    let (result, waited) = waiter.join().unwrap();
    let granted = result.expect("granted");
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert!(
        later_got.try_recv().is_err(),
        "the later waiter jumped ahead"
    );
    // The later one gets it next.
    let forever_again = Client::builder(addr).client_id("forever").build().unwrap();
    forever_again.release_lease(&granted).unwrap();
    later_got
        .recv_timeout(Duration::from_secs(5))
        .expect("the second waiter is granted next");
    assert!(later.join().unwrap().is_ok());
}

/// Polls STATUS until `name` has `waiters` queued.
fn wait_for_waiters(c: &Client, name: &str, waiters: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.status(name).unwrap().map(|s| s.waiters) != Some(waiters) {
        assert!(
            Instant::now() < deadline,
            "{name:?} never had {waiters} waiters"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn waits_past_an_hour_are_taken_by_default() {
    let server = start();
    let c = client(server.local_addr(), "a");
    assert_eq!(c.server_info().unwrap().wait_max, None);
    assert!(c.acquire("long", Duration::from_secs(2 * 3600)).is_ok());
}

#[test]
fn a_bounded_server_refuses_wait_forever_and_says_why() {
    let server = start_with(Limits {
        wait_ms_max: 3_600_000,
        ..Limits::default()
    });
    let addr = server.local_addr();
    let holder = client(addr, "holder");
    let _held = holder.lock("bounded", Duration::ZERO).unwrap();
    let c = client(addr, "a");
    assert_eq!(
        c.server_info().unwrap().wait_max,
        Some(Duration::from_secs(3600))
    );
    let err = c.acquire("bounded", WAIT_FOREVER).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Server {
                code: ErrorCode::BadArgument,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("--wait-max-ms") && text.contains("3600000"),
        "{text}"
    );
    // Raw: WAIT_FOREVER with a wait_ms is ambiguous, and refused.
    let both = Request::Acquire(Acquire {
        name: b"bounded",
        owner: b"raw:1",
        ttl_ms: 0,
        wait_ms: 5,
        flags: FLAG_WAIT_FOREVER,
    });
    let reply = raw_exchange(addr, &[both]);
    match decode_reply(&reply).unwrap().unwrap().0 {
        Reply::Error { code, message } => {
            assert_eq!(code, ErrorCode::BadArgument);
            let message = String::from_utf8_lossy(message);
            assert!(message.contains("wait_ms 5"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_finite_wait_the_protocol_cannot_carry_is_refused_not_shortened() {
    let server = start();
    let c = client(server.local_addr(), "a");
    let sixty_days = Duration::from_secs(60 * 24 * 3600);
    let err = c.acquire("far", sixty_days).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(err.to_string().contains("WAIT_FOREVER"), "{err}");
}
