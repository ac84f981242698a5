//! A hand-written RESP2 encoder and incremental reply parser, for the few
//! commands a Redis lock needs: `SET name token NX PX ttl`, `EVALSHA`,
//! `SCRIPT LOAD` and `PING`.
//!
//! Why not a crate: the load generator drives hundreds of non-blocking
//! sockets from one mio loop and must not allocate per request. A command is
//! encoded straight into the connection's fixed output buffer, and a reply is
//! parsed in place from its input buffer, check-then-parse: `Ok(None)` means
//! "need more bytes" and nothing is consumed. redis-rs and friends are built
//! around their own (blocking or async) connections and owned `Value`s, and
//! would add a dependency tree for five commands.
//!
//! Command layout (RESP arrays of bulk strings):
//!
//! ```text
//! *<argc>\r\n  then for each argument:  $<len>\r\n<bytes>\r\n
//! ```
//!
//! Replies understood, by first byte: `+` simple string, `-` error,
//! `:` integer, `$` bulk string (`$-1` is nil). Arrays (`*`) are not needed by
//! these commands and are reported as [`RespError::Unsupported`].

/// The compare-and-delete release, as redis-py's `Lock` does it.
pub const RELEASE_SCRIPT: &str = "if redis.call(\"get\",KEYS[1]) == ARGV[1] then return redis.call(\"del\",KEYS[1]) else return 0 end";

/// Bytes of a script's SHA1 in hex, as EVALSHA takes it.
pub const SCRIPT_SHA_LEN: usize = 40;

/// Longest reply line (simple string, error or length header) accepted: a
/// Redis error is one short line; anything longer means we are not talking
/// to Redis.
pub const REPLY_LINE_LEN_MAX: usize = 1024;

/// Largest bulk reply accepted (SCRIPT LOAD answers 40 bytes).
pub const BULK_LEN_MAX: usize = 64 * 1024;

/// One RESP reply, borrowing from the input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    Bulk(&'a [u8]),
    Nil,
}

/// Bytes that cannot be a reply to our commands. The connection is unusable
/// after it (frame boundaries are lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RespError {
    /// The first byte is not a RESP2 type we parse.
    UnknownType { byte: u8 },
    /// A type we do not expect from these commands (arrays).
    Unsupported { byte: u8 },
    /// A line without CRLF within [`REPLY_LINE_LEN_MAX`].
    LineTooLong,
    /// A length or integer that does not parse or is out of range.
    BadNumber,
    /// A bulk string not followed by CRLF.
    MissingCrlf,
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            RespError::UnknownType { byte } => write!(
                f,
                "reply starts with byte 0x{byte:02x}, not a RESP type; is this a Redis server?"
            ),
            RespError::Unsupported { byte } => write!(
                f,
                "reply of RESP type {:?} is not expected for SET/EVALSHA/PING",
                byte as char
            ),
            RespError::LineTooLong => write!(
                f,
                "reply line longer than {REPLY_LINE_LEN_MAX} bytes without CRLF; is this a Redis server?"
            ),
            RespError::BadNumber => write!(f, "reply carries a malformed number"),
            RespError::MissingCrlf => write!(f, "bulk reply is not followed by CRLF"),
        }
    }
}

impl std::error::Error for RespError {}

/// Parses one reply from the front of `buf`. `Ok(Some((value, n)))`: the
/// caller consumes `n` bytes; `Ok(None)`: incomplete, read more.
pub fn parse(buf: &[u8]) -> Result<Option<(Value<'_>, usize)>, RespError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' | b':' | b'$' => {}
        b'*' | b'%' | b'~' | b'>' | b'_' | b',' | b'#' | b'!' | b'=' | b'(' | b'|' => {
            return Err(RespError::Unsupported { byte: kind });
        }
        _ => return Err(RespError::UnknownType { byte: kind }),
    }
    let Some(line_end) = find_crlf(&buf[1..])? else {
        return Ok(None);
    };
    let line = &buf[1..1 + line_end];
    let after_line = 1 + line_end + 2;
    let value = match kind {
        b'+' => Value::Simple(line),
        b'-' => Value::Error(line),
        b':' => Value::Integer(parse_i64(line)?),
        _ => {
            let len = parse_i64(line)?;
            if len == -1 {
                return Ok(Some((Value::Nil, after_line)));
            }
            if len < 0 || len as usize > BULK_LEN_MAX {
                return Err(RespError::BadNumber);
            }
            let len = len as usize;
            let end = after_line + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::MissingCrlf);
            }
            return Ok(Some((Value::Bulk(&buf[after_line..end]), end + 2)));
        }
    };
    Ok(Some((value, after_line)))
}

