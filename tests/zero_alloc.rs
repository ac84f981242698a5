//! After warm-up, serving requests allocates nothing: the server decodes in
//! place, executes against preallocated tables and encodes into fixed
//! buffers. A counting global allocator sees every allocation of every
//! thread in this process, the server's included, and the test's own
//! connection (`protocol::blocking`), which must not allocate per request
//! either; this file holds a single test so that no other test's
//! allocations are counted.

#![cfg(feature = "server")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};

use distlockd::protocol::blocking::Connection;
use distlockd::protocol::{Acquire, FLAG_SESSION, Reply, Request};
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

/// Sends `request` and hands its reply to `take`, checking that nothing
/// came after it.
fn exchange<T>(
    conn: &mut Connection,
    request: Request<'_>,
    take: impl FnOnce(Reply<'_>) -> T,
) -> T {
    let taken = take(conn.exchange(&request).expect("a reply"));
    assert!(
        conn.buffered().is_empty(),
        "one reply per request, nothing extra"
    );
    taken
}

/// One round of acquire, extend, release on every name, plus a ping.
fn round(conn: &mut Connection, flags: u8) {
    for name in NAMES {
        let owner = b"zero-alloc-owner";
        let acquire = Acquire {
            name,
            owner,
            ttl_ms: 60_000,
            wait_ms: 0,
            flags,
        };
        let token = exchange(conn, Request::Acquire(acquire), |reply| {
            let Reply::Granted { token, .. } = reply else {
                panic!("not granted")
            };
            token
        });
        let extend = Request::Extend {
            name,
            owner,
            token,
            ttl_ms: 30_000,
        };
        exchange(conn, extend, |reply| {
            assert!(matches!(reply, Reply::Extended { ttl_ms: 30_000 }));
        });
        let release = Request::Release { name, owner, token };
        exchange(conn, release, |reply| assert_eq!(reply, Reply::Released));
    }
    exchange(conn, Request::Ping, |reply| {
        assert!(matches!(reply, Reply::Pong { .. }));
    });
    legacy_round(conn);
}

/// The original protocol's acquire, release and health on the same path.
fn legacy_round(conn: &mut Connection) {
    // cmd, name_len, client_id_len, name, client_id
    const ACQUIRE: &[u8] = b"\x01\x00\x06\x00\x02legacyid";
    const RELEASE: &[u8] = b"\x02\x00\x06\x00\x02legacyid";
    const HEALTH: &[u8] = b"\x03\x00\x06\x00\x02healthid";
    for frame in [ACQUIRE, RELEASE, HEALTH] {
        conn.send_raw(frame).unwrap();
        // status, message length (u16): three bytes when the message is empty.
        let reply = conn
            .read_frame(|buf| Ok::<_, Infallible>(buf.first_chunk::<3>().map(|head| (*head, 3))))
            .unwrap();
        assert_eq!(reply, [0, 0, 0], "legacy OK with an empty message");
    }
}

/// Pipelined: all acquires of a round in one write, then all replies.
fn pipelined_round(conn: &mut Connection) {
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
    conn.send_raw(&frames[..len]).unwrap();
    let mut tokens = [0u64; NAMES.len()];
    for token in tokens.iter_mut() {
        let reply = conn.read_reply().unwrap();
        let Reply::Granted { token: t, .. } = reply else {
            panic!("not granted: {reply:?}")
        };
        *token = t;
    }
    for (name, token) in NAMES.iter().zip(tokens) {
        let release = Request::Release {
            name,
            owner: b"pipe",
            token,
        };
        exchange(conn, release, |reply| assert_eq!(reply, Reply::Released));
    }
}

#[test]
fn serving_requests_allocates_nothing_after_warm_up() {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    let server = Server::spawn(config).unwrap();
    let stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut conn = Connection::new(stream);
    for _ in 0..200 {
        round(&mut conn, 0);
        round(&mut conn, FLAG_SESSION);
        pipelined_round(&mut conn);
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
        round(&mut conn, 0);
        round(&mut conn, FLAG_SESSION);
        pipelined_round(&mut conn);
    }
    let allocated = ALLOCATIONS.load(Ordering::SeqCst) - before;
    let requests = rounds * (2 * (NAMES.len() * 3 + 1 + 3) + 2 * NAMES.len());
    assert_eq!(
        allocated, 0,
        "{allocated} allocations while serving {requests} requests"
    );
    drop(conn);
    server.stop().unwrap();
}
