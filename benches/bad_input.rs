//! A normal client's latency while other connections misbehave.
//!
//! Starts the daemon (the binary Cargo built for this bench, release in
//! `cargo bench`) and measures one normal client's ACQUIRE + RELEASE round
//! trip (two requests on one persistent connection) for a window, first
//! with nothing else going on and then while each attack runs on other
//! connections. Rows are interleaved and repeated; the table shows medians
//! over the repetitions and the ratio of each attack's p99 to the quiet p99
//! (the goal is at most 2×). Figures are printed, not asserted: on a shared
//! machine a timed assertion would fail for reasons that are not the
//! server's.
//!
//! Run: `cargo bench --bench bad_input` (about 40 s).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use distlockd::protocol::blocking::Connection;
use distlockd::protocol::{Acquire, FLAG_SESSION, Reply, Request};

/// Measured window per row and repetition.
const WINDOW: Duration = Duration::from_millis(1500);
/// Let an attack ramp up (connections opened) before measuring.
const RAMP: Duration = Duration::from_millis(300);
const REPEAT: usize = 3;
/// The server's connection limit, low so the flood passes it quickly.
const CONNECTIONS_MAX: usize = 256;
/// Slow-loris connections held open at once (each restarted when closed).
const SLOW_LORIS_CONNECTIONS: usize = 128;
/// Bad connections per second of the attacks that reconnect in a loop.
/// Paced, because on a 2-core machine an unpaced loop mostly measures the
/// attacker's own thread taking a core from the server and the normal
/// client; set to 0 for flat out.
const ATTACK_CONNECTIONS_PER_S: u64 = 1000;
/// The server closes a partial frame after this (slow-loris defence).
const FRAME_TIMEOUT_MS: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    Quiet,
    Garbage,
    SlowLoris,
    ConnectionFlood,
    HalfOpen,
    Oversize,
}

impl Attack {
    const ALL: [Attack; 6] = [
        Attack::Quiet,
        Attack::Garbage,
        Attack::SlowLoris,
        Attack::ConnectionFlood,
        Attack::HalfOpen,
        Attack::Oversize,
    ];