/// Position of the first CRLF, bounded by [`REPLY_LINE_LEN_MAX`].
fn find_crlf(buf: &[u8]) -> Result<Option<usize>, RespError> {
    let window = &buf[..buf.len().min(REPLY_LINE_LEN_MAX + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(at) => Ok(Some(at)),
        None if window.len() >= REPLY_LINE_LEN_MAX + 2 => Err(RespError::LineTooLong),
        None => Ok(None),
    }
}

fn parse_i64(line: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::BadNumber)
}

/// Encoded size of a command with these arguments.
pub fn command_len(args: &[&[u8]]) -> usize {
    let mut n = 1 + decimal_len(args.len() as u64) + 2;
    for arg in args {
        n += 1 + decimal_len(arg.len() as u64) + 2 + arg.len() + 2;
    }
    n
}

/// Encodes a command into `out`, which must hold [`command_len`] bytes;
/// returns the bytes written. No allocation.
pub fn encode_command(out: &mut [u8], args: &[&[u8]]) -> usize {
    let mut w = Cursor { out, pos: 0 };
    w.put(b"*");
    w.decimal(args.len() as u64);
    w.put(b"\r\n");
    for arg in args {
        w.put(b"$");
        w.decimal(arg.len() as u64);
        w.put(b"\r\n");
        w.put(arg);
        w.put(b"\r\n");
    }
    debug_assert_eq!(w.pos, command_len(args));
    w.pos
}

/// `SET name token NX PX ttl_ms`: take the lock if free, with a TTL.
pub fn encode_set_nx_px(out: &mut [u8], name: &[u8], token: &[u8], ttl_ms: u32) -> usize {
    let mut digits = [0u8; 10];
    let ttl = decimal(&mut digits, ttl_ms as u64);
    encode_command(out, &[b"SET", name, token, b"NX", b"PX", ttl])
}

/// `EVALSHA sha 1 name token`: the compare-and-delete release.
pub fn encode_release(out: &mut [u8], sha: &[u8], name: &[u8], token: &[u8]) -> usize {
    encode_command(out, &[b"EVALSHA", sha, b"1", name, token])
}

/// Size of the largest SET or EVALSHA for these name and token lengths.
pub fn lock_command_len_max(name_len: usize, token_len: usize) -> usize {
    let name = vec![b'n'; name_len];
    let token = vec![b't'; token_len];
    let sha = [b'0'; SCRIPT_SHA_LEN];
    command_len(&[b"SET", &name, &token, b"NX", b"PX", b"4294967295"])
        .max(command_len(&[b"EVALSHA", &sha, b"1", &name, &token]))
}

fn decimal_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

