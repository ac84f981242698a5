use super::Duration;
use super::accept::open_file_soft_limit;
use super::connection::Phase;
use super::timeouts::poll_sleep;
use crate::limits::Limits;
use crate::protocol::Acquire;
use crate::table::{EventKind, LockTable};

/// The server's clock reading at `elapsed` (see `Server::tick_at`).
fn reading_ms(elapsed: Duration) -> u64 {
    elapsed.as_millis() as u64
}

/// Instants from `from` to `to`, in steps that fall on every offset
/// within a millisecond.
fn instants(from: Duration, to: Duration) -> impl Iterator<Item = Duration> {
    let step = Duration::from_nanos(7_919);
    std::iter::successors(Some(from), move |&t| Some(t + step)).take_while(move |&t| t <= to)
}

#[test]
fn poll_wakes_at_a_deadline_never_before_and_less_than_1_ms_after() {
    for deadline_ms in [0, 1, 2, 7, 1_000] {
        let deadline = Duration::from_millis(deadline_ms);
        let late = deadline + Duration::from_millis(2);
        for elapsed in instants(deadline.saturating_sub(Duration::from_millis(3)), late) {
            let sleep = poll_sleep(deadline_ms, elapsed);
            assert_eq!(sleep.subsec_nanos() % 1_000_000, 0, "whole ms: {sleep:?}");
            let wake = elapsed + sleep;
            if elapsed >= deadline {
                assert_eq!(sleep, Duration::ZERO, "due at {elapsed:?}");
                continue;
            }
            assert!(wake >= deadline, "{deadline_ms}: woke at {wake:?}");
            assert!(wake < deadline + Duration::from_millis(1), "{wake:?}");
            assert!(reading_ms(wake) >= deadline_ms, "fires on waking");
        }
    }
    let far = u32::MAX as u64 * 2;
    assert_eq!(poll_sleep(far, Duration::ZERO), Duration::from_millis(far));
}

/// Where the last poll before a deadline may start: anywhere from
/// `from` to just before the deadline.
fn polls_before(from: Duration, deadline_ms: u64) -> [Duration; 3] {
    let deadline = Duration::from_millis(deadline_ms);
    [
        from,
        (from + deadline) / 2,
        deadline - Duration::from_nanos(1),
    ]
}

/// The documented precision (docs/PROTOCOL.md, "Timing"): a hold ends,
/// and its lock passes to the head waiter, more than TTL and less than
/// TTL + 2 ms after the grant in real time (plus scheduling delay),
/// wherever the grant and the last poll before the end fall within
/// their milliseconds.
#[test]
fn holds_end_between_ttl_and_ttl_plus_2_ms_after_the_grant() {
    const MS: Duration = Duration::from_millis(1);
    for ttl_ms in [1u32, 2, 3, 250] {
        let ttl = Duration::from_millis(ttl_ms as u64);
        for granted in instants(Duration::ZERO, 3 * MS) {
            let mut table = LockTable::new(Limits::default(), 1, 0);
            let (holder, waiter) = (table.open_session(1), table.open_session(2));
            let acquire = |owner, wait_ms| Acquire {
                name: b"job",
                owner,
                ttl_ms,
                wait_ms,
                flags: 0,
            };
            let at = reading_ms(granted);
            let _ = table.acquire(holder, &acquire(b"a", 0), at);
            let _ = table.acquire(waiter, &acquire(b"b", 60_000), at);
            let deadline_ms = table.next_deadline().unwrap();
            for polled in polls_before(granted, deadline_ms) {
                let woke = polled + poll_sleep(deadline_ms, polled);
                let after = woke - granted;
                assert!(
                    after > ttl && after < ttl + 2 * MS,
                    "ttl {ttl_ms}: {after:?}"
                );
            }
            table.advance(deadline_ms - 1);
            assert!(table.events().is_empty(), "ended before its deadline");
            // Any wake-up for the deadline reads it (see the test above).
            table.advance(deadline_ms);
            assert!(
                matches!(table.events(), [e] if matches!(e.kind, EventKind::Granted { .. })),
                "{:?}",
                table.events()
            );
        }
    }
}

/// A queued ACQUIRE is answered TIMEOUT when the server's clock reads
/// its arrival + wait_ms + the rounding millisecond: in real time never
/// before wait_ms after it arrived (a wait is never cut short), and less
/// than 2 ms after that, as a hold's end (the test above).
#[test]
fn waits_time_out_never_early_and_within_2_ms_of_wait_ms() {
    const MS: Duration = Duration::from_millis(1);
    for wait_ms in [1u32, 2, 250] {
        let wait = Duration::from_millis(wait_ms as u64);
        for arrived in instants(Duration::ZERO, 3 * MS) {
            let mut table = LockTable::new(Limits::default(), 1, 0);
            let (holder, waiter) = (table.open_session(1), table.open_session(2));
            let acquire = |owner, ttl_ms, wait_ms| Acquire {
                name: b"job",
                owner,
                ttl_ms,
                wait_ms,
                flags: 0,
            };
            let at = reading_ms(arrived);
            let _ = table.acquire(holder, &acquire(b"a", 60_000, 0), 0);
            let _ = table.acquire(waiter, &acquire(b"b", 1, wait_ms), at);
            let deadline_ms = table.next_deadline().unwrap();
            for polled in polls_before(arrived, deadline_ms) {
                let woke = polled + poll_sleep(deadline_ms, polled);
                let after = woke - arrived;
                assert!(
                    after > wait && after < wait + 2 * MS,
                    "wait {wait_ms}: {after:?}"
                );
            }
            table.advance(deadline_ms);
            assert!(
                matches!(table.events(), [e] if e.kind == EventKind::TimedOut { waited_ms: wait_ms }),
                "{:?}",
                table.events()
            );
        }
    }
}

