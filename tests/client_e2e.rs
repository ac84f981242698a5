//! End-to-end tests of `distlockd::client` against a real server over
//! loopback TCP. Each test starts its own server on port 0. Every loop and
//! wait is bounded; timing assertions leave room for a loaded machine.

#![cfg(feature = "server")]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use distlockd::client::{Client, Error, Lease, LockOptions, NotHeldCause};
use distlockd::limits::Limits;
use distlockd::protocol::blocking::Connection;
use distlockd::protocol::{Acquire, ErrorCode, NotHeldReason, Reply, Request};
use distlockd::server::{Config, Server, ServerHandle};

fn start() -> ServerHandle {
    start_with(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
}

fn start_with(config: Config) -> ServerHandle {
    Server::spawn(config).expect("start server on loopback")
}

fn client(addr: SocketAddr) -> Client {
    Client::builder(addr)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// An owned copy of the replies the raw tests look at.
#[derive(Debug, PartialEq, Eq)]
enum Raw {
    Granted(u64),
    Busy { waiters: u32 },
    Timeout,
    Released,
    NotHeld(NotHeldReason),
    Pong,
    Other(String),
}

fn raw_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads exactly `count` replies from `stream`, in order.
fn raw_read(stream: &mut TcpStream, count: usize) -> Vec<Raw> {
    let mut conn = Connection::new(stream);
    let mut replies = Vec::new();
    while replies.len() < count {
        let reply = conn
            .read_reply()
            .unwrap_or_else(|e| panic!("{} of {count} replies, then: {e}", replies.len()));
        replies.push(match reply {
            Reply::Granted { token, .. } => Raw::Granted(token),
            Reply::Busy { waiters, .. } => Raw::Busy { waiters },
            Reply::Timeout { .. } => Raw::Timeout,
            Reply::Released => Raw::Released,
            Reply::NotHeld { reason } => Raw::NotHeld(reason),
            Reply::Pong { .. } => Raw::Pong,
            other => Raw::Other(format!("{other:?}")),
        });
    }
    assert!(
        conn.buffered().is_empty(),
        "unexpected bytes after {count} replies"
    );
    replies
}

fn raw_send(stream: &mut TcpStream, requests: &[Request<'_>]) {
    let mut frames = Vec::new();
    for request in requests {
        request.encode_to_vec(&mut frames);
    }
    stream.write_all(&frames).unwrap();
}

fn raw_acquire<'a>(name: &'a str, owner: &'a str, wait_ms: u32) -> Request<'a> {
    Request::Acquire(Acquire {
        name: name.as_bytes(),
        owner: owner.as_bytes(),
        ttl_ms: 10_000,
        wait_ms,
        flags: 0,
    })
}

/// Polls with a raw wait-0 ACQUIRE until `name` has `waiters` queued.
fn wait_for_waiters(addr: SocketAddr, name: &str, waiters: u32) {
    let mut probe = raw_connect(addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        raw_send(&mut probe, &[raw_acquire(name, "probe:0", 0)]);
        match raw_read(&mut probe, 1).pop().unwrap() {
            Raw::Busy { waiters: n } if n == waiters => return,
            Raw::Busy { .. } => {}
            other => panic!("probe of {name:?} got {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "{name:?} never had {waiters} waiters"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn health_check_is_true_when_up_and_false_on_a_closed_port() {
    let server = start();
    assert!(client(server.local_addr()).check_server_health());

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // dropped: port closed
    let started = Instant::now();
    let down = Client::builder(closed)
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(!down.check_server_health());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "one attempt, no backoff"
    );
}

/// A loopback address nothing listens on.
fn closed_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn a_list_of_addresses_uses_the_first_that_accepts_and_errors_name_each() {
    let server = start();
    let (a, b) = (closed_addr(), closed_addr());
    let listed = Client::builder(format!("{a}, {}", server.local_addr()))
        .retries(0)
        .build()
        .unwrap();
    assert_eq!(listed.addr(), format!("{a},{}", server.local_addr()));
    assert!(listed.try_acquire("job").unwrap().is_some());

    let down = Client::builder(format!("{a},{b}"))
        .retries(1)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let err = down.status("job").unwrap_err();
    let Error::Connection {
        attempts, source, ..
    } = &err
    else {
        panic!("expected a connection error, got {err:?}");
    };
    assert_eq!(*attempts, 2);
    assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
    let text = err.to_string();
    assert!(text.contains(&format!("{a}: ")), "{text}");
    assert!(text.contains(&format!("{b}: ")), "{text}");
    assert!(
        text.contains(&format!("distlockd server --port {}", a.port())),
        "{text}"
    );
}

#[test]
fn an_http_port_is_reported_as_one() {
    let server = Server::bind(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    })
    .unwrap();
    let http = server.http_addr().unwrap();
    let _server = server.start().unwrap();
    let client = Client::builder(http).retries(0).build().unwrap();
    match client.server_info() {
        Err(e @ Error::HttpServer { .. }) => {
            assert!(
                e.to_string()
                    .contains("the lock protocol is on the server's --port")
            )
        }
        other => panic!("expected Error::HttpServer, got {other:?}"),
    }
}

#[test]
fn threads_sharing_a_client_and_separate_clients_exclude_each_other() {
    const SHARED_THREADS: usize = 8;
    const OWN_CLIENT_THREADS: usize = 4;
    const ROUNDS: usize = 20;
    let server = start();
    let shared = client(server.local_addr());
    let inside = AtomicBool::new(false);
    let tokens = Mutex::new(Vec::new());

    let critical_section = |client: &Client| {
        for _ in 0..ROUNDS {
            let guard = client.lock("shared", Duration::from_secs(10)).unwrap();
            assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
            tokens.lock().unwrap().push(guard.token());
            thread::sleep(Duration::from_micros(200));
            inside.store(false, Ordering::SeqCst);
            drop(guard);
        }
    };
    thread::scope(|s| {
        for _ in 0..SHARED_THREADS {
            s.spawn(|| critical_section(&shared));
        }
        for _ in 0..OWN_CLIENT_THREADS {
            s.spawn(|| critical_section(&client(server.local_addr())));
        }
    });

    let tokens = tokens.into_inner().unwrap();
    assert_eq!(tokens.len(), (SHARED_THREADS + OWN_CLIENT_THREADS) * ROUNDS);
    for pair in tokens.windows(2) {
        assert!(
            pair[0] < pair[1],
            "tokens not increasing: {} then {}",
            pair[0],
            pair[1]
        );
    }
}

#[test]
fn waiters_are_granted_in_arrival_order() {
    const WAITERS: usize = 5;
    let server = start();
    let addr = server.local_addr();
    let holder = client(addr);
    let held = holder.acquire("fifo", Duration::ZERO).unwrap();
    let order = Mutex::new(Vec::new());

    thread::scope(|s| {
        for i in 0..WAITERS {
            let order = &order;
            s.spawn(move || {
                let waiter = client(addr);
                let guard = waiter.lock("fifo", Duration::from_secs(10)).unwrap();
                order.lock().unwrap().push(i);
                drop(guard);
            });
            // Start the next one only once this one is surely queued.
            wait_for_waiters(addr, "fifo", i as u32 + 1);
        }
        holder.release_lease(&held).unwrap();
    });

    assert_eq!(
        order.into_inner().unwrap(),
        (0..WAITERS).collect::<Vec<_>>()
    );
}

#[test]
fn a_waiter_times_out_at_its_wait() {
    let server = start();
    let holder = client(server.local_addr());
    let _held = holder.lock("busy", Duration::ZERO).unwrap();

    let other = client(server.local_addr());
    let started = Instant::now();
    let err = other
        .acquire("busy", Duration::from_millis(300))
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, Error::AcquireTimeout { ref name, .. } if name == "busy"),
        "{err:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("\"busy\"") && text.contains("wait longer"),
        "{text}"
    );
    assert_eq!(other.try_acquire("busy").unwrap(), None);
}

#[test]
fn a_crashed_holders_lock_expires_at_its_ttl_and_not_before() {
    let server = start();
    let started = Instant::now();
    let crashed = Client::builder(server.local_addr())
        .ttl(Duration::from_millis(500))
        .build()
        .unwrap();
    let lost = crashed.acquire("crash", Duration::ZERO).unwrap();
    assert_eq!(lost.ttl(), Duration::from_millis(500));
    drop(crashed); // no release: the holder is gone

    let other = client(server.local_addr());
    thread::sleep(Duration::from_millis(200).saturating_sub(started.elapsed()));
    assert_eq!(
        other.try_acquire("crash").unwrap(),
        None,
        "taken before its TTL"
    );
    let lease = other.acquire("crash", Duration::from_secs(5)).unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    assert!(lease.token() > lost.token());
}

#[test]
fn extend_keeps_a_lock_past_its_ttl_and_fails_once_it_expired() {
    let server = start();
    let started = Instant::now();
    let holder = Client::builder(server.local_addr())
        .ttl(Duration::from_millis(300))
        .build()
        .unwrap();
    let other = client(server.local_addr());
    let lease = holder.acquire("ext", Duration::ZERO).unwrap();

    thread::sleep(Duration::from_millis(150));
    assert_eq!(
        holder.extend(&lease, Duration::from_millis(600)).unwrap(),
        Duration::from_millis(600)
    );
    thread::sleep(Duration::from_millis(450).saturating_sub(started.elapsed()));
    assert_eq!(
        other.try_acquire("ext").unwrap(),
        None,
        "held past the first TTL"
    );

    // Extended at ~150 ms for 600 ms: expired by ~750 ms.
    thread::sleep(Duration::from_millis(1000).saturating_sub(started.elapsed()));
    let err = holder
        .extend(&lease, Duration::from_millis(600))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotHeld {
                reason: NotHeldCause::Server(NotHeldReason::Free),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn session_holds_are_released_when_the_client_disconnects() {
    let server = start();
    let other = client(server.local_addr());

    // Control: without SESSION a dropped client's hold stays.
    let plain = Client::builder(server.local_addr())
        .ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    plain.acquire("plain", Duration::ZERO).unwrap();
    drop(plain);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(other.try_acquire("plain").unwrap(), None);

    let session = Client::builder(server.local_addr())
        .ttl(Duration::from_secs(30))
        .session(true)
        .build()
        .unwrap();
    session.acquire("sess", Duration::ZERO).unwrap();
    assert_eq!(other.try_acquire("sess").unwrap(), None);
    drop(session); // closes its pooled connections

    let started = Instant::now();
    other.acquire("sess", Duration::from_secs(2)).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_repeated_acquire_by_the_same_owner_gets_the_same_token() {
    let server = start();
    let mut first = raw_connect(server.local_addr());
    let mut second = raw_connect(server.local_addr());
    raw_send(&mut first, &[raw_acquire("idem", "retrying-owner:1", 0)]);
    let token = match raw_read(&mut first, 1).pop().unwrap() {
        Raw::Granted(token) => token,
        other => panic!("{other:?}"),
    };
    raw_send(&mut second, &[raw_acquire("idem", "retrying-owner:1", 0)]);
    assert_eq!(raw_read(&mut second, 1), vec![Raw::Granted(token)]);
    raw_send(&mut second, &[raw_acquire("idem", "someone-else:1", 0)]);
    assert_eq!(raw_read(&mut second, 1), vec![Raw::Busy { waiters: 0 }]);
}

/// Why `err` says a hold is not ours, and its text; panics on other errors.
fn not_held(err: Error) -> (NotHeldCause, String) {
    let text = err.to_string();
    match err {
        Error::NotHeld { reason, .. } => (reason, text),
        other => panic!("expected NotHeld, got {other:?}"),
    }
}

#[test]
fn releasing_what_we_do_not_hold_is_not_held() {
    let server = start();
    let c = client(server.local_addr());
    let (reason, _) = not_held(c.release("never").unwrap_err());
    assert_eq!(reason, NotHeldCause::NotAcquiredHere);

    c.acquire("twice", Duration::ZERO).unwrap();
    c.release("twice").unwrap();
    let (reason, _) = not_held(c.release("twice").unwrap_err());
    assert_eq!(reason, NotHeldCause::NotAcquiredHere);

    // By lease, the second RELEASE reaches the server, which says so, and
    // no more: it cannot tell a release from an expiry.
    let lease = c.acquire("twice", Duration::ZERO).unwrap();
    c.release_lease(&lease).unwrap();
    let (reason, text) = not_held(c.release_lease(&lease).unwrap_err());
    assert_eq!(reason, NotHeldCause::Server(NotHeldReason::Free));
    assert!(text.contains("released, expired, or never taken"), "{text}");
    assert!(
        !text.contains("ttl") && !text.contains("our hold"),
        "{text}"
    );

    // Another owner's hold: the stale lease is refused with OtherOwner.
    let other = client(server.local_addr());
    let _held = other.lock("twice", Duration::ZERO).unwrap();
    let (reason, text) = not_held(c.release_lease(&lease).unwrap_err());
    assert_eq!(reason, NotHeldCause::Server(NotHeldReason::OtherOwner));
    assert!(text.contains("another owner holds it"), "{text}");
    assert!(!text.contains("expired"), "{text}");

    // The same owner under a token it does not hold: no token is offered
    // as "the most recent".
    let lease = c.acquire("stale", Duration::ZERO).unwrap();
    let stale = Lease::from_parts("stale", lease.owner(), lease.token() - 1, lease.ttl());
    let (reason, text) = not_held(c.release_lease(&stale).unwrap_err());
    assert_eq!(reason, NotHeldCause::Server(NotHeldReason::TokenMismatch));
    assert!(text.contains("holds it under another token"), "{text}");
    assert!(!text.contains("most recent"), "{text}");
    assert!(!text.contains(&lease.token().to_string()), "{text}");
}

#[test]
fn pipelined_frames_are_answered_in_order() {
    const FRAMES: usize = 50;
    const SEED: u64 = 1_000;
    let server = start_with(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_seed: Some(SEED),
        ..Default::default()
    });
    // ACQUIRE, RELEASE, PING, repeated; the k-th grant carries SEED + k
    // because nothing else takes locks on this server.
    let names: Vec<String> = (0..FRAMES).map(|i| format!("pipe-{}", i / 3)).collect();
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let k = (i / 3) as u64;
        let (request, reply) = match i % 3 {
            0 => (raw_acquire(name, "piper:1", 0), Raw::Granted(SEED + k)),
            1 => (
                Request::Release {
                    name: name.as_bytes(),
                    owner: b"piper:1",
                    token: SEED + k,
                },
                Raw::Released,
            ),
            _ => (Request::Ping, Raw::Pong),
        };
        requests.push(request);
        expected.push(reply);
    }
    let mut stream = raw_connect(server.local_addr());
    raw_send(&mut stream, &requests); // one write_all
    assert_eq!(raw_read(&mut stream, FRAMES), expected);
}

#[test]
fn tokens_keep_increasing_across_a_server_restart() {
    let first = start();
    let before = client(first.local_addr())
        .acquire("restart", Duration::ZERO)
        .unwrap()
        .token();
    first.stop().unwrap();
    let second = start();
    let after = client(second.local_addr())
        .acquire("restart", Duration::ZERO)
        .unwrap()
        .token();
    assert!(
        after > before,
        "{after} after a restart is not above {before}"
    );
}

#[test]
fn a_stopped_server_is_a_connection_error_after_every_retry() {
    let server = start();
    let addr = server.local_addr();
    let c = Client::builder(addr)
        .retries(2)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    c.acquire("up", Duration::ZERO).unwrap(); // leaves a pooled connection
    server.stop().unwrap();

    let started = Instant::now();
    let err = c.acquire("down", Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(err, Error::Connection { attempts: 3, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("3 attempts"),
        "{text}"
    );
    assert!(std::error::Error::source(&err).is_some());
    // Two backoffs: 50 ms and 100 ms, plus up to 50% jitter each.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!c.check_server_health());
}

#[test]
fn a_pooled_connection_to_a_restarted_server_costs_no_retry() {
    // The same port again, so the client's pooled connection is stale.
    let first = start();
    let addr = first.local_addr();
    let c = Client::builder(addr).retries(0).build().unwrap();
    c.acquire("a", Duration::ZERO).unwrap();
    first.stop().unwrap();
    let _second = start_with(Config {
        listen: addr,
        ..Default::default()
    });
    c.acquire("a", Duration::ZERO)
        .expect("reconnects on a fresh connection without retries");
}

#[test]
fn a_release_gets_through_while_waiters_fill_the_pool() {
    // Pool of 2: one connection may wait on the server, one is kept for
    // quick requests, so the holder's release is never stuck behind waiters.
    let server = start();
    let c = Client::builder(server.local_addr())
        .pool_size(2)
        .build()
        .unwrap();
    let started = Instant::now();
    let held = c.acquire("pool", Duration::ZERO).unwrap();
    thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| drop(c.lock("pool", Duration::from_secs(10)).unwrap()));
        }
        wait_for_waiters(server.local_addr(), "pool", 1);
        thread::sleep(Duration::from_millis(50));
        c.release_lease(&held).unwrap();
    });
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn arguments_are_checked_before_sending() {
    let server = start();
    let c = client(server.local_addr());
    for name in [String::new(), "n".repeat(256)] {
        let err = c.acquire(&name, Duration::ZERO).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
        assert!(
            err.to_string().contains("255 bytes") || err.to_string().contains("over 255"),
            "{err}"
        );
    }
    assert!(c.acquire(&"n".repeat(255), Duration::ZERO).is_ok());
    let builders = [
        Client::builder(server.local_addr()).ttl(Duration::ZERO),
        Client::builder(server.local_addr()).timeout(Duration::ZERO),
        Client::builder(server.local_addr()).pool_size(1),
        Client::builder(server.local_addr()).client_id(""),
        Client::builder(server.local_addr()).client_id("x".repeat(44)),
        Client::builder("localhost"),
    ];
    for builder in builders {
        let err = builder.clone().build().unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{builder:?}: {err:?}"
        );
    }
}

