//! End-to-end tests of `Client::lock_renewing` against an in-process server
//! over loopback: renewal keeps a short lease, stops when the guard goes,
//! and loss is told. Waits are bounded; timing bounds are loose upper bounds.

#![cfg(feature = "server")]

mod proxy;

#[allow(dead_code)] // its `main` is for `cargo run --example`
#[path = "../examples/cron_job.rs"]
mod cron_job;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use distlockd::client::{
    Client, Error, Lease, LockOptions, Lost, NotHeldCause, Renewal, RenewalEvent, RenewingGuard,
};
use distlockd::protocol::NotHeldReason;
use distlockd::server::{Config, Server, ServerHandle};

use proxy::Proxy;

const TTL: Duration = Duration::from_millis(500);
/// Generous bound for things that should take milliseconds.
const PATIENCE: Duration = Duration::from_secs(5);

fn start() -> ServerHandle {
    Server::spawn(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    })
    .expect("start server on loopback")
}

/// A server that also serves `/metrics`, and that address.
fn start_with_metrics() -> (ServerHandle, SocketAddr) {
    let server = Server::bind(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    })
    .unwrap();
    let http = server.http_addr().expect("HTTP listener");
    (server.start().unwrap(), http)
}

fn renewing_client(addr: impl ToString, ttl: Duration) -> Arc<Client> {
    Arc::new(
        Client::builder(addr)
            .ttl(ttl)
            .timeout(PATIENCE)
            .build()
            .unwrap(),
    )
}

fn plain_client(addr: SocketAddr) -> Client {
    Client::builder(addr).timeout(PATIENCE).build().unwrap()
}

/// `distlockd_requests_total{command="extend"}` from the server's metrics.
fn extends_served(http: SocketAddr) -> u64 {
    let mut stream = TcpStream::connect(http).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let series = "distlockd_requests_total{command=\"extend\"} ";
    let line = response
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .unwrap_or_else(|| panic!("no {series:?} in {response}"));
    line.trim().parse().unwrap()
}

/// A channel that receives the guard's loss from its `on_lost` callback.
fn loss_channel(guard: &RenewingGuard) -> mpsc::Receiver<(Lost, thread::ThreadId)> {
    let (tx, rx) = mpsc::channel();
    guard.on_lost(move |lost| {
        let _ = tx.send((lost.clone(), thread::current().id()));
    });
    rx
}

#[test]
fn renewal_keeps_a_short_lease_held_for_many_ttls() {
    let server = start();
    let addr = server.local_addr();
    let client = renewing_client(addr, TTL);
    let other = plain_client(addr);

    let guard = client.lock_renewing("report", PATIENCE).unwrap();
    let token = guard.token();
    let until = Instant::now() + TTL * 5;
    while Instant::now() < until {
        let status = client.status("report").unwrap().expect("still held");
        assert_eq!(status.token, token, "the hold was never re-granted");
        assert!(other.try_acquire("report").unwrap().is_none());
        thread::sleep(TTL / 4);
    }
    assert!(!guard.is_lost());
    assert_eq!(guard.lost(), None);
    assert_eq!(guard.wait_lost(Duration::ZERO), None);

    guard.unlock().expect("still ours, so the release succeeds");
    let next = other
        .try_acquire("report")
        .unwrap()
        .expect("free after unlock");
    assert!(next.token() > token);
}

/// A renewing guard needs no `Arc` around the client: it keeps a handle of
/// its own, so it goes on renewing after the caller's client is dropped.
#[test]
fn a_guard_needs_no_arc_and_outlives_the_client_it_came_from() {
    let server = start();
    let addr = server.local_addr();
    let other = plain_client(addr);
    let guard = {
        let client = Client::builder(addr)
            .ttl(TTL)
            .timeout(PATIENCE)
            .build()
            .unwrap();
        client.lock_renewing("report", PATIENCE).unwrap()
    };
    let token = guard.token();
    let until = Instant::now() + TTL * 4;
    while Instant::now() < until {
        let status = other.status("report").unwrap().expect("still held");
        assert_eq!(status.token, token, "the hold was never re-granted");
        thread::sleep(TTL / 4);
    }
    assert_eq!(guard.lost(), None);
    guard.unlock().expect("still ours");
    assert_eq!(other.status("report").unwrap(), None);
}

