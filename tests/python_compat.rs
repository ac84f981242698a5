//! The real Python client of the original project (distlockd 1.0.3 from
//! PyPI) against our server: its test script, then its own benchmark.
//!
//! Set-up: a venv under the target directory with `distlockd==1.0.3`
//! installed by pip (reused across runs). The original benchmark always
//! connects to port 9999, so the server for it runs there; the test fails
//! with a clear message if that port is taken.

#![cfg(feature = "server")]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use distlockd::client::Client;

mod common;
use common::{ServerProcess, start_server_cmd, start_server_with};

const PORT: u16 = 9999;
const PACKAGE: &str = "distlockd==1.0.3";

/// The venv's directory, made once per test run: tests running in parallel
/// wait for the first to make it.
fn venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(make_venv).clone()
}

fn make_venv() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-compat-venv");
    let python = dir.join("bin/python");
    let marker = dir.join(".distlockd-1.0.3-installed");
    if marker.exists() {
        return dir;
    }
    let python3 = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(
        Command::new(&python3).args(["-m", "venv"]).arg(&dir),
        "create the venv (is python3-venv installed?)",
    );
    run(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            PACKAGE,
        ]),
        "pip install distlockd==1.0.3 (is PyPI reachable?)",
    );
    std::fs::write(&marker, PACKAGE).unwrap();
    dir
}

fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot {what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed with {}:\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Refuses to start if something else holds port 9999, rather than testing it.
fn start_server_on_port_9999() -> ServerProcess {
    assert!(
        TcpStream::connect(("127.0.0.1", PORT)).is_err(),
        "port {PORT} is already in use; the original benchmark only connects to {PORT}, so stop whatever listens there"
    );
    let (server, addr) = start_server_cmd(Command::new(env!("CARGO_BIN_EXE_distlockd")).args([
        "server",
        "--port",
        &PORT.to_string(),
    ]));
    assert_eq!(addr.port(), PORT);
    server
}

#[test]
fn the_original_python_client_and_benchmark_work_against_our_server() {
    let venv = venv();
    let _server = start_server_on_port_9999();
    let addr = format!("127.0.0.1:{PORT}");
    let rust = Client::new(&addr).unwrap();
    let held = rust
        .try_acquire("held-by-rust")
        .unwrap()
        .expect("free at start");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/compat.py");
    let out = run(
        Command::new(venv.join("bin/python")).arg(&script).args([
            "127.0.0.1",
            &PORT.to_string(),
            "held-by-rust",
        ]),
        "run tests/python/compat.py",
    );
    assert!(out.contains("COMPAT OK"), "{out}");
    // The Python client's hold outlives its process (no SESSION in the
    // original protocol) and excludes native clients until its TTL.
    assert!(rust.try_acquire("held-by-python").unwrap().is_none());
    rust.release_lease(&held).unwrap();

    // The original's own benchmark, as its users run it.
    let report = run(
        Command::new(venv.join("bin/distlockd")).args([
            "test",
            "distlockd",
            "--iterations",
            "300",
            "--num-clients",
            "100",
            "--num-locks",
            "10",
            "--throughput-seconds",
            "2",
        ]),
        "run `distlockd test distlockd` from distlockd 1.0.3",
    );
    println!("{report}");
    assert!(
        report.contains("| Concurrency Success Rate (%) | 100.00 |"),
        "{report}"
    );
    let throughput = report
        .lines()
        .find_map(|l| l.strip_prefix("| Throughput (ops/sec) | "))
        .and_then(|rest| rest.trim_end_matches(" |").parse::<f64>().ok())
        .expect("a throughput row");
    assert!(throughput > 0.0, "{report}");
}

/// The original server kept a hold until its release or its 3600 s stale
/// timeout, and its client never renews: a job holding a lock longer than
/// the native default TTL must keep it, and release it without
/// `LockReleaseError`. The native default here is 300 ms, the job holds
/// for 1.5 s, and legacy holds last 60 s.
#[test]
fn an_original_client_hold_outlives_the_native_default_ttl() {
    let venv = venv();
    let (_server, addr) =
        start_server_with(&["--ttl-default-ms", "300", "--legacy-ttl-ms", "60000"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/long_hold.py");
    let out = run(
        Command::new(venv.join("bin/python")).arg(&script).args([
            "127.0.0.1",
            &addr.port().to_string(),
            "long-job",
            "1.5",
        ]),
        "run tests/python/long_hold.py",
    );
    assert!(out.contains("LONG HOLD OK"), "{out}");
    // Taken before the job's 1.5 s and never released: still held, by
    // the legacy TTL.
    let rust = Client::new(addr).unwrap();
    assert!(rust.try_acquire("long-job-left").unwrap().is_none());
    let left = rust.status("long-job-left").unwrap().expect("held");
    assert!(left.remaining > Duration::from_secs(30), "{left:?}");
}
