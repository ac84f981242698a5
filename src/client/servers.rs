//! Where the server is: `HOST:PORT` addresses, a comma-separated list of
//! them (tried in order on every connect; the first that accepts is used),
//! and the `DISTLOCKD_SERVER` environment variable, read by the CLI and by
//! [`super::Client::from_env`].

use std::ffi::OsStr;
use std::io;
use std::net::{Ipv6Addr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The environment variable naming the server(s), like etcdctl's
/// `ETCDCTL_ENDPOINTS`: `HOST:PORT[,HOST:PORT...]`.
pub const SERVER_ENV: &str = "DISTLOCKD_SERVER";

/// The server when neither an address nor [`SERVER_ENV`] is given: the
/// daemon's default listen address.
pub const SERVER_DEFAULT: &str = "127.0.0.1:9999";

/// Addresses in one list: a cluster has a handful; the bound keeps a
/// mistaken paste from making every connect try hundreds of addresses.
pub const SERVERS_MAX: usize = 16;

/// The accepted form, for error messages.
pub const SERVER_FORM: &str = "HOST:PORT or a comma-separated list of them, e.g. 127.0.0.1:9999, localhost:9999 or [::1]:9999";

/// Splits and checks `text`, a `HOST:PORT` or a comma-separated list of
/// them, without resolving names (so a client can be built while DNS or the
/// server is down). The error says what is wrong, not with what: the caller
/// names the flag or variable the text came from.
pub fn parse_list(text: &str) -> Result<Vec<String>, String> {
    let entries: Vec<&str> = text.split(',').map(str::trim).collect();
    if entries.len() > SERVERS_MAX {
        return Err(format!(
            "{} addresses, over the {SERVERS_MAX} accepted",
            entries.len()
        ));
    }
    let several = entries.len() > 1;
    entries
        .into_iter()
        .map(|entry| {
            check_one(entry).map_err(|e| match (several, entry.is_empty()) {
                (true, true) => "an empty entry; drop the extra comma".to_owned(),
                (true, false) => format!("entry {entry:?}: {e}"),
                (false, _) => e,
            })?;
            Ok(entry.to_owned())
        })
        .collect()
}

fn check_one(entry: &str) -> Result<(), String> {
    if entry.is_empty() {
        return Err("no address".into());
    }
    if let Some((scheme, rest)) = entry.split_once("://") {
        let example = match check_one(rest) {
            Ok(()) => format!(", e.g. {rest}"),
            Err(_) => String::new(),
        };
        return Err(format!(
            "not HOST:PORT: drop the scheme {scheme}://{example}"
        ));
    }
    let (host, port) = split_host_port(entry)?;
    match port {
        "" => Err(format!("no port after the ':'; add one, e.g. {host}:9999")),
        "0" => Err("port 0 cannot be connected to; use the server's port (1-65535)".into()),
        _ if port.parse::<u16>().is_err() => {
            Err(format!("port {port:?} is not a port number (1-65535)"))
        }
        _ => Ok(()),
    }
}

/// The host and the port text of `entry`, a non-empty `HOST:PORT`; an
/// error saying what is wrong with the host or where the port should be.
fn split_host_port(entry: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = entry.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return Err("no ']' after the IPv6 address; write it as [::1]:9999".into());
        };
        if ip.parse::<Ipv6Addr>().is_err() {
            return Err(format!("[{ip}] is not an IPv6 address"));
        }
        let host = &entry[..ip.len() + 2];
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, port)),
            None if after.is_empty() => Err(format!("no :PORT after the host; e.g. {host}:9999")),
            None => Err(format!(
                "{after:?} after {host}; expected :PORT, e.g. {host}:9999"
            )),
        };
    }
    let Some((host, port)) = entry.rsplit_once(':') else {
        return Err("no :PORT after the host".into());
    };
    if host.parse::<Ipv6Addr>().is_ok() {
        return Err(format!(
            "an IPv6 address needs brackets, e.g. [{host}]:{port}"
        ));
    }
    if entry.parse::<Ipv6Addr>().is_ok() {
        return Err(format!(
            "an IPv6 address needs brackets and a port, e.g. [{entry}]:9999"
        ));
    }
    if host.contains(':') {
        return Err(
            "more than one ':'; expected one HOST:PORT (an IPv6 address in brackets: [::1]:9999)"
                .into(),
        );
    }
    if host.is_empty() {
        return Err("no HOST before the :PORT".into());
    }
    if host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("{host:?} is not a host name or IP address"));
    }
    Ok((host, port))
}