/// A renewing guard takes the lock's own options: its TTL (renewed at that
/// TTL, not the client's) and SESSION (a connection of its own).
#[test]
fn a_renewing_guard_takes_the_locks_own_ttl_and_session() {
    let server = start();
    let addr = server.local_addr();
    let client = Client::builder(addr)
        .ttl(Duration::from_secs(30))
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let other = plain_client(addr);
    let options = LockOptions::new().ttl(TTL).session(true).wait(PATIENCE);
    let guard = client.lock_renewing_with("own", &options).unwrap();
    assert_eq!(guard.lease().ttl(), TTL);
    let until = Instant::now() + TTL * 4;
    while Instant::now() < until {
        let status = other.status("own").unwrap().expect("still held");
        assert_eq!(status.token, guard.token());
        assert!(status.remaining <= TTL, "{:?}", status.remaining);
        assert!(status.session);
        thread::sleep(TTL / 4);
    }
    assert_eq!(guard.lost(), None);
    guard.unlock().unwrap();
    assert_eq!(other.status("own").unwrap(), None);
}

/// Runs `stop` on a renewing guard while EXTENDs are frequent, then checks
/// that the server sees no EXTEND after `stop` returns.
fn assert_no_renewal_after(stop: impl Fn(RenewingGuard)) {
    let (server, http) = start_with_metrics();
    let addr = server.local_addr();
    // Renewing every 5 ms makes it likely that `stop` lands while an
    // EXTEND is in flight, the case where it must wait for the thread.
    let client = Arc::new(
        Client::builder(addr)
            .ttl(TTL)
            .renewals_per_ttl(100)
            .timeout(PATIENCE)
            .build()
            .unwrap(),
    );
    let other = plain_client(addr);
    for round in 0..10 {
        let before = extends_served(http);
        // No wait: a grant after one is renewed once at once, which would
        // count as the thread's renewal below.
        let guard = client.lock_renewing("job", Duration::ZERO).unwrap();
        thread::sleep(Duration::from_millis(20 + round * 3));
        stop(guard);
        let after_stop = extends_served(http);
        assert!(
            after_stop > before,
            "round {round}: the guard never renewed"
        );
        assert_eq!(client.status("job").unwrap(), None, "released on stop");
        // Dozens of renewal intervals: a live renewal thread would show.
        thread::sleep(Duration::from_millis(100));
        assert_eq!(
            extends_served(http),
            after_stop,
            "round {round}: an EXTEND was sent after the guard was stopped"
        );
    }
    // The name is free for others, and theirs to keep.
    let lease = other.try_acquire("job").unwrap().expect("free");
    thread::sleep(Duration::from_millis(50));
    let status = other.status("job").unwrap().expect("held");
    assert_eq!(status.token, lease.token());
}

#[test]
fn dropping_the_guard_stops_renewal_before_it_returns() {
    assert_no_renewal_after(drop);
}

#[test]
fn unlocking_the_guard_stops_renewal_before_it_returns() {
    assert_no_renewal_after(|guard| guard.unlock().unwrap());
}

#[test]
fn loss_is_told_when_the_server_no_longer_has_the_hold() {
    let server = start();
    let addr = server.local_addr();
    // A long TTL, renewed often: the loss must come from the server's
    // NOT_HELD at the next renewal, long before the lease could end.
    let client = Arc::new(
        Client::builder(addr)
            .ttl(Duration::from_secs(30))
            .renewals_per_ttl(100) // every 300 ms
            .timeout(PATIENCE)
            .build()
            .unwrap(),
    );
    let other = plain_client(addr);
    let guard = client.lock_renewing("cache", PATIENCE).unwrap();
    let losses = loss_channel(&guard);
    assert!(!guard.is_lost());

    // Someone who knows the owner and token (an operator's CLI) releases it.
    other.release_lease(guard.lease()).unwrap();
    let (lost, thread) = losses.recv_timeout(PATIENCE).expect("on_lost called");
    assert_eq!(lost, Lost::NotHeld(NotHeldReason::Free));
    assert_ne!(thread, thread::current().id(), "runs on the renewal thread");
    assert!(guard.is_lost());
    assert_eq!(guard.wait_lost(Duration::ZERO), Some(lost.clone()));
    assert!(lost.to_string().contains("refused to renew"), "{lost}");

    // A callback set after the loss runs at once, here.
    let late = loss_channel(&guard);
    let (late_lost, late_thread) = late.try_recv().expect("ran at once");
    assert_eq!((late_lost, late_thread), (lost, thread::current().id()));

    // Another owner takes it; the lost guard's drop must not disturb it.
    let lease = other.try_acquire("cache").unwrap().expect("free");
    drop(guard);
    let status = client.status("cache").unwrap().expect("held by other");
    assert_eq!(status.token, lease.token());
}

