//! `distlockd run` end to end: a real server process, `run` as a user runs
//! it, and shell commands as the jobs. What is checked: exit status
//! passthrough, the environment, conflicts and waits, release on exit,
//! renewal past several TTLs, the command killed when the lease is lost
//! (renewals failing, or a renewal answered NOT_HELD), SESSION holds (their
//! connection cut, the server paused), and signals passed on to the command.
//!
//! Timing: the precise SIGTERM/SIGKILL schedule is unit-tested on the pure
//! supervisor in src/cli/run.rs; here bounds are loose (seconds), and the
//! commands are shell scripts that wait for marker files, not for time.

#![cfg(feature = "server")]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use distlockd::client::Client;

mod common;
mod proxy;
use common::{send_signal, start_server, start_server_on};
use proxy::Proxy;

/// Bound on any one `run` in these tests.
const RUN_WAIT_MAX: Duration = Duration::from_secs(20);
/// Bound on waiting for a marker file a command writes.
const MARKER_WAIT_MAX: Duration = Duration::from_secs(10);

/// A scratch directory for one test's marker files, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("distlockd-run-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// The path as shell text (the directory has no quotes or spaces).
    fn sh(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `distlockd run NAME --port PORT EXTRA... -- sh -c SCRIPT`.
fn run_cmd(port: u16, name: &str, extra: &[&str], script: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distlockd"));
    cmd.args(["run", name, "--port", &port.to_string()])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A `run` process, killed if the test ends early.
struct Run(Option<Child>);

impl Run {
    fn start(cmd: &mut Command) -> Run {
        Run(Some(cmd.spawn().expect("start distlockd run")))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.0.as_mut().unwrap().try_wait().unwrap()
    }

    /// Waits (bounded) for the exit; status, stdout and stderr.
    fn finish(mut self) -> Output {
        let deadline = Instant::now() + RUN_WAIT_MAX;
        while self.exited().is_none() {
            assert!(
                Instant::now() < deadline,
                "distlockd run did not exit within {RUN_WAIT_MAX:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + MARKER_WAIT_MAX;
    loop {
        if let Ok(content) = fs::read_to_string(path)
            && content.ends_with('\n')
        {
            return content;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not written within {MARKER_WAIT_MAX:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A shell loop that waits (bounded, 10 s) for `file` to exist.
fn wait_script(file: &str) -> String {
    format!("i=0; while [ ! -e {file} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done")
}

/// Whether a process is gone: no /proc entry, or a zombie nobody reaped
/// yet (a killed grandchild whose parent died).
fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn client(port: u16) -> Client {
    Client::builder(format!("127.0.0.1:{port}"))
        .ttl(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[test]
fn exit_status_passes_through() {
    let (_server, addr) = start_server();
    let out = Run::start(&mut run_cmd(addr.port(), "job", &[], "exit 7")).finish();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    // Death by signal N: 128+N, as a shell reports it.
    let out = Run::start(&mut run_cmd(addr.port(), "job", &[], "kill -USR1 $$")).finish();
    assert_eq!(out.status.code(), Some(128 + 10), "{}", text(&out.stderr));
    let out = Run::start(&mut run_cmd(addr.port(), "job", &[], "exit 0")).finish();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn the_command_sees_the_lock_name_and_its_token() {
    let (_server, addr) = start_server();
    let dir = Scratch::new("env");
    let script = format!(
        "echo \"$DISTLOCKD_LOCK $DISTLOCKD_TOKEN\" > {}; {}",
        dir.sh("env"),
        wait_script(&dir.sh("go"))
    );
    let run = Run::start(&mut run_cmd(addr.port(), "nightly", &[], &script));
    let env = wait_for_file(&dir.path("env"));
    let (name, token) = env.trim().split_once(' ').expect("two words");
    assert_eq!(name, "nightly");
    let status = client(addr.port())
        .status("nightly")
        .unwrap()
        .expect("held while the command runs");
    assert_eq!(token, status.token.to_string());
    fs::write(dir.path("go"), "").unwrap();
    let out = run.finish();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_second_run_fails_fast_with_the_conflict_code_or_waits() {
    let (_server, addr) = start_server();
    let port = addr.port();
    let dir = Scratch::new("conflict");
    let first_script = format!(
        "echo started > {}; {}",
        dir.sh("first"),
        wait_script(&dir.sh("go"))
    );
    let first = Run::start(&mut run_cmd(port, "job", &[], &first_script));
    wait_for_file(&dir.path("first"));

    let second = Run::start(&mut run_cmd(
        port,
        "job",
        &["--conflict-exit-code", "42"],
        "echo ran",
    ));
    let out = second.finish();
    assert_eq!(out.status.code(), Some(42), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "",
        "the command must not run without the lock"
    );
    assert!(
        text(&out.stderr).contains("held by another owner"),
        "{}",
        text(&out.stderr)
    );
    let quiet = Run::start(&mut run_cmd(port, "job", &["-q"], "echo ran")).finish();
    assert_eq!(quiet.status.code(), Some(1));
    assert_eq!(text(&quiet.stderr), "");

    // With --wait: runs once the first one is done.
    let mut waiter = Run::start(&mut run_cmd(port, "job", &["--wait", "15s"], "echo ran"));
    thread::sleep(Duration::from_millis(300));
    assert!(
        waiter.exited().is_none(),
        "the waiter ran while the lock was held"
    );
    fs::write(dir.path("go"), "").unwrap();
    assert_eq!(first.finish().status.code(), Some(0));
    let out = waiter.finish();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ran\n");
}

#[test]
fn the_lock_is_released_when_the_command_exits() {
    let (_server, addr) = start_server();
    let out = Run::start(&mut run_cmd(
        addr.port(),
        "job",
        &["--ttl", "30s"],
        "exit 3",
    ))
    .finish();
    assert_eq!(out.status.code(), Some(3));
    // Long before the 30 s TTL: released, not expired.
    let lease = client(addr.port()).try_acquire("job").unwrap();
    assert!(lease.is_some(), "lock still held after run exited");
}

#[test]
fn renewal_holds_the_lock_past_several_ttls() {
    let (_server, addr) = start_server();
    let port = addr.port();
    let dir = Scratch::new("renewal");
    let script = format!("echo up > {}; sleep 2", dir.sh("up"));
    let mut run = Run::start(&mut run_cmd(port, "job", &["--ttl", "600ms"], &script));
    wait_for_file(&dir.path("up"));
    let other = client(port);
    let started = Instant::now();
    let mut checks = 0;
    while run.exited().is_none() {
        assert!(started.elapsed() < RUN_WAIT_MAX, "run did not exit");
        // Taken only if the command has exited: then the lock is free.
        if let Some(lease) = other.try_acquire("job").unwrap() {
            let exited = run.exited().is_some() || {
                thread::sleep(Duration::from_millis(200));
                run.exited().is_some()
            };
            assert!(
                exited,
                "another client took the lock after {:?} while the command ran",
                started.elapsed()
            );
            other.release_lease(&lease).unwrap();
            break;
        }
        checks += 1;
        thread::sleep(Duration::from_millis(50));
    }
    let out = run.finish();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(started.elapsed() >= Duration::from_millis(1800));
    assert!(checks >= 10, "only {checks} checks while held");
}

/// The server dies: renewals fail, and `run` must stop the command, a
/// shell that ignores SIGTERM and its child, with SIGKILL.
#[test]
fn renewals_failing_kill_the_command_group() {
    let (mut server, addr) = start_server();
    let dir = Scratch::new("lost");
    let script = format!(
        "trap '' TERM; echo $$ > {}; sleep 30 & echo $! > {}; wait; wait",
        dir.sh("shell"),
        dir.sh("sleeper")
    );
    // Long enough that the first renewal's failure (after the client's
    // retries, about 0.4 s) is reported seconds before SIGTERM is due.
    let ttl = Duration::from_secs(6);
    let run = Run::start(&mut run_cmd(
        addr.port(),
        "job",
        &["--ttl", "6s", "--kill-grace", "300ms"],
        &script,
    ));
    let shell: u32 = wait_for_file(&dir.path("shell")).trim().parse().unwrap();
    let sleeper: u32 = wait_for_file(&dir.path("sleeper")).trim().parse().unwrap();
    server.0.kill().unwrap();
    let killed_at = Instant::now();
    // The last renewal was sent before the kill, so the server could not
    // have given the lock away before killed_at + TTL; run aims to have the
    // group dead TTL/10 before that. Loose bound: another TTL of slack.
    while !(process_gone(shell) && process_gone(sleeper)) {
        assert!(
            killed_at.elapsed() < 2 * ttl,
            "the command group outlived the lease: shell gone {}, sleeper gone {}",
            process_gone(shell),
            process_gone(sleeper)
        );
        thread::sleep(Duration::from_millis(10));
    }
    let out = run.finish();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("lost lock \"job\""), "{stderr}");
    // It says what it saw: renewals failing, not a pause.
    assert!(
        stderr
            .contains("no renewal was confirmed before the lease could run out: renewals failed: "),
        "{stderr}"
    );
    assert!(!stderr.contains("no renewal was sent in time"), "{stderr}");
    // The grace period, then SIGKILL to the shell that ignored SIGTERM.
    assert!(stderr.contains("SIGKILL within"), "{stderr}");
    assert!(stderr.contains("SIGKILL to its process group"), "{stderr}");
}

/// The server restarts and forgets the hold: the next renewal is answered
/// NOT_HELD and the command gets SIGTERM at once, long before the lease
/// could have run out.
#[test]
fn a_renewal_answered_not_held_terminates_the_command_at_once() {
    let (mut server, addr) = start_server();
    let port = addr.port();
    let dir = Scratch::new("notheld");
    let script = format!(
        "trap 'echo term > {}; exit 0' TERM; echo up > {}; {}",
        dir.sh("term"),
        dir.sh("up"),
        wait_script(&dir.sh("never"))
    );
    let run = Run::start(&mut run_cmd(
        port,
        "job",
        &["--ttl", "6s", "--kill-grace", "1s"],
        &script,
    ));
    wait_for_file(&dir.path("up"));
    server.0.kill().unwrap();
    let _ = server.0.wait();
    let _restarted = start_server_on(port, &[]);
    wait_for_file(&dir.path("term"));
    let out = run.finish();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("not held"), "{stderr}");
    assert!(!stderr.contains("no renewal was confirmed"), "{stderr}");
    // Plain words, not the protocol's reply name.
    assert!(
        stderr.contains(
            "a renewal found that this run no longer holds it: the server says it is not held"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("NOT_HELD"), "{stderr}");
}

#[test]
fn signals_sent_to_run_reach_the_command() {
    let (_server, addr) = start_server();
    let dir = Scratch::new("signals");
    let script = format!(
        "trap 'echo got > {}; exit 0' TERM; echo up > {}; {}",
        dir.sh("marker"),
        dir.sh("up"),
        wait_script(&dir.sh("never"))
    );
    let run = Run::start(&mut run_cmd(addr.port(), "job", &[], &script));
    wait_for_file(&dir.path("up"));
    send_signal(run.pid(), "TERM");
    let out = run.finish();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(wait_for_file(&dir.path("marker")), "got\n");
    assert!(client(addr.port()).try_acquire("job").unwrap().is_some());
}

/// `--session`: if `run` itself is killed, the server frees the lock at
/// once instead of after the TTL.
#[test]
fn a_session_hold_ends_when_run_is_killed() {
    let (_server, addr) = start_server();
    let dir = Scratch::new("session");
    let script = format!(
        "echo $$ > {}; {}",
        dir.sh("pid"),
        wait_script(&dir.sh("never"))
    );
    let mut run = Run::start(&mut run_cmd(
        addr.port(),
        "job",
        &["--session", "--ttl", "60s"],
        &script,
    ));
    let command: u32 = wait_for_file(&dir.path("pid")).trim().parse().unwrap();
    run.0.as_mut().unwrap().kill().unwrap();
    let _ = run.0.as_mut().unwrap().wait();
    // The orphaned command is ours to stop.
    send_signal(command, "KILL");
    let other = client(addr.port());
    let deadline = Instant::now() + Duration::from_secs(10);
    while other.try_acquire("job").unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "a SESSION hold outlived run's connection"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `--session`, and run's connection is cut (as by a network failure): the
/// server frees the lock at once and a waiter gets it. run notices the
/// closed connection itself (no renewal is due for 20 s, and the TTL is
/// 60 s), stops the command at once and says why. The command is not
/// guaranteed to be gone before the waiter's grant; it is stopped promptly
/// after.
#[test]
fn a_session_connection_cut_stops_the_command_at_once() {
    let (_server, addr) = start_server();
    let proxy = Proxy::start(addr);
    let dir = Scratch::new("session-cut");
    let script = format!(
        "trap 'echo term > {}; exit 0' TERM; echo up > {}; {}",
        dir.sh("term"),
        dir.sh("up"),
        wait_script(&dir.sh("never"))
    );
    let run = Run::start(&mut run_cmd(
        proxy.addr().port(),
        "job",
        &["--session", "--ttl", "60s", "--kill-grace", "1s"],
        &script,
    ));
    wait_for_file(&dir.path("up"));
    let port = addr.port();
    let waiter = thread::spawn(move || client(port).acquire("job", Duration::from_secs(15)));
    thread::sleep(Duration::from_millis(200)); // let the waiter queue

    proxy.cut();
    let cut_at = Instant::now();
    let granted = waiter.join().unwrap().expect("the waiter is granted");
    wait_for_file(&dir.path("term"));
    let stopped_after = cut_at.elapsed();
    let out = run.finish();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("the SESSION connection was lost"),
        "{stderr}"
    );
    assert!(
        stderr.contains("released the lock at the disconnect"),
        "{stderr}"
    );
    assert!(!stderr.contains("longer ttl"), "{stderr}");
    assert!(
        stopped_after < Duration::from_secs(10),
        "the command was stopped {stopped_after:?} after the cut"
    );
    // run's release after the loss leaves the new owner alone.
    let status = client(port).status("job").unwrap().expect("held");
    assert_eq!(status.token, granted.token());
}

/// `--session` with a 200 ms I/O timeout, and the server stopped (SIGSTOP)
/// for 2.5 s, longer than the renewal interval (2 s): the renewal sent
/// meanwhile waits for its reply until the lease's end instead of timing
/// out, which would close the connection and end the hold. Nothing is
/// lost: the command finishes and the hold is the same one throughout.
#[test]
fn a_session_hold_survives_a_server_pause_shorter_than_the_lease() {
    let (server, addr) = start_server();
    let dir = Scratch::new("session-pause");
    let script = format!(
        "echo up > {}; {}; echo done > {}",
        dir.sh("up"),
        wait_script(&dir.sh("go")),
        dir.sh("done")
    );
    let run = Run::start(&mut run_cmd(
        addr.port(),
        "job",
        &[
            "--session",
            "--ttl",
            "6s",
            "--kill-grace",
            "200ms",
            "--timeout",
            "200ms",
        ],
        &script,
    ));
    wait_for_file(&dir.path("up"));
    let token = client(addr.port()).status("job").unwrap().unwrap().token;
    let pid = server.0.id();
    send_signal(pid, "STOP");
    thread::sleep(Duration::from_millis(2500));
    send_signal(pid, "CONT");
    thread::sleep(Duration::from_millis(300));
    let status = client(addr.port()).status("job").unwrap();
    assert_eq!(status.map(|s| s.token), Some(token), "the hold changed");
    fs::write(dir.path("go"), "").unwrap();
    let out = run.finish();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(wait_for_file(&dir.path("done")), "done\n");
    assert!(!stderr.contains("lost lock"), "{stderr}");
}

#[test]
fn an_unreachable_server_exits_3_without_running_the_command() {
    let (mut server, addr) = start_server();
    server.0.kill().unwrap();
    let _ = server.0.wait();
    let out = Run::start(&mut run_cmd(addr.port(), "job", &[], "echo ran")).finish();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn bad_usage_exits_2_and_help_exits_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(["run", "job"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("COMMAND is missing"));
    let out = Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("--kill-grace"));
}

/// `distlockd run NAME --port PORT ARGS...`, output captured.
fn run_args(port: u16, name: &str, args: &[&str]) -> Output {
    run_raw(port, &[&[name][..], args].concat())
}

#[test]
fn dash_c_runs_a_shell_command_as_flock_does() {
    let (_server, addr) = start_server();
    let out = run_args(
        addr.port(),
        "job",
        &["-c", "echo \"$0 $# $DISTLOCKD_LOCK\"; exit 6"],
    );
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/bin/sh 0 job\n");
    // Not with a command as well.
    let both = run_args(addr.port(), "job", &["-c", "echo ran", "--", "echo", "ran"]);
    assert_eq!(both.status.code(), Some(2));
    assert!(
        text(&both.stderr).contains("-c and a COMMAND"),
        "{}",
        text(&both.stderr)
    );
    assert_eq!(text(&both.stdout), "");
}

#[test]
fn flock_short_forms_wait_and_set_the_conflict_code() {
    let (_server, addr) = start_server();
    let port = addr.port();
    let holder = client(port);
    let lease = holder.try_acquire("job").unwrap().expect("free at first");
    let waited = Instant::now();
    let busy = run_args(port, "job", &["-w", "0.3", "-E", "7", "--", "echo", "ran"]);
    assert_eq!(busy.status.code(), Some(7), "{}", text(&busy.stderr));
    assert!(waited.elapsed() >= Duration::from_millis(300), "-w waited");
    assert_eq!(text(&busy.stdout), "");
    let nonblock = run_args(port, "job", &["-n", "-E0", "--", "echo", "ran"]);
    assert_eq!(
        nonblock.status.code(),
        Some(0),
        "{}",
        text(&nonblock.stderr)
    );
    assert_eq!(text(&nonblock.stdout), "");
    holder.release_lease(&lease).unwrap();
    let free = run_args(port, "job", &["-x", "-w", "5s", "--", "echo", "ran"]);
    assert_eq!(free.status.code(), Some(0), "{}", text(&free.stderr));
    assert_eq!(text(&free.stdout), "ran\n");
}

#[test]
fn shared_locks_are_refused_not_taken_exclusive() {
    let (_server, addr) = start_server();
    let out = run_args(addr.port(), "job", &["-s", "--", "echo", "ran"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("shared locks are not supported"),
        "{stderr}"
    );
    assert!(stderr.contains("drop -s"), "{stderr}");
    assert_eq!(text(&out.stdout), "");
    assert!(client(addr.port()).status("job").unwrap().is_none());
}

#[test]
fn help_shows_the_flock_forms() {
    let out = Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = text(&out.stdout);
    for form in [
        "-w, --wait",
        "-E, --conflict-exit-code",
        "-c, --command",
        "-s, --shared",
    ] {
        assert!(help.contains(form), "no {form} in {help}");
    }
    assert!(help.contains("--server"), "{help}");
    // Every duration form that works, days and forever included.
    let durations = help
        .split("Durations:")
        .nth(1)
        .and_then(|d| d.split("\n\n").next())
        .unwrap_or_default();
    for form in [
        "ms, s, m, h or d",
        "1.5s",
        "2d",
        "--wait also takes forever",
    ] {
        assert!(durations.contains(form), "no {form} in {durations}");
    }
    assert!(
        help.split("Examples:")
            .nth(1)
            .is_some_and(|e| e.contains("-c '"))
    );
}

#[test]
fn wait_forever_runs_the_command_once_the_lock_frees() {
    let (_server, addr) = start_server();
    let port = addr.port();
    let holder = client(port);
    let lease = holder.try_acquire("job").unwrap().expect("free at first");
    let waiter = thread::spawn(move || {
        run_args(
            port,
            "job",
            &["-w", "forever", "--timeout", "200ms", "--", "echo", "ran"],
        )
    });
    // Queued, and still waiting at 5x its I/O timeout.
    let deadline = Instant::now() + Duration::from_secs(5);
    while holder.status("job").unwrap().map(|s| s.waiters) != Some(1) {
        assert!(Instant::now() < deadline, "run never queued");
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_secs(1));
    assert!(!waiter.is_finished(), "run stopped waiting");
    holder.release_lease(&lease).unwrap();
    let out = waiter.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ran\n");
}

#[test]
fn a_server_bounding_waits_refuses_run_wait_forever_in_flag_words() {
    let (_server, addr) = common::start_server_with(&["--wait-max-ms", "1000"]);
    let port = addr.port();
    let holder = client(port);
    let _lease = holder.try_acquire("job").unwrap().expect("free at first");
    let out = run_args(port, "job", &["--wait", "forever", "--", "echo", "ran"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--wait forever: this server waits at most 1s")
            && stderr.contains("--wait-max-ms 1000"),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "");
}

/// A `run` stopped (SIGSTOP) past its lease sent no renewal at all: it must
/// not claim that renewals failed, but say that none was sent in time; and
/// woken past both deadlines, it must not announce a grace period it
/// cannot give.
#[test]
fn a_paused_run_says_no_renewal_was_confirmed_not_that_renewals_failed() {
    let (_server, addr) = start_server();
    let port = addr.port();
    let mut run = Run::start(&mut run_cmd(port, "job", &["--ttl", "1s"], "sleep 20"));
    let holder = client(port);
    let deadline = Instant::now() + Duration::from_secs(5);
    while holder.status("job").unwrap().is_none() {
        assert!(Instant::now() < deadline, "run never took the lock");
        thread::sleep(Duration::from_millis(10));
    }
    send_signal(run.pid(), "STOP");
    // Past the 1 s lease; another owner takes the lock meanwhile.
    thread::sleep(Duration::from_millis(2500));
    let taken = holder.try_acquire("job").unwrap();
    send_signal(run.pid(), "CONT");
    assert!(taken.is_some(), "the lease of the stopped run had ended");
    let _ = run.exited();
    let out = run.finish();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(
            "no renewal was confirmed before the lease could run out: no renewal was sent in time: this process (or its renewal thread) was held up"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("renewals failed"), "{stderr}");
    assert!(
        stderr.contains(
            "SIGTERM and SIGKILL at once to its process group, no grace period: the lease could have ended already"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("SIGKILL within"), "{stderr}");
    assert!(
        !stderr.contains("still running at the SIGKILL deadline"),
        "{stderr}"
    );
}

/// `distlockd run --port PORT ARGS...` (no NAME of its own unless in
/// ARGS), output captured.
fn run_raw(port: u16, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distlockd"));
    cmd.args(["run", "--port", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Run::start(&mut cmd).finish()
}

/// NAME left out: what follows `--` is the command, never the NAME, so
/// nothing is locked or run, and the usage error says what is missing.
#[test]
fn after_dashes_nothing_is_taken_for_the_name() {
    let (_server, addr) = start_server();
    let port = addr.port();
    let dir = Scratch::new("no-name");
    let ran = dir.sh("ran");
    let script = format!("echo ran > {ran}");
    let cases: [&[&str]; 4] = [
        &["-w", "1s", "--", "sh", "-c", &script],
        &["--", "sh", "-c", &script],
        &["-c", &script],
        &["-c", &script, "--", "job"],
    ];
    for args in cases {
        let out = run_raw(port, args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("the lock NAME is missing"),
            "{args:?}: {stderr}"
        );
        assert!(!dir.path("ran").exists(), "{args:?} ran the command");
    }
    let holder = client(port);
    for name in ["sh", "job", "-c"] {
        assert!(holder.status(name).unwrap().is_none(), "{name} was locked");
    }
    // NAME and no command.
    for args in [&["job"][..], &["job", "--"], &["job", "-w", "1s", "--"]] {
        let out = run_raw(port, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains("COMMAND is missing"), "{args:?}");
    }
}

/// A repeated option would silently use its last value: refused, naming it.
#[test]
fn a_repeated_option_or_nonblock_with_wait_is_refused() {
    let (_server, addr) = start_server();
    let port = addr.port();
    let dir = Scratch::new("twice");
    let ran = format!("echo ran > {}", dir.sh("ran"));
    let cases: [(&[&str], &str); 7] = [
        (
            &["-E", "5", "-E", "6", "-c", &ran],
            "-E/--conflict-exit-code given twice",
        ),
        (
            &["-w", "5s", "-w", "6s", "-c", &ran],
            "-w/--wait given twice",
        ),
        (
            &["--ttl", "5s", "--ttl", "6s", "-c", &ran],
            "--ttl given twice",
        ),
        (&["-c", "true", "-c", &ran], "-c/--command given twice"),
        (
            &["--kill-grace", "1s", "--kill-grace", "2s", "-c", &ran],
            "--kill-grace given twice",
        ),
        (
            &["-n", "-w", "5s", "-c", &ran],
            "-n/--nonblock and -w/--wait 5s both given",
        ),
        (
            &["-w", "5s", "-n", "-c", &ran],
            "-n/--nonblock and -w/--wait 5s both given",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["job"];
        all.extend_from_slice(args);
        let out = run_raw(port, &all);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!dir.path("ran").exists(), "{args:?} ran the command");
    }
    assert!(client(port).status("job").unwrap().is_none());
}

/// Without --ttl, run's default TTL (30 s) is capped to the server's longest
/// hold, so the defaults work with any server; a --ttl the user gave is
/// never changed, and its refusal names it.
#[test]
fn run_defaults_work_with_a_server_granting_shorter_holds() {
    let (_server, addr) = common::start_server_with(&[
        "--ttl-max-ms",
        "5000",
        "--ttl-default-ms",
        "5000",
        "--legacy-ttl-ms",
        "5000",
    ]);
    let port = addr.port();
    let out = run_args(port, "job", &["-c", "echo ran"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ran\n");
    let out = run_args(port, "job", &["--ttl", "10s", "-c", "echo ran"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("--ttl 10s: this server grants holds of at most 5s"),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "");
    // A --kill-grace too long for the capped TTL says where the TTL came from.
    let out = run_args(port, "job", &["--kill-grace", "3s", "-c", "echo ran"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--kill-grace 3s: over half of the TTL, 5s (run's default 30s capped"),
        "{stderr}"
    );
    assert_eq!(text(&out.stdout), "");
}