#[test]
fn server_errors_are_reported_and_the_connection_stays_usable() {
    let limits = Limits {
        wait_ms_max: 1_000,
        ..Limits::default()
    };
    let server = start_with(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits,
        token_seed: None,
        ..Config::default()
    });
    let c = client(server.local_addr());
    let info = c.server_info().unwrap();
    assert_eq!(info.wait_max, Some(Duration::from_secs(1)));
    assert_eq!(info.protocol_version, distlockd::limits::PROTOCOL_VERSION);
    let err = c.acquire("long-wait", Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Server {
                code: ErrorCode::BadArgument,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("wait_ms_max"), "{err}");
    assert!(c.try_acquire("long-wait").unwrap().is_some());
}

#[test]
fn a_guard_releases_on_drop_and_unlock_reports() {
    let server = start();
    let c = client(server.local_addr());
    let other = client(server.local_addr());
    {
        let guard = c.lock("guarded", Duration::ZERO).unwrap();
        assert_eq!(guard.name(), "guarded");
        assert_eq!(other.try_acquire("guarded").unwrap(), None);
    }
    let guard = c.lock("guarded", Duration::ZERO).unwrap();
    guard.unlock().unwrap();
    let lease = other
        .try_acquire("guarded")
        .unwrap()
        .expect("free after unlock");
    other.release_lease(&lease).unwrap();
    let shared = Arc::new(c);
    let handle = {
        let shared = Arc::clone(&shared);
        thread::spawn(move || {
            shared
                .lock("guarded", Duration::from_secs(1))
                .map(|g| g.token())
        })
    };
    assert!(handle.join().unwrap().unwrap() > lease.token());
}

