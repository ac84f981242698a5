use super::*;
use pending::PENDING_EXPIRIES_MAX;
use status::STATUS_PAGE_SLOTS_MAX;

const SEED: u64 = 1_000;

fn table() -> LockTable {
    LockTable::new(Limits::default(), SEED, 0)
}

fn acq<'a>(name: &'a [u8], owner: &'a [u8], ttl_ms: u32, wait_ms: u32) -> Acquire<'a> {
    Acquire {
        name,
        owner,
        ttl_ms,
        wait_ms,
        flags: 0,
    }
}

fn session_acq<'a>(name: &'a [u8], owner: &'a [u8], ttl_ms: u32) -> Acquire<'a> {
    Acquire {
        name,
        owner,
        ttl_ms,
        wait_ms: 0,
        flags: FLAG_SESSION,
    }
}

fn granted_token(outcome: Outcome) -> u64 {
    match outcome {
        Outcome::Granted { token, .. } => token,
        other => panic!("expected Granted, got {other:?}"),
    }
}

fn take_events(t: &mut LockTable) -> Vec<Event> {
    let events = t.events().to_vec();
    t.clear_events();
    t.invariants();
    events
}

#[test]
fn free_lock_is_granted_with_a_new_token_and_ttl() {
    let mut t = table();
    let s = t.open_session(1);
    assert_eq!(
        t.acquire(s, &acq(b"job", b"a", 500, 0), 10),
        Outcome::Granted {
            token: SEED,
            ttl_ms: 500,
            reentered: false
        }
    );
    assert_eq!(t.len(), 1);
    // Expiry: now + ttl + the rounding millisecond (see EXPIRY_ROUNDING_MS).
    assert_eq!(t.next_deadline(), Some(511));
    t.invariants();
}

#[test]
fn zero_ttl_means_the_default() {
    let mut t = table();
    let s = t.open_session(1);
    assert_eq!(
        t.acquire(s, &acq(b"job", b"a", 0, 0), 0),
        Outcome::Granted {
            token: SEED,
            ttl_ms: LOCK_TTL_DEFAULT,
            reentered: false
        }
    );
    assert_eq!(t.next_deadline(), Some(LOCK_TTL_DEFAULT as u64 + 1));
}

const LOCK_TTL_DEFAULT: u32 = crate::limits::LOCK_TTL_MS_DEFAULT;

#[test]
fn same_owner_reacquire_keeps_token_and_resets_ttl() {
    let mut t = table();
    let s = t.open_session(1);
    let token = granted_token(t.acquire(s, &acq(b"job", b"a", 100, 0), 0));
    assert_eq!(
        t.acquire(s, &acq(b"job", b"a", 300, 0), 90),
        Outcome::Granted {
            token,
            ttl_ms: 300,
            reentered: true
        }
    );
    t.advance(150);
    assert_eq!(t.len(), 1, "the reset TTL keeps it past the first expiry");
    t.advance(390);
    assert_eq!(t.len(), 1, "a full 300 ms after the re-acquire at 90");
    t.advance(391);
    assert_eq!(t.len(), 0);
    t.invariants();
}

#[test]
fn other_owner_without_wait_is_busy_with_time_left() {
    let mut t = table();
    let s = t.open_session(1);
    granted_token(t.acquire(s, &acq(b"job", b"a", 1000, 0), 0));
    assert_eq!(
        t.acquire(s, &acq(b"job", b"b", 1000, 0), 250),
        Outcome::Busy {
            remaining_ms: 750,
            waiters: 0
        }
    );
}

#[test]
fn names_are_independent() {
    let mut t = table();
    let s = t.open_session(1);
    let t1 = granted_token(t.acquire(s, &acq(b"x", b"a", 100, 0), 0));
    let t2 = granted_token(t.acquire(s, &acq(b"y", b"b", 100, 0), 0));
    assert!(t2 > t1);
    assert_eq!(t.len(), 2);
}

#[test]
fn waiters_are_granted_in_fifo_order_on_release() {
    let mut t = table();
    let holder = t.open_session(0);
    let s: Vec<SessionId> = (1..=3).map(|tag| t.open_session(tag)).collect();
    let mut token = granted_token(t.acquire(holder, &acq(b"job", b"h", 1000, 0), 0));
    for (i, &id) in s.iter().enumerate() {
        let owner = [b'0' + i as u8];
        assert_eq!(
            t.acquire(id, &acq(b"job", &owner, 1000, 5000), i as u64),
            Outcome::Queued
        );
        assert!(t.is_waiting(id));
    }
    let mut owner = *b"h";
    for (i, &id) in s.iter().enumerate() {
        assert_eq!(
            t.release(b"job", &owner, token, 10 + i as u64),
            Outcome::Released
        );
        let events = take_events(&mut t);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].session, id);
        assert_eq!(events[0].tag, i as u64 + 1);
        let EventKind::Granted {
            token: new_token,
            ttl_ms,
        } = events[0].kind
        else {
            panic!("expected a grant, got {:?}", events[0]);
        };
        assert!(new_token > token);
        assert_eq!(ttl_ms, 1000);
        token = new_token;
        owner = [b'0' + i as u8];
        assert!(!t.is_waiting(id));
    }
    assert_eq!(t.release(b"job", &owner, token, 20), Outcome::Released);
    assert!(t.is_empty());
    t.invariants();
}

#[test]
fn a_new_acquirer_never_jumps_the_queue() {
    let mut t = table();
    let (a, b, c) = (t.open_session(1), t.open_session(2), t.open_session(3));
    let token = granted_token(t.acquire(a, &acq(b"job", b"a", 1000, 0), 0));
    assert_eq!(
        t.acquire(b, &acq(b"job", b"b", 1000, 5000), 1),
        Outcome::Queued
    );
    assert_eq!(t.release(b"job", b"a", token, 2), Outcome::Released);
    // The lock went straight to b: c sees it busy, with b as holder.
    assert!(matches!(
        t.acquire(c, &acq(b"job", b"c", 1000, 0), 2),
        Outcome::Busy { .. }
    ));
    assert_eq!(
        t.acquire(c, &acq(b"job", b"c", 1000, 100), 2),
        Outcome::Queued
    );
    let events = take_events(&mut t);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].session, b);
}

fn forever_acq<'a>(name: &'a [u8], owner: &'a [u8], ttl_ms: u32) -> Acquire<'a> {
    Acquire {
        flags: FLAG_WAIT_FOREVER,
        ..acq(name, owner, ttl_ms, 0)
    }
}