/// Drives `server` a turn at a time (woken, so no turn sleeps) until
/// `done` holds; at most 10 s.
fn turn_until(server: &mut super::Server, mut done: impl FnMut(&super::Server) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done(server) {
        assert!(std::time::Instant::now() < deadline, "not reached in 10 s");
        server.waker.wake().unwrap();
        server.turn().unwrap();
        assert_eq!(server.invariants(), Ok(()));
    }
}

fn send(stream: &mut std::net::TcpStream, request: crate::protocol::Request<'_>) {
    use std::io::Write;
    let mut frame = [0u8; 128];
    let n = request.encode(&mut frame);
    stream.write_all(&frame[..n]).unwrap();
}

/// The first byte of the next reply on `stream` (non-blocking), after
/// serving turns until one whole reply is there.
fn reply_kind(server: &mut super::Server, stream: &mut std::net::TcpStream) -> u8 {
    use std::io::Read;
    let mut reply = Vec::new();
    turn_until(server, |_| {
        let mut buf = [0u8; 64];
        while let Ok(n) = stream.read(&mut buf) {
            reply.extend_from_slice(&buf[..n]);
            if n == 0 {
                break;
            }
        }
        matches!(crate::protocol::decode_reply(&reply), Ok(Some(_)))
    });
    reply[0]
}

fn lent(server: &super::Server) -> (usize, usize) {
    (server.input_pool.lent(), server.output_pool.lent())
}

/// Buffers are lent while bytes are in flight only: not to a connection
/// served and drained, nor to one whose ACQUIRE waits in a queue; a
/// partial frame keeps its input buffer until the frame is whole.
#[test]
fn only_connections_with_bytes_in_flight_hold_buffers() {
    use crate::protocol::{FLAG_SESSION, Request, kind};
    let config = super::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..super::Config::default()
    };
    let mut server = super::Server::bind(config).unwrap();
    let connect = || {
        let s = std::net::TcpStream::connect(server.local_addr()).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    };
    let (mut holder, mut waiter) = (connect(), connect());
    let acquire = |owner, wait_ms, flags| {
        Request::Acquire(Acquire {
            name: b"job",
            owner,
            ttl_ms: 60_000,
            wait_ms,
            flags,
        })
    };
    send(&mut holder, acquire(b"holder", 0, FLAG_SESSION));
    assert_eq!(reply_kind(&mut server, &mut holder), kind::GRANTED);
    assert_eq!(lent(&server), (0, 0), "served and drained");
    send(&mut waiter, acquire(b"waiter", 60_000, 0));
    turn_until(&mut server, |s| {
        s.conns.iter().any(|(_, c)| c.phase == Phase::Waiting)
    });
    assert_eq!(lent(&server), (0, 0), "a queued ACQUIRE holds no buffer");
    assert_eq!(server.conns.len(), 2);

    // Half a PING's header: the input buffer stays lent, the output not.
    let mut ping = [0u8; 16];
    let n = Request::Ping.encode(&mut ping);
    std::io::Write::write_all(&mut holder, &ping[..1]).unwrap();
    turn_until(&mut server, |s| s.input_pool.lent() == 1);
    assert_eq!(lent(&server), (1, 0));
    std::io::Write::write_all(&mut holder, &ping[1..n]).unwrap();
    assert_eq!(reply_kind(&mut server, &mut holder), kind::PONG);
    assert_eq!(lent(&server), (0, 0));

    // The holder goes: the lock passes to the waiter, whose answer is
    // lent an output buffer until written.
    drop(holder);
    assert_eq!(reply_kind(&mut server, &mut waiter), kind::GRANTED);
    turn_until(&mut server, |s| s.conns.len() == 1);
    assert_eq!(lent(&server), (0, 0));
    assert!(server.output_pool.allocated() >= 1);
    server.input_pool.invariants();
    server.output_pool.invariants();
}

#[test]
fn reads_the_soft_open_file_limit() {
    let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                Max processes             95340                95340                processes \n\
                Max open files            1024                 524288               files     \n";
    assert_eq!(open_file_soft_limit(text), Some(1024));
    let unlimited = "Max open files            unlimited            unlimited            files\n";
    assert_eq!(open_file_soft_limit(unlimited), Some(usize::MAX));
    assert_eq!(open_file_soft_limit("nothing here"), None);
}

