//! The lock CLI: `distlockd acquire|release|extend|status|ping`, for
//! scripts and operators. Human-readable output by default, one JSON object
//! with `--json`. Exit codes: see [`super`].

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::{
    Arg, Asked, CONNECT_OPTIONS_HELP, ConnectOptions, EXIT_NOT_OBTAINED, EXIT_OK, EXIT_UNAVAILABLE,
    EXIT_USAGE, positive_duration_value, refusal_in_flags, string_value, wait_value,
};
use crate::client::{Client, Error, Lease, LockOptions, LockStatus};
use crate::json::string as json_string;
use crate::protocol::OWNER_LEN_CEILING;

/// Locks `status` lists when no `--limit` is given.
pub const STATUS_LIMIT_DEFAULT: usize = 100;

const ACQUIRE_USAGE: &str = "\
Usage: distlockd acquire NAME [options]

Takes lock NAME and exits, leaving it held until `distlockd release` releases
it or its TTL runs out (`distlockd extend` gives it a new TTL); prints the
owner and token that release and extend need.

Options:
  --wait DURATION|forever  wait this long for a held lock, in the server's
                           FIFO queue (default 0: fail at once); 500ms, 10s,
                           5m, 2h, 3d, seconds, or forever (no deadline)
  --ttl DURATION           the hold's TTL (default: the server's, 10s unless
                           it runs with --ttl-default-ms)
  --owner OWNER            hold it as this owner, 1-64 bytes (default: a
                           generated one); release and extend take the same;
                           acquiring a lock OWNER holds re-enters that hold
  --json                   one JSON object on standard output
  -h, --help               print this help

Example:
  distlockd acquire nightly-report --ttl 10m --json
";

const RELEASE_USAGE: &str = "\
Usage: distlockd release NAME --owner OWNER --token TOKEN [options]

Releases lock NAME, held under the owner and token `distlockd acquire`
printed.

Options:
  --owner OWNER            the owner acquire printed
  --token TOKEN            the token acquire printed
  --json                   one JSON object on standard output
  -h, --help               print this help

Example:
  distlockd release nightly-report --owner 3f2a-18c4-0:1 --token 42
";

const EXTEND_USAGE: &str = "\
Usage: distlockd extend NAME --owner OWNER --token TOKEN --ttl DURATION [options]

Gives the hold on lock NAME a new TTL, counted from now.

Options:
  --owner OWNER            the owner acquire printed
  --token TOKEN            the token acquire printed
  --ttl DURATION           the hold's new TTL; 500ms, 10s, 5m, 1h or seconds
  --json                   one JSON object on standard output
  -h, --help               print this help

Example:
  distlockd extend nightly-report --owner 3f2a-18c4-0:1 --token 42 --ttl 10m
";

const STATUS_USAGE: &str = "\
Usage: distlockd status [NAME] [options]

Shows whether lock NAME is held, its token, the time left and the number of
waiters; without NAME, the same for every held lock (up to --limit). Owners
are never shown.

Options:
  --limit N                most locks to list without NAME (default 100)
  --json                   one JSON object on standard output
  -h, --help               print this help

Example:
  distlockd status --server lockd.internal:9999
";

const PING_USAGE: &str = "\
Usage: distlockd ping [options]

Checks that the server answers and serves this client (with the secret, if
it requires one); prints its version and the round-trip time.

Options:
  --json                   one JSON object on standard output
  -h, --help               print this help

Example:
  DISTLOCKD_SERVER=lockd.internal:9999 distlockd ping
";