#[test]
fn a_wait_forever_waiter_keeps_its_place_and_never_times_out() {
    let mut t = table();
    let (a, b, c) = (t.open_session(1), t.open_session(2), t.open_session(3));
    let token = granted_token(t.acquire(a, &acq(b"job", b"a", 1000, 0), 0));
    assert_eq!(
        t.acquire(b, &forever_acq(b"job", b"b", 500), 1),
        Outcome::Queued
    );
    assert_eq!(
        t.acquire(c, &acq(b"job", b"c", 500, 100), 2),
        Outcome::Queued
    );
    // c's deadline passes; b, with none, stays first in line.
    t.advance(200);
    let events = take_events(&mut t);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].session, c);
    assert_eq!(events[0].kind, EventKind::TimedOut { waited_ms: 100 });
    // Far later (the holder keeps extending), b still waits.
    let mut now = 200;
    for _ in 0..100 {
        now += 500;
        assert!(matches!(
            t.extend(b"job", b"a", token, 1000, now),
            Outcome::Extended { .. }
        ));
        t.advance(now);
        assert!(take_events(&mut t).is_empty());
    }
    assert!(t.is_waiting(b));
    assert_eq!(t.release(b"job", b"a", token, now), Outcome::Released);
    let events = take_events(&mut t);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].session, b);
    assert!(matches!(
        events[0].kind,
        EventKind::Granted { ttl_ms: 500, .. }
    ));
    t.invariants();
}

#[test]
fn a_wait_forever_waiter_survives_a_wheel_lap_and_leaves_on_close() {
    let mut t = table();
    let (a, b) = (t.open_session(1), t.open_session(2));
    let ttl_max = Limits::default().lock_ttl_ms_max;
    let mut token = granted_token(t.acquire(a, &acq(b"job", b"a", ttl_max, 0), 0));
    assert_eq!(
        t.acquire(b, &forever_acq(b"job", b"b", 500), 0),
        Outcome::Queued
    );
    // Past the wheel's horizon (2^36 ms), where far deadlines are parked
    // and cascaded again; the holder re-takes the lock every TTL.
    let mut now = 0u64;
    while now < crate::wheel::WHEEL_HORIZON_MS + (1 << 30) {
        now += ttl_max as u64;
        token = granted_token(t.acquire(a, &acq(b"job", b"a", ttl_max, 0), now));
        t.advance(now);
        assert!(take_events(&mut t).is_empty(), "at {now} ms");
    }
    assert!(t.is_waiting(b));
    t.invariants();
    t.close_session(b, now);
    assert_eq!(t.release(b"job", b"a", token, now), Outcome::Released);
    assert!(take_events(&mut t).is_empty());
    assert!(t.is_empty());
    t.invariants();
}

#[test]
fn wait_forever_is_refused_with_a_wait_ms_or_a_bounded_server() {
    let mut t = table();
    let s = t.open_session(1);
    let both = Acquire {
        wait_ms: 5,
        ..forever_acq(b"job", b"a", 100)
    };
    assert_eq!(
        t.acquire(s, &both, 0),
        Outcome::Rejected(ArgError::WaitForeverWithWaitMs { wait_ms: 5 })
    );
    let limits = Limits {
        wait_ms_max: 3_600_000,
        ..Limits::default()
    };
    let mut bounded = LockTable::new(limits, SEED, 0);
    let s = bounded.open_session(1);
    let refused = bounded.acquire(s, &forever_acq(b"job", b"a", 100), 0);
    assert_eq!(
        refused,
        Outcome::Rejected(ArgError::WaitForeverBounded { max: 3_600_000 })
    );
    let Outcome::Rejected(e) = refused else {
        unreachable!()
    };
    assert!(e.to_string().contains("--wait-max-ms"), "{e}");
    assert!(bounded.is_empty());
}

#[test]
fn waiter_times_out_at_its_deadline_and_not_before() {
    let mut t = table();
    let (a, b) = (t.open_session(1), t.open_session(2));
    granted_token(t.acquire(a, &acq(b"job", b"a", 10_000, 0), 0));
    assert_eq!(
        t.acquire(b, &acq(b"job", b"b", 1000, 300), 100),
        Outcome::Queued
    );
    // The wait began during millisecond 100, maybe at 100.9: at 400 only
    // 299.1 ms may have passed, so the deadline is 401 (the rounding
    // millisecond), as for a hold's expiry.
    assert_eq!(t.next_deadline(), Some(401));
    t.advance(400);
    assert!(take_events(&mut t).is_empty());
    t.advance(401);
    let events = take_events(&mut t);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::TimedOut { waited_ms: 300 });
    assert!(!t.is_waiting(b));
    assert_eq!(t.len(), 1, "the holder keeps the lock");
    assert_eq!(t.stats().wait_timeouts, 1);
}

#[test]
fn expiry_frees_at_ttl_and_not_before() {
    let mut t = table();
    let s = t.open_session(1);
    let token = granted_token(t.acquire(s, &acq(b"job", b"a", 1000, 0), 5));
    // Granted during millisecond 5, maybe at 5.9: held through 1005 so
    // that it never ends before its full TTL.
    t.advance(1005);
    assert_eq!(t.len(), 1);
    t.advance(1006);
    assert_eq!(t.len(), 0);
    assert_eq!(t.stats().expiries, 1);
    assert_eq!(
        t.release(b"job", b"a", token, 1007),
        Outcome::NotHeld(NotHeldReason::Free)
    );
}

#[test]
fn expiry_hands_the_lock_to_the_head_waiter() {
    let mut t = table();
    let (a, b) = (t.open_session(1), t.open_session(2));
    let token = granted_token(t.acquire(a, &acq(b"job", b"a", 100, 0), 0));
    assert_eq!(
        t.acquire(b, &acq(b"job", b"b", 500, 1000), 10),
        Outcome::Queued
    );
    t.advance(100);
    assert!(take_events(&mut t).is_empty(), "not before the full TTL");
    t.advance(101);
    let events = take_events(&mut t);
    assert_eq!(
        events,
        vec![Event {
            session: b,
            tag: 2,
            kind: EventKind::Granted {
                token: token + 1,
                ttl_ms: 500
            }
        }]
    );
    assert_eq!(t.next_deadline(), Some(602));
}

#[test]
fn a_late_advance_still_grants_a_waiter_whose_deadline_came_after_the_expiry() {
    let mut t = table();
    let (a, b) = (t.open_session(1), t.open_session(2));
    granted_token(t.acquire(a, &acq(b"job", b"a", 100, 0), 0));
    assert_eq!(
        t.acquire(b, &acq(b"job", b"b", 500, 150), 0),
        Outcome::Queued
    );
    // The loop was late: both the expiry (100) and the deadline (150) passed.
    t.advance(200);
    let events = take_events(&mut t);
    assert_eq!(events.len(), 1);
    assert!(
        matches!(events[0].kind, EventKind::Granted { .. }),
        "{events:?}"
    );
    // The new hold's TTL counts from when the grant is made.
    assert_eq!(t.next_deadline(), Some(701));
}

#[test]
fn a_waiter_whose_deadline_equals_the_expiry_times_out() {
    let mut t = table();
    let (a, b) = (t.open_session(1), t.open_session(2));
    granted_token(t.acquire(a, &acq(b"job", b"a", 100, 0), 0));
    // The hold expires at 101 and the wait's deadline is 101 too (100 ms
    // each, plus the rounding millisecond).
    assert_eq!(
        t.acquire(b, &acq(b"job", b"b", 500, 100), 0),
        Outcome::Queued
    );
    t.advance(101);
    let events = take_events(&mut t);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::TimedOut { waited_ms: 100 });
    assert!(t.is_empty());
}

