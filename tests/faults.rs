//! Faults across processes: holders killed (-9) or stopped past their TTL,
//! replies lost between client and server, the server killed and restarted,
//! and bad input on one connection while a normal client is served.
//!
//! Every test starts its own daemon process on a free loopback port. A lock
//! holder that must be killed or stopped is a separate process: this test
//! binary itself, re-run as `holder_child` with the `FAULTS_HOLDER`
//! environment variable saying what to hold (see [`Holder`]).
//!
//! Timing: assertions are about order, never speed. Where a check depends
//! on the clock ("still held before the TTL"), it only counts when its reply
//! arrived early enough that the answer is certain, and a generous TTL makes
//! it all but certain that such a check happens.

#![cfg(feature = "server")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use distlockd::client::{Client, Error, NotHeldCause};
use distlockd::protocol::{
    Acquire, ErrorCode, FLAG_SESSION, NotHeldReason, Reply, Request, decode_reply,
};

mod common;
use common::wire::{REPLY_WAIT, Wire};
use common::{ServerProcess, send_signal, start_server, start_server_on, start_server_with};

// ---------------------------------------------------------------------------
// A raw connection: frames in, replies out, and what the server closed.

/// A reply copied out of the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    Granted(u64),
    Busy,
    Timeout,
    Released,
    Extended,
    NotHeld(NotHeldReason),
    Error(ErrorCode),
    Pong,
    Other(String),
}

impl From<Reply<'_>> for Got {
    fn from(reply: Reply<'_>) -> Got {
        match reply {
            Reply::Granted { token, .. } => Got::Granted(token),
            Reply::Busy { .. } => Got::Busy,
            Reply::Timeout { .. } => Got::Timeout,
            Reply::Released => Got::Released,
            Reply::Extended { .. } => Got::Extended,
            Reply::NotHeld { reason } => Got::NotHeld(reason),
            Reply::Error { code, .. } => Got::Error(code),
            Reply::Pong { .. } => Got::Pong,
            other => Got::Other(format!("{other:?}")),
        }
    }
}

impl Wire {
    /// The next reply; panics if none comes within REPLY_WAIT.
    fn reply(&mut self) -> Got {
        self.next_reply()
            .expect("the server closed the connection instead of replying")
    }

    /// Every reply until the server closes the connection (end-of-file or
    /// reset); panics if it is still open after REPLY_WAIT.
    fn replies_until_closed(&mut self) -> Vec<Got> {
        if let Err(e) = self.conn.read_to_close() {
            panic!("the server kept the connection open ({e})");
        }
        let mut replies = Vec::new();
        while let Some(got) = self.decoded() {
            replies.push(got);
        }
        assert!(
            self.conn.buffered().is_empty(),
            "a partial frame before the close"
        );
        replies
    }

    fn acquire(&mut self, name: &str, owner: &str, ttl_ms: u32, wait_ms: u32, flags: u8) -> Got {
        self.send_acquire(name, owner, ttl_ms, wait_ms, flags);
        self.reply()
    }

    fn send_acquire(&mut self, name: &str, owner: &str, ttl_ms: u32, wait_ms: u32, flags: u8) {
        self.send(Request::Acquire(Acquire {
            name: name.as_bytes(),
            owner: owner.as_bytes(),
            ttl_ms,
            wait_ms,
            flags,
        }));
    }

    fn release(&mut self, name: &str, owner: &str, token: u64) -> Got {
        self.send(Request::Release {
            name: name.as_bytes(),
            owner: owner.as_bytes(),
            token,
        });
        self.reply()
    }

    fn extend(&mut self, name: &str, owner: &str, token: u64, ttl_ms: u32) -> Got {
        self.send(Request::Extend {
            name: name.as_bytes(),
            owner: owner.as_bytes(),
            token,
            ttl_ms,
        });
        self.reply()
    }

    fn ping(&mut self) -> Got {
        self.send(Request::Ping);
        self.reply()
    }
}

fn token_of(got: &Got) -> u64 {
    match got {
        Got::Granted(token) => *token,
        other => panic!("expected GRANTED, got {other:?}"),
    }
}

