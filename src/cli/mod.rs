//! The client-side commands of the `distlockd` binary: `run` (a command
//! under a lock) and the lock CLI (`acquire`, `release`, `extend`,
//! `status`, `ping`). The daemon itself is `distlockd server` (src/main.rs).
//!
//! Shared here: the connection options every command takes, duration
//! parsing, and the exit codes.

pub mod lock;
pub mod run;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::servers::{self, SERVER_DEFAULT, SERVER_ENV, SERVER_FORM};
use crate::client::{Client, ClientBuilder, Error, WAIT_FINITE_MAX, WAIT_FOREVER};
use crate::client::{SECRET_FILE_ENV, read_secret_file};
use crate::protocol::ErrorCode;

/// Exit status: the command did what was asked.
pub const EXIT_OK: u8 = 0;
/// Exit status: the lock was not obtained (busy, or the wait ran out), or
/// a release/extend found it not held.
pub const EXIT_NOT_OBTAINED: u8 = 1;
/// Exit status: bad command line.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the server could not be reached or refused the request.
pub const EXIT_UNAVAILABLE: u8 = 3;

/// Help text for the options of [`ConnectOptions`].
/// (No `\` line continuation before the first line: it would also eat that
/// line's indent.)
pub const CONNECT_OPTIONS_HELP: &str = "  --server HOST:PORT[,HOST:PORT...]
                           the server (a name, an IPv4 address, or an IPv6
                           one in brackets: [::1]:9999); with a list, each
                           connect tries them in order and uses the first
                           that accepts (default: $DISTLOCKD_SERVER if set and
                           not empty, else 127.0.0.1:9999)
  --host HOST, --port PORT the original's flags: the server is HOST:PORT, the
                           defaults filling in the one left out; like --server
                           they override $DISTLOCKD_SERVER; not with --server
  --auth-secret-file PATH  the server's secret (default: $DISTLOCKD_AUTH_SECRET_FILE)
  --timeout DURATION       connect/read/write timeout (default 5s)";

/// `--host` when only `--port` is given: [`SERVER_DEFAULT`]'s host.
const HOST_DEFAULT: &str = "127.0.0.1";
/// `--port` when only `--host` is given: [`SERVER_DEFAULT`]'s port.
const PORT_DEFAULT: u16 = 9999;

/// `--timeout` default.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

/// Where the server is and how to talk to it.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// `--server`, checked.
    pub server: Option<Vec<String>>,
    /// `--host`.
    pub host: Option<String>,
    /// `--port`.
    pub port: Option<u16>,
    pub secret_file: Option<PathBuf>,
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            server: None,
            host: None,
            port: None,
            secret_file: None,
            timeout: TIMEOUT_DEFAULT,
        }
    }
}

