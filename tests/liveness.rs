//! One client's load must never stall everyone else: big SESSION releases
//! under STATUS listings, over real sockets, with a bystander measuring its
//! round trips. The bounds are loose (a debug build on a loaded 2-core
//! machine) but far below what the stalls they guard against cost.

#![cfg(feature = "server")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use distlockd::protocol::blocking::Connection;
use distlockd::protocol::{Acquire, FLAG_SESSION, Reply, Request};
use distlockd::server::{Config, Server, ServerHandle};

/// A raw protocol connection: pipelined frames out, replies in order.
struct Wire {
    conn: Connection,
    frame: Vec<u8>,
}

impl Wire {
    fn connect(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut conn = Connection::new(stream);
        conn.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Wire {
            conn,
            frame: Vec::new(),
        }
    }

    fn queue(&mut self, request: Request<'_>) {
        request.encode_to_vec(&mut self.frame);
    }

    fn flush(&mut self) {
        self.conn.send_raw(&self.frame).unwrap();
        self.frame.clear();
    }

    /// Calls `f` with the next reply.
    fn reply<T>(&mut self, f: impl FnOnce(Reply<'_>) -> T) -> T {
        f(self.conn.read_reply().expect("a reply in time"))
    }

    fn ping_rtt(&mut self) -> Duration {
        let started = Instant::now();
        self.queue(Request::Ping);
        self.flush();
        self.reply(|r| assert!(matches!(r, Reply::Pong { .. }), "{r:?}"));
        started.elapsed()
    }
}

fn start() -> (ServerHandle, SocketAddr) {
    let server = Server::bind(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    })
    .unwrap();
    let http = server.http_addr().unwrap();
    (server.start().unwrap(), http)
}

/// `GET path` on the HTTP port: the body, and how long it took.
fn http_get(addr: SocketAddr, path: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (body, started.elapsed())
}