/// Fails unless `name` is free right now: no orphaned hold is left.
fn assert_free(addr: SocketAddr, name: &str) {
    let mut wire = Wire::connect(addr);
    let got = wire.acquire(name, "free-check", 60_000, 0, 0);
    let token = match got {
        Got::Granted(token) => token,
        other => panic!("{name} is still held after its holder let go: {other:?}"),
    };
    assert_eq!(wire.release(name, "free-check", token), Got::Released);
}

// ---------------------------------------------------------------------------
// A lock holder in its own process.

const HOLDER_ENV: &str = "FAULTS_HOLDER";
const HOLDER_LINE: &str = "HOLDER ";

/// A child process that took one lock with the Rust client and reports on
/// its standard output; it runs EXTEND and RELEASE when told on its
/// standard input. Killed when dropped.
struct Holder {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    token: u64,
}

impl Holder {
    /// Starts the holder and waits for its GRANTED.
    fn start(addr: SocketAddr, name: &str, ttl_ms: u32, session: bool) -> Holder {
        let spec = format!("{addr}|{name}|{ttl_ms}|{}", session as u8);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["holder_child", "--exact", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(HOLDER_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the holder process");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest's "test holder_child ... " may share the line.
                if let Some((_, ours)) = line.split_once(HOLDER_LINE) {
                    if tx.send(ours.to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        let mut holder = Holder {
            child,
            stdin,
            lines,
            token: 0,
        };
        let granted = holder.next_line();
        holder.token = granted
            .strip_prefix("GRANTED ")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("holder said {granted:?}"));
        holder
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(REPLY_WAIT)
            .expect("the holder process reported within 10 s")
    }

    /// Sends a command and returns the holder's answer line.
    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("holder stdin");
        self.next_line()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    fn kill9(&mut self) {
        self.child.kill().expect("kill -9 the holder");
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The holder process's body; does nothing unless started by [`Holder`].
#[test]
#[ignore = "runs only as the child process of the fault tests"]
fn holder_child() {
    let Ok(spec) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let fields: Vec<&str> = spec.split('|').collect();
    let [addr, name, ttl_ms, session] = fields[..] else {
        panic!("bad {HOLDER_ENV} {spec:?}");
    };
    let client = Client::builder(addr)
        .ttl(Duration::from_millis(ttl_ms.parse().unwrap()))
        .session(session == "1")
        .build()
        .unwrap();
    let lease = client
        .try_acquire(name)
        .unwrap()
        .expect("the lock is free when the holder starts");
    println!("{HOLDER_LINE}GRANTED {}", lease.token());
    for command in std::io::stdin().lines().map_while(Result::ok) {
        let outcome = match command.as_str() {
            "extend" => client.extend(&lease, Duration::from_secs(30)).map(|_| ()),
            "release" => client.release_lease(&lease),
            other => panic!("unknown holder command {other:?}"),
        };
        let said = match outcome {
            Ok(()) => "ok".to_owned(),
            Err(Error::NotHeld {
                reason: NotHeldCause::Server(reason),
                ..
            }) => format!("NOT_HELD {reason:?}"),
            Err(e) => format!("error {e}"),
        };
        println!("{HOLDER_LINE}{command} {said}");
    }
}

// ---------------------------------------------------------------------------
// Holders that die or stop.

/// kill -9 of a holder without SESSION: its connection closes, but the hold
/// stays until its TTL, and not a moment less; right after, another owner
/// gets it with a larger token.
#[test]
fn killed_holder_keeps_its_lock_until_the_ttl() {
    const TTL_MS: u32 = 2500;
    let (_server, addr) = start_server();
    // The grant happened after this instant (the holder had not started), so
    // the hold cannot expire before `spawned + TTL`.
    let spawned = Instant::now();
    let mut holder = Holder::start(addr, "k9", TTL_MS, false);
    // ...and before this one, so it has expired by `granted_by + TTL`.
    let granted_by = Instant::now();
    holder.kill9();
    let ttl = Duration::from_millis(TTL_MS as u64);
    let mut wire = Wire::connect(addr);
    let mut certain_busy = 0;
    while Instant::now() < spawned + ttl {
        let got = wire.acquire("k9", "other", 60_000, 0, 0);
        if Instant::now() < spawned + ttl {
            // The server executed this before `spawned + TTL`: must be held.
            assert_eq!(
                got,
                Got::Busy,
                "a killed holder's lock freed before its TTL"
            );
            certain_busy += 1;
        } else if let Got::Granted(token) = got {
            // Between the two bounds: either answer is right.
            assert!(token > holder.token);
            assert_eq!(wire.release("k9", "other", token), Got::Released);
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        certain_busy > 0,
        "no check ran before the TTL; the machine stalled for {TTL_MS} ms"
    );
    // One server tick (1 ms) of slack for the expiry timer, then some.
    let after = granted_by + ttl + Duration::from_millis(50);
    thread::sleep(after.saturating_duration_since(Instant::now()));
    let got = wire.acquire("k9", "other", 60_000, 0, 0);
    assert!(
        token_of(&got) > holder.token,
        "the new holder's token is not larger"
    );
}

/// kill -9 of a SESSION holder: the lock is handed to a waiter as soon as
/// the server sees the connection close, long before the 60 s TTL.
#[test]
fn killed_session_holder_frees_its_lock_at_disconnect() {
    let (_server, addr) = start_server();
    let mut holder = Holder::start(addr, "sess", 60_000, true);
    let mut waiter = Wire::connect(addr);
    // Queued first, so the grant can only come from the disconnect.
    waiter.send_acquire("sess", "waiter", 60_000, 8_000, 0);
    assert_eq!(waiter.unasked_reply(), None, "waiter answered early");
    holder.kill9();
    let got = waiter.reply();
    assert!(
        matches!(got, Got::Granted(t) if t > holder.token),
        "the waiter got {got:?}; a killed SESSION holder must free at disconnect"
    );
}

impl Wire {
    /// Any reply that arrives within 200 ms without asking: `None` if none.
    fn unasked_reply(&mut self) -> Option<Vec<u8>> {
        let conn = &mut self.conn;
        conn.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let got = conn.fill().ok().map(|_| conn.buffered().to_vec());
        conn.set_read_timeout(Some(REPLY_WAIT)).unwrap();
        got
    }
}

/// SIGSTOP a holder past its TTL; another owner gets the lock with a larger
/// token; after SIGCONT, the old holder's EXTEND and RELEASE are NOT_HELD
/// and the new hold is untouched.
#[test]
fn stopped_holder_loses_its_lock_and_cannot_touch_the_next() {
    let (_server, addr) = start_server();
    let mut holder = Holder::start(addr, "paused", 800, false);
    send_signal(holder.pid(), "STOP");
    let mut next = Wire::connect(addr);
    let got = next.acquire("paused", "next", 60_000, 8_000, 0);
    let token = token_of(&got);
    assert!(token > holder.token, "{token} after {}", holder.token);
    send_signal(holder.pid(), "CONT");
    assert_eq!(holder.ask("extend"), "extend NOT_HELD OtherOwner");
    assert_eq!(holder.ask("release"), "release NOT_HELD OtherOwner");
    assert_eq!(next.extend("paused", "next", token, 60_000), Got::Extended);
    assert_eq!(next.release("paused", "next", token), Got::Released);
}

// ---------------------------------------------------------------------------
// Lost replies, through a fault-injecting proxy.

/// What the proxy does to the next reply of a given kind; one-shot.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Swallow the reply; the connection stays open, so the client times out.
    Drop(u8),
    /// Let the server execute the request, swallow its reply and close both
    /// sides, as a broken network path would.
    Cut(u8),
    /// Hold the reply back this long, then forward it.
    Delay(u8, Duration),
}

#[derive(Default)]
struct ProxyState {
    armed: Option<Fault>,
    /// Replies the faults swallowed or delayed, whole frames.
    hit: Vec<Vec<u8>>,
    /// Close the gate when a fault fires: client bytes stop flowing to the
    /// server (on every connection) until [`Proxy::open_gate`].
    close_gate_on_fire: bool,
    gate_closed: bool,
}

/// A TCP proxy between the client and the server that parses the replies
/// coming back and injects [`Fault`]s. Threads per connection; it lives
/// until the test process ends.
struct Proxy {
    addr: SocketAddr,
    state: Arc<(Mutex<ProxyState>, Condvar)>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new((Mutex::new(ProxyState::default()), Condvar::new()));
        let shared = state.clone();
        thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let up = shared.clone();
                thread::spawn(move || pump_requests(client, server, &up));
                let down = shared.clone();
                thread::spawn(move || pump_replies(s2, c2, &down));
            }
        });
        Proxy { addr, state }
    }

    fn arm(&self, fault: Fault, close_gate_on_fire: bool) {
        let mut state = self.state.0.lock().unwrap();
        state.armed = Some(fault);
        state.close_gate_on_fire = close_gate_on_fire;
    }

    /// Waits until the armed fault has fired; returns the reply it hit.
    fn wait_hit(&self) -> Vec<u8> {
        let (lock, cvar) = &*self.state;
        let state = lock.lock().unwrap();
        let (mut state, timeout) = cvar
            .wait_timeout_while(state, REPLY_WAIT, |s| s.hit.is_empty())
            .unwrap();
        assert!(!timeout.timed_out(), "the armed fault never fired");
        state.hit.remove(0)
    }

    fn open_gate(&self) {
        let (lock, cvar) = &*self.state;
        lock.lock().unwrap().gate_closed = false;
        cvar.notify_all();
    }
}

fn pump_requests(
    mut client: TcpStream,
    mut server: TcpStream,
    state: &(Mutex<ProxyState>, Condvar),
) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let (lock, cvar) = state;
        drop(
            cvar.wait_while(lock.lock().unwrap(), |s| s.gate_closed)
                .unwrap(),
        );
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = server.shutdown(Shutdown::Write);
}

