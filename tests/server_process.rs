//! The daemon as a process, under operating-system limits.

#![cfg(feature = "server")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use distlockd::limits::{CLIENT_NAME_LEN_CEILING, longest_request};
use distlockd::protocol::{Acquire, Reply, Request};

mod common;
use common::wire::Wire;
use common::{start_server, start_server_cmd};

fn pong(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut reply = [0u8; 64];
    stream.write_all(b"P\x00\x00").is_ok()
        && matches!(stream.read(&mut reply), Ok(n) if n > 0 && reply[0] == b'p')
}

/// Out of file descriptors, connections wait in the kernel's queue; once
/// descriptors free up they are all served, without a new arrival to wake
/// the listener.
#[test]
fn queued_connections_are_served_after_running_out_of_file_descriptors() {
    let script = format!(
        "ulimit -n 40 && exec '{}' server --port 0",
        env!("CARGO_BIN_EXE_distlockd")
    );
    let (_server, addr) = start_server_cmd(Command::new("sh").args(["-c", &script]));
    let mut clients: Vec<TcpStream> = (0..60).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let served_first = clients.iter_mut().map(pong).filter(|&ok| ok).count();
    assert!(
        served_first < 60,
        "the descriptor limit did not bite ({served_first} served)"
    );
    clients.drain(..30);
    std::thread::sleep(Duration::from_millis(200));
    let served_after = clients.iter_mut().map(pong).filter(|&ok| ok).count();
    assert_eq!(
        served_after, 30,
        "queued connections left unserved after descriptors freed"
    );
}

/// SIGTERM: the queued ACQUIRE is answered SHUTTING_DOWN, the port closes,
/// and the process exits 0.
#[test]
fn sigterm_answers_waiters_and_exits_cleanly() {
    use distlockd::protocol::{Acquire, ErrorCode, Reply, Request, decode_reply};
    let (mut server, addr) = start_server();
    let frame = |owner: &'static [u8], wait_ms: u32| {
        let mut out = Vec::new();
        Request::Acquire(Acquire {
            name: b"job",
            owner,
            ttl_ms: 60_000,
            wait_ms,
            flags: 0,
        })
        .encode_to_vec(&mut out);
        out
    };
    let mut holder = TcpStream::connect(addr).unwrap();
    holder.write_all(&frame(b"holder", 0)).unwrap();
    let mut reply = [0u8; 512];
    let n = holder.read(&mut reply).unwrap();
    assert!(matches!(
        decode_reply(&reply[..n]),
        Ok(Some((Reply::Granted { .. }, _)))
    ));
    let mut waiter = TcpStream::connect(addr).unwrap();
    waiter.write_all(&frame(b"waiter", 30_000)).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    waiter
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = waiter.read(&mut reply).unwrap();
    let Ok(Some((Reply::Error { code, message }, _))) = decode_reply(&reply[..n]) else {
        panic!("no error frame for the waiter: {:?}", &reply[..n]);
    };
    assert_eq!(
        code,
        ErrorCode::ShuttingDown,
        "{}",
        String::from_utf8_lossy(message)
    );
    let status = exit_within(
        &mut server.0,
        Duration::from_secs(5),
        "server still running 5 s after SIGTERM",
    );
    assert!(status.success(), "exit status {status}");
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
}

/// Runs the daemon with `args` and `env`, and returns its standard error
/// up to and including the first line containing `until` (10 s at most).
fn stderr_until(args: &[&str], env: &[(&str, &str)], until: &str) -> String {
    stderr_until_cmd(
        Command::new(env!("CARGO_BIN_EXE_distlockd"))
            .args(args)
            .envs(env.iter().copied()),
        until,
    )
}

fn stderr_until_cmd(cmd: &mut Command, until: &str) -> String {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _server = common::ServerProcess(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(until) {
            return seen;
        }
    }
    panic!("no line with {until:?} on standard error; saw:\n{seen}");
}

fn secret_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("distlockd-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn listening_beyond_loopback_without_auth_logs_a_warning() {
    let log = stderr_until(
        &["server", "--host", "0.0.0.0", "--port", "0"],
        &[],
        "without authentication",
    );
    assert!(log.contains("--auth-secret-file"), "{log}");
}