#[test]
fn release_reasons() {
    let mut t = table();
    let s = t.open_session(1);
    assert_eq!(
        t.release(b"job", b"a", 1, 0),
        Outcome::NotHeld(NotHeldReason::Free)
    );
    let token = granted_token(t.acquire(s, &acq(b"job", b"a", 100, 0), 0));
    assert_eq!(
        t.release(b"job", b"b", token, 1),
        Outcome::NotHeld(NotHeldReason::OtherOwner)
    );
    assert_eq!(
        t.release(b"job", b"a", token + 1, 1),
        Outcome::NotHeld(NotHeldReason::TokenMismatch)
    );
    assert_eq!(t.release(b"job", b"a", token, 1), Outcome::Released);
    assert_eq!(
        t.release(b"job", b"a", token, 1),
        Outcome::NotHeld(NotHeldReason::Free)
    );
    t.invariants();
}

#[test]
fn extend_resets_the_ttl_only_for_the_holder() {
    let mut t = table();
    let s = t.open_session(1);
    let token = granted_token(t.acquire(s, &acq(b"job", b"a", 100, 0), 0));
    assert_eq!(
        t.extend(b"job", b"a", token, 1000, 50),
        Outcome::Extended { ttl_ms: 1000 }
    );
    assert_eq!(
        t.extend(b"job", b"b", token, 1000, 50),
        Outcome::NotHeld(NotHeldReason::OtherOwner)
    );
    assert_eq!(
        t.extend(b"job", b"a", token - 1, 1000, 50),
        Outcome::NotHeld(NotHeldReason::TokenMismatch)
    );
    t.advance(1050);
    assert_eq!(t.len(), 1);
    t.advance(1051);
    assert_eq!(t.len(), 0);
    assert_eq!(
        t.extend(b"job", b"a", token, 1000, 2000),
        Outcome::NotHeld(NotHeldReason::Free)
    );
    assert_eq!(
        t.extend(b"job", b"a", token, 0, 2000),
        Outcome::NotHeld(NotHeldReason::Free)
    );
}

#[test]
fn session_holds_are_released_on_close_and_handed_on() {
    let mut t = table();
    let (a, b) = (t.open_session(1), t.open_session(2));
    granted_token(t.acquire(a, &session_acq(b"x", b"a", 10_000), 0));
    granted_token(t.acquire(a, &session_acq(b"y", b"a", 10_000), 0));
    granted_token(t.acquire(a, &acq(b"plain", b"a", 10_000, 0), 0));
    assert_eq!(
        t.acquire(b, &acq(b"y", b"b", 1000, 5000), 1),
        Outcome::Queued
    );
    t.close_session(a, 2);
    assert!(
        !t.has_deferred_releases(),
        "a few holds are released at the close"
    );
    let events = take_events(&mut t);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].session, b);
    assert_eq!(t.len(), 2, "y now held by b, plain still held, x freed");
    assert!(matches!(
        t.acquire(b, &acq(b"x", b"c", 100, 0), 3),
        Outcome::Granted { .. }
    ));
    assert!(matches!(
        t.acquire(b, &acq(b"plain", b"c", 100, 0), 3),
        Outcome::Busy { .. }
    ));
}

#[test]
fn reacquire_without_session_flag_unbinds_the_session() {
    let mut t = table();
    let (a, b) = (t.open_session(1), t.open_session(2));
    let token = granted_token(t.acquire(a, &session_acq(b"x", b"a", 10_000), 0));
    assert_eq!(
        granted_token(t.acquire(b, &acq(b"x", b"a", 10_000, 0), 1)),
        token
    );
    t.close_session(a, 2);
    assert_eq!(
        t.len(),
        1,
        "the retry moved the hold off the closed session"
    );
    t.invariants();
}

#[test]
fn a_closed_waiter_leaves_the_queue() {
    let mut t = table();
    let (a, b, c) = (t.open_session(1), t.open_session(2), t.open_session(3));
    let token = granted_token(t.acquire(a, &acq(b"job", b"a", 1000, 0), 0));
    assert_eq!(
        t.acquire(b, &acq(b"job", b"b", 1000, 5000), 1),
        Outcome::Queued
    );
    assert_eq!(
        t.acquire(c, &acq(b"job", b"c", 1000, 5000), 2),
        Outcome::Queued
    );
    t.close_session(b, 3);
    assert!(
        take_events(&mut t).is_empty(),
        "a closed session gets no answer"
    );
    assert_eq!(t.waiter_count(), 1);
    assert_eq!(t.release(b"job", b"a", token, 4), Outcome::Released);
    let events = take_events(&mut t);
    assert_eq!(events[0].session, c);
}

#[test]
fn bad_arguments_are_rejected_with_the_field_named() {
    let mut t = LockTable::new(
        Limits {
            lock_ttl_ms_max: 1000,
            wait_ms_max: 50,
            ..Limits::default()
        },
        1,
        0,
    );
    let s = t.open_session(1);
    let long = [b'n'; 256];
    let cases: [(Acquire<'_>, &str); 7] = [
        (acq(b"", b"a", 1, 0), "name is empty"),
        (acq(&long, b"a", 1, 0), "256 bytes, over name_len_max 255"),
        (acq(b"x", b"", 1, 0), "owner is empty"),
        (
            acq(b"x", &long[..65], 1, 0),
            "65 bytes, over owner_len_max 64",
        ),
        (
            acq(b"x", b"a", 1001, 0),
            "ttl_ms 1001 is over lock_ttl_ms_max 1000",
        ),
        (acq(b"x", b"a", 1, 51), "wait_ms 51 is over wait_ms_max 50"),
        (
            Acquire {
                flags: 0x80,
                ..acq(b"x", b"a", 1, 0)
            },
            "flags 0x80",
        ),
    ];
    for (req, text) in cases {
        let Outcome::Rejected(e) = t.acquire(s, &req, 0) else {
            panic!("{req:?} accepted")
        };
        assert!(e.to_string().contains(text), "{e} lacks {text}");
    }
    assert!(t.is_empty());
    assert!(matches!(
        t.extend(b"x", b"a", 1, 1001, 0),
        Outcome::Rejected(ArgError::TtlTooLarge { .. })
    ));
}

#[test]
fn tokens_strictly_increase_over_all_grants() {
    let mut t = table();
    let s = t.open_session(1);
    let mut last = 0;
    for i in 0..100u64 {
        let name = [b'a' + (i % 5) as u8];
        let token = granted_token(t.acquire(s, &acq(&name, b"o", 10, 0), i * 20));
        assert!(token > last);
        last = token;
    }
}

/// The same commands in the same order give the same outcomes, events and
/// tokens: what a replicated log needs.
#[test]
fn identical_command_sequences_give_identical_results() {
    fn run() -> Vec<String> {
        let mut t = table();
        let ids: Vec<SessionId> = (0..4).map(|i| t.open_session(i)).collect();
        let mut log = Vec::new();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut now = 0;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            now += state % 7;
            let sid = ids[(state >> 8) as usize % 4];
            let name = [b'a' + ((state >> 16) % 3) as u8];
            let owner = [b'0' + ((state >> 24) % 4) as u8];
            let out = match (state >> 32) % 4 {
                0 | 1 if !t.is_waiting(sid) => t.acquire(
                    sid,
                    &acq(
                        &name,
                        &owner,
                        (state >> 40) as u32 % 50,
                        (state >> 48) as u32 % 60,
                    ),
                    now,
                ),
                2 => t.release(&name, &owner, t.next_token() - 1 - (state >> 40) % 3, now),
                _ => {
                    t.advance(now);
                    Outcome::Queued
                }
            };
            log.push(format!("{out:?} {:?}", t.events()));
            t.clear_events();
            t.invariants();
        }
        log
    }
    assert_eq!(run(), run());
}