/// If `text`, given where a host alone belongs (`--host`), carries a
/// `:PORT` (`127.0.0.1:9999`, `[::1]:9999`, `name:9999`): the host and the
/// port. A bare IPv6 address (`::1`) carries none; nor does a URL (for
/// [`check_host`] to refuse).
pub fn port_in_host(text: &str) -> Option<(&str, &str)> {
    if text.parse::<Ipv6Addr>().is_ok() || text.contains("://") {
        return None;
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        return after
            .strip_prefix(':')
            .map(|port| (&text[..ip.len() + 2], port));
    }
    text.rsplit_once(':')
}

/// Checks `host`, given without a port (a name, an IPv4 address, or an
/// IPv6 one with or without brackets), as [`parse_list`] checks the host of
/// an entry. The caller first refuses a `:PORT` ([`port_in_host`]).
pub fn check_host(host: &str) -> Result<(), String> {
    if let Some((scheme, _)) = host.split_once("://") {
        return Err(format!("not a host: drop the scheme {scheme}://"));
    }
    let entry = match host.parse::<Ipv6Addr>() {
        Ok(_) => format!("[{host}]:1"),
        Err(_) => format!("{host}:1"),
    };
    check_one(&entry)
}

/// The list in [`SERVER_ENV`]; `Ok(None)` if it is unset, empty or only
/// white space (then the default applies).
pub fn from_env() -> Result<Option<Vec<String>>, String> {
    from_env_value(std::env::var_os(SERVER_ENV).as_deref())
}

/// [`from_env`] for the variable's value, `None` if unset.
fn from_env_value(value: Option<&OsStr>) -> Result<Option<Vec<String>>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let Some(text) = value.to_str() else {
        return Err(format!(
            "{SERVER_ENV}={:?}: not valid UTF-8; expected {SERVER_FORM}",
            value.to_string_lossy()
        ));
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    parse_list(text)
        .map(Some)
        .map_err(|e| format!("{SERVER_ENV}={text:?}: {e}; expected {SERVER_FORM}"))
}

/// Connects to one entry: every address its name resolves to, in the
/// resolver's order, until one accepts.
pub(super) fn connect(server: &str, timeout: Duration) -> io::Result<TcpStream> {
    let addrs = server
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve it: {e}")))?;
    let mut last_error = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "the name resolved to no IP address",
        )
    }))
}

/// One error for a connect that failed at every entry, naming each entry
/// and what happened there. Its kind is ConnectionRefused only if every
/// entry refused.
pub(super) fn unreachable(tried: Vec<(&str, io::Error)>) -> io::Error {
    let all_refused = tried
        .iter()
        .all(|(_, e)| e.kind() == io::ErrorKind::ConnectionRefused);
    let kind = match tried.last() {
        _ if all_refused && !tried.is_empty() => io::ErrorKind::ConnectionRefused,
        Some((_, e)) => e.kind(),
        None => io::ErrorKind::NotFound,
    };
    let text: Vec<String> = tried.iter().map(|(s, e)| format!("{s}: {e}")).collect();
    io::Error::new(kind, text.join("; "))
}