fn pump_replies(
    mut server: TcpStream,
    mut client: TcpStream,
    state: &(Mutex<ProxyState>, Condvar),
) {
    while let Some(frame) = read_frame(&mut server) {
        let fault = {
            let mut s = state.0.lock().unwrap();
            match s.armed {
                Some(Fault::Drop(k) | Fault::Cut(k) | Fault::Delay(k, _)) if k == frame[0] => {
                    s.armed.take()
                }
                _ => None,
            }
        };
        let fired = |s: &(Mutex<ProxyState>, Condvar)| {
            let mut st = s.0.lock().unwrap();
            st.hit.push(frame.clone());
            if st.close_gate_on_fire {
                st.gate_closed = true;
            }
            s.1.notify_all();
        };
        match fault {
            None => {}
            Some(Fault::Drop(_)) => {
                fired(state);
                continue;
            }
            Some(Fault::Cut(_)) => {
                fired(state);
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::Delay(_, d)) => {
                thread::sleep(d);
                fired(state);
            }
        }
        if client.write_all(&frame).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Write);
}

/// One whole frame (header and body), or `None` at end of stream.
fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut frame = vec![0u8; 3];
    stream.read_exact(&mut frame).ok()?;
    let body_len = u16::from_be_bytes([frame[1], frame[2]]) as usize;
    frame.resize(3 + body_len, 0);
    stream.read_exact(&mut frame[3..]).ok()?;
    Some(frame)
}