#[test]
fn unlock_after_a_loss_reports_not_held() {
    let server = start();
    let addr = server.local_addr();
    let client = renewing_client(addr, TTL);
    let guard = client.lock_renewing("cache", PATIENCE).unwrap();
    plain_client(addr).release_lease(guard.lease()).unwrap();
    assert!(guard.wait_lost(PATIENCE).is_some());
    match guard.unlock() {
        Err(Error::NotHeld {
            reason: NotHeldCause::Server(NotHeldReason::Free),
            ..
        }) => {}
        other => panic!("expected NotHeld(Free), got {other:?}"),
    }
}

#[test]
fn loss_is_told_by_the_lease_end_when_the_server_is_gone() {
    let server = start();
    let client = Arc::new(
        Client::builder(server.local_addr())
            .ttl(TTL)
            .retries(1) // keeps the drop's failed RELEASE short
            .timeout(PATIENCE)
            .build()
            .unwrap(),
    );
    let guard = client.lock_renewing("report", PATIENCE).unwrap();
    let losses = loss_channel(&guard);
    thread::sleep(TTL); // a few renewals
    assert!(!guard.is_lost());

    let stopped_at = Instant::now();
    server.stop().unwrap();
    let lost = guard
        .wait_lost(PATIENCE)
        .expect("lost once the server is gone");
    assert!(
        matches!(lost, Lost::LeaseEnded { .. }),
        "expected LeaseEnded, got {lost:?}"
    );
    // At the latest one TTL after the last renewal, which preceded the
    // stop; the slack is for a loaded machine.
    assert!(stopped_at.elapsed() < TTL + Duration::from_secs(2));
    let (told, _) = losses.recv_timeout(PATIENCE).expect("on_lost called");
    assert_eq!(told, lost);
    assert!(guard.is_lost(), "loss is final");
}

#[test]
fn a_renewal_that_gets_no_answer_does_not_delay_the_loss() {
    let server = start();
    let proxy = Proxy::start(server.local_addr());
    // The I/O timeout is far longer than the TTL: only a renewal whose I/O
    // ends at the lease's end reports the loss well before the timeout.
    let io_timeout = Duration::from_secs(20);
    let client = Arc::new(
        Client::builder(proxy.addr())
            .ttl(TTL)
            .retries(0)
            .timeout(io_timeout)
            .build()
            .unwrap(),
    );
    let guard = client.lock_renewing("report", PATIENCE).unwrap();
    let losses = loss_channel(&guard);
    thread::sleep(TTL);
    assert!(!guard.is_lost());

    let stalled_at = Instant::now();
    proxy.stall();
    let (lost, _) = losses.recv_timeout(io_timeout / 2).expect("on_lost called");
    assert!(matches!(lost, Lost::LeaseEnded { .. }), "{lost:?}");
    assert!(stalled_at.elapsed() < io_timeout / 2);
    assert!(guard.is_lost());

    // Close the proxy so the drop's RELEASE fails fast instead of waiting.
    drop(proxy);
    drop(guard);
}