fn metric(http: SocketAddr, name: &str) -> u64 {
    let (body, _) = http_get(http, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics")) as u64
}

/// Takes `count` SESSION holds on one connection, pipelined.
fn take_session_holds(wire: &mut Wire, count: u32) {
    const BATCH: u32 = 1000;
    for start in (0..count).step_by(BATCH as usize) {
        let end = (start + BATCH).min(count);
        for i in start..end {
            let name = format!("hold-{i:010}");
            wire.queue(Request::Acquire(Acquire {
                name: name.as_bytes(),
                owner: b"holder",
                ttl_ms: 600_000,
                wait_ms: 0,
                flags: FLAG_SESSION,
            }));
        }
        wire.flush();
        for _ in start..end {
            wire.reply(|r| assert!(matches!(r, Reply::Granted { .. }), "{r:?}"));
        }
    }
}

/// Issue: with 200,000 SESSION holds released after a close, every STATUS
/// listing page stepped over each deferred hold: 64 listings in flight froze
/// the server for seconds (PING, /health, wait timeouts all late) and the
/// release crawled; STATUS `total` kept counting the released holds.
#[test]
fn status_listings_during_a_big_session_release_delay_nobody() {
    const HOLDS: u32 = 200_000;
    const IN_FLIGHT: usize = 64;
    const WAIT_MS: u32 = 100;
    let (server, http) = start();
    let addr = server.local_addr();
    let mut holder = Wire::connect(addr);
    take_session_holds(&mut holder, HOLDS);
    let mut bystander = Wire::connect(addr);
    bystander.queue(Request::Acquire(Acquire {
        name: b"bystander",
        owner: b"b",
        ttl_ms: 600_000,
        wait_ms: 0,
        flags: 0,
    }));
    bystander.flush();
    bystander.reply(|r| assert!(matches!(r, Reply::Granted { .. }), "{r:?}"));
    let releases_before = metric(http, "distlockd_releases_total");

    // The lister keeps 64 whole-table STATUS pages in flight, from before
    // the close until the release is done. Once `settled` is set, every
    // page it sends must leave the released holds out of `total` (replies
    // come in request order, so reply n answers request n).
    let stop = Arc::new(AtomicBool::new(false));
    let settled = Arc::new(AtomicBool::new(false));
    let lister = {
        let (stop, settled) = (stop.clone(), settled.clone());
        std::thread::spawn(move || {
            let mut wire = Wire::connect(addr);
            let status = Request::Status {
                name: b"",
                cursor: 0,
            };
            for _ in 0..IN_FLIGHT {
                wire.queue(status);
            }
            wire.flush();
            let (mut sent, mut answered) = (IN_FLIGHT as u64, 0u64);
            let mut checked_from = u64::MAX;
            let mut max_total_checked = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let total = wire.reply(|r| match r {
                    Reply::Status(s) => s.total,
                    other => panic!("{other:?}"),
                });
                if answered >= checked_from {
                    max_total_checked = max_total_checked.max(total);
                }
                answered += 1;
                if checked_from == u64::MAX && settled.load(Ordering::SeqCst) {
                    checked_from = sent;
                }
                wire.queue(status);
                wire.flush();
                sent += 1;
            }
            (
                answered,
                answered.saturating_sub(checked_from),
                max_total_checked,
            )
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    drop(holder);
    let closed = Instant::now();
    // The close counts at once: /health stops counting the holds long
    // before they are all released.
    loop {
        let (health, _) = http_get(http, "/health");
        if health.contains("\"locks_held\":1,") {
            break;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(10),
            "/health still counts released holds: {health}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    settled.store(true, Ordering::SeqCst);

    // A waiter on the bystander's lock, 100 ms at a time: its TIMEOUT must
    // come on time, not behind the release.
    let mut waiter = Wire::connect(addr);
    let mut worst_wait = Duration::ZERO;
    let (mut worst_ping, mut worst_health) = (Duration::ZERO, Duration::ZERO);
    let released = loop {
        worst_ping = worst_ping.max(bystander.ping_rtt());
        let asked = Instant::now();
        waiter.queue(Request::Acquire(Acquire {
            name: b"bystander",
            owner: b"w",
            ttl_ms: 1000,
            wait_ms: WAIT_MS,
            flags: 0,
        }));
        waiter.flush();
        waiter.reply(|r| assert!(matches!(r, Reply::Timeout { .. }), "{r:?}"));
        worst_wait = worst_wait.max(asked.elapsed());
        let (health, took) = http_get(http, "/health");
        assert!(health.contains("\"status\":\"ok\""), "{health}");
        worst_health = worst_health.max(took);
        let released = metric(http, "distlockd_releases_total") - releases_before;
        if released >= HOLDS as u64 {
            break closed.elapsed();
        }
        assert!(
            closed.elapsed() < Duration::from_secs(60),
            "{released} of {HOLDS} released after 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    stop.store(true, Ordering::SeqCst);
    let (pages, checked, max_total_checked) = lister.join().unwrap();
    println!(
        "{HOLDS} SESSION holds released in {released:?} under {pages} STATUS pages; \
         worst PING {worst_ping:?}, worst /health {worst_health:?}, \
         worst {WAIT_MS} ms wait answered after {worst_wait:?}"
    );
    assert!(
        worst_wait < Duration::from_millis(WAIT_MS as u64) + Duration::from_secs(1),
        "a {WAIT_MS} ms wait was answered after {worst_wait:?}"
    );
    assert!(
        worst_ping < Duration::from_secs(1),
        "a bystander's PING waited {worst_ping:?}"
    );
    assert!(
        worst_health < Duration::from_secs(1),
        "/health took {worst_health:?}"
    );
    assert!(checked > 0, "no STATUS page was checked after the close");
    assert!(
        max_total_checked <= 1,
        "STATUS total counted released holds: {max_total_checked}"
    );
    let (health, _) = http_get(http, "/health");
    assert!(health.contains("\"locks_held\":1,"), "{health}");
}