#[test]
fn release_by_owner_ignores_the_token_but_not_the_owner() {
    let mut t = table();
    let (a, b) = (t.open_session(1), t.open_session(2));
    granted_token(t.acquire(a, &acq(b"job", b"a", 1000, 0), 0));
    assert_eq!(
        t.acquire(b, &acq(b"job", b"b", 1000, 5000), 0),
        Outcome::Queued
    );
    assert_eq!(
        t.release_by_owner(b"job", b"b", 1),
        Outcome::NotHeld(NotHeldReason::OtherOwner)
    );
    assert_eq!(t.release_by_owner(b"job", b"a", 1), Outcome::Released);
    assert_eq!(take_events(&mut t).len(), 1, "handed to the waiter");
    assert_eq!(
        t.release_by_owner(b"nothing", b"a", 1),
        Outcome::NotHeld(NotHeldReason::Free)
    );
}

#[test]
fn long_and_short_names_live_side_by_side() {
    let mut t = table();
    let s = t.open_session(1);
    let names: Vec<Vec<u8>> = (0..200usize)
        .map(|i| {
            let len = 1 + (i * 37) % 255;
            (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect()
        })
        .collect();
    let tokens: Vec<u64> = names
        .iter()
        .map(|n| granted_token(t.acquire(s, &acq(n, b"o", 1000, 0), 0)))
        .collect();
    t.invariants();
    for (i, (name, token)) in names.iter().zip(&tokens).enumerate() {
        if i % 2 == 0 {
            assert_eq!(t.release(name, b"o", *token, 1), Outcome::Released);
        }
    }
    t.invariants();
    for (i, name) in names.iter().enumerate() {
        let busy = matches!(
            t.acquire(s, &acq(name, b"other", 1000, 0), 2),
            Outcome::Busy { .. }
        );
        assert_eq!(busy, i % 2 == 1, "name {i} ({} bytes)", name.len());
    }
    t.advance(5000);
    assert!(t.is_empty());
    t.invariants();
}

#[test]
fn locks_max_refuses_new_names_but_not_holders() {
    let mut t = LockTable::new(
        Limits {
            locks_max: 2,
            ..Limits::default()
        },
        1,
        0,
    );
    let s = t.open_session(1);
    let a = granted_token(t.acquire(s, &acq(b"a", b"o", 100, 0), 0));
    granted_token(t.acquire(s, &acq(b"b", b"o", 100, 0), 0));
    let Outcome::Rejected(e) = t.acquire(s, &acq(b"c", b"o", 100, 0), 0) else {
        panic!("a third lock was granted past locks_max 2");
    };
    assert!(e.to_string().contains("locks_max 2"), "{e}");
    // Re-acquiring a held lock and queueing on one do not add locks.
    assert_eq!(granted_token(t.acquire(s, &acq(b"a", b"o", 100, 0), 1)), a);
    let other = t.open_session(2);
    assert_eq!(
        t.acquire(other, &acq(b"a", b"x", 100, 50), 1),
        Outcome::Queued
    );
    assert_eq!(t.release(b"b", b"o", a + 1, 2), Outcome::Released);
    granted_token(t.acquire(s, &acq(b"c", b"o", 100, 0), 2));
    t.invariants();
}

#[test]
fn waiters_per_lock_max_refuses_one_more_waiter_and_changes_nothing() {
    let mut t = LockTable::new(
        Limits {
            waiters_per_lock_max: 2,
            ..Limits::default()
        },
        1,
        0,
    );
    let holder = t.open_session(0);
    granted_token(t.acquire(holder, &acq(b"job", b"h", 1000, 0), 0));
    let waiters: Vec<SessionId> = (1..=3).map(|tag| t.open_session(tag)).collect();
    for (i, &id) in waiters[..2].iter().enumerate() {
        let owner = [b'0' + i as u8];
        assert_eq!(
            t.acquire(id, &acq(b"job", &owner, 100, 500), 1),
            Outcome::Queued
        );
    }
    let before = (t.waiter_count(), t.next_token(), t.stats());
    assert_eq!(
        t.acquire(waiters[2], &acq(b"job", b"2", 100, 500), 2),
        Outcome::Rejected(ArgError::WaitersFull { max: 2 })
    );
    assert_eq!((t.waiter_count(), t.next_token(), t.stats()), before);
    assert!(!t.is_waiting(waiters[2]));
    // A BUSY answer (no wait) and the holder's own re-acquire are not refused.
    assert!(matches!(
        t.acquire(waiters[2], &acq(b"job", b"2", 100, 0), 3),
        Outcome::Busy { waiters: 2, .. }
    ));
    granted_token(t.acquire(holder, &acq(b"job", b"h", 1000, 0), 3));
    // Once a waiter leaves, there is room again.
    t.close_session(waiters[0], 4);
    assert_eq!(
        t.acquire(waiters[2], &acq(b"job", b"2", 100, 500), 5),
        Outcome::Queued
    );
    t.invariants();
}

/// Takes as many more SESSION holds as a close releases at once, so that
/// the session's earlier holds are deferred when it closes (the latest
/// bound are released first).
fn fill_session(t: &mut LockTable, s: SessionId, owner: &[u8], now_ms: u64) {
    for i in 0..SESSION_CLOSE_RELEASES_MAX {
        let name = format!("filler-{i}");
        granted_token(t.acquire(s, &session_acq(name.as_bytes(), owner, 60_000), now_ms));
    }
}

/// Name of the i-th lock of the deferred-release tests; some longer than the
/// inline 15 bytes.
fn many_name(i: u32) -> Vec<u8> {
    if i % 10 == 0 {
        format!("a-long-lock-name-{i:08}").into_bytes()
    } else {
        format!("n{i}").into_bytes()
    }
}

#[test]
fn a_closed_session_with_many_holds_is_released_over_budgeted_calls() {
    const LOCKS: u32 = 100_000;
    const BUDGET: usize = 1024;
    let mut t = table();
    let (a, b, c) = (t.open_session(1), t.open_session(2), t.open_session(3));
    for i in 0..LOCKS {
        granted_token(t.acquire(a, &session_acq(&many_name(i), b"a", 60_000), 0));
    }
    let plain = granted_token(t.acquire(a, &acq(b"plain", b"a", 60_000, 0), 0));
    fill_session(&mut t, a, b"a", 0);
    // b waits on one of them; c on another whose expiry comes first.
    assert_eq!(
        t.acquire(b, &acq(&many_name(7), b"b", 500, 30_000), 1),
        Outcome::Queued
    );
    let granted = t.stats().grants;
    t.close_session(a, 2);
    assert_eq!(
        t.store.len(),
        LOCKS as usize + 1,
        "only the fillers released by the close"
    );
    assert_eq!(t.len(), 1, "deferred holds are not counted as held");
    assert!(take_events(&mut t).is_empty());

    let (mut calls, mut now) = (0, 2);
    let releases_before = t.stats().releases;
    while t.has_deferred_releases() {
        now += 1;
        let releases = t.stats().releases;
        assert_eq!(t.run_deferred(now, BUDGET), BUDGET);
        assert!(t.stats().releases - releases <= BUDGET as u64);
        calls += 1;
        for event in t.events() {
            assert_eq!(event.session, b);
            assert!(matches!(event.kind, EventKind::Granted { ttl_ms: 500, .. }));
        }
        t.clear_events();
        if calls % 25 == 0 {
            t.invariants();
        }
    }
    let released = t.stats().releases - releases_before;
    assert_eq!(released, LOCKS as u64);
    assert!(calls > 1);
    assert_eq!(calls, (LOCKS as usize).div_ceil(BUDGET));
    assert_eq!(t.stats().grants, granted + 1, "b got its lock");
    assert_eq!(t.len(), 2, "b's grant and the plain hold remain");
    assert_eq!(t.release(b"plain", b"a", plain, now), Outcome::Released);
    assert!(matches!(
        t.acquire(c, &acq(&many_name(7), b"c", 100, 0), now),
        Outcome::Busy { waiters: 0, .. }
    ));
    t.invariants();
}

#[test]
fn commands_never_see_a_deferred_hold_held() {
    let mut t = table();
    let (a, b, c) = (t.open_session(1), t.open_session(2), t.open_session(3));
    for name in [&b"x"[..], b"y", b"z", b"w"] {
        granted_token(t.acquire(a, &session_acq(name, b"a", 60_000), 0));
    }
    let w_token = granted_token(t.acquire(a, &session_acq(b"v", b"a", 60_000), 0));
    assert_eq!(
        t.acquire(b, &acq(b"y", b"b", 100, 5000), 1),
        Outcome::Queued
    );
    fill_session(&mut t, a, b"a", 1);
    t.close_session(a, 2);
    assert!(take_events(&mut t).is_empty());

    // Another owner's ACQUIRE of a deferred hold is granted at once.
    assert!(matches!(
        t.acquire(c, &acq(b"x", b"c", 100, 0), 3),
        Outcome::Granted { .. }
    ));
    // Touching the lock b waits on hands it to b right then.
    assert!(matches!(
        t.acquire(c, &acq(b"y", b"c", 100, 0), 4),
        Outcome::Busy {
            remaining_ms: 100,
            waiters: 0
        }
    ));
    let events = take_events(&mut t);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].session, b);
    // RELEASE and EXTEND by the old holder find the lock free.
    assert_eq!(
        t.release(b"v", b"a", w_token, 5),
        Outcome::NotHeld(NotHeldReason::Free)
    );
    assert_eq!(
        t.extend(b"z", b"a", w_token - 2, 100, 5),
        Outcome::NotHeld(NotHeldReason::Free)
    );
    assert_eq!(
        t.store.len(),
        3,
        "x by c, y by b, w deferred; v, z released"
    );
    assert_eq!(t.len(), 2, "w, deferred, is not counted as held");
    assert!(t.has_deferred_releases(), "w is still deferred");
    assert_eq!(t.run_deferred(6, 10), 1);
    assert!(!t.has_deferred_releases());
    assert_eq!(t.len(), 2);
    t.invariants();
}