#[test]
fn a_waiter_that_disconnects_leaves_the_queue() {
    // The server documents that a closed connection's queued ACQUIRE leaves
    // the queue. A waiter that gave up must not be granted the lock later.
    let server = start();
    let holder = client(server.local_addr());
    let held = holder.acquire("gone", Duration::ZERO).unwrap();
    let mut waiter = raw_connect(server.local_addr());
    raw_send(&mut waiter, &[raw_acquire("gone", "gave-up:1", 10_000)]);
    wait_for_waiters(server.local_addr(), "gone", 1);
    drop(waiter);
    thread::sleep(Duration::from_millis(100));
    holder.release_lease(&held).unwrap();
    let other = client(server.local_addr());
    let lease = other.acquire("gone", Duration::from_millis(500));
    assert!(
        lease.is_ok(),
        "the lock went to a disconnected waiter: {:?}",
        lease.unwrap_err()
    );
}

/// The TTL a lock sets for itself is what the server grants and counts
/// down, whatever the client's default; `ttl_server_default` asks for the
/// server's.
#[test]
fn a_lock_sets_its_own_ttl_and_the_server_holds_it_that_long() {
    let server = start_with(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits: Limits {
            lock_ttl_ms_default: 7_000,
            ..Limits::default()
        },
        ..Default::default()
    });
    let addr = server.local_addr();
    let c = Client::builder(addr)
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let other = client(addr);

    let long = c
        .acquire_with("long", &LockOptions::new().ttl(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(long.ttl(), Duration::from_secs(60));
    let remaining = c.status("long").unwrap().expect("held").remaining;
    assert!(
        remaining > Duration::from_secs(30) && remaining <= Duration::from_secs(60),
        "{remaining:?}: not the lock's own TTL"
    );

    let short = LockOptions::new().ttl(Duration::from_millis(300));
    let lease = c.acquire_with("short", &short).unwrap();
    assert_eq!(lease.ttl(), Duration::from_millis(300));
    assert!(c.status("short").unwrap().expect("held").remaining <= Duration::from_millis(300));
    // It expires at its own TTL, long before the client's default.
    let deadline = Instant::now() + Duration::from_secs(5);
    while other.try_acquire("short").unwrap().is_none() {
        assert!(Instant::now() < deadline, "the 300 ms hold outlived 5 s");
        thread::sleep(Duration::from_millis(20));
    }
    assert!(c.status("long").unwrap().is_some(), "the 60 s hold ended");

    let server_default = LockOptions::new().ttl_server_default();
    let lease = c.acquire_with("default", &server_default).unwrap();
    assert_eq!(lease.ttl(), Duration::from_secs(7));

    match c.acquire_with("zero", &LockOptions::new().ttl(Duration::ZERO)) {
        Err(Error::InvalidArgument { what }) => assert!(what.contains("ttl 0"), "{what}"),
        other => panic!("{other:?}"),
    }
}

/// A lock may be a SESSION hold on a client whose holds are not, and the
/// other way round; a SESSION hold ends when its connection closes.
#[test]
fn a_lock_chooses_session_and_its_hold_ends_with_its_connection() {
    let server = start();
    let addr = server.local_addr();
    let other = client(addr);

    let plain = Client::builder(addr)
        .ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    plain
        .acquire_with("sess", &LockOptions::new().session(true))
        .unwrap();
    plain.acquire_with("kept", &LockOptions::new()).unwrap();
    assert!(other.status("sess").unwrap().expect("held").session);
    assert!(!other.status("kept").unwrap().expect("held").session);
    drop(plain); // closes its pooled connections

    let deadline = Instant::now() + Duration::from_secs(5);
    while other.try_acquire("sess").unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the SESSION hold outlived its connection"
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        other.status("kept").unwrap().is_some(),
        "a plain hold ended"
    );

    let sessions = Client::builder(addr).session(true).build().unwrap();
    sessions
        .acquire_with("not-sess", &LockOptions::new().session(false))
        .unwrap();
    assert!(!other.status("not-sess").unwrap().expect("held").session);
}