fn granted_token(frame: &[u8]) -> u64 {
    match decode_reply(frame).unwrap() {
        Some((Reply::Granted { token, .. }, _)) => token,
        other => panic!("not a GRANTED frame: {other:?}"),
    }
}

fn proxied_client(proxy: &Proxy, timeout_ms: u64) -> Client {
    Client::builder(proxy.addr)
        .ttl(Duration::from_secs(60))
        .timeout(Duration::from_millis(timeout_ms))
        .retries(5)
        .build()
        .unwrap()
}

/// A dropped GRANTED: the client times out and retries with the same owner,
/// and gets the same hold (same token) back, not a second one; after its
/// release nothing is left held.
#[test]
fn dropped_grant_is_retried_into_the_same_hold() {
    let (_server, addr) = start_server();
    let proxy = Proxy::start(addr);
    let client = proxied_client(&proxy, 500);
    proxy.arm(Fault::Drop(b'g'), false);
    let lease = client.try_acquire("lost-grant").unwrap().expect("granted");
    assert_eq!(
        lease.token(),
        granted_token(&proxy.wait_hit()),
        "the retry got a different hold than the lost reply"
    );
    client.release_lease(&lease).unwrap();
    assert_free(addr, "lost-grant");
}

/// A waiting ACQUIRE whose GRANTED (sent when the holder released) is lost:
/// the retry finds the hold already ours and gets the same token.
#[test]
fn dropped_grant_after_a_wait_is_retried_into_the_same_hold() {
    let (_server, addr) = start_server();
    let proxy = Proxy::start(addr);
    let client = proxied_client(&proxy, 500);
    let mut first = Wire::connect(addr);
    let first_token = token_of(&first.acquire("queued", "first", 60_000, 0, 0));
    proxy.arm(Fault::Drop(b'g'), false);
    let waiting = thread::scope(|s| {
        let waiting = s.spawn(|| client.acquire("queued", Duration::from_millis(1500)));
        thread::sleep(Duration::from_millis(200));
        assert_eq!(first.release("queued", "first", first_token), Got::Released);
        waiting.join().unwrap()
    });
    let lease = waiting.expect("granted after the retry");
    assert_eq!(lease.token(), granted_token(&proxy.wait_hit()));
    assert!(lease.token() > first_token);
    client.release_lease(&lease).unwrap();
    assert_free(addr, "queued");
}

