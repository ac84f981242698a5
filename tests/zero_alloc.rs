//! After warm-up, serving requests allocates nothing: the server decodes in
//! place, executes against preallocated tables and encodes into fixed
//! buffers. A counting global allocator sees every allocation of every
//! thread in this process, the server's included; this file holds a single
//! test so that no other test's allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};

use distlockd::protocol::{Acquire, FLAG_SESSION, Reply, Request, decode_reply};
use distlockd::server::{Config, Server};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator; the counter
// is an atomic with no other effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NAMES: [&[u8]; 4] = [b"zero-alloc-a", b"zero-alloc-b", b"zero-alloc-c", b"d"];

/// Reads one reply into `buf`, returning its decoded form, without allocating.
fn read_reply<'a>(stream: &mut TcpStream, buf: &'a mut [u8; 512]) -> Reply<'a> {
    let mut filled = 0;
    loop {
        if let Some((_, n)) = decode_reply(&buf[..filled]).expect("valid reply") {
            assert_eq!(n, filled, "one reply per request, nothing extra");
            break;
        }
        let n = stream.read(&mut buf[filled..]).expect("read");
        assert!(n > 0, "server closed the connection");
        filled += n;
    }
    decode_reply(&buf[..filled]).unwrap().unwrap().0
}

fn send(stream: &mut TcpStream, request: Request<'_>) {
    let mut frame = [0u8; 512];
    let n = request.encode(&mut frame);
    stream.write_all(&frame[..n]).expect("write");
}

/// One round of acquire, extend, release on every name, plus a ping.
fn round(stream: &mut TcpStream, buf: &mut [u8; 512], flags: u8) {
    for name in NAMES {
        let owner = b"zero-alloc-owner";
        let acquire = Acquire {
            name,
            owner,
            ttl_ms: 60_000,
            wait_ms: 0,
            flags,
        };
        send(stream, Request::Acquire(acquire));
        let Reply::Granted { token, .. } = read_reply(stream, buf) else {
            panic!("not granted")
        };
        send(
            stream,
            Request::Extend {
                name,
                owner,
                token,
                ttl_ms: 30_000,
            },
        );
        assert!(matches!(
            read_reply(stream, buf),
            Reply::Extended { ttl_ms: 30_000 }
        ));
        send(stream, Request::Release { name, owner, token });
        assert_eq!(read_reply(stream, buf), Reply::Released);
    }
    send(stream, Request::Ping);
    assert!(matches!(read_reply(stream, buf), Reply::Pong { .. }));
    legacy_round(stream);
}

/// The original protocol's acquire, release and health on the same path.
fn legacy_round(stream: &mut TcpStream) {
    // cmd, name_len, client_id_len, name, client_id
    const ACQUIRE: &[u8] = b"\x01\x00\x06\x00\x02legacyid";
    const RELEASE: &[u8] = b"\x02\x00\x06\x00\x02legacyid";
    const HEALTH: &[u8] = b"\x03\x00\x06\x00\x02healthid";
    for frame in [ACQUIRE, RELEASE, HEALTH] {
        stream.write_all(frame).unwrap();
        let mut reply = [0u8; 3];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(reply, [0, 0, 0], "legacy OK with an empty message");
    }
}

/// Pipelined: all acquires of a round in one write, then all replies.
fn pipelined_round(stream: &mut TcpStream, buf: &mut [u8; 512]) {
    let mut frames = [0u8; 1024];
    let mut len = 0;
    for name in NAMES {
        let acquire = Acquire {
            name,
            owner: b"pipe",
            ttl_ms: 0,
            wait_ms: 0,
            flags: 0,
        };
        len += Request::Acquire(acquire).encode(&mut frames[len..]);
    }
    stream.write_all(&frames[..len]).unwrap();
    let mut tokens = [0u64; NAMES.len()];
    let mut pending = [0u8; 512];
    let mut filled = 0;
    for token in tokens.iter_mut() {
        loop {
            if let Some((reply, n)) = decode_reply(&pending[..filled]).unwrap() {
                let Reply::Granted { token: t, .. } = reply else {
                    panic!("not granted: {reply:?}")
                };
                *token = t;
                pending.copy_within(n..filled, 0);
                filled -= n;
                break;
            }
            filled += stream.read(&mut pending[filled..]).unwrap();
        }
    }
    for (name, token) in NAMES.iter().zip(tokens) {
        send(
            stream,
            Request::Release {
                name,
                owner: b"pipe",
                token,
            },
        );
        assert_eq!(read_reply(stream, buf), Reply::Released);
    }
}

#[test]
fn serving_requests_allocates_nothing_after_warm_up() {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    let server = Server::spawn(config).unwrap();
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buf = [0u8; 512];
    for _ in 0..200 {
        round(&mut stream, &mut buf, 0);
        round(&mut stream, &mut buf, FLAG_SESSION);
        pipelined_round(&mut stream, &mut buf);
    }

    // The counter must see allocations, or this test proves nothing.
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    drop(std::hint::black_box(Vec::<u8>::with_capacity(
        std::hint::black_box(64),
    )));
    assert!(
        ALLOCATIONS.load(Ordering::SeqCst) > before,
        "the counting allocator counts nothing"
    );

    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let rounds = 2_000;
    for _ in 0..rounds {
        round(&mut stream, &mut buf, 0);
        round(&mut stream, &mut buf, FLAG_SESSION);
        pipelined_round(&mut stream, &mut buf);
    }
    let allocated = ALLOCATIONS.load(Ordering::SeqCst) - before;
    let requests = rounds * (2 * (NAMES.len() * 3 + 1 + 3) + 2 * NAMES.len());
    assert_eq!(
        allocated, 0,
        "{allocated} allocations while serving {requests} requests"
    );
    drop(stream);
    server.stop().unwrap();
}