#[test]
fn a_waiter_deadline_on_a_deferred_hold_grants_instead_of_timing_out() {
    let mut t = table();
    let (a, b, c) = (t.open_session(1), t.open_session(2), t.open_session(3));
    granted_token(t.acquire(a, &session_acq(b"job", b"a", 60_000), 0));
    fill_session(&mut t, a, b"a", 0);
    assert_eq!(
        t.acquire(b, &acq(b"job", b"b", 100, 50), 1),
        Outcome::Queued
    );
    assert_eq!(
        t.acquire(c, &acq(b"job", b"c", 100, 40), 1),
        Outcome::Queued
    );
    t.close_session(a, 10);
    // c's deadline (41) fires first: the lock was free since 10, so b, the
    // head, is granted and c times out at its own deadline.
    t.advance(45);
    let events = take_events(&mut t);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].session, b);
    assert!(matches!(
        events[0].kind,
        EventKind::Granted { ttl_ms: 100, .. }
    ));
    assert_eq!(events[1].session, c);
    assert_eq!(events[1].kind, EventKind::TimedOut { waited_ms: 40 });
    assert!(!t.has_deferred_releases());
}

#[test]
fn an_expiry_of_a_deferred_hold_counts_as_its_release() {
    let mut t = table();
    let (a, b) = (t.open_session(1), t.open_session(2));
    granted_token(t.acquire(a, &session_acq(b"job", b"a", 100), 0));
    fill_session(&mut t, a, b"a", 0);
    assert_eq!(
        t.acquire(b, &acq(b"job", b"b", 100, 100), 50),
        Outcome::Queued
    );
    t.close_session(a, 60);
    // Expiry at 100, b's deadline at 150: the advance comes late, at 150;
    // b was eligible since the close at 60 and is granted.
    t.advance(150);
    let events = take_events(&mut t);
    assert_eq!(events.len(), 1);
    assert!(matches!(events[0].kind, EventKind::Granted { .. }));
    assert_eq!(t.stats().expiries, 0);
    assert!(!t.has_deferred_releases());
}

#[test]
fn a_closed_session_slot_is_not_reused_until_its_holds_are_released() {
    let mut t = table();
    let a = t.open_session(1);
    granted_token(t.acquire(a, &session_acq(b"x", b"a", 60_000), 0));
    granted_token(t.acquire(a, &session_acq(b"y", b"a", 60_000), 0));
    fill_session(&mut t, a, b"a", 0);
    t.close_session(a, 1);
    assert!(t.has_deferred_releases());
    let n = t.open_session(2);
    assert_ne!(n.key, a.key, "the closed session's slot is reserved");
    granted_token(t.acquire(n, &session_acq(b"z", b"n", 60_000), 1));
    t.run_deferred(2, 1024);
    assert_eq!(t.len(), 1, "only the new session's hold is left");
    let m = t.open_session(3);
    assert_eq!(m.key, a.key, "the slot is free once drained");
    assert_ne!(m, a);
    t.close_session(n, 3);
    t.run_deferred(3, 1024);
    assert!(t.is_empty());
    t.invariants();
}