impl ConnectOptions {
    /// Takes `arg` if it is one of the connection options. Ok(false): not
    /// one of them.
    pub fn parse(&mut self, arg: &Arg, parser: &mut lexopt::Parser) -> Result<bool, String> {
        let Arg::Long(flag) = arg else {
            return Ok(false);
        };
        let given = match flag.as_str() {
            "server" => self.server.is_some(),
            "host" => self.host.is_some(),
            "port" => self.port.is_some(),
            _ => false,
        };
        if given {
            // The last one winning would hide a mistake: which was meant?
            return Err(format!(
                "--{flag} given twice; give it once (several servers go in one --server, comma-separated: --server HOST:PORT,HOST:PORT)"
            ));
        }
        match flag.as_str() {
            "server" => {
                let v = string_value(parser, "--server")?;
                self.server = Some(
                    servers::parse_list(&v)
                        .map_err(|e| format!("--server {v}: {e}; expected {SERVER_FORM}"))?,
                );
            }
            "host" => {
                let v = string_value(parser, "--host")?;
                check_client_host(&v)?;
                self.host = Some(v);
            }
            "port" => {
                let v = string_value(parser, "--port")?;
                self.port = Some(v.parse().ok().filter(|&p| p != 0).ok_or_else(|| {
                    match servers::port_in_host(&v) {
                        Some(_) => format!(
                            "--port {v}: a port number alone (1-65535); put the host in --host, or use --server {v}"
                        ),
                        None => format!("--port {v}: not a port number (1-65535)"),
                    }
                })?);
            }
            "auth-secret-file" => {
                self.secret_file = Some(parser.value().map_err(|e| e.to_string())?.into())
            }
            "timeout" => {
                self.timeout = positive_duration_value(parser, "--timeout", "I/O needs", "5s")?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The server address, or comma-separated list: `--server`, else
    /// `--host`/`--port`, else `$DISTLOCKD_SERVER`, else the default.
    pub fn addr(&self) -> Result<String, String> {
        let original: Vec<&str> = [
            ("--host", self.host.is_some()),
            ("--port", self.port.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect();
        match (&self.server, original.is_empty()) {
            (Some(_), false) => Err(format!(
                "--server and {} both given; use --server HOST:PORT alone (--host and --port are the original's spelling of the same)",
                original.join(" and ")
            )),
            (Some(list), true) => Ok(list.join(",")),
            (None, false) => {
                let host = self.host.as_deref().unwrap_or(HOST_DEFAULT);
                let port = self.port.unwrap_or(PORT_DEFAULT);
                Ok(if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                })
            }
            (None, true) => Ok(servers::from_env()?
                .map_or_else(|| SERVER_DEFAULT.to_owned(), |list| list.join(","))),
        }
    }

    /// `--auth-secret-file`, else `$DISTLOCKD_AUTH_SECRET_FILE` if set and
    /// not empty.
    fn secret_path(&self) -> Option<PathBuf> {
        self.secret_file.clone().or_else(|| {
            std::env::var_os(SECRET_FILE_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }

    /// A client builder for the server, with the secret (from
    /// `--auth-secret-file`, else `$DISTLOCKD_AUTH_SECRET_FILE`) if any.
    pub fn builder(&self) -> Result<ClientBuilder, String> {
        let mut builder = Client::builder(self.addr()?).timeout(self.timeout);
        if let Some(file) = self.secret_path() {
            let (secret, _) = read_secret_from(&file, self.secret_file.is_some())?;
            builder = builder.auth_secret(secret);
        }
        Ok(builder)
    }

    /// A client error in the CLI's words: where the client's own text
    /// points at a fix, the fix is named by the flags that make it.
    pub fn describe(&self, e: &Error) -> String {
        match e {
            Error::Connection { source, .. }
                if source.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                format!("{e} (the address is --server, else ${SERVER_ENV}, else {SERVER_DEFAULT})")
            }
            Error::Server {
                code: ErrorCode::Auth,
                ..
            } if self.secret_path().is_none() => format!(
                "the server refused the request: authentication required (it runs with --auth-secret-file); pass the same secret with --auth-secret-file PATH or ${SECRET_FILE_ENV}"
            ),
            _ => e.to_string(),
        }
    }
}

/// Reads the secret file `path`, which came from `--auth-secret-file`
/// (`from_flag`), else from `$DISTLOCKD_AUTH_SECRET_FILE`: errors say which.
pub fn read_secret_from(path: &Path, from_flag: bool) -> Result<(Vec<u8>, Option<String>), String> {
    read_secret_file(path).map_err(|e| match from_flag {
        true => format!("--auth-secret-file: {e}"),
        false => format!("${SECRET_FILE_ENV}: {e}; set it to the secret file's path, or unset it"),
    })
}

/// Checks a client's `--host`: a host alone, the port going in `--port`.
fn check_client_host(v: &str) -> Result<(), String> {
    if v.trim().is_empty() {
        return Err("--host \"\": no host; use a name or an IP address, e.g. 127.0.0.1".into());
    }
    if let Some((host, port)) = servers::port_in_host(v) {
        return Err(format!(
            "--host {v}: a host without :PORT; put the port in --port (--host {host} --port {port}), or use --server HOST:PORT (--server {v})"
        ));
    }
    servers::check_host(v).map_err(|e| format!("--host {v}: {e}"))
}

/// A command-line argument, owned, so that options can take their values
/// from the parser while it is being matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    Long(String),
    Short(char),
    Value(std::ffi::OsString),
}

impl Arg {
    /// The next argument, if any.
    pub fn next(parser: &mut lexopt::Parser) -> Result<Option<Arg>, String> {
        Ok(match parser.next().map_err(|e| e.to_string())? {
            None => None,
            Some(lexopt::Arg::Long(flag)) => Some(Arg::Long(flag.to_owned())),
            Some(lexopt::Arg::Short(c)) => Some(Arg::Short(c)),
            Some(lexopt::Arg::Value(v)) => Some(Arg::Value(v)),
        })
    }

    /// "unexpected option --x" and the like, for errors.
    pub fn unexpected(&self) -> String {
        match self {
            Arg::Long(flag) => format!("unexpected option --{flag}"),
            Arg::Short(c) => format!("unexpected option -{c}"),
            Arg::Value(v) => format!("unexpected argument {:?}", v.to_string_lossy()),
        }
    }
}

/// A flag's value as UTF-8 text; errors name the flag.
pub fn string_value(parser: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    let value = parser
        .value()
        .map_err(|_| format!("{flag}: missing value"))?;
    value
        .into_string()
        .map_err(|v| format!("{flag} {}: not valid UTF-8", v.to_string_lossy()))
}

/// A flag's value as a positive [`parse_duration`] duration: 0 is refused
/// with "`{flag} 0: {needs} a positive duration; use e.g. {flag} {example}`".
pub fn positive_duration_value(
    parser: &mut lexopt::Parser,
    flag: &str,
    needs: &str,
    example: &str,
) -> Result<Duration, String> {
    let v = string_value(parser, flag)?;
    match parse_duration(&v) {
        Ok(d) if d.is_zero() => Err(format!(
            "{flag} {v}: {needs} a positive duration; use e.g. {flag} {example}"
        )),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{flag} {v}: {e}")),
    }
}

/// A flag's value as a [`parse_duration`] duration.
pub fn duration_value(parser: &mut lexopt::Parser, flag: &str) -> Result<Duration, String> {
    let v = string_value(parser, flag)?;
    parse_duration(&v).map_err(|e| format!("{flag} {v}: {e}"))
}

/// `--wait`: a [`parse_duration`] duration, or `forever`.
pub fn wait_value(parser: &mut lexopt::Parser, flag: &str) -> Result<Duration, String> {
    let v = string_value(parser, flag)?;
    parse_wait(&v).map_err(|e| format!("{flag} {v}: {e}"))
}

/// A wait: `forever` (no deadline: [`WAIT_FOREVER`], which keeps its place
/// in the server's queue), or a duration up to the longest finite wait the
/// protocol carries (`wait_ms` is a u32: about 49.7 days).
pub fn parse_wait(text: &str) -> Result<Duration, String> {
    if text.trim() == "forever" {
        return Ok(WAIT_FOREVER);
    }
    let wait = parse_duration_or(
        text,
        "not a wait; use e.g. 500ms, 10s, 5m, 2h, 3d or forever",
    )?;
    if wait > WAIT_FINITE_MAX {
        return Err(format!(
            "over the longest wait with a deadline, {} ms (about 49.7 days); use forever to wait with no deadline",
            WAIT_FINITE_MAX.as_millis()
        ));
    }
    Ok(wait)
}

/// A wait as `--wait` takes it: `forever`, or a duration.
pub fn format_wait(wait: Duration) -> String {
    if wait == WAIT_FOREVER {
        return "forever".to_owned();
    }
    let ms = wait.as_millis();
    match ms {
        _ if ms % 86_400_000 == 0 && ms > 0 => format!("{}d", ms / 86_400_000),
        _ if ms % 3_600_000 == 0 && ms > 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 && ms > 0 => format!("{}m", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// What a command asked the server for, to tell a refusal for the server's
/// limits in the CLI's words. Zero durations were not asked.
pub struct Asked<'a> {
    pub wait: Duration,
    pub ttl: Duration,
    pub name: &'a str,
    /// `--owner` if given; `None`: the client generated the owner.
    pub owner: Option<&'a str>,
    /// Whether the command takes `--owner`, to suggest it.
    pub takes_owner: bool,
}

/// When a server refused a request (BAD_ARGUMENT) because what was asked is
/// over one of its limits (`--wait-max-ms`, `--ttl-max-ms`,
/// `--name-len-max`, `--owner-len-max`), says so in the flags' words, from
/// the limits its HELLO reply gives; `None` if that is not why.
pub fn refusal_in_flags(client: &Client, asked: &Asked<'_>, e: &Error) -> Option<String> {
    let refused = matches!(
        e,
        Error::Server {
            code: ErrorCode::BadArgument,
            ..
        }
    );
    if !refused {
        return None;
    }
    let info = client.server_info().ok()?;
    let Asked {
        wait, ttl, name, ..
    } = *asked;
    if ttl > info.lock_ttl_max {
        let max = format_wait(info.lock_ttl_max);
        return Some(format!(
            "--ttl {}: this server grants holds of at most {max} (it runs with --ttl-max-ms {}); use --ttl {max} or less and extend the hold before it ends",
            format_wait(ttl),
            info.lock_ttl_max.as_millis(),
        ));
    }
    let name_max = info.name_len_max;
    if name.len() > name_max {
        return Some(format!(
            "lock NAME is {} bytes, over this server's longest name, {name_max} bytes (it runs with --name-len-max {name_max}); use a shorter name",
            name.len()
        ));
    }
    if let Some(message) = owner_refusal(client, asked, info.owner_len_max) {
        return Some(message);
    }
    let max = info.wait_max?;
    if wait.is_zero() {
        return None;
    }
    if max.is_zero() {
        return Some(format!(
            "--wait {}: this server does not wait for held locks (it runs with --wait-max-ms 0); drop --wait and retry later, or ask its operator for --wait-max-ms forever",
            format_wait(wait)
        ));
    }
    (wait > max).then(|| {
        format!(
            "--wait {}: this server waits at most {} (it runs with --wait-max-ms {}); use --wait {} or less, or ask its operator for --wait-max-ms forever",
            format_wait(wait),
            format_wait(max),
            max.as_millis(),
            format_wait(max)
        )
    })
}

/// The owner over the server's `--owner-len-max` (`owner_max`), if it is:
/// the `--owner` given, or the one the client generates
/// (`{client_id}:{counter}`, at least the client id and two bytes long).
fn owner_refusal(client: &Client, asked: &Asked<'_>, owner_max: usize) -> Option<String> {
    match asked.owner {
        Some(owner) => (owner.len() > owner_max).then(|| format!(
            "--owner {owner:?}: {} bytes, over this server's longest owner, {owner_max} bytes (it runs with --owner-len-max {owner_max}); use a shorter --owner",
            owner.len()
        )),
        None => {
            let generated_min = client.client_id().len() + 2;
            let fix = match asked.takes_owner {
                true => format!("pass --owner with at most {owner_max} bytes"),
                false => format!("ask its operator to raise --owner-len-max to at least {generated_min}"),
            };
            (generated_min > owner_max).then(|| format!(
                "the owner this command generates (at least {generated_min} bytes) is longer than this server's longest owner, {owner_max} bytes (it runs with --owner-len-max {owner_max}); {fix}"
            ))
        }
    }
}

/// The longest duration a flag takes: past it a typo is likelier than a
/// need, and every TTL and wait the server takes is far shorter.
const DURATION_SECS_MAX: f64 = 1e9;

/// A duration: a number with a unit, `ms`, `s`, `m`, `h` or `d` (`250ms`,
/// `1.5s`, `10m`, `2d`), or a bare number of seconds, as flock(1) and
/// timeout(1) take them.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_duration_or(text, "not a duration; use e.g. 500ms, 10s, 5m, 1h or 3d")
}

/// [`parse_duration`], answering `not_a_number` when the text does not
/// start with a number.
fn parse_duration_or(text: &str, not_a_number: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| not_a_number.to_owned())?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => return Err(format!("unknown unit {unit:?}; use ms, s, m, h or d")),
    };
    if !seconds.is_finite() || seconds > DURATION_SECS_MAX {
        return Err(format!(
            "over {DURATION_SECS_MAX} s (about 31 years); use a shorter duration"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86400)));
    }

    #[test]
    fn waits() {
        assert_eq!(parse_wait("forever"), Ok(WAIT_FOREVER));
        assert_eq!(parse_wait("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_wait("49d"), Ok(Duration::from_secs(49 * 86400)));
        let err = parse_wait("50d").unwrap_err();
        assert!(err.contains("use forever"), "{err}");
        assert!(
            !err.contains("WAIT_FOREVER") && !err.contains("Duration"),
            "{err}"
        );
        assert!(parse_wait("always").is_err());
        assert_eq!(format_wait(WAIT_FOREVER), "forever");
        assert_eq!(format_wait(Duration::from_secs(3600)), "1h");
        assert_eq!(format_wait(Duration::from_secs(3 * 86400)), "3d");
        assert_eq!(format_wait(Duration::from_secs(36 * 3600)), "36h");
        assert_eq!(format_wait(Duration::from_secs(90)), "90s");
        assert_eq!(format_wait(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn connect_options_help_lines_are_indented_alike() {
        for line in CONNECT_OPTIONS_HELP.lines() {
            assert!(line.starts_with("  "), "{line:?}");
        }
        assert!(CONNECT_OPTIONS_HELP.starts_with("  --"));
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let o = ConnectOptions {
            host: Some("::1".into()),
            ..ConnectOptions::default()
        };
        assert_eq!(o.addr().unwrap(), "[::1]:9999");
        let o = ConnectOptions {
            port: Some(7),
            ..ConnectOptions::default()
        };
        assert_eq!(o.addr().unwrap(), "127.0.0.1:7");
    }

    #[test]
    fn host_and_port_defaults_make_the_default_server() {
        assert_eq!(format!("{HOST_DEFAULT}:{PORT_DEFAULT}"), SERVER_DEFAULT);
    }

    #[test]
    fn server_with_host_or_port_is_refused() {
        let o = ConnectOptions {
            server: Some(vec!["a:1".into()]),
            port: Some(7),
            ..ConnectOptions::default()
        };
        let e = o.addr().unwrap_err();
        assert!(e.contains("--server and --port both given"), "{e}");
    }
}
