//! The lock CLI (`distlockd acquire|release|extend|status|ping`) as a user
//! runs it: exit codes, human output and `--json`.

use std::process::{Command, Output};

mod common;

fn run(port: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(args)
        .args(["--port", &port.to_string()])
        .output()
        .unwrap()
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
fn commands_authenticate_with_the_secret_file() {
    let dir = std::env::temp_dir().join(format!("distlockd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "a secret of at least sixteen bytes\n").unwrap();
    let (_server, addr) = common::start_server_cmd(
        Command::new(env!("CARGO_BIN_EXE_distlockd"))
            .args(["server", "--port", "0", "--auth-secret-file"])
            .arg(&secret),
    );
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
