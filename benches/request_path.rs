//! The request path without sockets: decode a frame in place, execute it
//! against the lock table, encode the reply. Figures are ns per operation.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use distlockd::limits::{FRAME_SIZE_CEILING, Limits, REPLY_SIZE_MAX};
use distlockd::protocol::{Acquire, Reply, Request, decode_request};
use distlockd::table::{LockTable, Outcome};

const SEED: u64 = 1 << 40;

/// A name short enough to sit in the lock record, and its owner.
const NAME: &[u8] = b"bench-lock-name";
const OWNER: &[u8] = b"bench-owner:42";
/// Names and owners as long as `distlockd test compare`'s
/// (`bench:{label}:{run}:{thread}.{lane}`, `{client id}:{counter}`): the
/// name is stored apart from the record.
const LONG_NAME: &[u8] = b"bench:pipelined:1234567:0.15";
const LONG_OWNER: &[u8] = b"lt1a2b3.0.15:123456";

fn acquire_frame(name: &[u8], owner: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    let acquire = Acquire {
        name,
        owner,
        ttl_ms: 10_000,
        wait_ms: 0,
        flags: 0,
    };
    Request::Acquire(acquire).encode_to_vec(&mut frame);
    frame
}

fn release_frame(name: &[u8], owner: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    Request::Release {
        name,
        owner,
        token: 0,
    }
    .encode_to_vec(&mut frame);
    frame
}

/// Executes a decoded request and encodes its reply, as the server does.
fn execute(
    table: &mut LockTable,
    session: distlockd::table::SessionId,
    frame: &[u8],
    now: u64,
    out: &mut [u8],
) -> usize {
    let (request, _) = decode_request(frame, FRAME_SIZE_CEILING).unwrap().unwrap();
    let outcome = match request {
        Request::Acquire(a) => table.acquire(session, &a, now),
        Request::Release { name, owner, token } => table.release(name, owner, token, now),
        _ => unreachable!(),
    };
    let reply = match outcome {
        Outcome::Granted {
            token,
            ttl_ms,
            reentered,
        } => distlockd::protocol::Reply::granted(2, token, ttl_ms, reentered),
        Outcome::Released => Reply::Released,
        other => panic!("unexpected {other:?}"),
    };
    reply.encode(out)
}

fn bench(c: &mut Criterion) {
    let acquire = acquire_frame(NAME, OWNER);
    c.bench_function("decode acquire frame", |b| {
        b.iter(|| {
            decode_request(black_box(&acquire), FRAME_SIZE_CEILING)
                .unwrap()
                .unwrap()
                .1
        })
    });

    let mut table = LockTable::new(Limits::default(), SEED, 0);
    let session = table.open_session(0);
    let mut now = 0u64;
    c.bench_function("table acquire+release (pair)", |b| {
        b.iter(|| {
            now += 1;
            let a = Acquire {
                name: NAME,
                owner: OWNER,
                ttl_ms: 10_000,
                wait_ms: 0,
                flags: 0,
            };
            let Outcome::Granted { token, .. } = table.acquire(session, black_box(&a), now) else {
                panic!()
            };
            table.release(NAME, OWNER, token, now)
        })
    });

    // With 100k other locks held, so the hash table and wheel are not trivial.
    let mut table = LockTable::new(Limits::default(), SEED, 0);
    let session = table.open_session(0);
    for i in 0..100_000u32 {
        let name = format!("held-{i}");
        let a = Acquire {
            name: name.as_bytes(),
            owner: b"o",
            ttl_ms: 3_600_000,
            wait_ms: 0,
            flags: 0,
        };
        table.acquire(session, &a, 0);
    }
    let mut release = release_frame(NAME, OWNER);
    let mut out = [0u8; REPLY_SIZE_MAX];
    let mut now = 0u64;
    c.bench_function(
        "decode+execute+encode acquire+release (pair, 100k held)",
        |b| {
            b.iter(|| {
                now += 1;
                let token = table.next_token();
                execute(&mut table, session, black_box(&acquire), now, &mut out);
                release[3..11].copy_from_slice(&token.to_be_bytes());
                execute(&mut table, session, black_box(&release), now, &mut out)
            })
        },
    );
    // The same with the load test's name and owner lengths: the name is
    // kept apart from the record, and both take longer to hash.
    let long_acquire = acquire_frame(LONG_NAME, LONG_OWNER);
    let mut long_release = release_frame(LONG_NAME, LONG_OWNER);
    c.bench_function(
        "decode+execute+encode acquire+release (pair, 100k held, 28-byte name)",
        |b| {
            b.iter(|| {
                now += 1;
                let token = table.next_token();
                execute(&mut table, session, black_box(&long_acquire), now, &mut out);
                long_release[3..11].copy_from_slice(&token.to_be_bytes());
                execute(&mut table, session, black_box(&long_release), now, &mut out)
            })
        },
    );
    // One ACQUIRE of a free lock alone: the releases run outside the timing.
    c.bench_function(
        "decode+execute+encode acquire of a free lock (100k held)",
        |b| {
            b.iter_custom(|iters| {
                let mut elapsed = std::time::Duration::ZERO;
                for _ in 0..iters {
                    now += 1;
                    let token = table.next_token();
                    let start = std::time::Instant::now();
                    execute(&mut table, session, black_box(&acquire), now, &mut out);
                    elapsed += start.elapsed();
                    release[3..11].copy_from_slice(&token.to_be_bytes());
                    execute(&mut table, session, &release, now, &mut out);
                }
                elapsed
            })
        },
    );
    c.bench_function("decode+execute+encode acquire (same owner re-grant)", |b| {
        b.iter(|| execute(&mut table, session, black_box(&acquire), now, &mut out))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