#[test]
fn locks_max_does_not_count_deferred_holds() {
    let mut t = LockTable::new(
        Limits {
            locks_max: 2 + SESSION_CLOSE_RELEASES_MAX,
            ..Limits::default()
        },
        1,
        0,
    );
    let (a, b) = (t.open_session(1), t.open_session(2));
    granted_token(t.acquire(a, &session_acq(b"x", b"a", 60_000), 0));
    granted_token(t.acquire(a, &session_acq(b"y", b"a", 60_000), 0));
    fill_session(&mut t, a, b"a", 0);
    t.close_session(a, 1);
    assert_eq!(t.store.len(), 2, "x and y deferred");
    assert_eq!(t.len(), 0, "deferred holds are not counted as held");
    fill_session(&mut t, b, b"b", 2);
    granted_token(t.acquire(b, &acq(b"z", b"b", 100, 0), 2));
    assert_eq!(
        t.store.len(),
        2 + SESSION_CLOSE_RELEASES_MAX,
        "one of x and y released to make room"
    );
    assert_eq!(t.len(), 1 + SESSION_CLOSE_RELEASES_MAX);
    assert!(t.has_deferred_releases(), "the other is still deferred");
    t.invariants();
}

#[test]
fn deferred_releases_are_deterministic() {
    fn run(budget: usize) -> (Vec<Event>, Stats, u64) {
        let mut t = LockTable::new(Limits::default(), SEED, 0);
        let sessions: Vec<SessionId> = (0..20).map(|tag| t.open_session(tag)).collect();
        let mut events = Vec::new();
        for i in 0..600u32 {
            let s = sessions[(i % 4) as usize];
            let owner = [b'a' + (i % 4) as u8];
            t.acquire(s, &session_acq(&many_name(i), &owner, 1000 + i), 0);
        }
        for (j, &s) in sessions[4..].iter().enumerate() {
            let owner = [b'A' + j as u8];
            let name = many_name(j as u32 * 7);
            t.acquire(s, &acq(&name, &owner, 300, 200 + j as u32), 1);
        }
        t.close_session(sessions[0], 2);
        t.close_session(sessions[1], 3);
        for now in 4..40 {
            t.run_deferred(now, budget);
            events.extend(take_events(&mut t));
        }
        t.close_session(sessions[2], 40);
        t.advance(2000);
        events.extend(take_events(&mut t));
        (events, t.stats(), t.next_token())
    }
    assert_eq!(run(3), run(3));
    assert_eq!(run(1000), run(1000));
}

/// Capacities of the growable parts, for the shrink tests.
fn capacities(t: &LockTable) -> [usize; 5] {
    [
        t.store.capacity(),
        t.store.waiters.capacity(),
        t.index.capacity(),
        t.extras.capacity(),
        t.sessions.capacity(),
    ]
}

#[test]
fn compaction_moves_live_locks_and_waiters_and_they_still_work() {
    const LOCKS: u32 = 20_000;
    let mut t = table();
    let holder = t.open_session(0);
    let mut tokens = Vec::new();
    for i in 0..LOCKS {
        let name = many_name(i);
        let a = if i % 3 == 0 {
            session_acq(&name, b"h", 60_000)
        } else {
            acq(&name, b"h", 60_000, 0)
        };
        tokens.push(granted_token(t.acquire(holder, &a, 0)));
    }
    // Waiters on the locks that will survive, queued in a known order.
    let kept: Vec<u32> = (0..LOCKS).filter(|i| i % 97 == 5).collect();
    let mut waiting = Vec::new();
    for (j, &i) in kept.iter().enumerate() {
        let s = t.open_session(1 + j as u64);
        let owner = format!("w{j}");
        let name = many_name(i);
        let a = acq(&name, owner.as_bytes(), 1000, 50_000);
        assert_eq!(t.acquire(s, &a, 1), Outcome::Queued);
        waiting.push(s);
    }
    // Waiters on locks that go, sessions that close: vacant slots below.
    let mut gone = Vec::new();
    for j in 0..2000u32 {
        let s = t.open_session(10_000 + j as u64);
        let name = many_name(j * 7 + 1);
        let owner = format!("gone{j}");
        let a = acq(&name, owner.as_bytes(), 1000, 50_000);
        assert_eq!(t.acquire(s, &a, 1), Outcome::Queued);
        gone.push(s);
    }
    for s in gone {
        t.close_session(s, 1);
    }
    for i in (0..LOCKS).filter(|i| i % 97 != 5) {
        assert_eq!(
            t.release(&many_name(i), b"h", tokens[i as usize], 2),
            Outcome::Released
        );
    }
    take_events(&mut t);
    let before = capacities(&t);
    let mut calls = 0;
    while t.has_deferred_work() {
        t.run_deferred(3, 64);
        calls += 1;
        assert!(calls < 10_000, "deferred work never ends");
        if calls % 50 == 0 {
            t.invariants();
        }
    }
    assert!(t.events().is_empty(), "compaction answers nobody");
    t.invariants();
    let after = capacities(&t);
    for (part, (b, a)) in before.iter().zip(after).enumerate() {
        // The sharded maps keep a small floor per shard.
        let floor = match part {
            2 => shards::INDEX_SHARDS * shards::SHARD_CAPACITY_MIN,
            3 => shards::EXTRAS_SHARDS * shards::SHARD_CAPACITY_MIN,
            _ => 0,
        };
        assert!(a < *b / 4 || a <= floor, "part {part}: capacity {b} -> {a}");
    }
    // Every kept lock, still held by h, goes to its waiter on release.
    for (j, &i) in kept.iter().enumerate() {
        assert_eq!(
            t.release(&many_name(i), b"h", tokens[i as usize], 4),
            Outcome::Released
        );
        let events = take_events(&mut t);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].session, waiting[j]);
        let owner = format!("w{j}");
        let EventKind::Granted { token, .. } = events[0].kind else {
            panic!("{events:?}")
        };
        assert_eq!(
            t.release(&many_name(i), owner.as_bytes(), token, 4),
            Outcome::Released
        );
    }
    assert!(t.is_empty());
    t.close_session(holder, 5);
    t.invariants();
}

#[test]
fn a_steady_small_load_never_compacts() {
    let mut t = table();
    let s = t.open_session(0);
    for round in 0..2000u64 {
        let token =
            granted_token(t.acquire(s, &acq(&many_name(round as u32 % 300), b"o", 100, 0), round));
        if round % 2 == 0 {
            t.release(&many_name(round as u32 % 300), b"o", token, round);
        }
        assert!(!t.has_deferred_work(), "round {round}");
    }
}

