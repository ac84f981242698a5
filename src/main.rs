//! The `distlockd` command line.

#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

mod cli;
mod json;
mod loadtest;

use cli::{read_secret_from, string_value};
use distlockd::client::SECRET_FILE_ENV;
use distlockd::client::servers::port_in_host;
use distlockd::server::{
    Auth, Config, Limit, Limits, SERVER_VERSION, Server, SignalCatcher, WAIT_MS_UNBOUNDED,
};
use lexopt::prelude::*;
// The binary's own modules name the library's public ones as `crate::…`.
use distlockd::{client, protocol, server};

const USAGE: &str = "\
distlockd: a named-lock daemon

Usage:
  distlockd server [options]     run the lock server
  distlockd run NAME [options] -- COMMAND [ARGS...]
  distlockd run NAME [options] -c 'SHELL COMMAND'
                                 run a command while holding lock NAME
                                 (like flock)
  distlockd acquire NAME         take a lock and leave it held
  distlockd release NAME         release a lock acquire took
  distlockd extend NAME          give a held lock a new TTL
  distlockd status [NAME]        show one lock, or every held lock
  distlockd ping                 check that a server answers and serves us
  distlockd test distlockd|redis [options]
                                 benchmark a running server (or Redis)
  distlockd test compare [options]
                                 start distlockd and Redis, compare them
  distlockd test stress [options]
                                 check exclusion under kill -9 and faults
  distlockd --version            print the version
  distlockd help [COMMAND]       print this help, or COMMAND's

Run `distlockd COMMAND --help` (or `distlockd help COMMAND`) for a command's
options and an example.
Client commands find the server with --server HOST:PORT, else
$DISTLOCKD_SERVER, else 127.0.0.1:9999.";

const SERVER_USAGE: &str = "\
Usage: distlockd server [options]

Options:
  --host HOST              address to listen on: an IP address or a name such
                           as localhost, resolved at start-up; of several
                           addresses the first IPv4 one is bound, else the
                           first, and the log says which; no :PORT (that is
                           --port) (default 127.0.0.1)
  --port PORT              TCP port, 0 for any free port (default 9999)
  -v, --verbose            debug logs (RUST_LOG overrides)
  --http-port PORT         serve GET /health and GET /metrics (Prometheus) over
                           HTTP on this port, not --port's (default: off)
  --http-host HOST         address for --http-port (required with it),
                           resolved like --host (default: --host)
  --data-dir DIR           keep every change in a write-ahead log in DIR
                           (made if missing), fsynced before it is answered;
                           a restart finds the holds again, each with its
                           whole TTL from the restart (default: in memory)
  --ttl-default-ms MS      TTL when a request asks for 0 (default 10000)
  --ttl-max-ms MS          largest TTL a request may ask for (default 86400000)
  --legacy-ttl-ms MS       TTL of holds taken by the original Python client,
                           which never renews them; at most --ttl-max-ms
                           (default 3600000, the original's stale timeout)
  --wait-max-ms MS|forever longest server-side wait of an ACQUIRE; forever (the
                           default) also takes waits with no deadline
  --connections-max N      simultaneous connections (default 10000)
  --locks-max N            locks held at once; past it ACQUIRE of a new name
                           gets a LIMIT error (default 1000000, ~60 MB)
  --waiters-per-lock-max N ACQUIREs queued on one lock; past it a LIMIT error
                           (default 1024)
  --output-buffer-size BYTES
                           unwritten replies per connection, 1140-1048576
                           (default 16384; allocated per connection)
  --frame-timeout-ms MS    a started frame must be whole within this, else
                           LIMIT error and close (default 10000)
  --write-timeout-ms MS    replies unread this long close the connection
                           (default 30000)
  --idle-timeout-ms MS     close connections idle this long; 0 = never
                           (default 0)
  --auth-secret-file PATH  require every connection to AUTH with the secret in
                           this file (16-255 bytes; trailing white space ignored);
                           default: $DISTLOCKD_AUTH_SECRET_FILE if set, else none
  --auth-allow-legacy      with a secret, still serve the original Python
                           client's protocol, which cannot authenticate
  --auth-timeout-ms MS     with a secret, close connections that have not
                           authenticated this long after connecting
                           (default 10000)
  --frame-size-max BYTES   longest frame accepted, header included, up to 1024;
                           at least 261 (the longest HELLO) and 17 +
                           --name-len-max + --owner-len-max (the longest
                           EXTEND) (default 1024)
  --name-len-max BYTES     longest lock name, 1-255 (default 255)
  --owner-len-max BYTES    longest owner id, 1-64 (default 64)
  -h, --help               print this help";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("distlockd: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let mut parser = lexopt::Parser::from_env();
    match parser.next().map_err(|e| e.to_string())? {
        Some(Value(cmd)) => command(&cmd, &mut parser),
        Some(Long("version") | Short('V')) => {
            if let Some(extra) = parser.next().map_err(|e| e.to_string())? {
                return Err(format!(
                    "--version: {}; run `distlockd --version` alone",
                    extra.unexpected()
                ));
            }
            println!("distlockd {SERVER_VERSION}");
            Ok(ExitCode::SUCCESS)
        }
        Some(Long("help") | Short('h')) => help(&mut parser),
        None => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(format!("{}; run `distlockd --help`", other.unexpected())),
    }
}

