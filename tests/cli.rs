//! The lock CLI (`distlockd acquire|release|extend|status|ping`) as a user
//! runs it: exit codes, human output and `--json`.

#![cfg(feature = "server")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

mod common;

fn run(port: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(args)
        .args(["--port", &port.to_string()])
        .output()
        .unwrap()
}

/// `distlockd ARGS` with `DISTLOCKD_SERVER` set to `server`, or removed.
fn distlockd(server: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distlockd"));
    cmd.args(args).env_remove("DISTLOCKD_AUTH_SECRET_FILE");
    match server {
        Some(value) => cmd.env("DISTLOCKD_SERVER", value),
        None => cmd.env_remove("DISTLOCKD_SERVER"),
    };
    cmd.output().unwrap()
}

/// A loopback address nothing listens on: a port the kernel handed out and
/// that was closed at once.
fn closed_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The value of `"key":` in a one-line JSON object (numbers and strings).
fn json_field(json: &str, key: &str) -> String {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {json}"));
    let rest = &json[at + key.len() + 3..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].trim_matches('"').to_owned()
}

#[test]
fn acquire_status_extend_release_round_trip() {
    let (_server, addr) = common::start_server();
    let port = addr.port();
    let out = run(port, &["acquire", "job", "--ttl", "30s", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    assert_eq!(json_field(&json, "acquired"), "true");
    let owner = json_field(&json, "owner");
    let token = json_field(&json, "token");
    assert_eq!(json_field(&json, "ttl_ms"), "30000");

    // Held: a second acquire fails fast with status 1 and says by whom not.
    let busy = run(port, &["acquire", "job"]);
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        text(&busy.stderr).contains("held by another owner"),
        "{}",
        text(&busy.stderr)
    );
    assert!(
        !text(&busy.stderr).contains(&owner),
        "owners are never shown"
    );

    let status = run(port, &["status", "job", "--json"]);
    let json = text(&status.stdout);
    assert_eq!(json_field(&json, "token"), token);
    assert!(!json.contains(&owner), "{json}");
    let listing = run(port, &["status"]);
    let listing = text(&listing.stdout);
    assert!(
        listing.contains("job") && listing.contains(&token),
        "{listing}"
    );
    assert!(listing.contains("1 of 1 held locks shown"), "{listing}");

    let extend = run(
        port,
        &[
            "extend", "job", "--owner", &owner, "--token", &token, "--ttl", "1m",
        ],
    );
    assert_eq!(extend.status.code(), Some(0), "{}", text(&extend.stderr));
    let remaining: u64 = json_field(
        &text(&run(port, &["status", "job", "--json"]).stdout),
        "remaining_ms",
    )
    .parse()
    .unwrap();
    assert!(remaining > 30_000, "extended to a minute: {remaining}");

    let wrong = run(port, &["release", "job", "--owner", &owner, "--token", "1"]);
    assert_eq!(wrong.status.code(), Some(1));
    let release = run(
        port,
        &["release", "job", "--owner", &owner, "--token", &token],
    );
    assert_eq!(release.status.code(), Some(0), "{}", text(&release.stderr));
    let again = run(
        port,
        &[
            "release", "job", "--owner", &owner, "--token", &token, "--json",
        ],
    );
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(json_field(&text(&again.stdout), "released"), "false");
    let free = run(port, &["status", "job"]);
    assert_eq!(text(&free.stdout).trim(), "job: free");
}

#[test]
fn acquire_waits_when_asked() {
    let (_server, addr) = common::start_server();
    let port = addr.port();
    let first = run(port, &["acquire", "job", "--ttl", "300ms"]);
    assert_eq!(first.status.code(), Some(0));
    // The first hold expires after 300 ms; a 5 s wait gets it.
    let waited = run(port, &["acquire", "job", "--wait", "5s"]);
    assert_eq!(waited.status.code(), Some(0), "{}", text(&waited.stderr));
    let timed_out = run(port, &["acquire", "job", "--wait", "200ms"]);
    assert_eq!(timed_out.status.code(), Some(1));
}

#[test]
fn ping_usage_and_unreachable_exit_codes() {
    let (_server, addr) = common::start_server();
    let ping = run(addr.port(), &["ping", "--json"]);
    assert_eq!(ping.status.code(), Some(0));
    assert_eq!(json_field(&text(&ping.stdout), "ok"), "true");
    let usage = run(addr.port(), &["release", "job"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(text(&usage.stderr).contains("--owner and --token are required"));
    let help = run(addr.port(), &["status", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).contains("Exit status"));
    // Nothing listens on the port once the server is gone.
    drop(_server);
    let down = run(addr.port(), &["ping"]);
    assert_eq!(down.status.code(), Some(3), "{}", text(&down.stderr));
    assert!(text(&down.stderr).contains("nothing is listening"));
}

#[test]
fn server_flag_and_environment_variable_name_the_server() {
    let (_server, addr) = common::start_server();
    let port = addr.port();
    let live = addr.to_string();
    let dead = closed_addr();
    // A name, as --server.
    let named = distlockd(None, &["ping", "--server", &format!("localhost:{port}")]);
    assert_eq!(named.status.code(), Some(0), "{}", text(&named.stderr));
    // The variable; a list is tried in order, the first that accepts used.
    let env = distlockd(Some(&format!("{dead}, {live}")), &["status", "--json"]);
    assert_eq!(env.status.code(), Some(0), "{}", text(&env.stderr));
    assert!(
        text(&env.stdout).contains("\"total\":0"),
        "{}",
        text(&env.stdout)
    );
    // The flag wins over the variable; so do the original's --host/--port.
    let flag = distlockd(Some(&dead), &["status", "--server", &live]);
    assert_eq!(flag.status.code(), Some(0), "{}", text(&flag.stderr));
    let original = distlockd(Some(&dead), &["status", "--port", &port.to_string()]);
    assert_eq!(
        original.status.code(),
        Some(0),
        "{}",
        text(&original.stderr)
    );
    // Set but blank is unset: the default address, not a usage error.
    let blank = distlockd(Some(" "), &["ping", "--timeout", "1s"]);
    assert_ne!(blank.status.code(), Some(2), "{}", text(&blank.stderr));
    assert!(!text(&blank.stderr).contains("DISTLOCKD_SERVER="));
}

#[test]
fn bad_server_addresses_are_usage_errors_naming_the_source() {
    let cases: [(Option<&str>, &[&str], &[&str]); 14] = [
        (
            None,
            &["ping", "--server", "localhost"],
            &["--server localhost", "HOST:PORT"],
        ),
        (
            None,
            &["ping", "--server", "::1:9999"],
            &["--server ::1:9999", "[::1]:9999"],
        ),
        (
            None,
            &["status", "--server", "a:1,b:0"],
            &["--server a:1,b:0", "\"b:0\"", "1-65535"],
        ),
        (
            Some("lockd"),
            &["status"],
            &["DISTLOCKD_SERVER=\"lockd\"", "HOST:PORT"],
        ),
        (
            None,
            &["acquire", "job", "--server", "a:1", "--host", "b"],
            &["--server and --host both given"],
        ),
        (
            None,
            &["ping", "--server", "[::1]"],
            &["--server [::1]: no :PORT after the host; e.g. [::1]:9999"],
        ),
        (
            None,
            &["ping", "--server", "http://127.0.0.1:43317"],
            &["not HOST:PORT: drop the scheme http://, e.g. 127.0.0.1:43317"],
        ),
        (
            None,
            &["ping", "--server", "a:1,"],
            &["--server a:1,: an empty entry; drop the extra comma"],
        ),
        (
            None,
            &["ping", "--server", "h:"],
            &["no port after the ':'"],
        ),
        (
            None,
            &["ping", "--server", "h:0"],
            &["port 0 cannot be connected to"],
        ),
        (
            None,
            &["ping", "--host", "127.0.0.1:43317"],
            &[
                "--host 127.0.0.1:43317: a host without :PORT",
                "put the port in --port (--host 127.0.0.1 --port 43317)",
                "or use --server HOST:PORT",
            ],
        ),
        (
            None,
            &["status", "--host", "http://lockd"],
            &["--host http://lockd: not a host: drop the scheme http://"],
        ),
        (
            None,
            &["ping", "--port", "127.0.0.1:9999"],
            &["--port 127.0.0.1:9999: a port number alone", "--host"],
        ),
        (
            Some("1.2.3.4:5:6"),
            &["ping"],
            &["DISTLOCKD_SERVER=\"1.2.3.4:5:6\": more than one ':'"],
        ),
    ];
    for (env, args, wanted) in cases {
        let out = distlockd(env, args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for w in wanted {
            assert!(stderr.contains(w), "{args:?}: no {w:?} in {stderr}");
        }
    }
}

#[test]
fn pointed_at_the_http_port_it_says_so() {
    let (_server, _addr, http) = common::start_server_with_http(&[]);
    let out = distlockd(None, &["ping", "--server", &http.to_string()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("looks like an HTTP server"), "{stderr}");
    assert!(
        stderr.contains("the lock protocol is on the server's --port"),
        "{stderr}"
    );
}

#[test]
fn pointed_at_nothing_it_names_every_address_and_how_to_start_a_server() {
    let (a, b) = (closed_addr(), closed_addr());
    let out = distlockd(None, &["status", "--server", &format!("{a},{b}")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&format!("{a}: ")), "{stderr}");
    assert!(stderr.contains(&format!("{b}: ")), "{stderr}");
    let port = a.rsplit(':').next().unwrap();
    assert!(
        stderr.contains(&format!("`distlockd server --port {port}`")),
        "{stderr}"
    );
}

#[test]
fn the_server_listens_on_a_host_name() {
    let (_server, addr) =
        common::start_server_cmd(Command::new(env!("CARGO_BIN_EXE_distlockd")).args([
            "server",
            "--host",
            "localhost",
            "--port",
            "0",
        ]));
    assert!(addr.ip().is_loopback(), "{addr}");
    let ping = run(addr.port(), &["ping", "--host", &addr.ip().to_string()]);
    assert_eq!(ping.status.code(), Some(0), "{}", text(&ping.stderr));
    let bad = distlockd(None, &["server", "--host", "no such host", "--port", "0"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("--host no such host: cannot resolve"));
    // A port given with the host: the message says where it goes.
    for (args, wanted) in [
        (
            &["server", "--host", "127.0.0.1:5555"][..],
            "--host 127.0.0.1:5555: a host without :PORT; put the port in --port (--host 127.0.0.1 --port 5555)",
        ),
        (
            &["server", "--http-port", "0", "--http-host", "[::1]:5556"][..],
            "--http-host [::1]:5556: a host without :PORT; put the port in --http-port (--http-host [::1] --http-port 5556)",
        ),
    ] {
        let out = distlockd(None, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains(wanted), "{}", text(&out.stderr));
    }
}

#[test]
fn each_command_has_its_own_help() {
    // Each command's own options, and some of the others' it must not show.
    let verbs: [(&str, &[&str], &[&str]); 5] = [
        (
            "acquire",
            &["--wait", "--ttl", "--owner", "--json"],
            &["--token", "--limit"],
        ),
        (
            "release",
            &["--owner", "--token", "--json"],
            &["--wait", "--ttl", "--limit"],
        ),
        (
            "extend",
            &["--owner", "--token", "--ttl"],
            &["--wait", "--limit"],
        ),
        (
            "status",
            &["--limit", "--json"],
            &["--wait", "--token", "--owner", "--ttl"],
        ),
        (
            "ping",
            &["--json"],
            &["--wait", "--token", "--owner", "--ttl", "--limit"],
        ),
    ];
    for (verb, own, others) in verbs {
        let out = distlockd(None, &[verb, "--help"]);
        assert_eq!(out.status.code(), Some(0));
        let help = text(&out.stdout);
        assert!(help.contains(&format!("Usage: distlockd {verb}")), "{help}");
        let example = help.split("Example:").nth(1).unwrap_or("");
        assert!(
            example.contains(&format!("distlockd {verb}")),
            "{verb}: no example in {help}"
        );
        assert!(help.contains("--server"), "{verb}: {help}");
        for flag in own {
            assert!(help.contains(flag), "{verb} --help lacks {flag}: {help}");
        }
        for flag in others {
            assert!(!help.contains(flag), "{verb} --help shows {flag}: {help}");
            // and the command refuses it
            let out = distlockd(None, &[verb, "job", flag, "1"]);
            assert_eq!(out.status.code(), Some(2), "{verb} {flag}");
        }
    }
    let top = text(&distlockd(None, &["--help"]).stdout);
    for verb in [
        "server",
        "run",
        "acquire",
        "release",
        "extend",
        "status",
        "ping",
        "test distlockd",
        "test compare",
        "test stress",
    ] {
        assert!(
            top.contains(&format!("distlockd {verb}")),
            "no {verb}: {top}"
        );
    }
}

#[test]
fn stray_and_repeated_arguments_are_refused() {
    let cases: [(&[&str], &[&str]); 5] = [
        (&["ping", "extra"], &["ping: unexpected argument \"extra\""]),
        (
            &["status", "a", "b"],
            &["status: unexpected argument \"b\""],
        ),
        (
            &["--version", "extra"],
            &["--version: unexpected argument \"extra\""],
        ),
        (
            &["ping", "--server", "a:1", "--server", "b:2"],
            &["--server given twice", "--server HOST:PORT,HOST:PORT"],
        ),
        (
            &["status", "--port", "1", "--port", "2"],
            &["--port given twice"],
        ),
    ];
    for (args, wanted) in cases {
        let out = distlockd(None, args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        for w in wanted {
            assert!(stderr.contains(w), "{args:?}: no {w:?} in {stderr}");
        }
    }
}

#[test]
fn help_command_prints_a_commands_help() {
    for (args, wanted) in [
        (&["help", "acquire"][..], "Usage: distlockd acquire"),
        (&["help", "run"][..], "Usage: distlockd run"),
        (&["help", "server"][..], "Usage: distlockd server"),
        (
            &["help", "test", "stress"][..],
            "Usage: distlockd test stress",
        ),
        (&["--help", "ping"][..], "Usage: distlockd ping"),
        (&["help"][..], "distlockd help [COMMAND]"),
    ] {
        let out = distlockd(None, args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains(wanted),
            "{args:?}: {}",
            text(&out.stdout)
        );
    }
    let unknown = distlockd(None, &["help", "nosuch"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("nosuch: unknown command"));
}

#[test]
fn cli_messages_speak_in_flags_not_rust() {
    let (_server, addr) = common::start_server();
    let port = addr.port();
    let cases: [(&[&str], &str); 6] = [
        (&["acquire", "job", "--ttl", "0"], "--ttl 0"),
        (&["acquire", "job", "--ttl", "0ms", "--json"], "--ttl 0ms"),
        (
            &[
                "extend", "job", "--owner", "o:1", "--token", "1", "--ttl", "0",
            ],
            "--ttl 0",
        ),
        (&["acquire", "job", "--timeout", "0"], "--timeout 0"),
        (&["acquire", "job", "--owner", ""], "--owner \"\""),
        (&["acquire", "job", "--owner", &"x".repeat(65)], "--owner"),
    ];
    for (args, flag) in cases {
        let out = run(port, args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        for rust in [
            "Duration::",
            "Client::",
            "client_id",
            "builder",
            "ttl(",
            "timeout(",
        ] {
            assert!(!stderr.contains(rust), "{args:?} shows {rust:?}: {stderr}");
        }
    }
    let ttl = text(&run(port, &["acquire", "job", "--ttl", "0"]).stderr);
    assert!(ttl.contains("use e.g. --ttl 10s"), "{ttl}");
}

/// A server started with a secret in a scratch directory of its own (for
/// `test`), with the directory and the secret file's path.
fn start_server_with_secret(
    test: &str,
) -> (
    common::ServerProcess,
    std::net::SocketAddr,
    PathBuf,
    PathBuf,
) {
    let dir = std::env::temp_dir().join(format!("distlockd-cli-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "a secret of at least sixteen bytes\n").unwrap();
    let (server, addr) = common::start_server_cmd(
        Command::new(env!("CARGO_BIN_EXE_distlockd"))
            .args(["server", "--port", "0", "--auth-secret-file"])
            .arg(&secret),
    );
    (server, addr, dir, secret)
}

#[test]
fn ping_without_the_secret_reports_auth_required() {
    let (_server, addr, dir, secret) = start_server_with_secret("ping");
    let server = addr.to_string();
    let refused = distlockd(None, &["ping", "--server", &server]);
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("authentication required"), "{stderr}");
    assert!(stderr.contains("--auth-secret-file"), "{stderr}");
    assert!(
        text(&refused.stdout).is_empty(),
        "{}",
        text(&refused.stdout)
    );
    let ok = distlockd(
        None,
        &[
            "ping",
            "--server",
            &server,
            "--auth-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn commands_authenticate_with_the_secret_file() {
    let (_server, addr, dir, secret) = start_server_with_secret("commands");
    let port = addr.port();
    let refused = run(port, &["acquire", "job"]);
    assert_eq!(refused.status.code(), Some(3));
    assert!(text(&refused.stderr).contains("authentication required"));
    let flag = run(
        port,
        &[
            "acquire",
            "job",
            "--auth-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(flag.status.code(), Some(0), "{}", text(&flag.stderr));
    let env = Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(["status", "job", "--port", &port.to_string()])
        .env("DISTLOCKD_AUTH_SECRET_FILE", &secret)
        .output()
        .unwrap();
    assert_eq!(env.status.code(), Some(0), "{}", text(&env.stderr));
    assert!(text(&env.stdout).contains("job: held"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_acquire_by_the_same_owner_says_it_re_entered() {
    let (_server, addr) = common::start_server();
    let port = addr.port();
    let first = run(port, &["acquire", "job", "--owner", "nightly", "--json"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let first = text(&first.stdout);
    assert_eq!(json_field(&first, "reentered"), "false");
    // The same command from another shell: the protocol's idempotent
    // retry, told apart from a fresh grant.
    let again = run(port, &["acquire", "job", "--owner", "nightly", "--json"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    let again = text(&again.stdout);
    assert_eq!(json_field(&again, "reentered"), "true");
    assert_eq!(json_field(&again, "token"), json_field(&first, "token"));
    // --owner is the owner itself, the one release and extend take.
    assert_eq!(json_field(&first, "owner"), "nightly");
    let human = run(port, &["acquire", "job", "--owner", "nightly"]);
    let human = text(&human.stdout);
    assert!(
        human.contains("re-entered: this owner already held it"),
        "{human}"
    );
    let fresh = run(port, &["acquire", "other-job", "--owner", "nightly"]);
    assert!(!text(&fresh.stdout).contains("re-entered"));
    let token = json_field(&first, "token");
    let release = run(
        port,
        &["release", "job", "--owner", "nightly", "--token", &token],
    );
    assert_eq!(release.status.code(), Some(0), "{}", text(&release.stderr));
}

#[test]
fn not_held_says_only_what_the_server_knows() {
    let (_server, addr) = common::start_server();
    let port = addr.port();
    let out = run(port, &["acquire", "job", "--json"]);
    let json = text(&out.stdout);
    let (owner, token) = (json_field(&json, "owner"), json_field(&json, "token"));
    let release = ["release", "job", "--owner", &owner, "--token", &token];
    assert_eq!(run(port, &release).status.code(), Some(0));
    // A double release: the lock is free; the server cannot say why.
    let twice = run(port, &release);
    assert_eq!(twice.status.code(), Some(1));
    let stderr = text(&twice.stderr);
    assert!(
        stderr.contains("not held: released, expired, or never taken"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("ttl") && !stderr.contains("our hold"),
        "{stderr}"
    );
    let json = text(&run(port, &[&release[..], &["--json"]].concat()).stdout);
    assert_eq!(json_field(&json, "reason"), "FREE");

    // The owner holds it again, under a new token: the old one is stale,
    // and the error does not offer a token as "the most recent".
    let out = run(port, &["acquire", "job", "--owner", "o", "--json"]);
    let json = text(&out.stdout);
    let (owner, token) = (json_field(&json, "owner"), json_field(&json, "token"));
    let stale = (token.parse::<u64>().unwrap() - 1).to_string();
    let out = run(
        port,
        &["release", "job", "--owner", &owner, "--token", &stale],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("this owner holds it under another token"),
        "{stderr}"
    );
    assert!(!stderr.contains("most recent"), "{stderr}");
    assert!(!stderr.contains(&format!("token {token}")), "{stderr}");
    // Another owner's lock.
    let out = run(
        port,
        &[
            "extend", "job", "--owner", "x:0", "--token", &token, "--ttl", "1s",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("another owner holds it"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn wait_forever_waits_past_the_timeout_and_long_waits_are_taken() {
    let (_server, addr) = common::start_server();
    let port = addr.port();
    let held = run(port, &["acquire", "job", "--ttl", "1500ms"]);
    assert_eq!(held.status.code(), Some(0));
    // Granted when the hold expires, 1.5 s on: 7x the I/O timeout.
    let started = std::time::Instant::now();
    let waited = run(
        port,
        &["acquire", "job", "--wait", "forever", "--timeout", "200ms"],
    );
    assert_eq!(waited.status.code(), Some(0), "{}", text(&waited.stderr));
    assert!(started.elapsed() >= std::time::Duration::from_millis(1000));
    // Past an hour, and in days.
    for wait in ["2h", "3d"] {
        let out = run(port, &["acquire", &format!("free-{wait}"), "--wait", wait]);
        assert_eq!(out.status.code(), Some(0), "{wait}: {}", text(&out.stderr));
    }
    // Longer than a finite wait can be: said in the CLI's words.
    let out = run(port, &["acquire", "job", "--wait", "60d"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--wait 60d") && stderr.contains("use forever"),
        "{stderr}"
    );
    assert!(!stderr.contains("WAIT_FOREVER"), "{stderr}");
}

#[test]
fn a_ttl_over_the_servers_maximum_is_refused_in_flag_words() {
    let (_server, addr) = common::start_server_with(&["--ttl-max-ms", "3600000"]);
    let port = addr.port();
    let out = run(port, &["acquire", "job", "--ttl", "2h"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--ttl 2h: this server grants holds of at most 1h")
            && stderr.contains("--ttl-max-ms 3600000"),
        "{stderr}"
    );
    assert!(!stderr.contains("ttl_ms"), "{stderr}");
    let out = run(port, &["acquire", "job", "--ttl", "1h", "--json"]);
    let json = text(&out.stdout);
    let (owner, token) = (json_field(&json, "owner"), json_field(&json, "token"));
    let out = run(
        port,
        &[
            "extend", "job", "--owner", &owner, "--token", &token, "--ttl", "3h",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("--ttl 3h: this server grants holds of at most 1h"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_server_that_bounds_waits_refuses_forever_in_flag_words() {
    let (_server, addr) = common::start_server_with(&["--wait-max-ms", "3600000"]);
    let port = addr.port();
    assert_eq!(run(port, &["acquire", "job"]).status.code(), Some(0));
    for wait in ["forever", "2h"] {
        let out = run(port, &["acquire", "job", "--wait", wait]);
        assert_eq!(out.status.code(), Some(3), "{wait}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("--wait {wait}: this server waits at most 1h"))
                && stderr.contains("--wait-max-ms 3600000"),
            "{stderr}"
        );
    }
}

#[test]
fn with_json_a_failure_is_one_json_object_too() {
    let nothing = closed_addr();
    let out = distlockd(None, &["ping", "--server", &nothing, "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let json = text(&out.stdout);
    assert_eq!(json_field(&json, "ok"), "false", "{json}");
    assert_eq!(json_field(&json, "exit_status"), "3", "{json}");
    assert!(
        json_field(&json, "error").contains("nothing is listening"),
        "{json}"
    );
    assert!(text(&out.stderr).contains("nothing is listening"));
    let (_server, addr) = common::start_server();
    let out = run(addr.port(), &["acquire", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let json = text(&out.stdout);
    assert_eq!(json_field(&json, "exit_status"), "2", "{json}");
    assert!(
        json_field(&json, "error").contains("NAME is missing"),
        "{json}"
    );
}

#[test]
fn a_server_that_does_not_wait_says_so() {
    let (_server, addr) = common::start_server_with(&["--wait-max-ms", "0"]);
    let port = addr.port();
    assert_eq!(run(port, &["acquire", "job"]).status.code(), Some(0));
    let out = run(port, &["acquire", "job", "--wait", "5s"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--wait 5s: this server does not wait for held locks"),
        "{stderr}"
    );
}

#[test]
fn acquire_without_ttl_takes_the_servers_default() {
    let (_server, addr) = common::start_server_with(&["--ttl-default-ms", "300"]);
    let port = addr.port();
    let out = run(port, &["acquire", "job", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_field(&text(&out.stdout), "ttl_ms"), "300");
    let out = run(port, &["acquire", "other", "--ttl", "1m", "--json"]);
    assert_eq!(json_field(&text(&out.stdout), "ttl_ms"), "60000");
}

#[test]
fn with_json_a_usage_error_anywhere_on_the_line_is_one_json_object() {
    let (_server, addr) = common::start_server();
    let port = addr.port();
    for args in [
        &["acquire", "a", "b", "--json"][..],
        &["acquire", "a", "--bogus", "--json"],
        &["acquire", "a", "--ttl", "abc", "--json"],
        &["acquire", "a", "--wait", "60d", "--json"],
        &["release", "a", "--owner", "o", "--token", "abc", "--json"],
        &["status", "--limit", "0", "--json"],
        &["ping", "extra", "--json"],
    ] {
        let out = run(port, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let json = text(&out.stdout);
        assert_eq!(json_field(&json, "exit_status"), "2", "{args:?}: {json}");
        assert_eq!(json_field(&json, "ok"), "false", "{args:?}: {json}");
    }
}

#[test]
fn a_value_option_given_twice_is_refused() {
    let (_server, addr) = common::start_server();
    let port = addr.port();
    for (args, flag) in [
        (
            &["acquire", "a", "--owner", "x", "--owner", "y"][..],
            "--owner",
        ),
        (&["acquire", "a", "--ttl", "1m", "--ttl", "2m"], "--ttl"),
        (&["acquire", "a", "--wait", "1s", "--wait", "2s"], "--wait"),
        (
            &[
                "release", "a", "--owner", "x", "--token", "1", "--token", "2",
            ],
            "--token",
        ),
        (&["status", "--limit", "5", "--limit", "6"], "--limit"),
    ] {
        let out = run(port, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(&format!("{flag} given twice")), "{stderr}");
    }
    // Nothing was taken.
    assert_eq!(text(&run(port, &["status", "a"]).stdout).trim(), "a: free");
}

#[test]
fn name_and_owner_limits_are_told_in_the_clis_words() {
    let (_server, addr) =
        common::start_server_with(&["--name-len-max", "10", "--owner-len-max", "8"]);
    let port = addr.port();
    let out = run(port, &["acquire", "a-much-longer-name"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--name-len-max 10"), "{stderr}");
    assert!(!stderr.contains("name_len_max"), "{stderr}");
    let out = run(port, &["acquire", "job", "--owner", "ninebytes"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--owner \"ninebytes\": 9 bytes") && stderr.contains("--owner-len-max 8"),
        "{stderr}"
    );
    // The generated owner is longer than 8 bytes: say to pass --owner.
    let out = run(port, &["acquire", "job"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("pass --owner with at most 8 bytes"),
        "{stderr}"
    );
    assert_eq!(
        run(port, &["acquire", "job", "--owner", "eight8b!"])
            .status
            .code(),
        Some(0)
    );
}

#[test]
fn nothing_listening_names_the_host_to_start_a_server_on() {
    let out = distlockd(None, &["ping", "--server", "[::1]:1"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("distlockd server --host ::1 --port 1")
            || stderr.contains("Cannot assign")
            || stderr.contains("unreachable"),
        "{stderr}"
    );
}
