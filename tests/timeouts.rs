//! Connection timeouts judge what the client did, not when the server
//! looked, and wherever its unread replies wait:
//! - a server paused (SIGSTOP, as a VM pause or swapping would) for longer
//!   than a timeout closes no connection whose client kept to it; what the
//!   client sends or reads during the pause waits in the kernel until
//!   SIGCONT;
//! - a client that does not read is closed after `--write-timeout-ms` even
//!   when its replies sit in the kernel, and they take a bounded amount of
//!   the kernel's memory meanwhile (read from /proc/net/tcp).
//!
//! Every test runs the daemon as a process on a free loopback port.

#![cfg(feature = "server")]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use distlockd::protocol::{Acquire, ErrorCode, FLAG_SESSION, Reply, Request};

mod common;
use common::wire::{REPLY_WAIT, Wire};
use common::{ServerProcess, start_server_with, start_server_with_http};

// ---------------------------------------------------------------------------
// Pausing the server.

/// Stops the server process and waits until it is stopped.
fn stop(server: &ServerProcess) {
    signal(server, rustix::process::Signal::STOP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_state(server.0.id()) != Some('T') {
        assert!(Instant::now() < deadline, "the server did not stop in 5 s");
        thread::sleep(Duration::from_millis(1));
    }
}

fn resume(server: &ServerProcess) {
    signal(server, rustix::process::Signal::CONT);
}

fn signal(server: &ServerProcess, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(server.0.id() as i32).expect("a child's pid");
    rustix::process::kill_process(pid, signal).expect("signal the server");
}

/// The state letter of /proc/PID/stat (R, S, T, ...).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Sleeps until `since + total`.
fn sleep_until(since: Instant, total: Duration) {
    thread::sleep((since + total).saturating_duration_since(Instant::now()));
}

// ---------------------------------------------------------------------------
// A raw connection.

/// A reply copied out of the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    Granted(u64),
    Released,
    Pong,
    Authed,
    Error(ErrorCode, String),
    Other(String),
}

impl From<Reply<'_>> for Got {
    fn from(reply: Reply<'_>) -> Got {
        match reply {
            Reply::Granted { token, .. } => Got::Granted(token),
            Reply::Released => Got::Released,
            Reply::Pong { .. } => Got::Pong,
            Reply::Authed => Got::Authed,
            Reply::Error { code, message } => {
                Got::Error(code, String::from_utf8_lossy(message).into_owned())
            }
            other => Got::Other(format!("{other:?}")),
        }
    }
}

impl Wire {
    /// The next reply; None if the server closed the connection first.
    /// Panics if neither comes within REPLY_WAIT.
    fn reply(&mut self) -> Option<Got> {
        self.next_reply()
    }

    fn acquire(&mut self, name: &str, owner: &str, wait_ms: u32, flags: u8) {
        self.send(Request::Acquire(Acquire {
            name: name.as_bytes(),
            owner: owner.as_bytes(),
            ttl_ms: 60_000,
            wait_ms,
            flags,
        }));
    }

