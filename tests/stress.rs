//! `distlockd test stress` end to end: 64 clients in 4 worker processes over
//! 8 names, about 100,000 requests with kill -9s of workers, dropped
//! connections and expiries, and the checker must find no violation.
//!
//! The TTL (20 ms) and holds (mostly up to 2 ms) are short so the run takes
//! about 10 s in a debug build on 2 cores; `--seconds-max` bounds it
//! whatever the machine does (the checker then checks what ran). The long
//! run for operators is in `distlockd test stress --help`.

#![cfg(feature = "server")]

use std::process::Command;

/// Requests the run must at least have made to count as a stress run, if
/// `--seconds-max` cut it short on a slow machine.
const REQUESTS_MIN: u64 = 20_000;

fn figure(summary: &str, label: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in the summary:\n{summary}"))
}

#[test]
fn stress_run_finds_no_two_holders_and_no_token_going_back() {
    let output = Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(["test", "stress", "--ops", "100000", "--ttl-ms", "20"])
        .args([
            "--hold-ms",
            "2",
            "--kill-every-ms",
            "250",
            "--seconds-max",
            "90",
        ])
        .output()
        .expect("run distlockd test stress");
    let summary = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{summary}");
    assert!(
        output.status.success(),
        "stress run failed ({}):\n{summary}\n{stderr}",
        output.status
    );
    assert_eq!(figure(&summary, "violations"), 0, "{summary}");
    assert_eq!(figure(&summary, "broken connections"), 0, "{summary}");
    assert!(figure(&summary, "requests") >= REQUESTS_MIN, "{summary}");
    // The faults the run is about did happen.
    assert!(figure(&summary, "kill -9 of workers") > 0, "{summary}");
    assert!(figure(&summary, "dropped connections") > 0, "{summary}");
    assert!(figure(&summary, "releases after expiry") > 0, "{summary}");
    assert!(figure(&summary, "grants") > 0, "{summary}");
}

#[test]
fn stress_help_gives_the_long_run_command() {
    let output = Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(["test", "stress", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("distlockd test stress --ops 1000000"),
        "{help}"
    );
}