/// The connection is cut after the server executed the ACQUIRE: the client
/// reconnects, retries, and gets the same hold.
#[test]
fn cut_after_acquire_is_retried_into_the_same_hold() {
    let (_server, addr) = start_server();
    let proxy = Proxy::start(addr);
    let client = proxied_client(&proxy, 2000);
    proxy.arm(Fault::Cut(b'g'), false);
    let lease = client.try_acquire("cut").unwrap().expect("granted");
    assert_eq!(lease.token(), granted_token(&proxy.wait_hit()));
    client.release_lease(&lease).unwrap();
    assert_free(addr, "cut");
}

/// A GRANTED delayed past the client's timeout reaches a connection the
/// client has given up on; the retry holds the same lock, and once released
/// the late reply leaves nothing held.
#[test]
fn delayed_grant_leaves_no_orphaned_hold() {
    let (_server, addr) = start_server();
    let proxy = Proxy::start(addr);
    let client = proxied_client(&proxy, 300);
    proxy.arm(Fault::Delay(b'g', Duration::from_millis(1200)), false);
    let lease = client.try_acquire("late").unwrap().expect("granted");
    client.release_lease(&lease).unwrap();
    // The late reply has now been forwarded (or refused by a closed socket).
    assert_eq!(lease.token(), granted_token(&proxy.wait_hit()));
    assert_free(addr, "late");
}

/// The RELEASED reply is lost, and before the client's retry reaches the
/// server another owner takes the lock (the proxy holds the retry back
/// until then). The retry is NOT_HELD and the new hold survives it.
#[test]
fn retried_release_never_releases_a_newer_hold() {
    let (_server, addr) = start_server();
    let proxy = Proxy::start(addr);
    let client = proxied_client(&proxy, 1000);
    let lease = client.try_acquire("rel").unwrap().expect("granted");
    proxy.arm(Fault::Drop(b'r'), true);
    let mut next = Wire::connect(addr);
    let (outcome, token) = thread::scope(|s| {
        let release = s.spawn(|| client.release_lease(&lease));
        proxy.wait_hit(); // released on the server; the reply is gone
        let token = token_of(&next.acquire("rel", "next", 60_000, 0, 0));
        proxy.open_gate();
        (release.join().unwrap(), token)
    });
    assert!(token > lease.token());
    assert!(
        matches!(
            outcome,
            Err(Error::NotHeld {
                reason: NotHeldCause::Server(NotHeldReason::OtherOwner),
                ..
            })
        ),
        "retried release answered {outcome:?}"
    );
    assert_eq!(next.extend("rel", "next", token, 60_000), Got::Extended);
    assert_eq!(next.release("rel", "next", token), Got::Released);
}

