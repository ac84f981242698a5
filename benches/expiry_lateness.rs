//! How late after grant + TTL a hold's end reaches a waiter, end to end.
//!
//! Starts the daemon (the binary Cargo built for this bench, release in
//! `cargo bench`) and, per sample, on two connections: the holder takes a
//! lock with a TTL and no wait; the waiter then asks for it with a long
//! wait and is queued; the hold expires and the lock passes to the waiter.
//! Lateness is the time the waiter read its GRANTED minus (the time the
//! holder's grant happened + TTL). The grant happened between the holder's
//! send of ACQUIRE and its read of GRANTED, so two figures bracket it:
//!
//! - from the send: never below 0 from a correct server (a hold never ends
//!   before its full TTL); at most the documented bound (2 ms) plus half a
//!   round trip, plus scheduling delays;
//! - from the read: can be slightly below 0 (by up to half a round trip).
//!
//! Two runs: a quiet server, and one where another client sends PINGs, so
//! that the server's polls fall at every phase of its millisecond.
//!
//! Figures are printed, not asserted: on a shared machine a timed assertion
//! would fail for reasons that are not the server's.
//!
//! Run: `cargo bench --bench expiry_lateness` (about 30 s).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use distlockd::protocol::blocking::Connection;
use distlockd::protocol::{Acquire, Reply, Request};

/// Samples taken (each one hold and its hand-over).
const SAMPLES: usize = 500;
/// TTLs of the holds, cycled: several, so grants fall on every phase of the
/// server's millisecond and of its poll sleeps.
const TTLS_MS: [u32; 4] = [5, 7, 11, 13];
/// The waiter must be queued at least this long before the hold's end, or
/// the sample is dropped (it would measure an immediate grant instead).
const QUEUED_BEFORE_END: Duration = Duration::from_millis(2);
/// The other client's pace in the second run.
const PING_EVERY: Duration = Duration::from_micros(300);

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> (Server, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(["server", "--port", "0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start distlockd server");
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(rest) = line.split(" listening on ").nth(1) {
                sent = tx
                    .send(rest.split(';').next().unwrap_or("").trim().to_owned())
                    .is_ok();
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server's start-up line");
    (server, addr.parse().unwrap())
}

struct Conn(Connection);

impl Conn {
    fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut conn = Connection::new(stream);
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn(conn)
    }

    fn send(&mut self, request: Request<'_>) {
        self.0.send(&request).unwrap();
    }

    /// Reads one reply and hands it to `take`.
    fn reply<T>(&mut self, take: impl FnOnce(Reply<'_>) -> T) -> T {
        take(self.0.read_reply().expect("a reply within 10 s"))
    }

    /// Reads a GRANTED and returns its token; panics on any other reply.
    fn granted(&mut self) -> u64 {
        self.reply(|reply| match reply {
            Reply::Granted { token, .. } => token,
            other => panic!("expected GRANTED, got {other:?}"),
        })
    }

    fn released(&mut self) {
        self.reply(|reply| assert_eq!(reply, Reply::Released));
    }
}

fn acquire(owner: &[u8], ttl_ms: u32, wait_ms: u32) -> Request<'_> {
    Request::Acquire(Acquire {
        name: b"lateness",
        owner,
        ttl_ms,
        wait_ms,
        flags: 0,
    })
}

/// Median, p99 and max of `values` in µs, and the smallest.
fn summary(values: &mut [i64]) -> String {
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    format!(
        "min {:>6} µs  median {:>6} µs  p99 {:>6} µs  max {:>6} µs",
        values[0],
        at(0.5),
        at(0.99),
        values[values.len() - 1]
    )
}

/// Lateness from the holder's ACQUIRE sent and from its GRANTED read, in
/// µs, over `SAMPLES` hand-overs; and how many samples were dropped.
fn measure(addr: SocketAddr) -> (Vec<i64>, Vec<i64>, usize) {
    let mut holder = Conn::connect(addr);
    let mut waiter = Conn::connect(addr);
    let (mut from_send, mut from_read) = (Vec::new(), Vec::new());
    let mut dropped = 0;
    for i in 0..SAMPLES {
        let ttl_ms = TTLS_MS[i % TTLS_MS.len()];
        let ttl = Duration::from_millis(ttl_ms as u64);
        let sent = Instant::now();
        holder.send(acquire(b"holder", ttl_ms, 0));
        holder.granted();
        let read = Instant::now();
        waiter.send(acquire(b"waiter", 60_000, 60_000));
        let queued = Instant::now();
        let token = waiter.granted();
        let handed_over = Instant::now();
        waiter.send(Request::Release {
            name: b"lateness",
            owner: b"waiter",
            token,
        });
        waiter.released();
        if queued + QUEUED_BEFORE_END > read + ttl {
            dropped += 1;
            continue;
        }
        let late = |granted: Instant| {
            let end = granted + ttl;
            if handed_over >= end {
                (handed_over - end).as_micros() as i64
            } else {
                -((end - handed_over).as_micros() as i64)
            }
        };
        from_send.push(late(sent));
        from_read.push(late(read));
    }
    (from_send, from_read, dropped)
}

/// Another client's PINGs, one every `PING_EVERY`, so that the server's
/// last poll before a hold's end starts at any phase of its millisecond
/// (on a quiet server it starts right after the grant, and the rounding of
/// the poll sleep then cancels the rounding of the grant's millisecond).
fn pinger(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut conn = Conn::connect(addr);
        while !stop.load(Ordering::Relaxed) {
            conn.send(Request::Ping);
            conn.reply(|reply| assert!(matches!(reply, Reply::Pong { .. }), "{reply:?}"));
            std::thread::sleep(PING_EVERY);
        }
    })
}

fn main() {
    let (_server, addr) = start_server();
    println!(
        "expiry lateness: the waiter's GRANTED read minus (the holder's grant + TTL), TTLs {TTLS_MS:?} ms"
    );
    for with_pings in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let pings = with_pings.then(|| pinger(addr, stop.clone()));
        let (mut from_send, mut from_read, dropped) = measure(addr);
        stop.store(true, Ordering::Relaxed);
        if let Some(pings) = pings {
            pings.join().unwrap();
        }
        println!(
            "{}, {} samples ({dropped} dropped: waiter not queued in time)",
            if with_pings {
                "another client sends a PING every 0.3 ms"
            } else {
                "quiet server"
            },
            from_send.len(),
        );
        println!(
            "  grant = holder's ACQUIRE sent:  {}",
            summary(&mut from_send)
        );
        println!(
            "  grant = holder's GRANTED read:  {}",
            summary(&mut from_read)
        );
    }
}