/// The usage text and the options (besides the connection options) of each
/// lock command: an option is accepted only by the commands it is for.
fn usage_and_options(command: &str) -> (&'static str, &'static [&'static str]) {
    match command {
        "acquire" => (ACQUIRE_USAGE, &["wait", "ttl", "owner", "json"]),
        "release" => (RELEASE_USAGE, &["owner", "token", "json"]),
        "extend" => (EXTEND_USAGE, &["owner", "token", "ttl", "json"]),
        "status" => (STATUS_USAGE, &["limit", "json"]),
        "ping" => (PING_USAGE, &["json"]),
        _ => unreachable!("main dispatches only the lock commands"),
    }
}

/// Each command's exit statuses, for its help.
fn exit_codes(command: &str) -> &'static str {
    match command {
        "acquire" => {
            "Exit status: 0 acquired (or re-entered); 1 held by another owner (at once,
or when --wait ran out); 2 bad usage; 3 the server could not be reached or
refused the request. With --json, exit 1 prints {\"acquired\":false,...},
other failures {\"ok\":false,...}."
        }
        "release" | "extend" => {
            "Exit status: 0 done; 1 not held by this owner under this token (released,
expired, never taken, or held by another owner or under another token);
2 bad usage; 3 the server could not be reached or refused the request. With
--json, exit 1 prints {\"released\":false,...,\"reason\":...} (or \"extended\"),
other failures {\"ok\":false,...}."
        }
        _ => {
            "Exit status: 0 done; 2 bad usage; 3 the server could not be reached or
refused the request. With --json, failures print {\"ok\":false,...} too."
        }
    }
}

/// The parsed command line of one lock command.
#[derive(Default)]
struct Args {
    command: String,
    connect: ConnectOptions,
    name: Option<String>,
    wait: Duration,
    ttl: Option<Duration>,
    owner: Option<String>,
    token: Option<u64>,
    limit: Option<usize>,
    json: bool,
}

/// Runs one lock command; `command` is its name.
pub fn main(command: &str, parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    let mut args = Args {
        command: command.to_owned(),
        ..Args::default()
    };
    match parse(command, parser, &mut args) {
        Ok(true) => {}
        Ok(false) => return Ok(ExitCode::SUCCESS),
        Err(message) => {
            // A script that asked for JSON gets one object, whether or not
            // the parser reached `--json` before the mistake.
            args.json |= parser
                .raw_args()
                .is_ok_and(|mut rest| rest.any(|a| a == "--json"));
            return Ok(failed(&args, EXIT_USAGE, &message));
        }
    }
    let outcome = match command {
        "acquire" => acquire(&args),
        "release" => release(&args),
        "extend" => extend(&args),
        "status" => status(&args),
        "ping" => ping(&args),
        _ => unreachable!("main dispatches only the lock commands"),
    };
    match outcome {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(Failure::Usage(message)) => {
            let message = format!("{message}; run `distlockd {command} --help`");
            Ok(failed(&args, EXIT_USAGE, &message))
        }
        Err(Failure::Client(e)) => {
            let code = exit_code(&e);
            Ok(failed(&args, code, &args.connect.describe(&e)))
        }
        Err(Failure::Refused(message)) => Ok(failed(&args, EXIT_UNAVAILABLE, &message)),
    }
}

/// Options that take a value: each may be given once.
const VALUE_FLAGS: [&str; 5] = ["wait", "ttl", "owner", "token", "limit"];

/// Parses the command line into `args`. `Ok(false)`: help was printed.
fn parse(command: &str, parser: &mut lexopt::Parser, args: &mut Args) -> Result<bool, String> {
    let (usage, options) = usage_and_options(command);
    let mut seen: Vec<&'static str> = Vec::new();
    while let Some(arg) = Arg::next(parser)? {
        if args.connect.parse(&arg, parser)? {
            continue;
        }
        let flag = match &arg {
            Arg::Long(flag) if flag == "help" || options.contains(&flag.as_str()) => flag.as_str(),
            Arg::Short('h') => "help",
            _ => "",
        };
        if let Some(&once) = VALUE_FLAGS.iter().find(|&&f| f == flag) {
            if seen.contains(&once) {
                return Err(format!("--{once} given twice; give it once"));
            }
            seen.push(once);
        }
        match flag {
            "wait" => args.wait = wait_value(parser, "--wait")?,
            "ttl" => {
                args.ttl = Some(positive_duration_value(
                    parser,
                    "--ttl",
                    "a hold needs",
                    "10s",
                )?)
            }
            "owner" => {
                let v = string_value(parser, "--owner")?;
                if !(1..=OWNER_LEN_CEILING).contains(&v.len()) {
                    let fix = match command {
                        _ if v.is_empty() => "give at least 1 byte",
                        "acquire" => "use a shorter one",
                        _ => "use the owner `distlockd acquire` printed",
                    };
                    return Err(format!(
                        "--owner {v:?}: {} bytes, not an owner (1 to {OWNER_LEN_CEILING} bytes); {fix}",
                        v.len()
                    ));
                }
                args.owner = Some(v);
            }
            "token" => {
                let v = string_value(parser, "--token")?;
                args.token = Some(
                    v.parse()
                        .map_err(|_| format!("--token {v}: not a token (a whole number)"))?,
                );
            }
            "limit" => {
                let v = string_value(parser, "--limit")?;
                args.limit = Some(
                    v.parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("--limit {v}: not a whole number of 1 or more"))?,
                );
            }
            "json" => args.json = true,
            "help" => {
                let codes = exit_codes(command);
                println!("{usage}\nConnection options:\n{CONNECT_OPTIONS_HELP}\n\n{codes}");
                return Ok(false);
            }
            _ => match arg {
                // ping takes no NAME; the others one.
                Arg::Value(v) if args.name.is_none() && command != "ping" => {
                    args.name = Some(
                        v.into_string()
                            .map_err(|v| format!("lock name {v:?}: not valid UTF-8"))?,
                    )
                }
                other => {
                    return Err(format!(
                        "{}; run `distlockd {command} --help`",
                        other.unexpected()
                    ));
                }
            },
        }
    }
    Ok(true)
}

/// Reports a request that failed on standard error and, with `--json`,
/// as one JSON object on standard output too, so that a script reading
/// JSON always gets one: `{"ok":false,"exit_status":N,"error":"..."}`.
fn failed(args: &Args, code: u8, message: &str) -> ExitCode {
    eprintln!("distlockd {}: {message}", args.command);
    if args.json {
        print_failure_json(code, message);
    }
    ExitCode::from(code)
}

fn print_failure_json(code: u8, message: &str) {
    println!(
        "{{\"ok\":false,\"exit_status\":{code},\"error\":{}}}",
        json_string(message)
    );
}

enum Failure {
    Usage(String),
    Client(Error),
    /// The server refused the request; the message says why in flag words.
    Refused(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Client(e)
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Usage(message)
    }
}

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::AcquireTimeout { .. } | Error::NotHeld { .. } => EXIT_NOT_OBTAINED,
        Error::InvalidArgument { .. } => EXIT_USAGE,
        _ => EXIT_UNAVAILABLE,
    }
}