#[test]
fn a_grant_after_a_long_wait_is_pinned_by_a_renewal() {
    let server = start();
    let addr = server.local_addr();
    let holder = plain_client(addr);
    let first = holder.acquire("queue", PATIENCE).unwrap();
    let client = renewing_client(addr, TTL);
    let waiter = {
        let client = Arc::clone(&client);
        thread::spawn(move || client.lock_renewing("queue", PATIENCE))
    };
    // Longer than the TTL: counted from the ACQUIRE's send time, the lease
    // would have ended before it was even granted.
    thread::sleep(TTL * 2);
    holder.release_lease(&first).unwrap();
    let guard = waiter.join().unwrap().expect("granted after the release");
    assert!(!guard.is_lost(), "{:?}", guard.lost());
    thread::sleep(TTL * 2);
    assert!(!guard.is_lost(), "{:?}", guard.lost());
    let status = client.status("queue").unwrap().expect("held");
    assert_eq!(status.token, guard.token());
}

#[test]
fn a_busy_lock_is_not_taken_without_waiting() {
    let server = start();
    let client = renewing_client(server.local_addr(), TTL);
    let _held = client.lock_renewing("busy", PATIENCE).unwrap();
    match client.lock_renewing("busy", Duration::ZERO) {
        Err(Error::AcquireTimeout { name, .. }) => assert_eq!(name, "busy"),
        other => panic!("expected AcquireTimeout, got {other:?}"),
    }
}

#[test]
fn renewals_per_ttl_is_checked() {
    for bad in [0, 1, 101] {
        let err = Client::builder("127.0.0.1:9")
            .renewals_per_ttl(bad)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { .. })
                && err.to_string().contains("renewals_per_ttl"),
            "{bad}: {err}"
        );
    }
    for good in [2, 3, 100] {
        assert!(
            Client::builder("127.0.0.1:9")
                .renewals_per_ttl(good)
                .build()
                .is_ok()
        );
    }
}

#[test]
fn cron_job_example_runs_once_at_a_time_and_outlives_its_ttl() {
    let server = start();
    let addr = server.local_addr();
    let worker_a = renewing_client(addr, TTL);
    let worker_b = renewing_client(addr, TTL);

    let mut skipped_b = None;
    let mut steps_done = 0;
    let outcome = cron_job::run_job(&worker_a, "nightly-report", 4, |_guard, step| {
        if step == 0 {
            // Worker B starts while A runs: it must skip.
            skipped_b = Some(cron_job::run_job(&worker_b, "nightly-report", 4, |_, _| {
                panic!("B ran while A held the lock")
            }));
        }
        steps_done += 1;
        thread::sleep(TTL / 2); // four steps: twice the TTL in all
    })
    .unwrap();
    let cron_job::Outcome::Done { token } = outcome else {
        panic!("A did not finish: {outcome:?}");
    };
    assert_eq!(steps_done, 4);
    assert!(
        matches!(skipped_b, Some(Ok(cron_job::Outcome::Skipped))),
        "{skipped_b:?}"
    );

    // Released at the end: the next run goes ahead with a newer token.
    let outcome = cron_job::run_job(&worker_b, "nightly-report", 1, |_, _| {}).unwrap();
    assert!(
        matches!(outcome, cron_job::Outcome::Done { token: t } if t > token),
        "{outcome:?}"
    );
}

#[test]
fn cron_job_example_stops_when_the_lock_is_lost() {
    let server = start();
    let addr = server.local_addr();
    let worker = renewing_client(addr, TTL);
    let operator = plain_client(addr);
    let outcome = cron_job::run_job(&worker, "nightly-report", 100, |guard, step| {
        if step == 1 {
            let status = worker.status("nightly-report").unwrap().expect("held");
            assert_eq!(status.token, guard.token());
        }
        if step == 2 {
            // An operator frees the lock behind the job's back; the next
            // renewal notices.
            operator.release_lease(guard.lease()).unwrap();
            assert!(guard.wait_lost(PATIENCE).is_some());
        }
    })
    .unwrap();
    assert!(
        matches!(
            outcome,
            cron_job::Outcome::Abandoned {
                step: 3,
                lost: Lost::NotHeld(NotHeldReason::Free),
                ..
            }
        ),
        "{outcome:?}"
    );
}