/// Issue: listing pages stepped over every deferred hold one by one, so
/// each page after a close with 200,000 SESSION holds cost the whole table.
#[test]
fn a_status_page_looks_at_a_bounded_number_of_slots_and_ends_what_it_meets() {
    const LOCKS: u32 = 200_000;
    let mut t = table();
    let (a, b) = (t.open_session(1), t.open_session(2));
    for i in 0..LOCKS {
        granted_token(t.acquire(a, &session_acq(&many_name(i), b"a", 60_000), 0));
    }
    let kept = granted_token(t.acquire(b, &acq(b"kept", b"b", 60_000, 0), 0));
    t.close_session(a, 1);
    let deferred = t.store.len() - t.len();
    assert!(deferred > 190_000, "{deferred} deferred");
    assert_eq!(t.len(), 1, "STATUS total counts only what commands see");

    let (mut cursor, mut pages, mut listed) = (0, 0, Vec::new());
    loop {
        let deferred_before = t.store.len() - t.len();
        let next = t.status_page(cursor, 2, |e| {
            listed.push((e.name.to_vec(), e.token));
            true
        });
        let ended = deferred_before - (t.store.len() - t.len());
        assert!(
            ended <= STATUS_PAGE_SLOTS_MAX as usize,
            "page {pages}: {ended}"
        );
        pages += 1;
        if next == 0 {
            break;
        }
        assert!(next > cursor, "the cursor moves on");
        assert!(
            next - cursor.max(1) <= STATUS_PAGE_SLOTS_MAX,
            "page {pages}"
        );
        cursor = next;
    }
    assert!(
        pages as u32 >= LOCKS / STATUS_PAGE_SLOTS_MAX,
        "{pages} pages"
    );
    assert_eq!(
        listed,
        vec![(b"kept".to_vec(), kept)],
        "deferred holds are never listed"
    );
    assert!(
        !t.has_deferred_releases(),
        "the listing ended every hold it met"
    );
    t.invariants();
}

/// Issue: every command fired every due timer first, so the first request
/// after a million locks expired at once paid for all of them.
#[test]
fn timers_fire_a_budget_at_a_time_and_commands_end_the_due_hold_they_touch() {
    const LOCKS: u32 = 100_000;
    const BUDGET: usize = 1000;
    let mut t = table();
    let (a, b, c) = (t.open_session(1), t.open_session(2), t.open_session(3));
    let mut tokens = Vec::new();
    for i in 0..LOCKS {
        tokens.push(granted_token(t.acquire(
            a,
            &acq(&many_name(i), b"a", 1000, 0),
            0,
        )));
    }
    // b waits on lock 7 until 5000: it gets it when the hold expires.
    assert_eq!(
        t.acquire(b, &acq(&many_name(7), b"b", 500, 5000), 10),
        Outcome::Queued
    );
    // At 2000 every hold is due (expiry 1001). Nothing fired yet.
    assert_eq!(t.len(), LOCKS as usize);
    // A command on a due hold ends it first: the waiter b gets lock 7, then
    // c finds it busy; the old holder finds its lock gone.
    assert!(matches!(
        t.acquire(c, &acq(&many_name(7), b"c", 100, 0), 2000),
        Outcome::Busy {
            remaining_ms: 500,
            waiters: 0
        }
    ));
    let events = take_events(&mut t);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].session, b);
    assert_eq!(
        t.release(&many_name(8), b"a", tokens[8], 2000),
        Outcome::NotHeld(NotHeldReason::Free)
    );
    assert_eq!(
        t.extend(&many_name(9), b"a", tokens[9], 1000, 2000),
        Outcome::NotHeld(NotHeldReason::Free)
    );
    assert!(matches!(
        t.acquire(c, &acq(&many_name(10), b"c", 100, 0), 2000),
        Outcome::Granted { .. }
    ));
    let mut calls = 0;
    loop {
        let expiries = t.stats().expiries;
        let done = t.advance_bounded(2000, BUDGET);
        assert!(t.stats().expiries - expiries <= BUDGET as u64);
        calls += 1;
        if done < BUDGET {
            break;
        }
        if calls % 20 == 0 {
            t.invariants();
        }
    }
    assert!(calls > LOCKS as usize / BUDGET, "{calls} calls");
    assert_eq!(t.stats().expiries, LOCKS as u64, "each hold expired once");
    assert_eq!(t.len(), 2, "b's lock 7 and c's lock 10");
    assert!(take_events(&mut t).is_empty());
    t.invariants();
}

#[test]
fn a_due_expiry_and_a_deferred_release_end_a_hold_at_the_earlier() {
    let mut t = table();
    let (a, b, c) = (t.open_session(1), t.open_session(2), t.open_session(3));
    // job expires at 101; its session closes at 200, the expiry not fired.
    granted_token(t.acquire(a, &session_acq(b"job", b"a", 100), 0));
    fill_session(&mut t, a, b"a", 0);
    assert_eq!(
        t.acquire(b, &acq(b"job", b"b", 100, 150), 50),
        Outcome::Queued
    );
    t.close_session(a, 300);
    // b's deadline (200) came after the expiry (101): b is granted when the
    // lock is next touched, and the end counts as an expiry.
    assert!(matches!(
        t.acquire(c, &acq(b"job", b"c", 100, 0), 300),
        Outcome::Busy { .. }
    ));
    let events = take_events(&mut t);
    assert_eq!(events.len(), 1);
    assert!(matches!(events[0].kind, EventKind::Granted { .. }));
    assert_eq!(t.stats().expiries, 1);
    t.invariants();
}

/// A hold is live until its deadline, and in the last millisecond before it
/// (the rounding millisecond) its client-visible TTL reads 0; BUSY must
/// still say at least 1, as the protocol promises.
#[test]
fn a_live_hold_always_has_at_least_1_ms_remaining() {
    for ttl_ms in 1..=3 {
        let mut t = table();
        let s = t.open_session(1);
        granted_token(t.acquire(s, &acq(b"job", b"a", ttl_ms, 0), 100));
        let deadline_ms = t.next_deadline().unwrap();
        for now_ms in 100..deadline_ms {
            match t.acquire(s, &acq(b"job", b"b", 1000, 0), now_ms) {
                Outcome::Busy { remaining_ms, .. } => assert!(
                    (1..=ttl_ms).contains(&remaining_ms),
                    "ttl {ttl_ms} at {now_ms}: remaining_ms {remaining_ms}"
                ),
                other => panic!("ttl {ttl_ms} at {now_ms}: expected BUSY, got {other:?}"),
            }
        }
    }
    assert_eq!(remaining_ms(11, 10), 1, "the rounding millisecond");
    assert_eq!(remaining_ms(12, 10), 1);
    assert_eq!(remaining_ms(13, 10), 2);
}

#[test]
fn a_hold_released_in_the_millisecond_it_was_taken_never_touches_the_wheel() {
    let mut t = table();
    let a = t.open_session(1);
    let token = granted_token(t.acquire(a, &acq(b"job", b"a", 100, 0), 5));
    assert!(t.pending.any(), "the expiry waits to be linked");
    assert_eq!(t.next_deadline(), Some(106), "and still sets the poll timeout");
    t.invariants();
    assert_eq!(t.release(b"job", b"a", token, 5), Outcome::Released);
    assert!(!t.pending.any());
    assert!(t.wheel.is_empty());
    assert_eq!(t.next_deadline(), None);
    t.invariants();
}