#[test]
fn the_secret_file_comes_from_the_flag_or_the_environment() {
    let path = secret_file("good", "0123456789abcdef0123\n");
    let path = path.to_str().unwrap();
    let log = stderr_until(
        &["server", "--port", "0", "--auth-secret-file", path],
        &[],
        "authentication required",
    );
    assert!(log.contains(path), "{log}");
    let log = stderr_until(
        &["server", "--port", "0"],
        &[("DISTLOCKD_AUTH_SECRET_FILE", path)],
        "authentication required",
    );
    assert!(log.contains("original protocol refused"), "{log}");
    // The server then refuses unauthenticated requests.
    let (_server, addr) = start_server_cmd(
        Command::new(env!("CARGO_BIN_EXE_distlockd"))
            .args(["server", "--port", "0"])
            .env("DISTLOCKD_AUTH_SECRET_FILE", path),
    );
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"P\x00\x00").unwrap();
    let mut reply = [0u8; 256];
    let n = stream.read(&mut reply).unwrap();
    assert_eq!(reply[0], b'-', "expected an ERROR frame: {:?}", &reply[..n]);
    assert_eq!(u16::from_be_bytes([reply[3], reply[4]]), 8, "code AUTH");
}

#[test]
fn a_short_secret_is_refused_at_start() {
    let path = secret_file("short", "tiny\n");
    let out = Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(["server", "--port", "0", "--auth-secret-file"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is 4 bytes") && err.contains("16 to 255"),
        "{err}"
    );
}

#[test]
fn connections_max_above_the_open_file_limit_logs_a_warning() {
    let script = format!(
        "ulimit -n 64 && exec '{}' server --port 0 --connections-max 1000",
        env!("CARGO_BIN_EXE_distlockd")
    );
    let log = stderr_until_cmd(Command::new("sh").args(["-c", &script]), "open-file limit");
    assert!(
        log.contains("connections_max 1000") && log.contains("limit 64"),
        "{log}"
    );
}

/// Runs the daemon with `args`, expecting it to refuse to start: returns
/// its standard error. A daemon that starts instead is killed after 10 s
/// and the test fails.
fn refused_at_start(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon started with {args:?}; expected it to refuse");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    err
}

/// A value that is not a number in range gives the flag's range, for
/// every numeric flag; a default out of range is called the default.
#[test]
fn numeric_flags_give_their_range() {
    for (flag, range) in [
        (
            "--ttl-default-ms",
            "from 1 to 4294967295, at most --ttl-max-ms",
        ),
        ("--ttl-max-ms", "from 1 to 4294967295"),
        (
            "--legacy-ttl-ms",
            "from 1 to 4294967295, at most --ttl-max-ms",
        ),
        ("--connections-max", "from 1 to 16777216"),
        ("--locks-max", "from 1 to "),
        ("--waiters-per-lock-max", "from 1 to 16777216"),
        ("--output-buffer-size", "from 1140 to 1048576"),
        ("--frame-timeout-ms", "from 1 to 4294967295"),
        ("--write-timeout-ms", "from 1 to 4294967295"),
        ("--idle-timeout-ms", "from 0 to 4294967295"),
        ("--auth-timeout-ms", "from 1 to 4294967295"),
        ("--frame-size-max", "from 261 to 1024"),
        ("--name-len-max", "from 1 to 255"),
        ("--owner-len-max", "from 1 to 64"),
    ] {
        for value in ["18446744073709551616", "-1", "ten"] {
            let err = refused_at_start(&["server", "--port", "0", flag, value]);
            let wanted = format!("{flag} {value}: not a whole number {range}");
            assert!(err.contains(&wanted), "no {wanted:?} in {err}");
        }
    }
    let err = refused_at_start(&[
        "server",
        "--port",
        "0",
        "--ttl-max-ms",
        "400",
        "--legacy-ttl-ms",
        "500",
    ]);
    assert!(
        err.contains(
            "--ttl-default-ms 10000 (its default): out of range; use a value from 1 to 400 (--ttl-max-ms)"
        ),
        "{err}"
    );
}

/// The lock port and the HTTP port on one address would clash with each
/// other: refused before binding, not blamed on "another server".
#[test]
fn the_same_port_for_both_protocols_is_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let err = refused_at_start(&["server", "--port", &port, "--http-port", &port]);
    assert!(
        err.contains(&format!(
            "--port {port} and --http-port {port}: one port cannot serve both"
        )),
        "{err}"
    );
    assert!(!err.contains("another server"), "{err}");
    let err = refused_at_start(&[
        "server",
        "--host",
        "0.0.0.0",
        "--port",
        &port,
        "--http-host",
        "127.0.0.1",
        "--http-port",
        &port,
    ]);
    assert!(err.contains("one port cannot serve both"), "{err}");
}