/// A lock's own wait: granted when the holder releases within it, a
/// timeout once it runs out, and none at all by default.
#[test]
fn a_lock_sets_its_own_wait() {
    let server = start();
    let addr = server.local_addr();
    let holder = client(addr);
    let c = client(addr);
    let held = holder.acquire("w", Duration::ZERO).unwrap();

    match c.acquire_with("w", &LockOptions::new()) {
        Err(Error::AcquireTimeout { waited, .. }) => assert!(waited < Duration::from_secs(5)),
        other => panic!("no wait set, yet {other:?}"),
    }
    let started = Instant::now();
    let wait = Duration::from_millis(200);
    match c.acquire_with("w", &LockOptions::new().wait(wait)) {
        Err(Error::AcquireTimeout { waited, .. }) => assert!(waited >= wait, "{waited:?}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= wait);

    let waiter = {
        let c = c.clone();
        thread::spawn(move || {
            c.lock_with("w", &LockOptions::new().wait(Duration::from_secs(10)))
                .map(|g| g.token())
        })
    };
    wait_for_waiters(addr, "w", 1);
    holder.release_lease(&held).unwrap();
    let token = waiter.join().unwrap().expect("granted within its wait");
    assert!(token > held.token());
}

/// A lock taken under an owner of the caller's choosing: a second
/// acquisition under it re-enters the hold.
#[test]
fn a_lock_may_name_its_owner() {
    let server = start();
    let c = client(server.local_addr());
    let as_job = LockOptions::new().owner("job-7");
    let first = c.acquire_with("j", &as_job).unwrap();
    assert_eq!(first.owner(), "job-7");
    assert!(!first.reentered());
    let again = c.acquire_with("j", &as_job).unwrap();
    assert_eq!(again.token(), first.token());
    assert!(again.reentered());
    match c.acquire_with("j", &LockOptions::new().owner("")) {
        Err(Error::InvalidArgument { .. }) => {}
        other => panic!("{other:?}"),
    }
}

/// A release that fails when a guard is dropped is reported where the
/// program can see it: the builder's callback, and the client's count.
#[test]
fn a_release_that_fails_on_drop_is_reported() {
    let server = start();
    let addr = server.local_addr();
    let (tx, rx) = mpsc::channel();
    let c = Client::builder(addr)
        .timeout(Duration::from_secs(5))
        .on_drop_release_error(move |failure| {
            let not_held = matches!(failure.error, Error::NotHeld { .. });
            let _ = tx.send((
                failure.lease.name().to_owned(),
                not_held,
                failure.to_string(),
            ));
        })
        .build()
        .unwrap();
    let other = client(addr);

    drop(c.lock("fine", Duration::ZERO).unwrap());
    assert_eq!(c.drop_release_errors(), 0, "a release that worked");

    // The hold expires and another owner takes it before the drop.
    let short = LockOptions::new().ttl(Duration::from_millis(100));
    let guard = c.lock_with("expires", &short).unwrap();
    let taken = other.acquire("expires", Duration::from_secs(5)).unwrap();
    drop(guard);
    let (name, not_held, text) = rx.recv_timeout(Duration::from_secs(5)).expect("reported");
    assert_eq!(name, "expires");
    assert!(not_held, "{text}");
    assert!(text.contains("on drop failed"), "{text}");
    assert_eq!(c.drop_release_errors(), 1);
    let status = other.status("expires").unwrap().expect("still held");
    assert_eq!(
        status.token,
        taken.token(),
        "the new owner's hold was touched"
    );

    // The server is gone when a renewing guard is dropped.
    let renewing = c.lock_renewing("renewing", Duration::ZERO).unwrap();
    server.stop().unwrap();
    drop(renewing);
    let (name, not_held, text) = rx.recv_timeout(Duration::from_secs(10)).expect("reported");
    assert_eq!(name, "renewing");
    assert!(!not_held, "{text}");
    assert_eq!(c.drop_release_errors(), 2);
    assert_eq!(c.clone().drop_release_errors(), 2, "one count per client");
}

/// The longest timeout is no deadline, not a panic: a client built with
/// `timeout(Duration::MAX)` takes, extends and releases pooled and SESSION
/// holds (the SESSION connection's reads counted an Instant that far
/// ahead, which overflowed).
#[test]
fn the_longest_timeout_is_taken_without_a_panic() {
    let server = start();
    let c = Client::builder(server.local_addr())
        .timeout(Duration::MAX)
        .build()
        .unwrap();
    let lease = c.acquire("pooled", Duration::ZERO).unwrap();
    c.extend(&lease, Duration::from_secs(30)).unwrap();
    c.release_lease(&lease).unwrap();

    let mut session = c.acquire_session("session", &LockOptions::new()).unwrap();
    assert_eq!(
        session.extend(Duration::from_secs(30)).unwrap(),
        Duration::from_secs(30)
    );
    session.release().unwrap();

    let renewing = LockOptions::new().session(true);
    let guard = c.lock_renewing_with("renewing", &renewing).unwrap();
    guard.unlock().unwrap();
    assert_eq!(c.status("renewing").unwrap(), None);
    assert_eq!(c.drop_release_errors(), 0);
}

/// The builder refuses a secret no server takes (a server starts only with
/// 16 to 255 bytes), naming the range, rather than every AUTH failing.
#[test]
fn an_auth_secret_no_server_takes_is_refused_by_the_builder() {
    for len in [0, 1, 15, 256] {
        let err = Client::builder("127.0.0.1:9")
            .auth_secret(vec![b's'; len])
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. }),
            "{len}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&format!("{len} bytes")), "{text}");
        assert!(text.contains("use 16 to 255 bytes"), "{text}");
        assert!(text.contains("--auth-secret-file"), "{text}");
    }
    for len in [16, 255] {
        assert!(
            Client::builder("127.0.0.1:9")
                .auth_secret(vec![b's'; len])
                .build()
                .is_ok(),
            "{len}"
        );
    }
}