fn name(args: &Args) -> Result<&str, Failure> {
    args.name
        .as_deref()
        .ok_or_else(|| Failure::Usage("the lock NAME is missing".into()))
}

fn owner_and_token(args: &Args) -> Result<(&str, u64), Failure> {
    match (&args.owner, args.token) {
        (Some(owner), Some(token)) => Ok((owner, token)),
        _ => Err(Failure::Usage(
            "--owner and --token are required: use the ones `distlockd acquire` printed".into(),
        )),
    }
}

fn acquire(args: &Args) -> Result<u8, Failure> {
    let name = name(args)?;
    let client = args.connect.builder()?.build()?;
    let mut options = LockOptions::new().wait(args.wait);
    options = match args.ttl {
        Some(ttl) => options.ttl(ttl),
        None => options.ttl_server_default(),
    };
    if let Some(owner) = &args.owner {
        // The owner itself, the one release and extend take.
        options = options.owner(owner.clone());
    }
    let lease = match client.acquire_with(name, &options) {
        Ok(lease) => Some(lease),
        Err(Error::AcquireTimeout { .. }) => None,
        Err(e) => return Err(refused(&client, args, &e).unwrap_or(e.into())),
    };
    let Some(lease) = lease else {
        let status = client.status(name)?;
        if args.json {
            println!(
                "{{\"acquired\":false,\"name\":{},\"held\":{}}}",
                json_string(name),
                status.as_ref().map_or("null".to_owned(), status_json)
            );
        } else {
            let left = status.map_or(String::new(), |s| {
                format!(
                    " (token {}, {} left, {} waiting)",
                    s.token,
                    human(s.remaining),
                    s.waiters
                )
            });
            let waited = match args.wait.is_zero() {
                true => String::new(),
                false => format!("; waited {}", super::format_wait(args.wait)),
            };
            eprintln!(
                "distlockd acquire: {}: held by another owner{left}{waited}",
                shown(name)
            );
        }
        return Ok(EXIT_NOT_OBTAINED);
    };
    if args.json {
        println!(
            "{{\"acquired\":true,\"reentered\":{},\"name\":{},\"owner\":{},\"token\":{},\"ttl_ms\":{}}}",
            lease.reentered(),
            json_string(lease.name()),
            json_string(lease.owner()),
            lease.token(),
            lease.ttl().as_millis()
        );
    } else {
        // A second `acquire --owner X` of a lock X holds is the protocol's
        // idempotent retry: say so rather than let it pass for a new grant.
        let reentered = match lease.reentered() {
            true => " (re-entered: this owner already held it; same token, TTL restarted)",
            false => "",
        };
        println!(
            "acquired {}: owner {} token {} ttl {}{reentered}",
            shown(lease.name()),
            lease.owner(),
            lease.token(),
            human(lease.ttl())
        );
    }
    Ok(EXIT_OK)
}