/// A SESSION guard whose connection is cut: the server frees the lock at
/// once (a waiter gets it), and the guard says why it lost, long before a
/// renewal (every 15 s) or the lease's end (30 s) could have told it.
#[test]
fn a_session_guard_cut_off_is_told_at_once_why_it_lost() {
    let server = start();
    let proxy = Proxy::start(server.local_addr());
    let client = Arc::new(
        Client::builder(proxy.addr())
            .ttl(Duration::from_secs(30))
            .renewals_per_ttl(2)
            .session(true)
            .timeout(PATIENCE)
            .build()
            .unwrap(),
    );
    let guard = client.lock_renewing("cache", PATIENCE).unwrap();
    let losses = loss_channel(&guard);
    let other = plain_client(server.local_addr());
    let waiter = thread::spawn(move || other.acquire("cache", PATIENCE * 2));
    thread::sleep(Duration::from_millis(200)); // let the waiter queue
    assert!(!guard.is_lost());

    proxy.cut();
    let cut_at = Instant::now();
    let granted = waiter.join().unwrap().expect("the waiter is granted");
    assert!(granted.token() > guard.token());
    let (lost, _) = losses.recv_timeout(PATIENCE).expect("on_lost called");
    assert!(matches!(lost, Lost::SessionClosed { .. }), "{lost:?}");
    assert!(
        lost.to_string().contains("SESSION connection was lost"),
        "{lost}"
    );
    assert!(cut_at.elapsed() < Duration::from_secs(10));
    assert!(guard.is_lost());
    // The release after the loss finds the lock someone else's.
    assert!(matches!(guard.unlock(), Err(Error::NotHeld { .. })));
}

/// A SESSION guard renews and releases over its own connection: the lock
/// stays held for several TTLs and is free the moment the guard drops.
#[test]
fn a_session_guard_renews_and_releases_over_its_connection() {
    let server = start();
    let addr = server.local_addr();
    let client = Arc::new(
        Client::builder(addr)
            .ttl(TTL)
            .session(true)
            .timeout(PATIENCE)
            .build()
            .unwrap(),
    );
    let guard = client.lock_renewing("cache", PATIENCE).unwrap();
    thread::sleep(TTL * 3);
    assert!(!guard.is_lost(), "{:?}", guard.lost());
    let status = client.status("cache").unwrap().expect("held");
    assert!(status.session);
    assert_eq!(status.token, guard.token());
    drop(guard);
    assert!(plain_client(addr).try_acquire("cache").unwrap().is_some());
}

/// What the renewal engine told of one step, without its details.
fn step(event: &RenewalEvent) -> &'static str {
    match event {
        RenewalEvent::Sending { .. } => "sending",
        RenewalEvent::Renewed { .. } => "renewed",
        RenewalEvent::Failed(_) => "failed",
        RenewalEvent::Lost(_) => "lost",
        _ => "other",
    }
}

/// The renewal engine on a hold the caller took (as `distlockd run` hands
/// its own): it renews on the schedule asked for and tells each step, the
/// loss last.
#[test]
fn the_engine_renews_a_hold_the_caller_took_and_tells_each_step() {
    let server = start();
    let addr = server.local_addr();
    let client = Client::builder(addr)
        .ttl(Duration::from_secs(30))
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let other = plain_client(addr);
    let lease = client
        .acquire_with("caller", &LockOptions::new().ttl(TTL))
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let renewal = Renewal::new()
        .renewals_per_ttl(5)
        .retry_after_failure(TTL / 10)
        .on_event(move |event| {
            let _ = tx.send(step(event));
        });
    let guard = client.renew(lease, renewal).unwrap();
    let mut steps = Vec::new();
    while steps.iter().filter(|&&s| s == "renewed").count() < 6 {
        steps.push(rx.recv_timeout(PATIENCE).expect("a renewal step"));
    }
    assert!(
        steps.chunks(2).all(|pair| pair == ["sending", "renewed"]),
        "{steps:?}"
    );
    let status = other.status("caller").unwrap().expect("held");
    assert_eq!(status.token, guard.token());
    assert!(status.remaining <= TTL);

    server.stop().unwrap();
    let mut after_stop = Vec::new();
    while after_stop.last() != Some(&"lost") {
        after_stop.push(rx.recv_timeout(PATIENCE).expect("a step after the stop"));
    }
    assert!(after_stop.contains(&"failed"), "{after_stop:?}");
    assert!(matches!(guard.lost(), Some(Lost::LeaseEnded { .. })));
    // The loss is the last event.
    assert!(rx.recv_timeout(TTL).is_err());
}