    fn label(self) -> &'static str {
        match self {
            Attack::Quiet => "quiet",
            Attack::Garbage => "garbage (unknown kind), reconnecting",
            Attack::SlowLoris => "slow-loris: 128 partial frames",
            Attack::ConnectionFlood => "connection flood past connections_max",
            Attack::HalfOpen => "half-open: SESSION acquire, shutdown(write)",
            Attack::Oversize => "oversize frames (body_len 65535)",
        }
    }
}

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
        .args(["--connections-max", &CONNECTIONS_MAX.to_string()])
        .args(["--frame-timeout-ms", &FRAME_TIMEOUT_MS.to_string()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start distlockd server");
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        // Keep reading: the server logs every refused connection.
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

fn frame(request: Request<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    request.encode_to_vec(&mut out);
    out
}

/// Reads one reply; `None` if the connection closed first.
fn read_reply(conn: &mut Connection) -> Option<(u8, u64)> {
    Some(match conn.read_reply().ok()? {
        Reply::Granted { token, .. } => (b'g', token),
        Reply::Released => (b'r', 0),
        Reply::Busy { .. } => (b'b', 0),
        _ => (b'?', 0),
    })
}

/// The normal client's connection, opened before an attack starts (so a
/// connection flood cannot take its place).
fn connect_normal(addr: SocketAddr) -> Connection {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut conn = Connection::new(stream);
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn
}

/// Acquire + release round trips for `WINDOW`; each sample in µs.
fn measure(mut conn: Connection) -> Vec<u64> {
    let mut samples = Vec::with_capacity(50_000);
    let end = Instant::now() + WINDOW;
    while Instant::now() < end {
        let started = Instant::now();
        conn.send(&Request::Acquire(Acquire {
            name: b"normal",
            owner: b"normal",
            ttl_ms: 10_000,
            wait_ms: 0,
            flags: 0,
        }))
        .unwrap();
        let (kind, token) = read_reply(&mut conn).expect("GRANTED");
        assert_eq!(kind, b'g');
        conn.send(&Request::Release {
            name: b"normal",
            owner: b"normal",
            token,
        })
        .unwrap();
        let (kind, _) = read_reply(&mut conn).expect("RELEASED");
        assert_eq!(kind, b'r');
        samples.push(started.elapsed().as_micros() as u64);
    }
    samples
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Sends `bytes` on a new connection and reads until the server closes it.
fn send_and_wait_close(addr: SocketAddr, bytes: &[u8], shutdown_write: bool) {
    let Ok(stream) = TcpStream::connect(addr) else {
        return;
    };
    let mut conn = Connection::new(stream);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.send_raw(bytes);
    if shutdown_write {
        let _ = conn.get_ref().shutdown(Shutdown::Write);
    }
    let _ = conn.read_to_close();
}

/// Runs `attack` until `stop`; returns how many bad connections it made.
fn run_attack(attack: Attack, addr: SocketAddr, stop: &AtomicBool, count: &AtomicU64) {
    let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4);
    let mut oversize = vec![b'A', 0xff, 0xff];
    oversize.extend_from_slice(&[0u8; 1000]);
    let session_then_close = frame(Request::Acquire(Acquire {
        name: b"half-open",
        owner: b"half-open",
        ttl_ms: 60_000,
        wait_ms: 0,
        flags: FLAG_SESSION,
    }));
    match attack {
        Attack::Quiet => {}
        Attack::Garbage => paced(stop, count, || send_and_wait_close(addr, &garbage, false)),
        Attack::Oversize => paced(stop, count, || send_and_wait_close(addr, &oversize, false)),
        Attack::HalfOpen => paced(stop, count, || {
            send_and_wait_close(addr, &session_then_close, true)
        }),
        Attack::SlowLoris => slow_loris(addr, stop, count),
        Attack::ConnectionFlood => connection_flood(addr, stop, count),
    }
}

/// Keeps SLOW_LORIS_CONNECTIONS connections each with a started frame,
/// opening a new one whenever the server closes one at its frame timeout.
fn slow_loris(addr: SocketAddr, stop: &AtomicBool, count: &AtomicU64) {
    let mut open: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        open.retain_mut(|s| {
            let mut buf = [0u8; 64];
            // Nonblocking: still open while there is nothing to read (the
            // server's ERROR LIMIT and close come at its frame timeout).
            matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        while open.len() < SLOW_LORIS_CONNECTIONS {
            let Ok(mut s) = TcpStream::connect(addr) else {
                break;
            };
            let _ = s.write_all(&[b'A', 0x00]);
            let _ = s.set_nonblocking(true);
            open.push(s);
            count.fetch_add(1, Ordering::Relaxed);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Holds connections past connections_max and keeps knocking: each new one
/// is refused with ERROR LIMIT and closed.
fn connection_flood(addr: SocketAddr, stop: &AtomicBool, count: &AtomicU64) {
    let mut held = Vec::new();
    // The normal client has one place; take all the others (and one more).
    for _ in 0..CONNECTIONS_MAX {
        if let Ok(s) = TcpStream::connect(addr) {
            held.push(s);
        }
    }
    paced(stop, count, || send_and_wait_close(addr, b"", false));
}

/// Runs `one` at ATTACK_CONNECTIONS_PER_S until `stop`.
fn paced(stop: &AtomicBool, count: &AtomicU64, mut one: impl FnMut()) {
    let interval = Duration::from_micros(1_000_000 / ATTACK_CONNECTIONS_PER_S.max(1));
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        one();
        count.fetch_add(1, Ordering::Relaxed);
        if ATTACK_CONNECTIONS_PER_S > 0 {
            next += interval;
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
}

struct Row {
    p50: Vec<u64>,
    p99: Vec<u64>,
    bad: Vec<u64>,
}

fn median(values: &[u64]) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us with no
    // such flag: do nothing then, this is a measurement.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let (_server, addr) = start_server();
    let mut rows: Vec<Row> = Attack::ALL
        .iter()
        .map(|_| Row {
            p50: vec![],
            p99: vec![],
            bad: vec![],
        })
        .collect();
    let started = Instant::now();
    for rep in 0..REPEAT {
        for (i, &attack) in Attack::ALL.iter().enumerate() {
            let stop = Arc::new(AtomicBool::new(false));
            let count = Arc::new(AtomicU64::new(0));
            let normal = connect_normal(addr);
            let attacker = {
                let (stop, count) = (stop.clone(), count.clone());
                thread::spawn(move || run_attack(attack, addr, &stop, &count))
            };
            thread::sleep(RAMP);
            let mut samples = measure(normal);
            stop.store(true, Ordering::Relaxed);
            attacker.join().unwrap();
            samples.sort_unstable();
            let row = &mut rows[i];
            row.p50.push(quantile(&samples, 0.50));
            row.p99.push(quantile(&samples, 0.99));
            row.bad.push(count.load(Ordering::Relaxed));
            eprintln!(
                "rep {} {:<45} p50 {:>5} us p99 {:>5} us ({} samples, {} bad connections)",
                rep + 1,
                attack.label(),
                quantile(&samples, 0.50),
                quantile(&samples, 0.99),
                samples.len(),
                count.load(Ordering::Relaxed)
            );
            // Let the server close what the attack left before the next row.
            thread::sleep(Duration::from_millis(200));
        }
    }
    let quiet_p99 = median(&rows[0].p99).max(1);
    println!(
        "\nNormal client ACQUIRE+RELEASE round trip, medians of {REPEAT} runs of {:.1} s ({:.0} s in all); reconnecting attacks paced at {ATTACK_CONNECTIONS_PER_S}/s\n",
        WINDOW.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "| {:<45} | {:>8} | {:>8} | {:>14} | {:>16} |",
        "while", "p50 us", "p99 us", "p99 / quiet", "bad conns/run"
    );
    println!(
        "|{:-<47}|{:->10}|{:->10}|{:->16}|{:->18}|",
        "", "", "", "", ""
    );
    for (attack, row) in Attack::ALL.iter().zip(&rows) {
        let p99 = median(&row.p99);
        println!(
            "| {:<45} | {:>8} | {:>8} | {:>13.2}× | {:>16} |",
            attack.label(),
            median(&row.p50),
            p99,
            p99 as f64 / quiet_p99 as f64,
            median(&row.bad)
        );
    }
}