/// The port of the first entry of a checked list, for "start a server
/// with --port N" hints.
/// The command that starts a server where the first address of `list`
/// points: `--host` only when that is not the default 127.0.0.1 (an IPv6
/// address without its brackets, as `--host` takes it).
pub(super) fn start_command(list: &str) -> String {
    let first = list.split(',').next().unwrap_or_default().trim();
    let (host, port) = first.rsplit_once(':').unwrap_or(("127.0.0.1", "9999"));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host {
        "127.0.0.1" => format!("distlockd server --port {port}"),
        _ => format!("distlockd server --host {host} --port {port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_host_port() {
        assert_eq!(
            parse_list("127.0.0.1:9999"),
            Ok(vec!["127.0.0.1:9999".into()])
        );
        assert_eq!(
            parse_list("a.example:1, localhost:2,[::1]:3"),
            Ok(vec![
                "a.example:1".into(),
                "localhost:2".into(),
                "[::1]:3".into()
            ])
        );
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        let err = |text: &str| parse_list(text).unwrap_err();
        assert!(err("localhost").contains("no :PORT"));
        assert!(err(":9999").contains("no HOST"));
        assert!(err("h:0").contains("1-65535"));
        assert!(err("h:99999").contains("1-65535"));
        assert!(err("::1:9999").contains("brackets"));
        assert!(err("[nope]:1").contains("not an IPv6"));
        assert!(err("").contains("no address"));
        assert!(err("a:1,,b:2").contains("an empty entry"));
        assert!(err("a:1,b").contains("entry \"b\""));
        assert!(err("a:1,").contains("drop the extra comma"));
        assert!(err("[::1]").contains("no :PORT after the host; e.g. [::1]:9999"));
        assert!(err("[::1]x").contains("expected :PORT"));
        assert!(err("[::1:9").contains("no ']'"));
        assert!(err("::1").contains("brackets and a port, e.g. [::1]:9999"));
        assert!(err("h:").contains("no port after the ':'"));
        assert!(err("h:0").contains("port 0 cannot be connected to"));
        assert!(err("1.2.3.4:5:6").contains("more than one ':'"));
        assert!(err("a b:1").contains("not a host name"));
        let e = err("http://127.0.0.1:43317");
        assert!(
            e.contains("drop the scheme http://, e.g. 127.0.0.1:43317"),
            "{e}"
        );
        assert!(err("tcp://h").contains("drop the scheme tcp://"));
        let many = vec!["h:1"; SERVERS_MAX + 1].join(",");
        assert!(err(&many).contains("over the 16"));
    }

    #[test]
    fn a_port_given_as_part_of_a_host_is_found() {
        assert_eq!(port_in_host("127.0.0.1:1"), Some(("127.0.0.1", "1")));
        assert_eq!(port_in_host("[::1]:2"), Some(("[::1]", "2")));
        assert_eq!(port_in_host("name:3"), Some(("name", "3")));
        assert_eq!(port_in_host("::1"), None);
        assert_eq!(port_in_host("[::1]"), None);
        assert_eq!(port_in_host("localhost"), None);
        assert_eq!(port_in_host("http://a:1"), None);
        assert_eq!(check_host("::1"), Ok(()));
        assert_eq!(check_host("[::1]"), Ok(()));
        assert!(check_host("a b").is_err());
        assert!(check_host("http://a").unwrap_err().contains("scheme"));
    }

    #[test]
    fn the_variable_unset_or_blank_means_the_default() {
        let value = |v: &str| from_env_value(Some(OsStr::new(v)));
        assert_eq!(from_env_value(None), Ok(None));
        assert_eq!(value(""), Ok(None));
        assert_eq!(value(" \t"), Ok(None));
        assert_eq!(value("h:1,h:2"), Ok(Some(vec!["h:1".into(), "h:2".into()])));
        let e = value("h").unwrap_err();
        assert!(e.starts_with("DISTLOCKD_SERVER=\"h\": no :PORT"), "{e}");
        assert!(e.contains("HOST:PORT"), "{e}");
    }

    #[test]
    fn unreachable_names_every_entry() {
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let e = unreachable(vec![("a:1", refused()), ("b:2", refused())]);
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let text = e.to_string();
        assert!(text.contains("a:1: ") && text.contains("b:2: "), "{text}");
        let timed_out = io::Error::from(io::ErrorKind::TimedOut);
        let e = unreachable(vec![("a:1", refused()), ("b:2", timed_out)]);
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn start_commands_name_the_host_unless_it_is_the_default() {
        assert_eq!(start_command("127.0.0.1:7"), "distlockd server --port 7");
        assert_eq!(
            start_command("[::1]:7,b:8"),
            "distlockd server --host ::1 --port 7"
        );
        assert_eq!(
            start_command("localhost:9"),
            "distlockd server --host localhost --port 9"
        );
    }
}