/// A schedule the engine cannot follow is refused, and the hold it was
/// given is released rather than left to its TTL.
#[test]
fn the_engine_refuses_a_schedule_it_cannot_follow_and_releases_the_hold() {
    let server = start();
    let client = plain_client(server.local_addr());
    let lease = client.acquire("bad", Duration::ZERO).unwrap();
    let renewal = Renewal::new().renewals_per_ttl(1);
    match client.renew(lease, renewal) {
        Err(Error::InvalidArgument { what }) => assert!(what.contains("renewals_per_ttl 1")),
        other => panic!("{other:?}"),
    }
    assert_eq!(client.status("bad").unwrap(), None);
    // A delay after a failure longer than the TTL: no renewal could follow
    // a failed one before the lease's end (and Duration::MAX overflowed the
    // clock at the first failure, killing the renewal thread).
    let ttl = Duration::from_secs(10);
    for delay in [Duration::MAX, ttl + Duration::from_millis(1)] {
        let lease = client
            .acquire_with("bad", &LockOptions::new().ttl(ttl))
            .unwrap();
        let renewal = Renewal::new().retry_after_failure(delay);
        match client.renew(lease, renewal) {
            Err(Error::InvalidArgument { what }) => {
                assert!(what.contains("retry_after_failure"), "{what}");
                assert!(what.contains("use at most the TTL"), "{what}");
            }
            other => panic!("{delay:?}: {other:?}"),
        }
        assert_eq!(client.status("bad").unwrap(), None, "{delay:?}");
    }
    let lease = client
        .acquire_with("bad", &LockOptions::new().ttl(ttl))
        .unwrap();
    let guard = client
        .renew(lease, Renewal::new().retry_after_failure(ttl))
        .expect("a delay of the TTL itself is taken");
    guard.unlock().unwrap();
}

/// An observer that panics: the engine stops calling it, and the lease is
/// lost with the panic's message, told to on_lost at once (it used to kill
/// the renewal thread: no renewals, no on_lost, only the lease's end).
#[test]
fn a_panicking_observer_loses_the_lease_and_the_program_is_told() {
    let server = start();
    let client = renewing_client(server.local_addr(), Duration::from_secs(30));
    // Before an EXTEND is sent, and once it is confirmed.
    for panics_at in ["sending", "renewed"] {
        let lease = client.acquire("observed", Duration::ZERO).unwrap();
        let renewal = Renewal::new().renewals_per_ttl(100).on_event(move |event| {
            if step(event) == panics_at {
                panic!("observer bug");
            }
        });
        let guard = client.renew(lease, renewal).unwrap();
        let losses = loss_channel(&guard);
        // The first renewal is due at 300 ms; the lease lasts 30 s.
        let (lost, _) = losses
            .recv_timeout(PATIENCE)
            .expect("on_lost called long before the lease's end");
        match &lost {
            Lost::ObserverPanicked { message } => assert_eq!(message, "observer bug"),
            other => panic!("{panics_at}: {other:?}"),
        }
        assert!(lost.to_string().contains("Renewal::on_event"), "{lost}");
        assert_eq!(guard.wait_lost(PATIENCE), Some(lost));
        // The hold was never given up: the drop releases it, without a
        // failure.
        drop(guard);
        assert_eq!(client.status("observed").unwrap(), None);
        assert_eq!(client.drop_release_errors(), 0);
    }
}