/// Runs `distlockd CMD ...`, the rest of the command line in `parser`.
fn command(cmd: &OsStr, parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    match cmd.to_str() {
        Some("server") => server(parser),
        Some("test") => loadtest_cli(parser),
        Some("run") => cli::run::main(parser),
        Some(c @ ("acquire" | "release" | "extend" | "status" | "ping")) => {
            cli::lock::main(c, parser)
        }
        Some("help") => help(parser),
        _ => Err(format!(
            "{}: unknown command; run `distlockd --help` for the commands",
            cmd.to_string_lossy()
        )),
    }
}

/// `distlockd help [COMMAND...]` (or `--help`): the help of COMMAND, as
/// `distlockd COMMAND... --help` prints it, else the list of commands.
fn help(parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    let mut args: Vec<OsString> = parser.raw_args().map_err(|e| e.to_string())?.collect();
    if args.is_empty() || args[0] == "help" || args[0].to_string_lossy().starts_with('-') {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let cmd = args.remove(0);
    args.push("--help".into());
    command(&cmd, &mut lexopt::Parser::from_args(args))
}

fn server(parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    let mut host: IpAddr = [127, 0, 0, 1].into();
    let mut port: u16 = 9999;
    let mut verbose = false;
    let mut limits = Limits::default();
    let mut secret_file: Option<PathBuf> = None;
    let mut http_port: Option<u16> = None;
    let mut http_host: Option<IpAddr> = None;
    let mut allow_legacy = false;
    let mut data_dir: Option<PathBuf> = None;
    // Said once logging is set up.
    let mut notes: Vec<String> = Vec::new();
    // Flags given, so that a refused default is called one.
    let mut given: Vec<String> = Vec::new();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        if let Long(name) = &arg {
            given.push(format!("--{name}"));
        }
        match arg {
            Long("auth-secret-file") => {
                secret_file = Some(parser.value().map_err(|e| e.to_string())?.into())
            }
            Long("auth-allow-legacy") => allow_legacy = true,
            Long("data-dir") => {
                let v = string_value(parser, "--data-dir")?;
                if v.is_empty() {
                    return Err(
                        "--data-dir: an empty path; give the directory to keep the log in".into(),
                    );
                }
                data_dir = Some(v.into());
            }
            Long("http-port") => {
                let v = string_value(parser, "--http-port")?;
                http_port = Some(
                    v.parse()
                        .map_err(|_| format!("--http-port {v}: not a port number (0-65535)"))?,
                );
            }
            Long("http-host") => {
                let v = string_value(parser, "--http-host")?;
                let (ip, note) = listen_host("--http-host", &v)?;
                http_host = Some(ip);
                notes.extend(note);
            }
            Long("host") => {
                let v = string_value(parser, "--host")?;
                let (ip, note) = listen_host("--host", &v)?;
                host = ip;
                notes.extend(note);
            }
            Long("port") | Short('p') => {
                let v = string_value(parser, "--port")?;
                port = v
                    .parse()
                    .map_err(|_| format!("--port {v}: not a port number (0-65535)"))?;
            }
            Long("verbose") | Short('v') => verbose = true,
            Long("ttl-default-ms") => {
                limits.lock_ttl_ms_default = number(parser, Limit::LockTtlMsDefault)?
            }
            Long("ttl-max-ms") => limits.lock_ttl_ms_max = number(parser, Limit::LockTtlMsMax)?,
            Long("legacy-ttl-ms") => limits.legacy_ttl_ms = number(parser, Limit::LegacyTtlMs)?,
            Long("wait-max-ms") => limits.wait_ms_max = wait_max_ms(parser)?,
            Long("connections-max") => {
                limits.connections_max = number(parser, Limit::ConnectionsMax)?
            }
            Long("locks-max") => limits.locks_max = number(parser, Limit::LocksMax)?,
            Long("waiters-per-lock-max") => {
                limits.waiters_per_lock_max = number(parser, Limit::WaitersPerLockMax)?
            }
            Long("output-buffer-size") => {
                limits.output_buffer_size = number(parser, Limit::OutputBufferSize)?
            }
            Long("frame-timeout-ms") => {
                limits.frame_timeout_ms = number(parser, Limit::FrameTimeoutMs)?
            }
            Long("write-timeout-ms") => {
                limits.write_timeout_ms = number(parser, Limit::WriteTimeoutMs)?
            }
            Long("auth-timeout-ms") => {
                limits.auth_timeout_ms = number(parser, Limit::AuthTimeoutMs)?
            }
            Long("frame-size-max") => limits.frame_size_max = number(parser, Limit::FrameSizeMax)?,
            Long("idle-timeout-ms") => {
                limits.idle_timeout_ms = number(parser, Limit::IdleTimeoutMs)?
            }
            Long("name-len-max") => limits.name_len_max = number(parser, Limit::NameLenMax)?,
            Long("owner-len-max") => limits.owner_len_max = number(parser, Limit::OwnerLenMax)?,
            Long("help") | Short('h') => {
                println!("{SERVER_USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => {
                return Err(format!(
                    "server: {}; run `distlockd server --help`",
                    other.unexpected()
                ));
            }
        }
    }
    if http_host.is_some() && http_port.is_none() {
        return Err(
            "--http-host needs --http-port: it chooses the address of the HTTP endpoint that --http-port turns on".to_owned(),
        );
    }
    limits.validate().map_err(|e| {
        let defaulted = |limit| !given.iter().any(|g| g == flag(limit));
        format!(
            "{} (see `distlockd server --help`)",
            e.describe_defaults(flag, defaulted)
        )
    })?;
    init_logging(verbose);
    for note in notes {
        log::info!("{note}");
    }
    let listen = SocketAddr::new(host, port);
    let http_listen = http_port.map(|p| SocketAddr::new(http_host.unwrap_or(host), p));
    if let Some(http) = http_listen.filter(|http| same_socket(listen, *http)) {
        return Err(format!(
            "--port {port} and --http-port {}: one port cannot serve both the lock protocol and HTTP on {}; give --http-port another port (0: any free one)",
            http.port(),
            http.ip()
        ));
    }
    let auth = load_auth(secret_file, allow_legacy)?;
    let config = Config {
        listen,
        limits,
        token_seed: None,
        http_listen,
        data_dir,
    };
    // Caught before the port is bound: a signal sent once the port accepts
    // connections stops the server gracefully, never by the default action.
    let signals = SignalCatcher::install()
        .map_err(|e| format!("cannot install SIGINT/SIGTERM handlers: {e}"))?;
    let mut server = Server::bind(config).map_err(|e| e.to_string())?;
    server.set_auth(auth);
    server
        .handle_signals(signals)
        .map_err(|e| format!("cannot watch SIGINT/SIGTERM: {e}"))?;
    match server.run() {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // A second signal: exit at once, status 1 (logged by the server).
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(ExitCode::from(1)),
        Err(e) => Err(format!("server stopped: {e}")),
    }
}

/// The address to listen on for `--host` or `--http-host` (`flag`): an IP
/// address (IPv6 with or without brackets), or a name resolved now. Of
/// several addresses the first IPv4 one is chosen, as the original server
/// (an IPv4 socket) bound `localhost`, else the first; then a note for the
/// log says which.
fn listen_host(flag: &str, text: &str) -> Result<(IpAddr, Option<String>), String> {
    if let Some((host, port)) = port_in_host(text) {
        let port_flag = port_flag_of(flag);
        return Err(format!(
            "{flag} {text}: a host without :PORT; put the port in {port_flag} ({flag} {host} {port_flag} {port})"
        ));
    }
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(format!(
            "{flag} {text}: not a host: drop the scheme {scheme}://"
        ));
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    let resolved: Vec<IpAddr> = (bare, 0)
        .to_socket_addrs()
        .map_err(|e| {
            format!(
                "{flag} {text}: cannot resolve it ({e}); use an IP address such as 127.0.0.1, 0.0.0.0 or ::1, or a name the resolver knows"
            )
        })?
        .map(|a| a.ip())
        .collect();
    let chosen = resolved
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("{flag} {text}: the name resolves to no address; use an IP address such as 127.0.0.1"))?;
    let all: Vec<String> = resolved.iter().map(IpAddr::to_string).collect();
    let note = if resolved.len() > 1 {
        format!(
            "{flag} {text} resolves to {}; listening on {chosen}, the first IPv4 address (or the first, if none)",
            all.join(", ")
        )
    } else {
        format!("{flag} {text} resolves to {chosen}")
    };
    Ok((chosen, Some(note)))
}