/// A secret file that cannot be read names where its path came from.
#[test]
fn an_unreadable_secret_file_names_the_flag_or_the_variable() {
    let missing = "/nonexistent/distlockd-secret";
    let out = Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(["server", "--port", "0"])
        .env("DISTLOCKD_AUTH_SECRET_FILE", missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "$DISTLOCKD_AUTH_SECRET_FILE: cannot read the auth secret file {missing}"
        )),
        "{err}"
    );
    let err = refused_at_start(&["server", "--port", "0", "--auth-secret-file", missing]);
    assert!(err.contains("--auth-secret-file: cannot read"), "{err}");
    for (env, args, wanted) in [
        (
            Some(missing),
            &["ping"][..],
            "$DISTLOCKD_AUTH_SECRET_FILE: cannot read",
        ),
        (
            None,
            &["ping", "--auth-secret-file", missing][..],
            "--auth-secret-file: cannot read",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_distlockd"));
        cmd.args(args).env_remove("DISTLOCKD_AUTH_SECRET_FILE");
        if let Some(env) = env {
            cmd.env("DISTLOCKD_AUTH_SECRET_FILE", env);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(wanted), "{args:?}: no {wanted:?} in {err}");
    }
}

/// `--http-host` alone would do nothing: the HTTP endpoint is off without
/// `--http-port`.
#[test]
fn http_host_without_http_port_is_refused() {
    let err = refused_at_start(&["server", "--port", "0", "--http-host", "127.0.0.1"]);
    assert!(err.contains("--http-host needs --http-port"), "{err}");
}

/// Sends one request and reads its reply: `Ok(reply)` as text, `Err` if the
/// server answered with an ERROR.
fn exchange(wire: &mut Wire, request: Request<'_>) -> Result<String, String> {
    let reply = wire
        .conn
        .exchange(&request)
        .unwrap_or_else(|e| panic!("no reply to {request:?}: {e}"));
    match reply {
        Reply::Error { code, message } => Err(format!(
            "ERROR {} {}",
            code.name(),
            String::from_utf8_lossy(message)
        )),
        other => Ok(format!("{other:?}")),
    }
}

#[test]
fn frame_size_max_is_a_flag_checked_against_the_name_and_owner_limits() {
    let err = refused_at_start(&["server", "--port", "0", "--frame-size-max", "100"]);
    assert!(
        err.contains("--frame-size-max 100 is below 336")
            && err.contains("--name-len-max 255")
            && err.contains("raise --frame-size-max to at least 336"),
        "{err}"
    );
    let (_server, addr) = start_server_cmd(Command::new(env!("CARGO_BIN_EXE_distlockd")).args([
        "server",
        "--port",
        "0",
        "--frame-size-max",
        "300",
        "--name-len-max",
        "16",
        "--owner-len-max",
        "16",
    ]));
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // A header announcing a 298-byte body is refused from the header alone.
    stream.write_all(&[b'A', 1, 42]).unwrap();
    let mut reply = [0u8; 256];
    let n = stream.read(&mut reply).unwrap();
    assert_eq!(reply[0], b'-', "{:?}", &reply[..n]);
    assert_eq!(
        u16::from_be_bytes([reply[3], reply[4]]),
        3,
        "FRAME_TOO_LARGE"
    );
}

/// `--legacy-ttl-ms` is checked at start-up like the other limits, from 1
/// to `--ttl-max-ms`, and logged with them.
#[test]
fn legacy_ttl_ms_out_of_range_is_refused_at_start() {
    let err = refused_at_start(&["server", "--port", "0", "--legacy-ttl-ms", "0"]);
    assert!(
        err.contains("--legacy-ttl-ms 0: out of range; use a value from 1 to 86400000"),
        "{err}"
    );
    let err = refused_at_start(&[
        "server",
        "--port",
        "0",
        "--ttl-max-ms",
        "60000",
        "--legacy-ttl-ms",
        "60001",
    ]);
    assert!(
        err.contains(
            "--legacy-ttl-ms 60001: out of range; use a value from 1 to 60000 (--ttl-max-ms), \
             or raise --ttl-max-ms"
        ),
        "{err}"
    );
    // Its default, an hour, is above this --ttl-max-ms too.
    let err = refused_at_start(&["server", "--port", "0", "--ttl-max-ms", "60000"]);
    assert!(
        err.contains("--legacy-ttl-ms 3600000 (its default): out of range"),
        "{err}"
    );
    let log = stderr_until(
        &["server", "--port", "0", "--legacy-ttl-ms", "60000"],
        &[],
        "listening on",
    );
    assert!(log.contains(" legacy_ttl_ms 60000 "), "{log}");
}

