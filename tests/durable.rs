//! `distlockd server --data-dir`: holds kept across a kill -9 and a
//! restart, TTLs restarted from the recovery, tokens still increasing.

#![cfg(feature = "server")]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use distlockd::protocol::blocking::Connection;
use distlockd::protocol::{Acquire, FLAG_SESSION, NotHeldReason, Reply, Request};

mod common;
use common::{ServerProcess, start_server_on, start_server_with};

/// A fresh directory under the system's temporary one, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("distlockd-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn connect(addr: SocketAddr) -> Connection {
    let stream = TcpStream::connect(addr).expect("connect");
    let mut conn = Connection::new(stream);
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn
}

#[derive(Debug, PartialEq)]
enum Got {
    Granted { token: u64, reentered: Option<bool> },
    Busy,
    Released,
    NotHeld(NotHeldReason),
    Other(String),
}

fn acquire(conn: &mut Connection, name: &str, owner: &str, ttl_ms: u32) -> Got {
    acquire_with(conn, name, owner, ttl_ms, 0)
}

fn acquire_with(conn: &mut Connection, name: &str, owner: &str, ttl_ms: u32, flags: u8) -> Got {
    let request = Request::Acquire(Acquire {
        name: name.as_bytes(),
        owner: owner.as_bytes(),
        ttl_ms,
        wait_ms: 0,
        flags,
    });
    got(conn.exchange(&request).expect("an ACQUIRE reply"))
}

fn release(conn: &mut Connection, name: &str, owner: &str, token: u64) -> Got {
    let request = Request::Release {
        name: name.as_bytes(),
        owner: owner.as_bytes(),
        token,
    };
    got(conn.exchange(&request).expect("a RELEASE reply"))
}

fn got(reply: Reply<'_>) -> Got {
    match reply {
        Reply::Granted {
            token, reentered, ..
        } => Got::Granted { token, reentered },
        Reply::Busy { .. } => Got::Busy,
        Reply::Released => Got::Released,
        Reply::NotHeld { reason } => Got::NotHeld(reason),
        other => Got::Other(format!("{other:?}")),
    }
}

fn token(g: Got) -> u64 {
    match g {
        Got::Granted { token, .. } => token,
        other => panic!("expected a grant, got {other:?}"),
    }
}

/// The lock's remaining TTL by STATUS, if held.
fn remaining_ms(conn: &mut Connection, name: &str) -> Option<u32> {
    let request = Request::Status {
        name: name.as_bytes(),
        cursor: 0,
    };
    match conn.exchange(&request).expect("a STATUS reply") {
        Reply::Status(status) => status.entries().next().map(|e| e.remaining_ms),
        other => panic!("expected STATUS, got {other:?}"),
    }
}

fn kill_9(server: &mut ServerProcess) {
    server.0.kill().expect("kill -9 the server");
    server.0.wait().unwrap();
}

fn start(dir: &Path, port: u16) -> (ServerProcess, SocketAddr) {
    let dir = dir.to_str().unwrap();
    if port == 0 {
        start_server_with(&["--data-dir", dir])
    } else {
        start_server_on(port, &["--data-dir", dir])
    }
}

#[test]
fn holds_survive_kill_9_and_tokens_keep_increasing() {
    let tmp = TempDir::new("kill");
    let (mut server, addr) = start(&tmp.0, 0);
    let mut c = connect(addr);
    let a = token(acquire(&mut c, "job-a", "worker-1", 60_000));
    let b = token(acquire(&mut c, "job-b", "worker-2", 60_000));
    let gone = token(acquire(&mut c, "job-gone", "worker-3", 60_000));
    assert_eq!(release(&mut c, "job-gone", "worker-3", gone), Got::Released);
    drop(c);
    kill_9(&mut server);

    let (_server, addr) = start(&tmp.0, addr.port());
    let mut c = connect(addr);
    assert_eq!(acquire(&mut c, "job-a", "someone-else", 1000), Got::Busy);
    assert_eq!(
        acquire(&mut c, "job-a", "worker-1", 60_000),
        Got::Granted {
            token: a,
            // A version 1 reply (no HELLO was sent) cannot say.
            reentered: None
        },
        "the same owner re-enters its hold under the same token"
    );
    assert_eq!(release(&mut c, "job-b", "worker-2", b), Got::Released);
    let fresh = token(acquire(&mut c, "job-gone", "worker-4", 1000));
    assert!(fresh > a.max(b).max(gone), "{fresh} after {a}, {b}, {gone}");
}