/// Whether binding both would clash: the same fixed port on the same
/// address, or on a wildcard address that covers the other's (0.0.0.0 the
/// IPv4 ones; :: all, as a dual-stack socket).
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |w: IpAddr, other: IpAddr| w.is_unspecified() && (w.is_ipv6() || other.is_ipv4());
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

/// The port flag that goes with a host flag of `distlockd server`.
fn port_flag_of(host_flag: &str) -> &'static str {
    match host_flag {
        "--http-host" => "--http-port",
        _ => "--port",
    }
}

/// The secret from `--auth-secret-file`, else from the file named by
/// $DISTLOCKD_AUTH_SECRET_FILE; none if neither is set.
fn load_auth(flag: Option<PathBuf>, allow_legacy: bool) -> Result<Option<Auth>, String> {
    let from_flag = flag.is_some();
    let path = match flag {
        Some(path) => path,
        None => match std::env::var_os(SECRET_FILE_ENV) {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ if allow_legacy => {
                return Err(
                    "--auth-allow-legacy needs a secret: pass --auth-secret-file, or set $DISTLOCKD_AUTH_SECRET_FILE".to_owned(),
                );
            }
            _ => return Ok(None),
        },
    };
    let (secret, warning) = read_secret_from(&path, from_flag)?;
    if let Some(warning) = warning {
        log::warn!("{warning}");
    }
    log::info!(
        "authentication required (secret from {}); original protocol {}",
        path.display(),
        if allow_legacy {
            "allowed without authentication"
        } else {
            "refused"
        }
    );
    Auth::new(secret, allow_legacy).map(Some)
}