    fn granted(&mut self) -> u64 {
        match self.reply() {
            Some(Got::Granted(token)) => token,
            other => panic!("expected GRANTED, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Timeouts across a pause of the server.

/// `--idle-timeout-ms`: a SESSION holder that sent PING every 100 ms all
/// through a 2 s pause of the server was never idle: it stays open and
/// keeps its lock, and the waiter gets the lock only when it is released.
#[test]
fn a_pinging_session_holder_outlives_a_server_pause_past_the_idle_timeout() {
    let (server, addr) = start_server_with(&["--idle-timeout-ms", "1000"]);
    let mut holder = Wire::connect(addr);
    holder.acquire("job", "holder", 0, FLAG_SESSION);
    let token = holder.granted();
    let mut waiter = Wire::connect(addr);
    waiter.acquire("job", "waiter", 30_000, 0);

    let stop_pinging = Arc::new(AtomicBool::new(false));
    let pinger = {
        let mut stream = holder.stream().try_clone().unwrap();
        let stop_pinging = stop_pinging.clone();
        thread::spawn(move || {
            let mut sent = 0;
            while !stop_pinging.load(Ordering::SeqCst) {
                if stream.write_all(b"P\x00\x00").is_err() {
                    break; // closed: the replies below tell
                }
                sent += 1;
                thread::sleep(Duration::from_millis(100));
            }
            sent
        })
    };
    thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    stop(&server);
    sleep_until(stopped, Duration::from_secs(2));
    resume(&server);
    thread::sleep(Duration::from_millis(500));
    stop_pinging.store(true, Ordering::SeqCst);
    let sent = pinger.join().unwrap();

    for i in 0..sent {
        let got = holder.reply();
        assert_eq!(got, Some(Got::Pong), "reply {i} of {sent} PINGs");
    }
    holder.send(Request::Release {
        name: b"job",
        owner: b"holder",
        token,
    });
    assert_eq!(
        holder.reply(),
        Some(Got::Released),
        "the holder lost its lock"
    );
    assert!(waiter.granted() > token);
}

/// `--frame-timeout-ms`: a frame whose last bytes were sent 150 ms after
/// its first, while the server was stopped for 1.2 s, is answered.
#[test]
fn a_frame_completed_during_a_server_pause_is_answered() {
    let (server, addr) = start_server_with(&["--frame-timeout-ms", "500"]);
    let mut wire = Wire::connect(addr);
    // A PING and the first byte of the next: its PONG shows that the server
    // has read that byte.
    wire.send_raw(b"P\x00\x00P");
    assert_eq!(wire.reply(), Some(Got::Pong));
    let stopped = Instant::now();
    stop(&server);
    thread::sleep(Duration::from_millis(150));
    wire.send_raw(b"\x00\x00");
    sleep_until(stopped, Duration::from_millis(1200));
    resume(&server);
    assert_eq!(wire.reply(), Some(Got::Pong));
    wire.send(Request::Ping);
    assert_eq!(wire.reply(), Some(Got::Pong));
}

/// `--write-timeout-ms`: a client that pipelined PINGs until the server
/// stopped reading it, then read every reply it could while the server was
/// stopped, took its replies: it is not closed when the server resumes.
#[test]
fn a_client_that_read_its_replies_during_a_server_pause_stays_open() {
    let (server, addr) = start_server_with(&["--write-timeout-ms", "1000"]);
    let mut wire = Wire::connect(addr);
    let client_port = wire.stream().local_addr().unwrap().port();
    wire.stream().set_nonblocking(true).unwrap();
    let pings = b"P\x00\x00".repeat(10_000);
    let mut sent = 0usize;
    let mut blocked_since: Option<Instant> = None;
    // Write until the writes have blocked for 20 ms: the server has stopped
    // reading, its output buffer full of replies this client does not read.
    while blocked_since.is_none_or(|since| since.elapsed() < Duration::from_millis(20)) {
        assert!(sent < 256 << 20, "the server never stopped reading");
        match wire.stream().write(&pings[sent % 3..]) {
            Ok(n) => {
                sent += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                blocked_since.get_or_insert_with(Instant::now);
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("send failed after {sent} bytes: {e}"),
        }
    }
    wait_until_server_stops_reading(addr.port(), client_port);
    let stopped = Instant::now();
    stop(&server);
    // Read everything the kernel delivers while the server is stopped.
    let mut replies = 0usize;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(100) {
        if read_pongs(&mut wire, &mut replies) {
            quiet_since = Instant::now();
        } else {
            thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(replies > 0, "nothing to read during the pause");
    sleep_until(stopped, Duration::from_millis(2500));
    resume(&server);
    // The rest: the replies still in the server, the tail of a frame the
    // writes above cut, then one more PING.
    let mut tail = &pings[sent % 3..][..(3 - sent % 3) % 3];
    sent += tail.len();
    let deadline = Instant::now() + REPLY_WAIT;
    while replies < sent / 3 {
        assert!(
            Instant::now() < deadline,
            "{replies} of {} replies",
            sent / 3
        );
        if !tail.is_empty()
            && let Ok(n) = wire.stream().write(tail)
        {
            tail = &tail[n..];
        }
        if !read_pongs(&mut wire, &mut replies) {
            thread::sleep(Duration::from_millis(1));
        }
    }
    wire.stream().set_nonblocking(false).unwrap();
    wire.send(Request::Ping);
    assert_eq!(wire.reply(), Some(Got::Pong));
}

/// Reads what is there without blocking and counts the PONGs in it; true if
/// anything was read. Panics if the server closed the connection.
fn read_pongs(wire: &mut Wire, pongs: &mut usize) -> bool {
    match wire.conn.fill() {
        Ok(0) => panic!("the server closed the connection after {pongs} replies"),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
        Err(e) => panic!("the connection failed after {pongs} replies: {e}"),
    }
    while let Some(got) = wire.decoded::<Got>() {
        assert_eq!(got, Got::Pong, "after {pongs} replies");
        *pongs += 1;
    }
    true
}

/// Waits (at most 10 s) until the server's socket for the client at
/// `client_port` holds unread bytes that stay unread for 20 ms: the server
/// no longer reads that connection.
fn wait_until_server_stops_reading(server_port: u16, client_port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    loop {
        let unread = server_sockets(server_port)
            .into_iter()
            .find(|s| s.remote_port == client_port)
            .map(|s| s.rx_queue);
        if unread.is_some_and(|n| n > 0) && unread == last {
            return;
        }
        last = unread;
        assert!(
            Instant::now() < deadline,
            "the server kept reading the connection"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `--auth-timeout-ms`: an AUTH sent 60 ms after connecting, while the
/// server was stopped for 1.2 s, is accepted.
#[test]
fn an_auth_sent_during_a_server_pause_is_accepted() {
    const SECRET: &str = "a-secret-of-enough-length";
    let dir = std::env::temp_dir().join(format!("distlockd-pause-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(&path, SECRET).unwrap();
    let (server, addr) = start_server_with(&[
        "--auth-timeout-ms",
        "500",
        "--auth-secret-file",
        path.to_str().unwrap(),
    ]);
    let connected = Instant::now();
    let mut wire = Wire::connect(addr);
    // Answered before AUTH: the server has accepted the connection.
    wire.send(Request::Hello {
        version: 1,
        client_name: b"pause",
    });
    assert!(matches!(wire.reply(), Some(Got::Other(hello)) if hello.starts_with("Hello")));
    let stopped = Instant::now();
    stop(&server);
    sleep_until(connected, Duration::from_millis(60));
    wire.send(Request::Auth {
        secret: SECRET.as_bytes(),
    });
    sleep_until(stopped, Duration::from_millis(1200));
    resume(&server);
    assert_eq!(wire.reply(), Some(Got::Authed));
    wire.send(Request::Ping);
    assert_eq!(wire.reply(), Some(Got::Pong));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The HTTP side: a request sent while the server was stopped past
/// `--frame-timeout-ms`, on a connection accepted before, is answered.
#[test]
fn an_http_request_sent_during_a_server_pause_is_answered() {
    let (server, _, http) = start_server_with_http(&["--frame-timeout-ms", "500"]);
    let mut probe = TcpStream::connect(http).unwrap();
    probe.set_read_timeout(Some(REPLY_WAIT)).unwrap();
    // Connections are accepted in order: once a later one is answered, the
    // probe's has been accepted.
    assert!(http_get(http, "/metrics").starts_with("HTTP/1.1 200"));
    let stopped = Instant::now();
    stop(&server);
    probe
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    sleep_until(stopped, Duration::from_millis(1200));
    resume(&server);
    let mut response = String::new();
    probe.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

fn http_get(http: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(http).unwrap();
    stream.set_read_timeout(Some(REPLY_WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

// ---------------------------------------------------------------------------
// The server's sockets, as the kernel reports them.

/// One established TCP socket of the server, from /proc/net/tcp{,6}.
#[derive(Debug)]
#[allow(dead_code)]
struct SocketQueues {
    remote_port: u16,
    /// Bytes sent and not yet acknowledged, or not yet sent.
    tx_queue: u64,
    /// Bytes received and not yet read by the server.
    rx_queue: u64,
}

/// The established sockets whose local port is `port`.
fn server_sockets(port: u16) -> Vec<SocketQueues> {
    let mut sockets = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, local, remote, state, queues, ..] = fields[..] else {
                continue;
            };
            let port_of = |addr: &str| {
                let hex = addr.rsplit_once(':').map_or("", |(_, p)| p);
                u16::from_str_radix(hex, 16).ok()
            };
            // 01: ESTABLISHED.
            if state != "01" || port_of(local) != Some(port) {
                continue;
            }
            let Some((tx, rx)) = queues.split_once(':') else {
                continue;
            };
            let hex = |s: &str| u64::from_str_radix(s, 16).unwrap_or(0);
            sockets.push(SocketQueues {
                remote_port: port_of(remote).unwrap_or(0),
                tx_queue: hex(tx),
                rx_queue: hex(rx),
            });
        }
    }
    sockets
}

// ---------------------------------------------------------------------------
// Replies a client does not read, wherever they wait.

/// The largest send and receive queues seen on the server's sockets while
/// it runs, sampled every 5 ms from /proc/net/tcp{,6}.
struct QueueSampler {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<(u64, u64)>,
}

impl QueueSampler {
    fn start(server_port: u16) -> QueueSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                let (mut tx, mut rx) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    for socket in server_sockets(server_port) {
                        tx = tx.max(socket.tx_queue);
                        rx = rx.max(socket.rx_queue);
                    }
                    thread::sleep(Duration::from_millis(5));
                }
                (tx, rx)
            })
        };
        QueueSampler { stop, thread }
    }

    /// (largest send queue, largest receive queue), in bytes.
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// 20 clients each take a SESSION hold, pipeline 600 KB of PINGs and never
/// read. The kernel holds at most its fixed send buffer of their replies,
/// the server's output buffers fill behind, and `--write-timeout-ms 1000`
/// closes every one of them: each lock goes to its waiter well within 10 s.
#[test]
fn clients_that_never_read_are_closed_and_hold_little_kernel_memory() {
    use distlockd::limits::{TCP_RECEIVE_QUEUE_SIZE_MAX, TCP_SEND_QUEUE_SIZE_MAX};
    const CLIENTS: usize = 20;
    const PIPELINED_SIZE: usize = 600 * 1024;
    let (_server, addr) = start_server_with(&["--write-timeout-ms", "1000"]);
    let sampler = QueueSampler::start(addr.port());
    let mut deaf: Vec<Wire> = (0..CLIENTS).map(|_| Wire::connect(addr)).collect();
    for (i, wire) in deaf.iter_mut().enumerate() {
        wire.acquire(&format!("deaf-{i}"), "deaf", 0, FLAG_SESSION);
        wire.granted();
        wire.stream().set_nonblocking(true).unwrap();
    }
    // Round-robin until each has sent PIPELINED_SIZE, has been blocked for
    // 200 ms, or was closed.
    let pings = b"P\x00\x00".repeat(10_000);
    let mut sent = [0usize; CLIENTS];
    let mut blocked_since: [Option<Instant>; CLIENTS] = [None; CLIENTS];
    let mut done = [false; CLIENTS];
    while done.iter().any(|d| !d) {
        for (i, wire) in deaf.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            let left = PIPELINED_SIZE - sent[i];
            match wire
                .stream()
                .write(&pings[sent[i] % 3..][..left.min(9_000)])
            {
                Ok(n) => {
                    sent[i] += n;
                    blocked_since[i] = None;
                    done[i] = sent[i] == PIPELINED_SIZE;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    let since = *blocked_since[i].get_or_insert_with(Instant::now);
                    done[i] = since.elapsed() > Duration::from_millis(200);
                }
                Err(_) => done[i] = true,
            }
        }
        thread::sleep(Duration::from_millis(1));
    }
    let asked = Instant::now();
    let mut waiters: Vec<Wire> = (0..CLIENTS).map(|_| Wire::connect(addr)).collect();
    for (i, waiter) in waiters.iter_mut().enumerate() {
        waiter.acquire(&format!("deaf-{i}"), "waiter", 10_000, 0);
    }
    for (i, waiter) in waiters.iter_mut().enumerate() {
        let got = waiter.reply();
        assert!(
            matches!(got, Some(Got::Granted(_))),
            "deaf-{i} after {:?} ({} bytes sent): {got:?}",
            asked.elapsed(),
            sent[i]
        );
    }
    let (tx_max, rx_max) = sampler.finish();
    assert!(tx_max > 0, "no reply ever waited in the kernel");
    assert!(
        tx_max <= TCP_SEND_QUEUE_SIZE_MAX as u64,
        "{tx_max} bytes of replies in one connection's kernel send queue"
    );
    assert!(
        rx_max <= TCP_RECEIVE_QUEUE_SIZE_MAX as u64,
        "{rx_max} bytes of requests in one connection's kernel receive queue"
    );
    drop(deaf);
}

/// A client whose receive window stays closed takes none of the replies
/// the kernel holds for it, while the server's own output buffer is empty:
/// the kernel gives up after `--write-timeout-ms`, the server counts a
/// write timeout, and the client's SESSION hold goes to the waiter.
#[test]
fn replies_parked_in_the_kernel_are_bounded_by_the_write_timeout() {
    let (_server, addr, http) = start_server_with_http(&["--write-timeout-ms", "1000"]);
    // A tiny receive buffer: its window closes after a few KB of replies;
    // the rest, far less than the server's send buffer, waits there.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut deaf = Wire::from_stream(socket.into());
    deaf.acquire("parked", "deaf", 0, FLAG_SESSION);
    deaf.granted();
    deaf.send_raw(&b"P\x00\x00".repeat(2_000));
    let asked = Instant::now();
    let mut waiter = Wire::connect(addr);
    waiter.acquire("parked", "waiter", 10_000, 0);
    let got = waiter.reply();
    assert!(
        matches!(got, Some(Got::Granted(_))),
        "after {:?}: {got:?}",
        asked.elapsed()
    );
    let metrics = http_get(http, "/metrics");
    assert!(
        metrics.contains("distlockd_connections_closed_total{reason=\"write_timeout\"} 1\n"),
        "{metrics}"
    );
}
