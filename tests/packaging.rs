//! The systemd unit and its example options file in packaging/ work with
//! this build: the options are accepted, and the unit names the right
//! command and environment variable.

#![cfg(feature = "server")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const UNIT: &str = include_str!("../packaging/distlockd.service");
const ENV_FILE: &str = include_str!("../packaging/distlockd.env");

fn env_value(name: &str) -> String {
    ENV_FILE
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{name} not set in distlockd.env"))
        .to_owned()
}

#[test]
fn the_unit_runs_the_server_with_the_options_and_the_secret() {
    assert!(
        UNIT.contains("ExecStart=/usr/local/bin/distlockd server $DISTLOCKD_OPTS"),
        "{UNIT}"
    );
    let secret_env = format!(
        "Environment={}=%d/auth-secret",
        distlockd::auth::SECRET_FILE_ENV
    );
    assert!(UNIT.contains(&secret_env), "{UNIT}");
    assert!(UNIT.contains("LoadCredential=auth-secret:"), "{UNIT}");
    assert!(UNIT.contains("KillSignal=SIGTERM"), "{UNIT}");
}

/// Starts the daemon with the example options (ports changed to 0 and the
/// address to loopback, for the test), as the unit would, and checks that
/// it requires the secret and serves /health.
#[test]
fn the_example_options_start_a_working_server() {
    let mut args: Vec<String> = env_value("DISTLOCKD_OPTS")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for i in 0..args.len().saturating_sub(1) {
        match args[i].as_str() {
            "--port" | "--http-port" => args[i + 1] = "0".into(),
            "--host" | "--http-host" => args[i + 1] = "127.0.0.1".into(),
            _ => {}
        }
    }
    let dir = std::env::temp_dir().join(format!("distlockd-pkg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("auth-secret");
    std::fs::write(&secret, "an example secret of enough bytes\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .arg("server")
        .args(&args)
        .env(distlockd::auth::SECRET_FILE_ENV, &secret)
        .env("RUST_LOG", env_value("RUST_LOG"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _server = common::ServerProcess(child);
    let (mut lock_addr, mut http_addr) = (None, None);
    let mut log = String::new();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (lock_addr.is_none() || http_addr.is_none()) && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.split(" listening on ").nth(1) {
            lock_addr = rest.split(';').next().map(str::to_owned);
        }
        if let Some(rest) = line.split("on http://").nth(1) {
            http_addr = rest.split('/').next().map(str::to_owned);
        }
        log.push_str(&line);
        log.push('\n');
    }
    let (Some(lock_addr), Some(http_addr)) = (lock_addr, http_addr) else {
        panic!("the server did not start with {args:?}:\n{log}");
    };
    // Authentication is on: a request without AUTH is refused.
    let mut stream = TcpStream::connect(&lock_addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"P\x00\x00").unwrap();
    let mut reply = [0u8; 256];
    let n = stream.read(&mut reply).unwrap();
    assert_eq!(&reply[..1], b"-", "{:?}", &reply[..n]);
    // And /health answers.
    let mut http = TcpStream::connect(&http_addr).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    http.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    std::fs::remove_dir_all(&dir).unwrap();
}
