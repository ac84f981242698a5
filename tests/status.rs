//! STATUS: one lock's state, and every held lock page by page, without
//! ever showing an owner.

#![cfg(feature = "server")]

use std::collections::HashSet;
use std::time::Duration;

use distlockd::client::Client;
use distlockd::server::{Config, Server, ServerHandle};

fn start() -> ServerHandle {
    Server::spawn(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    })
    .unwrap()
}

#[test]
fn status_of_one_lock() {
    let server = start();
    let addr = server.local_addr();
    let client = Client::builder(addr)
        .ttl(Duration::from_secs(30))
        .build()
        .unwrap();
    assert_eq!(client.status("job").unwrap(), None);
    let lease = client.try_acquire("job").unwrap().expect("free");
    let status = client.status("job").unwrap().expect("held");
    assert_eq!(status.name, "job");
    assert_eq!(status.token, lease.token());
    assert!(status.remaining <= Duration::from_secs(30));
    assert!(status.remaining > Duration::from_secs(25), "{status:?}");
    assert_eq!(status.waiters, 0);
    assert!(!status.session);

    // A waiter is counted; a SESSION hold is flagged.
    let waiter = std::thread::spawn(move || {
        let other = Client::new(addr).unwrap();
        other
            .acquire("job", Duration::from_secs(5))
            .map(|l| l.token())
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while client.status("job").unwrap().unwrap().waiters != 1 {
        assert!(std::time::Instant::now() < deadline, "waiter never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    client.release_lease(&lease).unwrap();
    let next = waiter.join().unwrap().unwrap();
    assert_eq!(client.status("job").unwrap().unwrap().token, next);
    let session = Client::builder(addr).session(true).build().unwrap();
    session.try_acquire("s").unwrap().expect("free");
    assert!(session.status("s").unwrap().unwrap().session);
}

#[test]
fn listing_spans_pages_without_repeats() {
    let server = start();
    let client = Client::new(server.local_addr()).unwrap();
    // Long names: three entries per reply frame, so 100 locks take pages.
    let names: Vec<String> = (0..100).map(|i| format!("{i:0>250}")).collect();
    for name in &names {
        client.try_acquire(name).unwrap().expect("free");
    }
    let list = client.list_locks(1000).unwrap();
    assert_eq!(list.total, 100);
    assert!(!list.truncated);
    let seen: HashSet<&str> = list.locks.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(seen.len(), 100, "repeats or misses");
    assert!(names.iter().all(|n| seen.contains(n.as_str())));
    let tokens: HashSet<u64> = list.locks.iter().map(|l| l.token).collect();
    assert_eq!(tokens.len(), 100);

    let some = client.list_locks(7).unwrap();
    assert_eq!(some.locks.len(), 7);
    assert!(some.truncated);
    assert_eq!(some.total, 100);
}

#[test]
fn a_released_lock_leaves_the_listing() {
    let server = start();
    let client = Client::new(server.local_addr()).unwrap();
    let a = client.try_acquire("a").unwrap().unwrap();
    client.try_acquire("b").unwrap().unwrap();
    client.release_lease(&a).unwrap();
    let list = client.list_locks(10).unwrap();
    let names: Vec<&str> = list.locks.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["b"]);
    assert_eq!(list.total, 1);
}