#[test]
fn a_pending_expiry_is_linked_when_time_moves_and_fires_at_its_deadline() {
    let mut t = table();
    let a = t.open_session(1);
    granted_token(t.acquire(a, &acq(b"job", b"a", 100, 0), 5));
    t.advance(6);
    assert!(!t.pending.any(), "linked by the first poll at a later time");
    assert_eq!(t.next_deadline(), Some(106));
    t.invariants();
    t.advance(105);
    assert_eq!(t.len(), 1, "not a millisecond early");
    t.advance(106);
    assert_eq!(t.len(), 0);
    t.invariants();
}

#[test]
fn a_pending_expiry_fires_before_a_later_set_timer_of_the_same_deadline() {
    let mut t = table();
    let (a, c, d, x) = (
        t.open_session(1),
        t.open_session(2),
        t.open_session(3),
        t.open_session(4),
    );
    granted_token(t.acquire(c, &acq(b"z", b"c", 1_000, 0), 0));
    t.advance(1);
    // At 1 ms: the hold on "a" expires at 1 + 10 + 1; d's wait on "z" ends
    // at the same millisecond, set after it.
    let token = granted_token(t.acquire(a, &acq(b"a", b"a", 10, 0), 1));
    assert_eq!(t.acquire(d, &acq(b"z", b"d", 100, 10), 1), Outcome::Queued);
    assert_eq!(t.acquire(x, &acq(b"a", b"x", 100, 1_000), 1), Outcome::Queued);
    t.advance(12);
    let events = take_events(&mut t);
    let kinds: Vec<(SessionId, EventKind)> = events.iter().map(|e| (e.session, e.kind)).collect();
    assert_eq!(
        kinds,
        [
            (
                x,
                EventKind::Granted {
                    token: token + 1,
                    ttl_ms: 100
                }
            ),
            (d, EventKind::TimedOut { waited_ms: 10 }),
        ],
        "in the order the timers were set"
    );
}

#[test]
fn a_full_pending_list_is_linked_before_the_next_expiry_is_set() {
    let mut t = table();
    let a = t.open_session(1);
    let names: Vec<String> = (0..PENDING_EXPIRIES_MAX + 10).map(|i| format!("n{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        granted_token(t.acquire(a, &acq(name.as_bytes(), b"a", 100 + i as u32, 0), 0));
    }
    t.invariants();
    assert!(!t.wheel.is_empty(), "the first {PENDING_EXPIRIES_MAX} were linked");
    assert!(t.pending.any(), "the last 10 wait");
    t.advance(100);
    assert_eq!(t.len(), names.len());
    t.advance(101);
    assert_eq!(t.len(), names.len() - 1, "each at its own deadline");
    t.advance(100 + names.len() as u64);
    assert_eq!(t.len(), 0);
    t.invariants();
}

#[test]
fn making_room_frees_a_due_expiry_behind_a_full_pending_list() {
    let limits = Limits {
        locks_max: 2,
        ..Limits::default()
    };
    let mut t = LockTable::new(limits, SEED, 0);
    let a = t.open_session(1);
    granted_token(t.acquire(a, &acq(b"k", b"a", 100_000, 0), 0));
    // Stale pending entries, each released in the millisecond it was taken.
    for _ in 0..PENDING_EXPIRIES_MAX - 2 {
        let token = granted_token(t.acquire(a, &acq(b"x", b"a", 1_000, 0), 0));
        assert_eq!(t.release(b"x", b"a", token, 0), Outcome::Released);
    }
    granted_token(t.acquire(a, &acq(b"l", b"a", 1, 0), 0));
    // At 10 ms "l" (deadline 2) has ended: its room goes to "m".
    granted_token(t.acquire(a, &acq(b"m", b"a", 1_000, 0), 10));
    t.invariants();
}

#[test]
fn compaction_keeps_the_order_of_timers_of_one_millisecond() {
    let mut t = table();
    let (a, b, c) = (t.open_session(1), t.open_session(2), t.open_session(3));
    let names: Vec<String> = (0..300).map(|i| format!("n{i}")).collect();
    let mut tokens = Vec::new();
    for name in &names {
        tokens.push(granted_token(t.acquire(a, &acq(name.as_bytes(), b"a", 1_000, 0), 0)));
    }
    for (name, &token) in names.iter().zip(&tokens).take(299).skip(1) {
        assert_eq!(t.release(name.as_bytes(), b"a", token, 0), Outcome::Released);
    }
    // n0's expiry is set again after n299's: both end at 1001, n299's first.
    assert!(matches!(
        t.extend(b"n0", b"a", tokens[0], 1_000, 0),
        Outcome::Extended { .. }
    ));
    assert_eq!(t.acquire(b, &acq(b"n0", b"b", 100, 5_000), 0), Outcome::Queued);
    assert_eq!(t.acquire(c, &acq(b"n299", b"c", 100, 5_000), 0), Outcome::Queued);
    // Giving memory back moves n299's record into a lower slot.
    while t.has_deferred_work() {
        t.run_deferred(0, 10);
    }
    t.invariants();
    t.advance(1_001);
    let granted: Vec<SessionId> = take_events(&mut t).iter().map(|e| e.session).collect();
    assert_eq!(granted, [c, b], "n299's waiter first, as before the move");
}

#[test]
fn compaction_keeps_the_order_of_waiter_timers_of_one_millisecond() {
    let mut t = table();
    let h = t.open_session(0);
    granted_token(t.acquire(h, &acq(b"z", b"h", 100_000, 0), 0));
    let sessions: Vec<SessionId> = (1..=200).map(|tag| t.open_session(tag)).collect();
    // The last one to queue (the last waiter slot) ends at 1001; the
    // others much later.
    for (i, &s) in sessions.iter().enumerate() {
        let wait_ms = if i == 199 { 1_000 } else { 50_000 };
        let owner = format!("o{i}");
        assert_eq!(t.acquire(s, &acq(b"z", owner.as_bytes(), 100, wait_ms), 0), Outcome::Queued);
    }
    // At 1 ms a waiter takes a freed lower slot, also ending at 1001: set
    // after the last one's, so it times out after it.
    t.close_session(sessions[3], 1);
    let late = t.open_session(300);
    assert_eq!(t.acquire(late, &acq(b"z", b"late", 100, 999), 1), Outcome::Queued);
    for (i, &s) in sessions.iter().enumerate() {
        if i != 3 && i != 199 {
            t.close_session(s, 1);
        }
    }
    // Giving memory back moves the last waiter into a lower slot.
    while t.has_deferred_work() {
        t.run_deferred(1, 10);
    }
    t.invariants();
    t.advance(1_001);
    let timed_out: Vec<SessionId> = take_events(&mut t).iter().map(|e| e.session).collect();
    assert_eq!(timed_out, [sessions[199], late], "in the order they were set");
}
