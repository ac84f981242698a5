//! The fuzz targets' checks (also run by `fuzz/`) with
//! choices from a seeded PRNG, so that every test run exercises them on new
//! cases. Each test runs for a bounded number of seeds; a failure prints its
//! seed, and `DISTLOCKD_CHECK_SEED=N` runs that seed alone.

use std::time::{SystemTime, UNIX_EPOCH};

use super::connection::Tally;
use super::decode::{self, Case, Side};
use super::{ByteSource, Recorder, SeedReport, Source, SplitMix64, connection, wal, wheel};

/// The seeds to run: the one asked for, or `count` fresh ones.
fn seeds(count: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("DISTLOCKD_CHECK_SEED") {
        let seed = seed
            .parse()
            .unwrap_or_else(|_| panic!("DISTLOCKD_CHECK_SEED={seed}: not a u64"));
        return vec![seed];
    }
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = SplitMix64(base);
    (0..count).map(|_| rng.next_u64()).collect()
}

#[test]
fn split_reads_decode_as_the_whole_stream() {
    for seed in seeds(3000) {
        let _report = SeedReport {
            name: "split_reads_decode_as_the_whole_stream",
            seed,
        };
        let mut rng = SplitMix64(seed);
        let side =
            [Side::Requests, Side::NativeReplies, Side::LegacyReplies][rng.below(3) as usize];
        let mut stream = Vec::new();
        decode::random_stream(&mut rng, side, &mut stream);
        let reads = (0..=rng.below(4))
            .map(|_| 1 + rng.log_uniform(11) as usize)
            .collect();
        let frame_size_max = [1024, 336, 64, 8][rng.below(4) as usize];
        decode::check(&Case {
            side,
            frame_size_max,
            reads,
            stream: &stream,
        });
    }
}

#[test]
fn connections_match_the_lock_model() {
    let mut tally = Tally::default();
    for seed in seeds(300) {
        let _report = SeedReport {
            name: "connections_match_the_lock_model",
            seed,
        };
        tally.add(&connection::run(&mut SplitMix64(seed), 300));
    }
    // The generator must keep reaching every kind of answer.
    if std::env::var("DISTLOCKD_CHECK_SEED").is_err() {
        let t = tally;
        let counts = [t.granted, t.busy, t.queued, t.granted_later, t.timed_out];
        let more = [t.released, t.extended, t.not_held, t.errors, t.legacy];
        assert!(counts.iter().chain(&more).all(|&n| n > 0), "{tally:?}");
    }
    println!("{tally:?}");
}

#[test]
fn timer_wheel_matches_an_ordered_map() {
    for seed in seeds(40) {
        let _report = SeedReport {
            name: "timer_wheel_matches_an_ordered_map",
            seed,
        };
        wheel::run(&mut SplitMix64(seed), 1000);
    }
}

/// A run recorded as bytes replays the same from a `ByteSource`: the fuzz
/// targets and these tests explore the same space, and a PRNG run can be
/// saved as a fuzz input.
#[test]
fn recorded_runs_replay_from_bytes() {
    for seed in seeds(20) {
        let _report = SeedReport {
            name: "recorded_runs_replay_from_bytes",
            seed,
        };
        let mut recorder = Recorder {
            inner: SplitMix64(seed),
            bytes: Vec::new(),
        };
        let recorded = connection::run(&mut recorder, 200);
        let replayed = connection::run(&mut ByteSource::new(&recorder.bytes), usize::MAX);
        assert_eq!(replayed, recorded);
    }
}

#[test]
fn the_wal_reader_keeps_the_records_before_any_damage() {
    for seed in seeds(3000) {
        let _report = SeedReport {
            name: "the_wal_reader_keeps_the_records_before_any_damage",
            seed,
        };
        wal::run(&mut SplitMix64(seed));
    }
}

/// Writes the seed corpora of the fuzz targets `connection`, `wheel` and
/// `wal`:
/// `cargo test --lib check::tests::write_seed_corpora -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus/; run by hand"]
fn write_seed_corpora() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for seed in 1..=8u64 {
        let mut recorder = Recorder {
            inner: SplitMix64(seed),
            bytes: Vec::new(),
        };
        connection::run(&mut recorder, 20 * seed as usize);
        let dir = root.join("connection");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{seed}")), &recorder.bytes).unwrap();
        let mut recorder = Recorder {
            inner: SplitMix64(seed),
            bytes: Vec::new(),
        };
        wheel::run(&mut recorder, 30 * seed as usize);
        let dir = root.join("wheel");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{seed}")), &recorder.bytes).unwrap();
        let mut recorder = Recorder {
            inner: SplitMix64(seed),
            bytes: Vec::new(),
        };
        wal::run(&mut recorder);
        let dir = root.join("wal");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{seed}")), &recorder.bytes).unwrap();
    }
}