/// What the invariants check about the rest of the server, broken one at a
/// time on a real connection, as a bug would.
#[test]
fn invariants_catch_a_connection_at_odds_with_the_server() {
    let config = super::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits: Limits {
            idle_timeout_ms: 60_000,
            ..Limits::default()
        },
        ..super::Config::default()
    };
    let mut server = super::Server::bind(config).unwrap();
    let _client = std::net::TcpStream::connect(server.local_addr()).unwrap();
    turn_until(&mut server, |s| s.conns.len() == 1);
    let key = server.conns.iter().next().unwrap().0;
    assert_eq!(server.invariants(), Ok(()));

    let conn = &mut server.conns[key];
    conn.phase = Phase::Waiting;
    assert_eq!(
        server.invariants(),
        Err("waiting without an ACQUIRE queued in the table, or not waiting with one")
    );
    server.conns[key].phase = Phase::Serving;

    server.conns[key].in_ready = true;
    assert_eq!(server.invariants(), Err("flagged ready but not on `ready`"));
    server.conns[key].in_ready = false;

    server.conns[key].in_writes = true;
    assert_eq!(
        server.invariants(),
        Err("flagged for writing but not on `writes`, or the reverse")
    );
    server.conns[key].in_writes = false;

    server.conns[key].phase = Phase::Closing;
    assert_eq!(
        server.invariants(),
        Err("closing but not on `closing`, or the reverse")
    );
    server.conns[key].phase = Phase::Serving;

    // The idle timeout applies: its deadline is armed. Lost from the
    // wheel, or never armed, the connection would never be timed out.
    let (handle, _) = server.conns[key].deadline.expect("idle deadline armed");
    server.deadlines.cancel(handle);
    assert_eq!(
        server.invariants(),
        Err("its deadline is not in the timer wheel")
    );
    server.conns[key].deadline = None;
    assert_eq!(
        server.invariants(),
        Err("a timeout applies but no deadline is armed")
    );
    server.arm_deadline(key, server.clock_ms);
    assert_eq!(server.invariants(), Ok(()));
}

/// Every source's token decodes to it: lock-protocol and HTTP keys, from
/// the first to the last a slab can hold, never meet each other or the
/// fixed tokens.
#[test]
fn a_token_names_the_source_it_was_made_for() {
    use super::{SLAB_KEY_END, Source};
    let keys = [
        0,
        1,
        crate::http::HTTP_CONNECTIONS_MAX,
        crate::limits::CONNECTIONS_MAX_DEFAULT,
        SLAB_KEY_END - 1,
    ];
    let fixed = [
        Source::Listener,
        Source::HttpListener,
        Source::Waker,
        Source::Signals,
    ];
    let all = fixed.into_iter().chain(
        keys.into_iter()
            .flat_map(|key| [Source::Lock(key), Source::Http(key)]),
    );
    for source in all {
        assert_eq!(Source::of(source.token()), source, "{:?}", source.token());
    }
}

/// Connections that idle out together are closed a bounded number per
/// turn, so that their timeouts (each may cost syscalls) cannot stall
/// the other clients for one long turn; the rest go on the next turns.
#[test]
fn connection_timeouts_fire_a_bounded_number_per_turn() {
    use crate::limits::CONN_TIMEOUTS_PER_TURN_MAX;
    let config = super::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits: Limits {
            idle_timeout_ms: 1_000,
            ..Limits::default()
        },
        ..super::Config::default()
    };
    let mut server = super::Server::bind(config).unwrap();
    let count = CONN_TIMEOUTS_PER_TURN_MAX + 10;
    let clients: Vec<_> = (0..count)
        .map(|_| std::net::TcpStream::connect(server.local_addr()).unwrap())
        .collect();
    turn_until(&mut server, |s| s.conns.len() == count);
    std::thread::sleep(Duration::from_millis(1_200)); // all idle past 1 s
    server.waker.wake().unwrap();
    server.turn().unwrap();
    let left = server.conns.len();
    assert!(
        (count - CONN_TIMEOUTS_PER_TURN_MAX..count).contains(&left),
        "{left} of {count} connections left after one turn"
    );
    turn_until(&mut server, |s| s.conns.is_empty());
    drop(clients);
}

/// More connections than one turn accepts, all queued at once, are all
/// accepted in the next turns: the listener is edge-triggered, so no new
/// event comes for those already queued (they waited for the next
/// connect to arrive, however long that took).
#[test]
fn more_connections_than_one_turn_accepts_are_all_accepted() {
    use super::accept::ACCEPTS_PER_TURN_MAX;
    let config = super::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..super::Config::default()
    };
    let mut server = super::Server::bind(config).unwrap();
    let count = ACCEPTS_PER_TURN_MAX + 10;
    let clients: Vec<_> = (0..count)
        .map(|_| std::net::TcpStream::connect(server.local_addr()).unwrap())
        .collect();
    turn_until(&mut server, |s| s.conns.len() == count);
    drop(clients);
}
