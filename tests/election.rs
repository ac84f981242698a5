//! End-to-end tests of `Election` against an in-process server over
//! loopback: one candidate leads, the others wait in line; resigning,
//! dropping or being cut off hands leadership on with a larger token, and a
//! leader that lost its lease learns it. Waits are bounded.

#![cfg(feature = "server")]

mod proxy;

#[allow(dead_code)] // its `main` is for `cargo run --example`
#[path = "../examples/leader_election.rs"]
mod leader_election;

use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use distlockd::client::{Client, Election, Error, Leadership, LockOptions, Lost, NotHeldCause};
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

fn candidate(addr: impl ToString, ttl: Duration) -> Election {
    let client = Client::builder(addr)
        .ttl(ttl)
        .timeout(PATIENCE)
        .build()
        .unwrap();
    Election::new(&client, "leader").unwrap()
}

/// Campaigns on another thread; the leadership arrives on the channel.
fn campaign_in_background(
    election: &Election,
    wait: Duration,
) -> mpsc::Receiver<Result<Leadership, Error>> {
    let (tx, rx) = mpsc::channel();
    let election = election.clone();
    thread::spawn(move || {
        let _ = tx.send(election.campaign(wait));
    });
    rx
}

/// Polls until `waiters` candidates are queued behind the leader.
fn wait_for_waiters(election: &Election, waiters: u32) {
    let deadline = Instant::now() + PATIENCE;
    while election.leader().unwrap().map(|l| l.waiters) != Some(waiters) {
        assert!(
            Instant::now() < deadline,
            "{waiters} waiter(s) never queued"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn one_leads_the_other_waits_and_takes_over_on_resign() {
    let server = start();
    let a = candidate(server.local_addr(), TTL);
    let b = candidate(server.local_addr(), TTL);
    assert_eq!(a.leader().unwrap(), None, "nobody leads yet");

    let leader_a = a.campaign(PATIENCE).unwrap();
    let term = b.leader().unwrap().expect("a term is on");
    assert_eq!(term.token, leader_a.token());
    assert!(term.session, "a campaign's hold is a SESSION hold");

    let elected_b = campaign_in_background(&b, PATIENCE);
    wait_for_waiters(&b, 1);
    // Several TTLs: renewal keeps A leading while B waits.
    assert!(
        elected_b.recv_timeout(TTL * 4).is_err(),
        "B led while A did"
    );
    assert!(!leader_a.is_lost());
    assert_eq!(a.leader().unwrap().unwrap().token, leader_a.token());

    leader_a.resign().unwrap();
    let leader_b = elected_b.recv_timeout(PATIENCE).unwrap().unwrap();
    assert!(
        leader_b.token() > term.token,
        "a new term has a larger token"
    );
    assert_eq!(a.leader().unwrap().unwrap().token, leader_b.token());

    drop(leader_b); // dropping resigns too
    assert_eq!(a.leader().unwrap(), None);
}

#[test]
fn a_campaign_gives_up_after_its_wait() {
    let server = start();
    let a = candidate(server.local_addr(), TTL);
    let b = candidate(server.local_addr(), TTL);
    let _leader = a.campaign(PATIENCE).unwrap();
    match b.campaign(TTL) {
        Err(Error::AcquireTimeout { name, .. }) => assert_eq!(name, "leader"),
        other => panic!("expected AcquireTimeout, got {other:?}"),
    }
}

/// The leader's connection is cut (as by a network failure): the server
/// frees the SESSION hold at once and B leads, long before A's TTL. A
/// learns it from the closed connection, not from a renewal: A renews only
/// every 15 s, and is told within a few seconds.
#[test]
fn a_leader_cut_off_is_replaced_at_once_and_learns_it_lost() {
    let server = start();
    let proxy = Proxy::start(server.local_addr());
    let a_client = Client::builder(proxy.addr())
        .ttl(Duration::from_secs(30))
        .renewals_per_ttl(2)
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let a = Election::new(&a_client, "leader").unwrap();
    let b = candidate(server.local_addr(), TTL);

    let leader_a = a.campaign(PATIENCE).unwrap();
    let (told, losses) = mpsc::channel();
    leader_a.on_lost(move |lost| {
        let _ = told.send(lost.clone());
    });
    let elected_b = campaign_in_background(&b, PATIENCE);
    wait_for_waiters(&b, 1);

    assert!(!leader_a.is_lost(), "the probe of an open connection");
    proxy.cut(); // as if A's network failed
    let cut_at = Instant::now();
    let leader_b = elected_b.recv_timeout(PATIENCE * 2).unwrap().unwrap();
    assert!(leader_b.token() > leader_a.token());
    assert_eq!(b.leader().unwrap().unwrap().token, leader_b.token());

    // is_lost looks at the connection itself: true once B leads, with no
    // renewal sent since the cut.
    assert!(
        leader_a.is_lost(),
        "is_lost still false after B was granted"
    );
    let lost = leader_a.wait_lost(PATIENCE).expect("A learns it lost");
    assert!(matches!(lost, Lost::SessionClosed { .. }), "{lost:?}");
    assert!(
        lost.to_string().contains("SESSION connection was lost"),
        "{lost}"
    );
    assert_eq!(losses.recv_timeout(PATIENCE).unwrap(), lost);
    assert!(
        cut_at.elapsed() < Duration::from_secs(10),
        "told only after {:?}: a renewal, not the connection, told it",
        cut_at.elapsed()
    );

    // The old leader going away does not disturb the new one, and is no
    // failed release: the cut ended its hold.
    drop(leader_a);
    assert_eq!(b.leader().unwrap().unwrap().token, leader_b.token());
    assert!(!leader_b.is_lost());
    assert_eq!(a_client.drop_release_errors(), 0);
}

/// A stopping server closes the leader's connection, which ends a SESSION
/// hold: the leader is told so, without waiting for the lease's end.
#[test]
fn a_leader_whose_server_stops_learns_it() {
    let server = start();
    let a = candidate(server.local_addr(), Duration::from_secs(30));
    let leader_a = a.campaign(PATIENCE).unwrap();
    assert!(!leader_a.is_lost());
    server.stop().unwrap();
    let lost = leader_a
        .wait_lost(PATIENCE)
        .expect("lost when the connection closed");
    assert!(matches!(lost, Lost::SessionClosed { .. }), "{lost:?}");
    // Resigning says leadership was already gone (the close ended it), as
    // resign's docs promise, not that the server could not be reached.
    let resigned = leader_a.resign();
    assert!(
        matches!(
            resigned,
            Err(Error::NotHeld {
                reason: NotHeldCause::SessionClosed,
                ..
            })
        ),
        "{resigned:?}"
    );
}

/// The leader's hold has a connection of its own: the same client's other
/// requests, reconnecting through the pool after their connections were
/// cut, neither use nor disturb it, and resigning over it frees the lock.
#[test]
fn the_clients_other_requests_do_not_disturb_the_leader() {
    let server = start();
    let proxy = Proxy::start(server.local_addr());
    let client = Client::builder(proxy.addr())
        .ttl(TTL)
        .timeout(PATIENCE)
        .pool_size(2)
        .build()
        .unwrap();
    let election = Election::new(&client, "leader").unwrap();
    // Both pooled connections exist before the campaign, so cutting them
    // all leaves only connections made afterwards, the leader's included.
    let _ = client.status("leader").unwrap();
    proxy.cut();
    let leader = election.campaign(PATIENCE).unwrap();
    for _ in 0..5 {
        // Each finds its pooled connection dead and reconnects.
        assert!(client.status("leader").unwrap().is_some());
    }
    thread::sleep(TTL * 3); // several renewals
    assert!(!leader.is_lost(), "{:?}", leader.lost());
    let token = leader.token();
    assert_eq!(client.status("leader").unwrap().unwrap().token, token);
    leader.resign().unwrap();
    assert_eq!(election.leader().unwrap(), None);
}

#[test]
fn leader_election_example_campaigns_leads_and_stops() {
    let server = start();
    let a = candidate(server.local_addr(), TTL);
    let b = candidate(server.local_addr(), TTL);
    let stop = AtomicBool::new(false);

    let leader_a = leader_election::campaign(&a, &stop)
        .unwrap()
        .expect("elected");
    // A leads for several TTLs and works under its own token every tick.
    let mut tokens = Vec::new();
    let ending = leader_election::lead(&leader_a, TTL * 4, &stop, |t| tokens.push(t));
    assert!(
        matches!(ending, leader_election::Ending::TimeUp),
        "{ending:?}"
    );
    assert!(!tokens.is_empty() && tokens.iter().all(|&t| t == leader_a.token()));

    // A stop request ends a campaign and a term alike.
    let stopped = AtomicBool::new(true);
    assert!(leader_election::campaign(&b, &stopped).unwrap().is_none());
    let ending = leader_election::lead(&leader_a, PATIENCE, &stopped, |_| {});
    assert!(
        matches!(ending, leader_election::Ending::Stopped),
        "{ending:?}"
    );

    // Losing the lease ends the term with the loss.
    let operator = Client::new(server.local_addr()).unwrap();
    operator.release_lease(leader_a.lease()).unwrap();
    let ending = leader_election::lead(&leader_a, PATIENCE * 2, &stop, |_| {});
    assert!(
        matches!(
            ending,
            leader_election::Ending::Lost(Lost::NotHeld(NotHeldReason::Free))
        ),
        "{ending:?}"
    );

    // B, campaigning the example's way, leads next with a larger token.
    let leader_b = leader_election::campaign(&b, &stop)
        .unwrap()
        .expect("elected");
    assert!(leader_b.token() > leader_a.token());
}

/// An election's own TTL: the leader holds (and renews) the lock at it,
/// not at the client's, and the hold is a SESSION hold all the same.
#[test]
fn an_election_takes_its_own_ttl() {
    let server = start();
    let client = Client::builder(server.local_addr())
        .ttl(Duration::from_secs(30))
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let options = LockOptions::new().ttl(TTL).session(false);
    let election = Election::with_options(&client, "leader", options).unwrap();
    let leadership = election.campaign(PATIENCE).unwrap();
    assert_eq!(leadership.lease().ttl(), TTL);
    thread::sleep(TTL * 2); // several renewals
    let term = election.leader().unwrap().expect("a leader");
    assert_eq!(term.token, leadership.token());
    assert!(term.remaining <= TTL, "{:?}", term.remaining);
    assert!(term.session, "an election's hold is a SESSION hold");
    leadership.resign().unwrap();
}

/// An election refuses an owner in its options: every campaign would hold
/// the lock as that one owner, and a second candidate would re-enter the
/// first one's hold, so two would lead. A zero TTL is refused at once too,
/// not at the first campaign.
#[test]
fn an_election_refuses_a_shared_owner_and_a_zero_ttl() {
    let server = start();
    let client = Client::builder(server.local_addr())
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let owned = LockOptions::new().owner("node");
    match Election::with_options(&client, "leader", owned) {
        Err(Error::InvalidArgument { what }) => {
            assert!(what.contains("\"node\""), "{what}");
            assert!(
                what.contains("an election's candidates need owners of their own"),
                "{what}"
            );
            assert!(what.contains("drop LockOptions::owner"), "{what}");
        }
        other => panic!("an owner was taken: {other:?}"),
    }
    let instant = LockOptions::new().ttl(Duration::ZERO);
    match Election::with_options(&client, "leader", instant) {
        Err(Error::InvalidArgument { what }) => assert!(what.contains("ttl 0"), "{what}"),
        other => panic!("a zero TTL was taken: {other:?}"),
    }
    assert_eq!(client.status("leader").unwrap(), None, "nothing was sent");
    // Without them, two candidates of one election still exclude each other.
    let election = Election::with_options(&client, "leader", LockOptions::new()).unwrap();
    let first = election.campaign(PATIENCE).unwrap();
    match election.clone().campaign(Duration::from_millis(100)) {
        Err(Error::AcquireTimeout { .. }) => {}
        other => panic!("a second candidate led: {other:?}"),
    }
    first.resign().unwrap();
}
