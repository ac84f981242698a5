use super::*;
use crate::check::{Source, SplitMix64};
use crate::limits::Limits;
use crate::protocol::{Acquire, FLAG_SESSION};
use crate::table::Outcome;

#[test]
fn effects_round_trip_and_bad_bytes_are_refused() {
    let effects = [
        Effect::Hold {
            name: b"job",
            owner: 0x1122_3344_5566_7788,
            token: 42,
            ttl_ms: 30_000,
        },
        Effect::Free {
            name: &[b'n'; NAME_LEN_CEILING],
            token: u64::MAX,
        },
    ];
    let mut bytes = Vec::new();
    for e in &effects {
        e.encode(&mut bytes);
    }
    let decoded: Vec<Effect<'_>> = decode_all(&bytes).map(Result::unwrap).collect();
    assert_eq!(decoded, effects);
    let first_len = 25;
    for len in (1..bytes.len()).filter(|&l| l != first_len) {
        let all: Vec<_> = decode_all(&bytes[..len]).collect();
        assert!(
            all.last().is_some_and(|r| r.is_err()),
            "a cut at {len} must end in an error: {all:?}"
        );
    }
    assert_eq!(decode(&[9, 1, b'x']), Err(EffectError::UnknownKind(9)));
    assert_eq!(decode(&[HOLD, 0]), Err(EffectError::BadName(0)));
}

#[test]
fn a_table_not_recording_records_nothing() {
    let mut t = LockTable::new(Limits::default(), 1, 0);
    let s = t.open_session(1);
    let req = Acquire {
        name: b"job",
        owner: b"a",
        ttl_ms: 100,
        wait_ms: 0,
        flags: 0,
    };
    assert!(matches!(t.acquire(s, &req, 0), Outcome::Granted { .. }));
    assert!(t.effects().is_empty());
    t.record_effects(true);
    t.release(b"job", b"a", 1, 1);
    assert!(!t.effects().is_empty());
    assert!(!t.take_effects().is_empty());
    assert!(t.effects().is_empty());
}

/// Drains the leader's effects into the replica, applied at `now`.
fn replicate(leader: &mut LockTable, replica: &mut LockTable, now: u64) {
    let bytes = leader.take_effects();
    for effect in decode_all(&bytes) {
        replica.apply_effect(&effect.unwrap(), now);
    }
}

/// The token of the hold on `name`, if held.
fn token_of(t: &LockTable, name: &[u8]) -> Option<u64> {
    t.holds().into_iter().find(|h| h.0 == name).map(|h| h.2)
}

/// Random commands on a recording table; a replica fed only its effects
/// holds the same locks (name, owner, token, deadline) after every command,
/// and hands out tokens above every one the leader did.
#[test]
fn a_replica_fed_the_effects_holds_exactly_what_the_leader_holds() {
    for seed in 0..200u64 {
        let mut rng = SplitMix64(seed);
        let mut leader = LockTable::new(Limits::default(), 1000, 0);
        leader.record_effects(true);
        let mut replica = LockTable::new(Limits::default(), 1, 0);
        replica.set_owner_key(leader.owner_key());
        let names: Vec<Vec<u8>> = (0..6)
            .map(|i| {
                // Short names and ones long enough for the name arena.
                if i % 2 == 0 {
                    format!("n{i}").into_bytes()
                } else {
                    format!("a-longer-lock-name-number-{i}").into_bytes()
                }
            })
            .collect();
        let owners: [&[u8]; 4] = [b"w0", b"w1", b"w2", b"w3"];
        let mut sessions: Vec<SessionId> = (0..4).map(|i| leader.open_session(i)).collect();
        let mut now = 0u64;
        let mut counts = [0usize; 4];
        for step in 0..300 {
            let n = rng.below(names.len() as u64) as usize;
            let o = rng.below(owners.len() as u64) as usize;
            let (name, owner) = (&names[n][..], owners[o]);
            let session = sessions[o];
            match rng.below(8) {
                0..=2 if !leader.is_waiting(session) => {
                    let wait = rng.one_in(3);
                    let req = Acquire {
                        name,
                        owner,
                        ttl_ms: 1 + rng.below(200) as u32,
                        wait_ms: if wait { 1 + rng.below(300) as u32 } else { 0 },
                        flags: if rng.one_in(3) { FLAG_SESSION } else { 0 },
                    };
                    leader.acquire(session, &req, now);
                    counts[0] += 1;
                }
                3 => {
                    // Succeeds only when `owner` holds it.
                    if let Some(token) = token_of(&leader, name) {
                        leader.release(name, owner, token, now);
                        counts[1] += 1;
                    }
                }
                4 => {
                    if let Some(token) = token_of(&leader, name) {
                        leader.extend(name, owner, token, 1 + rng.below(200) as u32, now);
                        counts[2] += 1;
                    }
                }
                5 if rng.one_in(4) => {
                    leader.close_session(session, now);
                    sessions[o] = leader.open_session(o as u64 + 10 * step);
                    counts[3] += 1;
                }
                _ => {
                    now += rng.below(60);
                    leader.advance(now);
                    leader.run_deferred(now, usize::MAX);
                }
            }
            leader.clear_events();
            replicate(&mut leader, &mut replica, now);
            assert_eq!(
                replica.holds(),
                leader.holds(),
                "seed {seed} step {step}: the replica differs"
            );
            if leader.next_token() > 1000 {
                assert_eq!(replica.next_token(), leader.next_token(), "seed {seed}");
            }
            replica.invariants();
        }
        assert!(counts.iter().all(|&c| c > 0), "seed {seed}: {counts:?}");
    }
}

use super::super::SessionId;