/// The hold expired and another owner took it; the client's RELEASE is cut
/// after the server answered it, and the retry is NOT_HELD too.
#[test]
fn release_after_expiry_and_a_cut_leaves_the_new_holder_alone() {
    let (_server, addr) = start_server();
    let proxy = Proxy::start(addr);
    let client = Client::builder(proxy.addr)
        .ttl(Duration::from_millis(300))
        .timeout(Duration::from_secs(2))
        .retries(5)
        .build()
        .unwrap();
    let lease = client.try_acquire("exp").unwrap().expect("granted");
    let mut next = Wire::connect(addr);
    let token = token_of(&next.acquire("exp", "next", 60_000, 5_000, 0));
    assert!(token > lease.token());
    proxy.arm(Fault::Cut(b'n'), false);
    let outcome = client.release_lease(&lease);
    proxy.wait_hit();
    assert!(
        matches!(
            outcome,
            Err(Error::NotHeld {
                reason: NotHeldCause::Server(NotHeldReason::OtherOwner),
                ..
            })
        ),
        "release of an expired hold answered {outcome:?}"
    );
    assert_eq!(next.extend("exp", "next", token, 60_000), Got::Extended);
}

// ---------------------------------------------------------------------------
// The server killed and restarted.

/// kill -9 of the server, restart on the same port: every token granted
/// after is larger than every token before, and the same `Client` works
/// again by itself, including a request made while the server was down.
#[test]
fn server_restart_keeps_tokens_increasing_and_clients_reconnect() {
    let (mut server, addr) = start_server();
    let client = Client::builder(addr)
        .ttl(Duration::from_secs(60))
        .timeout(Duration::from_secs(2))
        .retries(12)
        .build()
        .unwrap();
    let before: Vec<u64> = (0..20)
        .map(|i| {
            let lease = client.try_acquire(&format!("r{i}")).unwrap().unwrap();
            if i % 2 == 0 {
                client.release_lease(&lease).unwrap();
            }
            lease.token()
        })
        .collect();
    server.0.kill().unwrap();
    let _ = server.0.wait();
    let (_restarted, after) = thread::scope(|s| {
        // Started while the server is down: it must retry until it is back.
        let during = s.spawn(|| client.try_acquire("during").unwrap().unwrap().token());
        thread::sleep(Duration::from_millis(300));
        let restarted: ServerProcess = start_server_on(addr.port(), &[]).0;
        let mut after = vec![during.join().unwrap()];
        // Holds before the kill are gone (memory only); odd names were held.
        for i in 0..20 {
            let lease = client.try_acquire(&format!("r{i}")).unwrap();
            after.push(lease.expect("a restart forgets every hold").token());
        }
        (restarted, after)
    });
    let max_before = before.iter().max().unwrap();
    let min_after = after.iter().min().unwrap();
    assert!(
        min_after > max_before,
        "a token after the restart ({min_after}) is not above every token before ({max_before})"
    );
}

// ---------------------------------------------------------------------------
// Bad input on one connection, a normal client on another.

/// A normal client: a SESSION hold on its own connection, so if the server
/// closed that connection the hold would vanish with it.
struct Bystander {
    wire: Wire,
    name: String,
    token: u64,
    addr: SocketAddr,
}

/// Numbers the bystanders of one test process, so none shares a lock.
static BYSTANDERS: AtomicU64 = AtomicU64::new(0);

impl Bystander {
    fn start(addr: SocketAddr) -> Bystander {
        let name = format!("bystander-{}", BYSTANDERS.fetch_add(1, Ordering::Relaxed));
        let mut wire = Wire::connect(addr);
        let token = token_of(&wire.acquire(&name, "normal", 600_000, 0, FLAG_SESSION));
        Bystander {
            wire,
            name,
            token,
            addr,
        }
    }

    /// Its connection is open and served, and its lock is still its own.
    fn assert_unharmed(&mut self) {
        assert_eq!(self.wire.ping(), Got::Pong);
        assert_eq!(
            self.wire.extend(&self.name, "normal", self.token, 600_000),
            Got::Extended,
            "the normal client lost its lock"
        );
        let mut other = Wire::connect(self.addr);
        assert_eq!(other.acquire(&self.name, "intruder", 1000, 0, 0), Got::Busy);
    }
}

/// Sends `bytes` on a fresh connection and expects exactly one ERROR with
/// `code`, then the close; the bystander is unharmed.
fn assert_closed_with(addr: SocketAddr, bytes: &[u8], code: ErrorCode) {
    let mut bystander = Bystander::start(addr);
    let mut bad = Wire::connect(addr);
    bad.send_raw(bytes);
    assert_eq!(
        bad.replies_until_closed(),
        vec![Got::Error(code)],
        "for input {bytes:02x?}"
    );
    bystander.assert_unharmed();
}