/// A server's refusal of `--wait`, `--ttl`, the NAME or `--owner` for its
/// limits, in the CLI's words.
fn refused(client: &Client, args: &Args, e: &Error) -> Option<Failure> {
    let asked = Asked {
        wait: args.wait,
        ttl: args.ttl.unwrap_or(Duration::ZERO),
        name: args.name.as_deref().unwrap_or_default(),
        owner: args.owner.as_deref(),
        takes_owner: args.command == "acquire",
    };
    refusal_in_flags(client, &asked, e).map(Failure::Refused)
}

fn release(args: &Args) -> Result<u8, Failure> {
    let name = name(args)?;
    let (owner, token) = owner_and_token(args)?;
    let client = args.connect.builder()?.build()?;
    let lease = Lease::from_parts(name, owner, token, Duration::ZERO);
    let result = client.release_lease(&lease);
    if let Some(refusal) = result
        .as_ref()
        .err()
        .and_then(|e| refused(&client, args, e))
    {
        return Err(refusal);
    }
    report(args, "released", name, token, None, result.map(|()| None))
}

fn extend(args: &Args) -> Result<u8, Failure> {
    let name = name(args)?;
    let (owner, token) = owner_and_token(args)?;
    let ttl = args
        .ttl
        .ok_or_else(|| Failure::Usage("--ttl is required: the hold's new TTL".into()))?;
    let client = args.connect.builder()?.build()?;
    let lease = Lease::from_parts(name, owner, token, ttl);
    let result = client.extend(&lease, ttl);
    if let Some(refusal) = result
        .as_ref()
        .err()
        .and_then(|e| refused(&client, args, e))
    {
        return Err(refusal);
    }
    report(args, "extended", name, token, Some(ttl), result.map(Some))
}

/// Prints the outcome of a release or extend.
fn report(
    args: &Args,
    verb: &str,
    name: &str,
    token: u64,
    _asked: Option<Duration>,
    result: Result<Option<Duration>, Error>,
) -> Result<u8, Failure> {
    match result {
        Ok(ttl) => {
            if args.json {
                let ttl = ttl.map_or(String::new(), |t| format!(",\"ttl_ms\":{}", t.as_millis()));
                println!(
                    "{{\"{verb}\":true,\"name\":{},\"token\":{token}{ttl}}}",
                    json_string(name)
                );
            } else {
                let ttl = ttl.map_or(String::new(), |t| format!(" ttl {}", human(t)));
                println!("{verb} {name}: token {token}{ttl}");
            }
            Ok(EXIT_OK)
        }
        Err(Error::NotHeld { reason, .. }) => {
            // Only what the server said: it cannot tell an expired hold
            // from a released one, nor which token is the current one.
            let (code, text) = (reason.name(), reason.text());
            if args.json {
                println!(
                    "{{\"{verb}\":false,\"name\":{},\"token\":{token},\"reason\":\"{code}\",\"not_held\":{}}}",
                    json_string(name),
                    json_string(text)
                );
            } else {
                eprintln!(
                    "distlockd {command}: {name} is not held by owner {owner} under token {token}: {text}; nothing changed",
                    command = args.command,
                    owner = args.owner.as_deref().unwrap_or_default(),
                );
            }
            Ok(EXIT_NOT_OBTAINED)
        }
        Err(e) => Err(e.into()),
    }
}