/// Formats `v` in decimal into `buf`, returning the digits.
pub fn decimal(buf: &mut [u8], mut v: u64) -> &[u8] {
    let n = decimal_len(v);
    for i in (0..n).rev() {
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    &buf[..n]
}

struct Cursor<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
    fn decimal(&mut self, v: u64) {
        let mut digits = [0u8; 20];
        let d = decimal(&mut digits, v);
        self.put(d);
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;
    use crate::loadtest::Backend;
    use crate::loadtest::compare::ServerProcess;

    /// A reply copied out of the parser's borrowed [`Value`].
    #[derive(Debug, PartialEq)]
    enum Owned {
        Simple(Vec<u8>),
        Error(Vec<u8>),
        Integer(i64),
        Bulk(Vec<u8>),
        Nil,
    }

    impl From<Value<'_>> for Owned {
        fn from(v: Value<'_>) -> Owned {
            match v {
                Value::Simple(s) => Owned::Simple(s.to_vec()),
                Value::Error(e) => Owned::Error(e.to_vec()),
                Value::Integer(i) => Owned::Integer(i),
                Value::Bulk(b) => Owned::Bulk(b.to_vec()),
                Value::Nil => Owned::Nil,
            }
        }
    }

    /// Sends one command and reads one reply, through our encoder and parser.
    fn redis_roundtrip(stream: &mut TcpStream, args: &[&[u8]]) -> Owned {
        use std::io::{Read, Write};
        let mut out = vec![0u8; command_len(args)];
        let n = encode_command(&mut out, args);
        assert_eq!(n, out.len());
        stream.write_all(&out).unwrap();
        let mut buf = Vec::new();
        loop {
            if let Some((value, used)) = parse(&buf).unwrap() {
                assert_eq!(used, buf.len(), "exactly one reply");
                return value.into();
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "redis closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    #[test]
    fn resp_codec_speaks_to_a_real_redis() {
        let redis = ServerProcess::start(Backend::Redis, "redis-server", None)
            .unwrap_or_else(|e| panic!("{e}; `bash scripts/test` installs redis-server"));
        let mut s = TcpStream::connect(redis.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            redis_roundtrip(&mut s, &[b"PING"]),
            Owned::Simple(b"PONG".to_vec())
        );
        let Owned::Bulk(sha) =
            redis_roundtrip(&mut s, &[b"SCRIPT", b"LOAD", RELEASE_SCRIPT.as_bytes()])
        else {
            panic!("SCRIPT LOAD did not answer a bulk string")
        };
        assert_eq!(sha.len(), SCRIPT_SHA_LEN);

        // SET NX PX through the lock encoder: first wins, second gets nil.
        let mut out = [0u8; 256];
        for (token, want) in [
            (&b"tok-a"[..], Owned::Simple(b"OK".to_vec())),
            (b"tok-b", Owned::Nil),
        ] {
            let n = encode_set_nx_px(&mut out, b"bench:test:lock", token, 60_000);
            let args = parse_command(&out[..n]);
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            assert_eq!(args[0], b"SET");
            assert_eq!(redis_roundtrip(&mut s, &args), want);
        }
        // Compare-and-delete: the wrong token deletes nothing, the right one does.
        for (token, want) in [(&b"tok-b"[..], 0), (b"tok-a", 1), (b"tok-a", 0)] {
            let n = encode_release(&mut out, &sha, b"bench:test:lock", token);
            let args = parse_command(&out[..n]);
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            assert_eq!(redis_roundtrip(&mut s, &args), Owned::Integer(want));
        }
        // An error reply parses as an error, not as a value.
        assert!(matches!(
            redis_roundtrip(&mut s, &[b"NOSUCHCOMMAND"]),
            Owned::Error(_)
        ));
    }

    /// Splits an encoded RESP command back into its arguments (checks the
    /// encoder's framing independently of Redis).
    fn parse_command(wire: &[u8]) -> Vec<Vec<u8>> {
        let text = wire.to_vec();
        let mut parts = text
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap());
        let header = parts.next().unwrap();
        assert_eq!(header[0], b'*');
        let argc: usize = std::str::from_utf8(&header[1..]).unwrap().parse().unwrap();
        let mut args = Vec::new();
        for _ in 0..argc {
            let len_line = parts.next().unwrap();
            assert_eq!(len_line[0], b'$');
            let len: usize = std::str::from_utf8(&len_line[1..])
                .unwrap()
                .parse()
                .unwrap();
            let arg = parts.next().unwrap().to_vec();
            assert_eq!(arg.len(), len);
            args.push(arg);
        }
        args
    }

    #[test]
    fn set_encodes_as_redis_cli_would() {
        let mut out = [0u8; 128];
        let n = encode_set_nx_px(&mut out, b"job", b"abc", 10_000);
        assert_eq!(
            &out[..n],
            b"*6\r\n$3\r\nSET\r\n$3\r\njob\r\n$3\r\nabc\r\n$2\r\nNX\r\n$2\r\nPX\r\n$5\r\n10000\r\n"
        );
    }

    #[test]
    fn every_reply_type_parses_and_reports_its_length() {
        let cases: &[(&[u8], Value<'_>)] = &[
            (b"+OK\r\n", Value::Simple(b"OK")),
            (b"-ERR wrong\r\n", Value::Error(b"ERR wrong")),
            (b":1\r\n", Value::Integer(1)),
            (b":-42\r\n", Value::Integer(-42)),
            (b"$-1\r\n", Value::Nil),
            (b"$0\r\n\r\n", Value::Bulk(b"")),
            (b"$5\r\na\r\nbc\r\n", Value::Bulk(b"a\r\nbc")),
        ];
        for (wire, want) in cases {
            assert_eq!(parse(wire), Ok(Some((*want, wire.len()))), "{wire:?}");
            for end in 0..wire.len() {
                assert_eq!(parse(&wire[..end]), Ok(None), "{wire:?} cut at {end}");
            }
        }
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert_eq!(parse(b"?"), Err(RespError::UnknownType { byte: b'?' }));
        assert_eq!(parse(b"*1\r\n"), Err(RespError::Unsupported { byte: b'*' }));
        assert_eq!(parse(b":x\r\n"), Err(RespError::BadNumber));
        assert_eq!(parse(b"$-2\r\n"), Err(RespError::BadNumber));
        assert_eq!(parse(b"$1\r\nab\r\n"), Err(RespError::MissingCrlf));
        let long = vec![b'+'; REPLY_LINE_LEN_MAX + 8];
        assert_eq!(parse(&long), Err(RespError::LineTooLong));
    }

    #[test]
    fn lengths_agree_with_encoding() {
        let sha = [b'a'; SCRIPT_SHA_LEN];
        let mut out = [0u8; 256];
        let n = encode_release(&mut out, &sha, b"bench:x:1", &[b'f'; 32]);
        assert_eq!(
            n,
            command_len(&[b"EVALSHA", &sha, b"1", b"bench:x:1", &[b'f'; 32]])
        );
        assert!(n <= lock_command_len_max(9, 32));
        let mut digits = [0u8; 20];
        assert_eq!(decimal(&mut digits, 0), b"0");
        assert_eq!(decimal(&mut digits, u64::MAX), b"18446744073709551615");
    }
}