fn acquire_frame(name: &[u8], owner: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    Request::Acquire(Acquire {
        name,
        owner,
        ttl_ms: 1000,
        wait_ms: 0,
        flags: 0,
    })
    .encode_to_vec(&mut frame);
    frame
}

#[test]
fn garbage_gets_unknown_kind_and_only_its_connection_closes() {
    let (_server, addr) = start_server();
    assert_closed_with(addr, b"GET / HTTP/1.1\r\n\r\n", ErrorCode::UnknownKind);
    assert_closed_with(addr, &[0xff, 0x00, 0x13, 0x37], ErrorCode::UnknownKind);
}

#[test]
fn unknown_and_reply_kinds_get_unknown_kind() {
    let (_server, addr) = start_server();
    // From the first byte alone, without waiting for a header.
    assert_closed_with(addr, &[0x04], ErrorCode::UnknownKind);
    assert_closed_with(addr, b"g", ErrorCode::UnknownKind);
    // A valid request first is answered, then the bad frame closes.
    let mut bystander = Bystander::start(addr);
    let mut bad = Wire::connect(addr);
    bad.send_raw(b"P\x00\x00\x7f\x00\x00");
    assert_eq!(
        bad.replies_until_closed(),
        vec![Got::Pong, Got::Error(ErrorCode::UnknownKind)]
    );
    bystander.assert_unharmed();
}

#[test]
fn lying_lengths_get_protocol_error() {
    let (_server, addr) = start_server();
    // body_len says one byte more than the fields: trailing byte.
    let mut long = acquire_frame(b"job", b"me");
    let body_len = u16::from_be_bytes([long[1], long[2]]) + 1;
    long[1..3].copy_from_slice(&body_len.to_be_bytes());
    long.push(0);
    assert_closed_with(addr, &long, ErrorCode::Protocol);
    // body_len cut short: the owner's length runs past the body.
    let mut short = acquire_frame(b"job", b"me");
    let body_len = u16::from_be_bytes([short[1], short[2]]) - 1;
    short[1..3].copy_from_slice(&body_len.to_be_bytes());
    short.pop();
    assert_closed_with(addr, &short, ErrorCode::Protocol);
    // A name length byte larger than the body.
    let mut name_past = acquire_frame(b"job", b"me");
    name_past[12] = 200;
    assert_closed_with(addr, &name_past, ErrorCode::Protocol);
}

/// A header that promises more than is sent, then the sender closes: the
/// server drops that connection and nothing else.
#[test]
fn lying_length_then_close_drops_only_that_connection() {
    let (_server, addr) = start_server();
    let mut bystander = Bystander::start(addr);
    let mut liar = Wire::connect(addr);
    liar.send_raw(&[b'A', 0x01, 0x00, 0, 0, 0, 0]);
    liar.stream().shutdown(Shutdown::Write).unwrap();
    assert_eq!(liar.replies_until_closed(), vec![]);
    bystander.assert_unharmed();
}

#[test]
fn oversize_frames_get_frame_too_large_from_the_header() {
    let (_server, addr) = start_server();
    // Only the header: the size is refused before any body arrives.
    assert_closed_with(addr, &[b'A', 0x07, 0xd0], ErrorCode::FrameTooLarge);
    assert_closed_with(addr, &[b'E', 0xff, 0xff], ErrorCode::FrameTooLarge);
    // frame_size_max counts the header: 3 + 1022 bytes is one over.
    assert_closed_with(addr, &[b'P', 0x03, 0xfe], ErrorCode::FrameTooLarge);
}

/// An empty name is BAD_ARGUMENT, and the connection stays open.
#[test]
fn empty_name_gets_bad_argument_and_the_connection_stays() {
    let (_server, addr) = start_server();
    let mut bystander = Bystander::start(addr);
    let mut wire = Wire::connect(addr);
    wire.send_raw(&acquire_frame(b"", b"me"));
    assert_eq!(wire.reply(), Got::Error(ErrorCode::BadArgument));
    assert_eq!(wire.ping(), Got::Pong, "BAD_ARGUMENT closed the connection");
    let mut empty_owner = Wire::connect(addr);
    empty_owner.send_raw(&acquire_frame(b"job", b""));
    assert_eq!(empty_owner.reply(), Got::Error(ErrorCode::BadArgument));
    assert_eq!(empty_owner.ping(), Got::Pong);
    bystander.assert_unharmed();
}