/// A SESSION lease has a connection of its own: extended over it, ended
/// with it when it is cut (the server releases the hold at once), and
/// released when dropped.
#[test]
fn a_session_lease_lives_and_ends_with_its_own_connection() {
    let server = start();
    let proxy = Proxy::start(server.local_addr());
    let client = Client::builder(proxy.addr())
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let other = plain_client(server.local_addr());
    let long = LockOptions::new().ttl(Duration::from_secs(60));
    let mut session = client.acquire_session("s", &long).unwrap();
    assert!(other.status("s").unwrap().expect("held").session);
    assert_eq!(
        session.extend(Duration::from_secs(30)).unwrap(),
        Duration::from_secs(30)
    );
    assert_eq!(session.lease().ttl(), Duration::from_secs(30));
    assert_eq!(session.closed(), None);

    proxy.cut();
    let deadline = Instant::now() + PATIENCE;
    while session.closed().is_none() {
        assert!(Instant::now() < deadline, "the cut was never seen");
        thread::sleep(Duration::from_millis(10));
    }
    let taken = other
        .acquire("s", PATIENCE)
        .expect("the server released the hold at the cut");
    assert!(matches!(session.release(), Err(Error::NotHeld { .. })));
    other.release_lease(&taken).unwrap();

    let dropped = client.acquire_session("d", &long).unwrap();
    drop(dropped);
    other
        .acquire("d", PATIENCE)
        .expect("dropping the lease closed its connection");
}

/// `wait_lost(Duration::MAX)`, the natural "until lost", waits with no
/// deadline and returns the loss (it panicked, adding the timeout to now).
#[test]
fn wait_lost_with_the_longest_timeout_returns_the_loss() {
    let server = start();
    let client = renewing_client(server.local_addr(), TTL);
    let guard = client.lock_renewing("until-lost", Duration::ZERO).unwrap();
    assert_eq!(guard.wait_lost(Duration::ZERO), None);
    // Released behind the guard's back: its next renewal (within TTL/3)
    // finds the hold gone.
    plain_client(server.local_addr())
        .release_lease(guard.lease())
        .unwrap();
    let lost = guard.wait_lost(Duration::MAX);
    assert_eq!(lost, Some(Lost::NotHeld(NotHeldReason::Free)));
}

/// The engine counts a lease from the moment its ACQUIRE was sent, which
/// the client records, not from when the caller hands it over: a hold
/// renewed by nobody is lost one TTL after its ACQUIRE, even if it reached
/// the engine later (the caller's `Instant::now()` after the acquire made
/// the engine count it as lasting longer than it did).
#[test]
fn the_engine_counts_a_lease_from_its_acquires_send() {
    let server = start();
    let proxy = Proxy::start(server.local_addr());
    let client = Client::builder(proxy.addr())
        .timeout(PATIENCE)
        .build()
        .unwrap();
    // First renewal due at TTL/3 = 1 s after the send, well after the
    // hand-over, so the engine does not renew before it starts.
    let ttl = Duration::from_secs(3);
    let before = Instant::now();
    let lease = client
        .acquire_with("counted", &LockOptions::new().ttl(ttl))
        .unwrap();
    let after = Instant::now();
    let sent = lease
        .sent_at()
        .expect("an acquired lease knows its send time");
    assert!(before <= sent && sent <= after);
    thread::sleep(ttl / 10);
    proxy.stall(); // no renewal gets through from now on
    let guard = client.renew(lease, Renewal::new()).unwrap();
    assert_eq!(guard.lease().sent_at(), Some(sent), "not renewed at once");
    // One TTL after the send at the latest, whatever the hand-over's time.
    let end = after + ttl;
    thread::sleep(end.saturating_duration_since(Instant::now()));
    assert!(
        matches!(guard.lost(), Some(Lost::LeaseEnded { .. })),
        "{:?}",
        guard.lost()
    );
    drop(proxy); // the drop's RELEASE fails fast
    drop(guard);
}