#[test]
fn ttls_restart_from_the_recovery_never_ending_early() {
    let tmp = TempDir::new("ttl");
    let (mut server, addr) = start(&tmp.0, 0);
    let mut c = connect(addr);
    token(acquire(&mut c, "short", "w", 3000));
    std::thread::sleep(Duration::from_millis(1500));
    drop(c);
    kill_9(&mut server);
    let restarted = Instant::now();
    let (_server, addr) = start(&tmp.0, addr.port());
    let mut c = connect(addr);
    let left = remaining_ms(&mut c, "short").expect("still held after the restart");
    let since = restarted.elapsed().as_millis() as u32;
    assert!(
        left + since >= 2900,
        "{left} ms left {since} ms after the restart: the TTL did not restart from it"
    );
    // And it does end: a whole TTL after the restart.
    std::thread::sleep(Duration::from_millis(left as u64 + 200));
    assert_eq!(remaining_ms(&mut c, "short"), None);
    assert!(matches!(
        acquire(&mut c, "short", "other", 1000),
        Got::Granted { .. }
    ));
}

#[test]
fn expiries_and_releases_survive_a_restart_as_ends() {
    let tmp = TempDir::new("ends");
    let (mut server, addr) = start(&tmp.0, 0);
    let mut c = connect(addr);
    token(acquire(&mut c, "expires", "w", 200));
    let kept = token(acquire(&mut c, "kept", "w", 60_000));
    std::thread::sleep(Duration::from_millis(500));
    // A request makes the server notice the expiry (if its timer has not).
    assert!(matches!(
        acquire(&mut c, "expires", "other", 60_000),
        Got::Granted { .. }
    ));
    drop(c);
    kill_9(&mut server);
    let (_server, addr) = start(&tmp.0, addr.port());
    let mut c = connect(addr);
    assert_eq!(
        acquire(&mut c, "expires", "w", 1000),
        Got::Busy,
        "held by other"
    );
    assert_eq!(release(&mut c, "kept", "w", kept), Got::Released);
    assert_eq!(
        release(&mut c, "kept", "w", kept),
        Got::NotHeld(NotHeldReason::Free)
    );
}

/// A graceful stop releases SESSION holds as their connections close, and
/// keeps that; a crash leaves them as plain holds for their TTL, which
/// their owner can take again under the same token.
#[test]
fn session_holds_end_with_a_graceful_stop_and_outlive_a_crash_for_their_ttl() {
    let tmp = TempDir::new("session");
    let (mut server, addr) = start(&tmp.0, 0);
    let mut c = connect(addr);
    token(acquire_with(&mut c, "graceful", "s", 60_000, FLAG_SESSION));
    common::send_signal(server.0.id(), "TERM");
    let status = server.0.wait().unwrap();
    assert!(status.success(), "{status}");
    let (mut server, addr) = start(&tmp.0, addr.port());
    let mut c = connect(addr);
    assert!(
        matches!(
            acquire(&mut c, "graceful", "other", 1000),
            Got::Granted { .. }
        ),
        "released by the graceful stop"
    );
    let held = token(acquire_with(&mut c, "crash", "s", 60_000, FLAG_SESSION));
    kill_9(&mut server);
    let (_server, addr) = start(&tmp.0, addr.port());
    let mut c = connect(addr);
    assert_eq!(acquire(&mut c, "crash", "other", 1000), Got::Busy);
    assert_eq!(
        token(acquire_with(&mut c, "crash", "s", 60_000, FLAG_SESSION)),
        held
    );
}

/// Starts a server on `tmp`'s directory that must refuse to start: exit
/// status 2; returns what it printed.
fn refused_start(tmp: &TempDir) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(["server", "--port", "0", "--data-dir", tmp.arg()])
        .output()
        .expect("run distlockd");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_second_server_on_the_same_directory_is_refused() {
    let tmp = TempDir::new("twice");
    let (_server, _) = start(&tmp.0, 0);
    let stderr = refused_start(&tmp);
    assert!(
        stderr.contains("another distlockd server holds"),
        "{stderr}"
    );
    assert!(stderr.contains("LOCK"), "{stderr}");
}

#[test]
fn an_unusable_data_directory_is_refused_at_start_naming_it() {
    let tmp = TempDir::new("bad");
    std::fs::create_dir_all(&tmp.0).unwrap();
    // A file where the log's directory should be.
    std::fs::write(tmp.0.join("wal"), b"not a directory").unwrap();
    let stderr = refused_start(&tmp);
    assert!(stderr.contains(tmp.arg()), "{stderr}");
    assert!(stderr.contains("wal"), "{stderr}");
}
