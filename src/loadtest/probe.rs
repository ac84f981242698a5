//! Blocking one-off exchanges with a server before a run: is it up, which
//! version, and (Redis) loading the release script. Not on any hot path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::resp;
use crate::protocol::{self, Reply, Request};

/// Per-exchange socket timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest reply a probe reads (INFO server is about 1.5 KiB).
const PROBE_REPLY_LEN_MAX: usize = 64 * 1024;

/// PINGs a distlockd server; returns its version.
pub fn distlockd_version(addr: SocketAddr) -> Result<String, String> {
    let mut stream = open(addr)?;
    let mut frame = Vec::new();
    Request::Ping.encode_to_vec(&mut frame);
    stream
        .write_all(&frame)
        .map_err(|e| format!("{addr}: cannot send PING: {e}"))?;
    let mut buf = Vec::new();
    loop {
        match protocol::decode_reply(&buf) {
            Ok(Some((Reply::Pong { server_version, .. }, _))) => {
                return Ok(String::from_utf8_lossy(server_version).into_owned());
            }
            Ok(Some((other, _))) => {
                return Err(format!("{addr}: answered {other:?} to PING"));
            }
            Ok(None) => read_more(&mut stream, &mut buf, addr, "distlockd")?,
            Err(e) => {
                return Err(format!(
                    "{addr}: not a distlockd server ({e}); check --port"
                ));
            }
        }
    }
}

/// PINGs a Redis server and returns its version (from INFO server).
pub fn redis_version(addr: SocketAddr) -> Result<String, String> {
    let mut stream = open(addr)?;
    match redis_command(&mut stream, addr, &[b"PING"])? {
        Owned::Simple(s) if s == "PONG" => {}
        other => return Err(format!("{addr}: answered {other:?} to PING")),
    }
    match redis_command(&mut stream, addr, &[b"INFO", b"server"])? {
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
    let mut stream = open(addr)?;
    let reply = redis_command(
        &mut stream,
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

fn redis_command(
    stream: &mut TcpStream,
    addr: SocketAddr,
    args: &[&[u8]],
) -> Result<Owned, String> {
    let mut out = vec![0u8; resp::command_len(args)];
    resp::encode_command(&mut out, args);
    stream
        .write_all(&out)
        .map_err(|e| format!("{addr}: cannot send a command: {e}"))?;
    let mut buf = Vec::new();
    loop {
        match resp::parse(&buf) {
            Ok(Some((value, _))) => {
                return Ok(match value {
                    resp::Value::Simple(s) => Owned::Simple(String::from_utf8_lossy(s).into()),
                    resp::Value::Bulk(b) => Owned::Bulk(b.to_vec()),
                    resp::Value::Error(e) => {
                        return Err(format!(
                            "{addr}: Redis answered an error: {}",
                            String::from_utf8_lossy(e)
                        ));
                    }
                    other => Owned::Other(format!("{other:?}")),
                });
            }
            Ok(None) => read_more(stream, &mut buf, addr, "Redis")?,
            Err(e) => return Err(format!("{addr}: not a Redis server ({e}); check --port")),
        }
    }
}

fn open(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PROBE_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| format!("{addr}: cannot configure the socket: {e}"))?;
    Ok(stream)
}

fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    addr: SocketAddr,
    server: &str,
) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) => Err(format!(
            "{addr}: closed the connection; is this a {server} server?"
        )),
        Ok(n) if buf.len() + n <= PROBE_REPLY_LEN_MAX => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Ok(_) => Err(format!("{addr}: reply over {PROBE_REPLY_LEN_MAX} bytes")),
        Err(e) => Err(format!(
            "{addr}: no answer ({e}); is this a {server} server?"
        )),
    }
}