/// Half-open: a client that shuts down its write side is closed by the
/// server at once (its SESSION hold released); sockets that never send
/// anything hold nothing and block nobody.
#[test]
fn half_open_and_silent_sockets_harm_no_one() {
    let (_server, addr) = start_server();
    let mut bystander = Bystander::start(addr);
    let silent: Vec<TcpStream> = (0..50).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut half = Wire::connect(addr);
    token_of(&half.acquire("half", "half", 600_000, 0, FLAG_SESSION));
    half.stream().shutdown(Shutdown::Write).unwrap();
    assert_eq!(half.replies_until_closed(), vec![]);
    assert_free(addr, "half");
    bystander.assert_unharmed();
    drop(silent);
    bystander.assert_unharmed();
}

/// Past connections_max, new connections get ERROR LIMIT and are closed;
/// those already in are served, and room frees up when the flood leaves.
#[test]
fn connection_flood_past_connections_max_gets_limit() {
    const CONNECTIONS_MAX: usize = 16;
    let (_server, addr) = start_server_with(&["--connections-max", "16"]);
    let mut bystander = Bystander::start(addr);
    let mut flood: Vec<Wire> = Vec::new();
    let mut refused = 0;
    for _ in 0..CONNECTIONS_MAX + 20 {
        let mut wire = Wire::connect(addr);
        // PING proves it was accepted and served; a refused one gets LIMIT.
        wire.send(Request::Ping);
        match wire.replies_until_closed_or_pong() {
            Some(Got::Pong) => flood.push(wire),
            Some(Got::Error(ErrorCode::Limit)) => refused += 1,
            other => panic!("a flood connection got {other:?}"),
        }
    }
    // The bystander takes one place.
    assert_eq!(flood.len(), CONNECTIONS_MAX - 1);
    assert_eq!(refused, 21);
    assert_eq!(bystander.wire.ping(), Got::Pong);
    for wire in flood.iter_mut() {
        assert_eq!(wire.ping(), Got::Pong, "an admitted connection was dropped");
    }
    flood.clear();
    // Room again (the server sees the closes within a turn or two).
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        let mut wire = Wire::connect(addr);
        wire.send(Request::Ping);
        if wire.replies_until_closed_or_pong() == Some(Got::Pong) {
            break;
        }
        assert!(Instant::now() < deadline, "no room after the flood left");
        thread::sleep(Duration::from_millis(20));
    }
    bystander.assert_unharmed();
}

impl Wire {
    /// The first reply if it is PONG (connection left open); else the one
    /// reply before the server closed the connection.
    fn replies_until_closed_or_pong(&mut self) -> Option<Got> {
        let first = self.reply_or_close()?;
        if first == Got::Pong {
            return Some(first);
        }
        let rest = self.replies_until_closed();
        assert!(rest.is_empty(), "more after {first:?}: {rest:?}");
        Some(first)
    }

    fn reply_or_close(&mut self) -> Option<Got> {
        self.next_reply()
    }
}

/// Slow-loris: a frame started and never finished is answered ERROR LIMIT
/// after `--frame-timeout-ms`, and the connection closes; the bystander and
/// a connection that never started a frame are left alone.
#[test]
fn partial_frame_then_silence_is_closed_at_the_frame_timeout() {
    let (_server, addr) = start_server_with(&["--frame-timeout-ms", "300"]);
    let mut bystander = Bystander::start(addr);
    let mut quiet = Wire::connect(addr);
    let frame = acquire_frame(b"job", b"slow");
    for cut in [1, 2, 3, frame.len() - 1] {
        let mut slow = Wire::connect(addr);
        slow.send_raw(&frame[..cut]);
        assert_eq!(
            slow.replies_until_closed(),
            vec![Got::Error(ErrorCode::Limit)],
            "after {cut} bytes of a frame"
        );
    }
    assert_eq!(
        quiet.ping(),
        Got::Pong,
        "a connection with no frame started was closed"
    );
    bystander.assert_unharmed();
}
