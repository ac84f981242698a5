//! The original Python daemon's protocol on our port, byte for byte, sharing
//! the lock table with the native protocol.

#![cfg(feature = "server")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use distlockd::client::Client;
use distlockd::limits::Limits;
use distlockd::protocol::legacy::{self, Command};
use distlockd::protocol::{Acquire, Reply, Request, decode_reply};
use distlockd::server::{Config, Server, ServerHandle};

fn start() -> ServerHandle {
    start_with(Limits::default())
}

fn start_with(limits: Limits) -> ServerHandle {
    Server::spawn(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits,
        ..Config::default()
    })
    .unwrap()
}

struct Legacy {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Legacy {
    fn connect(server: &ServerHandle) -> Legacy {
        let stream = TcpStream::connect(server.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Legacy {
            stream,
            pending: Vec::new(),
        }
    }

    fn send(&mut self, command: Command, name: &[u8], client_id: &[u8]) {
        let mut frame = Vec::new();
        legacy::encode_request(command, name, client_id, &mut frame);
        self.stream.write_all(&frame).unwrap();
    }

    fn reply(&mut self) -> (u8, String) {
        loop {
            if let Some((status, message, n)) = legacy::decode_reply(&self.pending) {
                let out = (status, String::from_utf8_lossy(message).into_owned());
                self.pending.drain(..n);
                return out;
            }
            let mut buf = [0u8; 1024];
            let n = self.stream.read(&mut buf).unwrap();
            assert!(n > 0, "server closed the connection");
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    fn call(&mut self, command: Command, name: &[u8], client_id: &[u8]) -> (u8, String) {
        self.send(command, name, client_id);
        self.reply()
    }
}

const OK: (u8, &str) = (legacy::STATUS_OK, "");

fn status(reply: &(u8, String)) -> (u8, &str) {
    (reply.0, reply.1.as_str())
}

#[test]
fn the_original_semantics() {
    let server = start();
    let mut a = Legacy::connect(&server);
    let mut b = Legacy::connect(&server);
    assert_eq!(status(&a.call(Command::Health, b"health", b"id-a")), OK);
    assert_eq!(status(&a.call(Command::Acquire, b"job", b"id-a")), OK);
    assert_eq!(
        status(&a.call(Command::Acquire, b"job", b"id-a")),
        OK,
        "holder again: OK"
    );
    assert_eq!(
        status(&b.call(Command::Acquire, b"job", b"id-b")),
        (legacy::STATUS_TIMEOUT, "Lock is busy")
    );
    assert_eq!(
        status(&b.call(Command::Release, b"job", b"id-b")),
        (legacy::STATUS_ERROR, "Invalid release")
    );
    assert_eq!(status(&a.call(Command::Release, b"job", b"id-a")), OK);
    assert_eq!(
        status(&a.call(Command::Release, b"job", b"id-a")),
        (legacy::STATUS_ERROR, "Invalid release")
    );
    assert_eq!(status(&b.call(Command::Acquire, b"job", b"id-b")), OK);
}

#[test]
fn bad_fields_get_invalid_and_the_connection_stays() {
    let server = start();
    let mut c = Legacy::connect(&server);
    let (code, message) = c.call(Command::Acquire, b"", b"id");
    assert_eq!(code, legacy::STATUS_INVALID);
    assert!(message.contains("name is empty"), "{message}");
    let (code, message) = c.call(Command::Acquire, b"x", &[b'i'; 65]);
    assert_eq!(code, legacy::STATUS_INVALID);
    assert!(message.contains("client id is 65 bytes"), "{message}");
    assert_eq!(status(&c.call(Command::Acquire, b"x", b"id")), OK);
}

#[test]
fn an_oversize_frame_gets_invalid_and_the_connection_closes() {
    let server = start();
    let mut c = Legacy::connect(&server);
    c.stream
        .write_all(&[legacy::CMD_ACQUIRE, 0x10, 0x00, 0x00, 0x10])
        .unwrap();
    let (code, message) = c.reply();
    assert_eq!(code, legacy::STATUS_INVALID);
    assert!(message.contains("frame_size_max"), "{message}");
    let mut buf = [0u8; 16];
    assert_eq!(
        c.stream.read(&mut buf).unwrap(),
        0,
        "closed after the error"
    );
}

#[test]
fn legacy_and_native_clients_exclude_each_other() {
    let server = start();
    let client = Client::new(server.local_addr()).unwrap();
    let lease = client.try_acquire("shared").unwrap().expect("free");
    let mut old = Legacy::connect(&server);
    assert_eq!(
        old.call(Command::Acquire, b"shared", b"py").0,
        legacy::STATUS_TIMEOUT
    );
    assert_eq!(
        old.call(Command::Release, b"shared", b"py").0,
        legacy::STATUS_ERROR
    );
    client.release_lease(&lease).unwrap();
    assert_eq!(status(&old.call(Command::Acquire, b"shared", b"py")), OK);
    assert!(
        client.try_acquire("shared").unwrap().is_none(),
        "the legacy hold excludes us"
    );
    assert_eq!(status(&old.call(Command::Release, b"shared", b"py")), OK);
    let after = client.try_acquire("shared").unwrap().expect("free again");
    assert!(
        after.token() > lease.token() + 1,
        "the legacy hold took a token too"
    );
}

#[test]
fn both_protocols_pipelined_on_one_connection() {
    let server = start();
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut frames = Vec::new();
    legacy::encode_request(Command::Acquire, b"mixed", b"py", &mut frames);
    Request::Acquire(Acquire {
        name: b"mixed",
        owner: b"rs",
        ttl_ms: 0,
        wait_ms: 0,
        flags: 0,
    })
    .encode_to_vec(&mut frames);
    legacy::encode_request(Command::Health, b"health", b"py", &mut frames);
    Request::Ping.encode_to_vec(&mut frames);
    stream.write_all(&frames).unwrap();
    let mut got = Vec::new();
    while got.len() < 3 + 3 + 3 + 3 + 8 + 3 + 8 {
        let mut buf = [0u8; 256];
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
        if let Some((_, _, first)) = legacy::decode_reply(&got) {
            if let Ok(Some((_, second))) = decode_reply(&got[first..]) {
                if legacy::decode_reply(&got[first + second..]).is_some() {
                    let third = first + second + 3;
                    if decode_reply(&got[third..]).ok().flatten().is_some() {
                        break;
                    }
                }
            }
        }
    }
    let (status, _, first) = legacy::decode_reply(&got).unwrap();
    assert_eq!(status, legacy::STATUS_OK);
    let (busy, second) = decode_reply(&got[first..]).unwrap().unwrap();
    assert!(matches!(busy, Reply::Busy { .. }), "{busy:?}");
    let (status, _, third) = legacy::decode_reply(&got[first + second..]).unwrap();
    assert_eq!(status, legacy::STATUS_OK);
    let (pong, _) = decode_reply(&got[first + second + third..])
        .unwrap()
        .unwrap();
    assert!(matches!(pong, Reply::Pong { .. }));
}

/// The original client never renews, and its server kept a hold for an
/// hour: a legacy hold lives `legacy_ttl_ms`, not the native default TTL,
/// when taken and when re-taken by the same client id. Native TTLs here are
/// 100 ms and legacy ones 60 s, so the checks hold on a slow machine.
#[test]
fn a_legacy_hold_lives_legacy_ttl_ms_not_the_native_default() {
    let server = start_with(Limits {
        lock_ttl_ms_default: 100,
        legacy_ttl_ms: 60_000,
        ..Limits::default()
    });
    let client = Client::new(server.local_addr()).unwrap();
    let mut old = Legacy::connect(&server);
    let remaining = |name: &str| {
        let status = client.status(name).unwrap();
        status
            .unwrap_or_else(|| panic!("{name} is not held"))
            .remaining
    };
    assert_eq!(status(&old.call(Command::Acquire, b"job", b"py")), OK);
    let taken = remaining("job");
    assert!(taken > Duration::from_secs(30), "{taken:?} left");

    // Ten times the native default later, it is still held.
    std::thread::sleep(Duration::from_millis(1_000));
    assert!(client.try_acquire("job").unwrap().is_none(), "expired");
    assert_eq!(status(&old.call(Command::Acquire, b"job", b"py")), OK);
    let retaken = remaining("job");
    assert!(retaken > Duration::from_secs(30), "{retaken:?} left");
    assert_eq!(status(&old.call(Command::Release, b"job", b"py")), OK);

    // A native ACQUIRE that asks for the default (TTL 0) still gets it.
    let mut native = TcpStream::connect(server.local_addr()).unwrap();
    native
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut frame = Vec::new();
    Request::Acquire(Acquire {
        name: b"native",
        owner: b"rs",
        ttl_ms: 0,
        wait_ms: 0,
        flags: 0,
    })
    .encode_to_vec(&mut frame);
    native.write_all(&frame).unwrap();
    let mut got = Vec::new();
    let ttl_ms = loop {
        match decode_reply(&got).unwrap() {
            Some((Reply::Granted { ttl_ms, .. }, _)) => break ttl_ms,
            Some((other, _)) => panic!("expected GRANTED, got {other:?}"),
            None => {}
        }
        let mut buf = [0u8; 256];
        let n = native.read(&mut buf).unwrap();
        assert!(n > 0, "closed");
        got.extend_from_slice(&buf[..n]);
    };
    assert_eq!(ttl_ms, 100);
}