/// `distlockd test …`: the benchmark (see `distlockd::loadtest`).
fn loadtest_cli(parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    loadtest::main(parser)
}

/// The flag that sets a limit: a person at the command line typed flags,
/// so errors name limits by them.
fn flag(limit: Limit) -> &'static str {
    match limit {
        Limit::FrameSizeMax => "--frame-size-max",
        Limit::NameLenMax => "--name-len-max",
        Limit::OwnerLenMax => "--owner-len-max",
        Limit::LockTtlMsDefault => "--ttl-default-ms",
        Limit::LockTtlMsMax => "--ttl-max-ms",
        Limit::LegacyTtlMs => "--legacy-ttl-ms",
        Limit::WaitMsMax => "--wait-max-ms",
        Limit::ConnectionsMax => "--connections-max",
        Limit::LocksMax => "--locks-max",
        Limit::WaitersPerLockMax => "--waiters-per-lock-max",
        Limit::OutputBufferSize => "--output-buffer-size",
        Limit::FrameTimeoutMs => "--frame-timeout-ms",
        Limit::WriteTimeoutMs => "--write-timeout-ms",
        Limit::IdleTimeoutMs => "--idle-timeout-ms",
        Limit::AuthTimeoutMs => "--auth-timeout-ms",
    }
}

/// `--wait-max-ms`: milliseconds, or `forever` for no bound.
fn wait_max_ms(parser: &mut lexopt::Parser) -> Result<u32, String> {
    let v = string_value(parser, "--wait-max-ms")?;
    if v == "forever" {
        return Ok(WAIT_MS_UNBOUNDED);
    }
    v.parse().map_err(|_| {
        format!(
            "--wait-max-ms {v}: not a number of milliseconds (0 to {WAIT_MS_UNBOUNDED}) or forever"
        )
    })
}

/// A limit's value; a parse error gives the limit's range.
fn number<T: std::str::FromStr>(parser: &mut lexopt::Parser, limit: Limit) -> Result<T, String> {
    let name = flag(limit);
    let v = string_value(parser, name)?;
    v.parse().map_err(|_| {
        let (min, max) = limit.range();
        let bound = limit
            .bounded_by()
            .map(|b| format!(", at most {}", flag(b)))
            .unwrap_or_default();
        format!(
            "{name} {v}: not a whole number from {min} to {max}{bound}; see `distlockd server --help`"
        )
    })
}

fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_timestamp_millis()
        .init();
}