fn status(args: &Args) -> Result<u8, Failure> {
    if args.name.is_some() && args.limit.is_some() {
        return Err(Failure::Usage(
            "--limit is for the listing of every held lock, not one NAME; drop one".into(),
        ));
    }
    let client = args.connect.builder()?.build()?;
    if let Some(name) = &args.name {
        let status = client.status(name)?;
        if args.json {
            println!(
                "{{\"name\":{},\"held\":{}}}",
                json_string(name),
                status.as_ref().map_or("null".to_owned(), status_json)
            );
        } else {
            match status {
                Some(s) => println!(
                    "{}: held, token {}, {} left, {} waiting{}",
                    shown(name),
                    s.token,
                    human(s.remaining),
                    s.waiters,
                    if s.session { ", session" } else { "" }
                ),
                None => println!("{}: free", shown(name)),
            }
        }
        return Ok(EXIT_OK);
    }
    let limit = args.limit.unwrap_or(STATUS_LIMIT_DEFAULT);
    let list = client.list_locks(limit)?;
    if args.json {
        let locks: Vec<String> = list.locks.iter().map(status_json).collect();
        println!(
            "{{\"total\":{},\"truncated\":{},\"locks\":[{}]}}",
            list.total,
            list.truncated,
            locks.join(",")
        );
        return Ok(EXIT_OK);
    }
    let width = list
        .locks
        .iter()
        .map(|l| shown(&l.name).chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = format!(
        "{:<width$}  {:>20}  {:>12}  {:>7}  SESSION\n",
        "NAME", "TOKEN", "LEFT", "WAITING"
    );
    for l in &list.locks {
        let _ = writeln!(
            out,
            "{:<width$}  {:>20}  {:>12}  {:>7}  {}",
            shown(&l.name),
            l.token,
            human(l.remaining),
            l.waiters,
            if l.session { "yes" } else { "no" }
        );
    }
    let shown = list.locks.len();
    let _ = write!(out, "{shown} of {} held locks shown", list.total);
    if list.truncated {
        out.push_str(" (raise --limit for more)");
    }
    println!("{out}");
    Ok(EXIT_OK)
}

fn ping(args: &Args) -> Result<u8, Failure> {
    let client = args.connect.builder()?.retries(0).build()?;
    let started = Instant::now();
    let info = client.server_info()?;
    let rtt = started.elapsed();
    // HELLO is answered before AUTH: PING tells whether we are served.
    client.ping()?;
    if args.json {
        println!(
            "{{\"ok\":true,\"addr\":{},\"server_version\":{},\"protocol_version\":{},\"round_trip_us\":{}}}",
            json_string(client.addr()),
            json_string(&info.server_version),
            info.protocol_version,
            rtt.as_micros()
        );
    } else {
        println!(
            "distlockd {} at {}: protocol {}, connect and HELLO in {:.2} ms",
            info.server_version,
            client.addr(),
            info.protocol_version,
            rtt.as_secs_f64() * 1000.0
        );
    }
    Ok(EXIT_OK)
}

fn status_json(s: &LockStatus) -> String {
    format!(
        "{{\"name\":{},\"token\":{},\"remaining_ms\":{},\"waiters\":{},\"session\":{}}}",
        json_string(&s.name),
        s.token,
        s.remaining.as_millis(),
        s.waiters,
        s.session
    )
}

/// `250 ms`, `1.5 s`, `12 min 5 s`, `26 h 40 min`: a duration for people.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{} ms", d.as_millis()),
        1..100 => format!("{:.1} s", d.as_secs_f64()),
        100..7200 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// A lock name for a terminal: as it is, unless it holds control
/// characters (a newline, an escape sequence), which are escaped.
fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    if name.chars().any(char::is_control) {
        format!("{:?}", name).into()
    } else {
        name.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_for_people() {
        assert_eq!(human(Duration::from_millis(250)), "250 ms");
        assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human(Duration::from_secs(725)), "12 min 5 s");
        assert_eq!(human(Duration::from_secs(96_000)), "26 h 40 min");
        assert_eq!(shown("plain-name"), "plain-name");
        assert_eq!(shown("a\nb\u{1b}[2J"), "\"a\\nb\\u{1b}[2J\"");
    }
}
