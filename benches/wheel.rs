//! Timer wheel costs on the lock server's hot paths: arming and disarming a
//! timer while many are live, firing, and computing the poll timeout.

use criterion::{Criterion, criterion_group, criterion_main};
use distlockd::wheel::TimerWheel;
use std::hint::black_box;

/// Live timers around the measured ones: a busy server's locks and waiters.
const LIVE_TIMERS: u64 = 100_000;
/// Deadlines spread up to ten minutes ahead, across levels 0 to 3.
const DEADLINE_SPREAD_MS: u64 = 600_000;

/// A deterministic deadline offset in 1..=DEADLINE_SPREAD_MS for timer `i`.
fn spread_ms(i: u64) -> u64 {
    1 + i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % DEADLINE_SPREAD_MS
}

fn wheel_with_live_timers() -> TimerWheel<u64> {
    let mut wheel = TimerWheel::with_capacity(0, LIVE_TIMERS as usize + 1);
    for i in 0..LIVE_TIMERS {
        wheel.insert(spread_ms(i), i);
    }
    wheel
}

fn schedule_and_cancel(c: &mut Criterion) {
    let mut wheel = wheel_with_live_timers();
    let mut i = 0_u64;
    c.bench_function("wheel/schedule_cancel_100k_live", |b| {
        b.iter(|| {
            i += 1;
            let handle = wheel.insert(black_box(spread_ms(i)), i);
            black_box(wheel.cancel(handle))
        })
    });
}

/// Steady state: each iteration arms one timer and advances the clock 1 ms,
/// firing what is due, so on average one timer fires (with its share of
/// cascades) per iteration: the per-timer cost of scheduling and firing.
fn schedule_and_fire(c: &mut Criterion) {
    let mut wheel = TimerWheel::with_capacity(0, 2 * DEADLINE_SPREAD_MS as usize);
    let mut now_ms = 0_u64;
    for _ in 0..DEADLINE_SPREAD_MS {
        now_ms += 1;
        wheel.insert(now_ms + spread_ms(now_ms), now_ms);
        while let Some(fired) = wheel.poll(now_ms) {
            black_box(fired);
        }
    }
    c.bench_function("wheel/schedule_and_fire_per_timer", |b| {
        b.iter(|| {
            now_ms += 1;
            wheel.insert(black_box(now_ms + spread_ms(now_ms)), now_ms);
            while let Some(fired) = wheel.poll(black_box(now_ms)) {
                black_box(fired);
            }
        })
    });
}

fn next_deadline(c: &mut Criterion) {
    let wheel = wheel_with_live_timers();
    c.bench_function("wheel/next_deadline_100k_live", |b| {
        b.iter(|| black_box(&wheel).next_deadline())
    });
}

criterion_group!(
    benches,
    schedule_and_cancel,
    schedule_and_fire,
    next_deadline
);
criterion_main!(benches);
