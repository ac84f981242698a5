//! Blocking one-off exchanges with a server before a run: is it up, which
//! version, and (Redis) loading the release script. Not on any hot path.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::resp;
use crate::protocol::blocking::Connection;
use crate::protocol::{Reply, Request};

/// Per-exchange socket timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest reply a probe reads (INFO server is about 1.5 KiB).
const PROBE_REPLY_LEN_MAX: usize = 64 * 1024;

/// PINGs a distlockd server; returns its version.
pub fn distlockd_version(addr: SocketAddr) -> Result<String, String> {
    let mut conn = open(addr)?;
    conn.send(&Request::Ping)
        .map_err(|e| format!("{addr}: cannot send PING: {e}"))?;
    match conn.read_reply() {
        Ok(Reply::Pong { server_version, .. }) => {
            Ok(String::from_utf8_lossy(server_version).into_owned())
        }
        Ok(other) => Err(format!("{addr}: answered {other:?} to PING")),
        Err(e) => Err(no_reply(addr, "distlockd", &e)),
    }
}

/// PINGs a Redis server and returns its version (from INFO server).
pub fn redis_version(addr: SocketAddr) -> Result<String, String> {
    let mut conn = open(addr)?;
    match redis_command(&mut conn, addr, &[b"PING"])? {
        Owned::Simple(s) if s == "PONG" => {}
        other => return Err(format!("{addr}: answered {other:?} to PING")),
    }
    match redis_command(&mut conn, addr, &[b"INFO", b"server"])? {
        Owned::Bulk(info) => Ok(String::from_utf8_lossy(&info)
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_string()),
        other => Err(format!("{addr}: answered {other:?} to INFO server")),
    }
}

/// Loads the compare-and-delete release script; returns its SHA1 for
/// EVALSHA.
pub fn redis_load_script(addr: SocketAddr) -> Result<[u8; resp::SCRIPT_SHA_LEN], String> {
    let mut conn = open(addr)?;
    let reply = redis_command(
        &mut conn,
        addr,
        &[b"SCRIPT", b"LOAD", resp::RELEASE_SCRIPT.as_bytes()],
    )?;
    match reply {
        Owned::Bulk(sha) if sha.len() == resp::SCRIPT_SHA_LEN => {
            let mut out = [0u8; resp::SCRIPT_SHA_LEN];
            out.copy_from_slice(&sha);
            Ok(out)
        }
        other => Err(format!("{addr}: answered {other:?} to SCRIPT LOAD")),
    }
}

/// A reply copied out of the read buffer.
enum Owned {
    Simple(String),
    Bulk(Vec<u8>),
    Other(String),
}

impl std::fmt::Debug for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owned::Simple(s) => write!(f, "+{s}"),
            Owned::Bulk(b) => write!(f, "bulk {:?}", String::from_utf8_lossy(b)),
            Owned::Other(s) => f.write_str(s),
        }
    }
}

fn redis_command(conn: &mut Connection, addr: SocketAddr, args: &[&[u8]]) -> Result<Owned, String> {
    let mut out = vec![0u8; resp::command_len(args)];
    resp::encode_command(&mut out, args);
    conn.send_raw(&out)
        .map_err(|e| format!("{addr}: cannot send a command: {e}"))?;
    conn.read_frame(|buf| {
        let parsed = resp::parse(buf).map_err(|e| e.to_string())?;
        Ok::<_, String>(parsed.map(|(value, len)| (owned(addr, value), len)))
    })
    .map_err(|e| no_reply(addr, "Redis", &e))?
}

/// A reply copied out of the read buffer; Redis's error replies as errors.
fn owned(addr: SocketAddr, value: resp::Value<'_>) -> Result<Owned, String> {
    Ok(match value {
        resp::Value::Simple(s) => Owned::Simple(String::from_utf8_lossy(s).into()),
        resp::Value::Bulk(b) => Owned::Bulk(b.to_vec()),
        resp::Value::Error(e) => {
            return Err(format!(
                "{addr}: Redis answered an error: {}",
                String::from_utf8_lossy(e)
            ));
        }
        other => Owned::Other(format!("{other:?}")),
    })
}

fn open(addr: SocketAddr) -> Result<Connection, String> {
    let stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_write_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| format!("{addr}: cannot configure the socket: {e}"))?;
    let mut conn = Connection::with_input_buffer_size(stream, PROBE_REPLY_LEN_MAX);
    conn.set_read_timeout(Some(PROBE_TIMEOUT))
        .map_err(|e| format!("{addr}: cannot configure the socket: {e}"))?;
    Ok(conn)
}

/// Why `server` at `addr` gave no reply.
fn no_reply(addr: SocketAddr, server: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            format!("{addr}: closed the connection; is this a {server} server?")
        }
        io::ErrorKind::InvalidData => format!("{addr}: not a {server} server ({e}); check --port"),
        _ => format!("{addr}: no answer ({e}); is this a {server} server?"),
    }
}
