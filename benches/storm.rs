//! An expiry storm: a client takes 1,000,000 locks with one TTL as fast as
//! it can (pipelined, 16-byte names), then they all expire, while a
//! bystander sends one PING per millisecond. Prints the bystander's round
//! trips (p50, p99, p99.9, worst) when the server is quiet, while the locks
//! are taken, and while they expire. No reply should wait more than a few
//! milliseconds behind the expiries, the compaction or the shrinking that
//! follow.
//!
//! `cargo bench --bench storm` (`-- --locks N --ttl-ms T` to change the load).

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use distlockd::protocol::blocking::Connection;
use distlockd::protocol::{Acquire, Reply, Request};
use distlockd::server::{Config, Server};

struct Wire {
    conn: Connection,
    frame: Vec<u8>,
}

impl Wire {
    fn connect(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Wire {
            conn: Connection::new(stream),
            frame: Vec::new(),
        }
    }

    fn send(&mut self) {
        self.conn.send_raw(&self.frame).unwrap();
        self.frame.clear();
    }

    fn reply_ok(&mut self) -> bool {
        let reply = self.conn.read_reply().expect("a reply");
        matches!(reply, Reply::Granted { .. } | Reply::Pong { .. })
    }
}

/// Round trips, in microseconds, with when each was sent (ms since start).
struct Samples(Vec<(u64, u64)>);

impl Samples {
    fn report(&self, label: &str, from_ms: u64, to_ms: u64) {
        let mut rtts: Vec<u64> = (self.0.iter())
            .filter(|&&(at, _)| (from_ms..to_ms).contains(&at))
            .map(|&(_, rtt)| rtt)
            .collect();
        if rtts.is_empty() {
            println!("{label:<28} no samples");
            return;
        }
        rtts.sort_unstable();
        let q = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize];
        println!(
            "{label:<28} {:>7} pings  p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs  worst {:>6} µs",
            rtts.len(),
            q(0.5),
            q(0.99),
            q(0.999),
            rtts[rtts.len() - 1]
        );
    }
}

fn main() {
    let mut locks: u32 = 1_000_000;
    let mut ttl_ms: u32 = 5_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--locks" => locks = args.next().unwrap().parse().unwrap(),
            "--ttl-ms" => ttl_ms = args.next().unwrap().parse().unwrap(),
            _ => {} // cargo bench passes --bench
        }
    }
    let server = Server::spawn(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    })
    .unwrap();
    let addr = server.local_addr();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let pinger = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut wire = Wire::connect(addr);
            let mut samples = Vec::new();
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                Request::Ping.encode_to_vec(&mut wire.frame);
                wire.send();
                assert!(wire.reply_ok());
                let rtt = sent.elapsed().as_micros() as u64;
                samples.push((sent.duration_since(started).as_millis() as u64, rtt));
                next += Duration::from_millis(1);
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
            Samples(samples)
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let load_from = started.elapsed().as_millis() as u64;
    let mut loader = Wire::connect(addr);
    const BATCH: u32 = 4096;
    for start in (0..locks).step_by(BATCH as usize) {
        let end = (start + BATCH).min(locks);
        for i in start..end {
            let name = format!("storm-{i:010}");
            Request::Acquire(Acquire {
                name: name.as_bytes(),
                owner: b"loader",
                ttl_ms,
                wait_ms: 0,
                flags: 0,
            })
            .encode_to_vec(&mut loader.frame);
        }
        loader.send();
        for _ in start..end {
            assert!(loader.reply_ok(), "not granted");
        }
    }
    let load_to = started.elapsed().as_millis() as u64;
    let storm_from = load_from + ttl_ms as u64;
    let storm_to = load_to + ttl_ms as u64 + 2_000;
    while (started.elapsed().as_millis() as u64) < storm_to {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let samples = pinger.join().unwrap();
    println!(
        "{locks} locks taken in {} ms, TTL {ttl_ms} ms; a PING every ms:",
        load_to - load_from
    );
    samples.report("quiet", 0, load_from);
    samples.report("while locks are taken", load_from, load_to.min(storm_from));
    samples.report("while they expire", storm_from, storm_to);
    drop(server);
}