/// When the TTL's start is unknown the engine renews the hold once before
/// it starts, and counts the lease from that renewal: a lease known only by
/// its parts, and a grant that may have come after a wait. A lease TTL the
/// engine cannot renew with is refused (a zero TTL was lost at once), and
/// the hold released.
#[test]
fn the_engine_pins_a_lease_whose_start_is_unknown_and_refuses_a_bad_ttl() {
    let server = start();
    let client = plain_client(server.local_addr());
    let ttl = Duration::from_secs(30);
    let options = LockOptions::new().ttl(ttl);

    let lease = client.acquire_with("parts", &options).unwrap();
    let parts = Lease::from_parts(lease.name(), lease.owner(), lease.token(), ttl);
    assert_eq!(parts.sent_at(), None);
    let handed = Instant::now();
    let guard = client.renew(parts, Renewal::new()).unwrap();
    let pinned = guard.lease().sent_at().expect("pinned");
    assert!(pinned >= handed, "counted from before the hand-over");
    assert!(!guard.is_lost());
    guard.unlock().unwrap();

    let waited = client
        .acquire_with("waited", &options.clone().wait(PATIENCE))
        .unwrap();
    let acquired = waited.sent_at().unwrap();
    let handed = Instant::now();
    let guard = client.renew(waited, Renewal::new()).unwrap();
    let pinned = guard.lease().sent_at().unwrap();
    assert!(pinned >= handed && pinned > acquired);
    guard.unlock().unwrap();

    for bad in [Duration::ZERO, Duration::MAX] {
        let lease = client.acquire_with("bad-ttl", &options).unwrap();
        let parts = Lease::from_parts(lease.name(), lease.owner(), lease.token(), bad);
        match client.renew(parts, Renewal::new()) {
            Err(Error::InvalidArgument { what }) => {
                assert!(what.contains("lease ttl"), "{what}");
                assert!(what.contains("must be positive and at most"), "{what}");
            }
            other => panic!("{bad:?}: {other:?}"),
        }
        assert_eq!(client.status("bad-ttl").unwrap(), None, "{bad:?}");
    }
}

/// A SESSION lease is renewed through the client that took it (whose
/// connection carries the hold and which keeps its record), not through
/// the client `renew` is called on.
#[test]
fn a_session_lease_is_renewed_through_its_own_client() {
    let server = start();
    let owner = plain_client(server.local_addr());
    let elsewhere = Client::new("127.0.0.1:9").unwrap(); // nothing listens
    let session = owner.acquire_session("mine", &LockOptions::new()).unwrap();
    let guard = elsewhere.renew(session, Renewal::new()).unwrap();
    assert!(!guard.is_lost());
    guard.unlock().unwrap();
    // The owner's record of the hold went with the release.
    match owner.release("mine") {
        Err(Error::NotHeld {
            reason: NotHeldCause::NotAcquiredHere,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

/// Unlocking a SESSION guard whose server went away says the hold is gone
/// (its connection's close ended it), not that the RELEASE after it could
/// not connect.
#[test]
fn unlocking_a_session_guard_whose_server_stopped_says_the_close_ended_it() {
    let server = start();
    let client = Client::builder(server.local_addr())
        .ttl(Duration::from_secs(30))
        .session(true)
        .retries(0)
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let guard = client.lock_renewing("gone", Duration::ZERO).unwrap();
    server.stop().unwrap();
    let lost = guard.wait_lost(PATIENCE);
    assert!(matches!(lost, Some(Lost::SessionClosed { .. })), "{lost:?}");
    match guard.unlock() {
        Err(Error::NotHeld {
            reason: NotHeldCause::SessionClosed,
            ..
        }) => {}
        other => panic!("unlock after the server stopped: {other:?}"),
    }
}

/// A SESSION guard whose connection closed, then dropped: the close ended
/// the hold, so the drop's RELEASE finding it gone is no failed release
/// (it was counted and handed to on_drop_release_error as one).
#[test]
fn dropping_a_session_guard_after_its_connection_closed_is_no_failure() {
    let server = start();
    let proxy = Proxy::start(server.local_addr());
    let (tx, failures) = mpsc::channel();
    let client = Client::builder(proxy.addr())
        .ttl(Duration::from_secs(30))
        .session(true)
        .timeout(PATIENCE)
        .on_drop_release_error(move |failure| {
            let _ = tx.send(failure.to_string());
        })
        .build()
        .unwrap();
    let guard = client.lock_renewing("cut", Duration::ZERO).unwrap();
    proxy.cut();
    let lost = guard.wait_lost(PATIENCE);
    assert!(matches!(lost, Some(Lost::SessionClosed { .. })), "{lost:?}");
    drop(guard);
    assert_eq!(client.drop_release_errors(), 0);
    assert!(failures.try_recv().is_err());
    assert_eq!(
        plain_client(server.local_addr()).status("cut").unwrap(),
        None
    );
}