/// Small name and owner limits once let `--frame-size-max` go below the
/// client's HELLO or the server's own AUTH, so nobody could authenticate.
#[test]
fn frame_size_max_fits_hello_and_auth_or_the_daemon_refuses_to_start() {
    let secret = "0123456789abcdef0123456789abcdef01234567";
    let path = secret_file("forty", &format!("{secret}\n"));
    let path = path.to_str().unwrap();
    for (names, owners, frame) in [("8", "8", "33"), ("1", "1", "19")] {
        let err = refused_at_start(&[
            "server",
            "--port",
            "0",
            "--auth-secret-file",
            path,
            "--name-len-max",
            names,
            "--owner-len-max",
            owners,
            "--frame-size-max",
            frame,
        ]);
        assert!(
            err.contains(&format!("--frame-size-max {frame} is below 261"))
                && err.contains("HELLO")
                && err.contains("raise --frame-size-max to at least 261"),
            "{err}"
        );
    }
    // At the smallest allowed value, the longest requests of a valid
    // client are all served.
    let floor = longest_request(8, 8).size.to_string();
    let (_server, addr) = start_server_cmd(Command::new(env!("CARGO_BIN_EXE_distlockd")).args([
        "server",
        "--port",
        "0",
        "--auth-secret-file",
        path,
        "--name-len-max",
        "8",
        "--owner-len-max",
        "8",
        "--frame-size-max",
        &floor,
    ]));
    let mut wire = Wire::connect(addr);
    let client_name = [b'c'; CLIENT_NAME_LEN_CEILING];
    let hello = exchange(
        &mut wire,
        Request::Hello {
            version: 1,
            client_name: &client_name,
        },
    )
    .unwrap();
    assert!(
        hello.contains(&format!("frame_size_max: {floor}")),
        "{hello}"
    );
    let auth = Request::Auth {
        secret: secret.as_bytes(),
    };
    assert_eq!(exchange(&mut wire, auth), Ok("Authed".to_owned()));
    let (name, owner) = (b"12345678", b"abcdefgh");
    let status = Request::Status { name, cursor: 0 };
    assert!(exchange(&mut wire, status).unwrap().starts_with("Status"));
    let acquire = Request::Acquire(Acquire {
        name,
        owner,
        ttl_ms: 10_000,
        wait_ms: 10,
        flags: 0,
    });
    let granted = exchange(&mut wire, acquire).unwrap();
    assert!(granted.starts_with("Granted"), "{granted}");
    let extend = Request::Extend {
        name,
        owner,
        token: 1,
        ttl_ms: 10_000,
    };
    let answer = exchange(&mut wire, extend).unwrap();
    assert!(answer.starts_with("NotHeld"), "{answer}");
}

/// Two signals at once (SIGTERM and SIGINT while the process is stopped):
/// the daemon exits at once with status 1, as a second signal asks.
#[test]
fn a_second_signal_exits_at_once_with_status_1() {
    let (mut server, addr) = start_server();
    let mut waiter = TcpStream::connect(addr).unwrap();
    let pid = server.0.id();
    common::send_signal(pid, "STOP");
    common::send_signal(pid, "TERM");
    common::send_signal(pid, "INT");
    common::send_signal(pid, "CONT");
    let status = exit_within(
        &mut server.0,
        Duration::from_secs(5),
        "server still running 5 s after two signals",
    );
    assert_eq!(status.code(), Some(1), "exit status {status}");
    // The connection ends with the process.
    waiter
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(waiter.read(&mut buf), Ok(0) | Err(_)));
}

/// The child's exit status, once it exits; fails the test with `what` if
/// it is still running after `within`.
fn exit_within(child: &mut std::process::Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
