//! One frame from a connection's input: decode it in place (native or
//! original protocol, told apart by its first byte), apply it to the lock
//! table, encode the reply into the connection's output buffer.
//!
//! No allocation: requests borrow from the input buffer, replies are encoded
//! straight into the output buffer, and error messages are formatted on the
//! stack. The caller reserves [`REPLY_SIZE_MAX`] bytes of output first.

use std::fmt::Write as _;

use crate::auth::Auth;
use crate::buffer::ConnBuffer;
use crate::protocol::legacy::{self, Command, LegacyRequest};
use crate::limits::{PROTOCOL_VERSION, REPLY_SIZE_MAX, STATUS_REPLY_SIZE_MAX};
use crate::protocol::{
    self, DecodeError, ErrorCode, HelloReply, Reply, Request, StatusWriter,
    kind,
};
use crate::table::{ArgError, LockTable, Outcome, SessionId};

pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What happened to the front of the input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// No complete frame yet.
    NeedMore,
    /// A frame of `used` bytes was executed. `queued`: its reply comes later
    /// as a table event, and the connection must decode nothing more until
    /// then.
    Executed { used: usize, queued: bool },
}

/// The inputs of one step: the table, and the connection's session and
/// protocol version.
pub struct Context<'a> {
    pub table: &'a mut LockTable,
    pub session: SessionId,
    /// The protocol version the connection speaks: 1 until a HELLO
    /// negotiates another. HELLO sets it; the caller keeps it for the
    /// connection's next steps and its later replies ([`Reply::granted`]).
    pub version: u16,
    pub now_ms: u64,
    pub uptime_ms: u64,
}

/// The protocol version of a connection that has not sent HELLO.
pub const VERSION_BEFORE_HELLO: u16 = 1;


/// Decodes and executes the frame at the front of `input`. `Err`: the input
/// cannot be decoded; an error reply was written (if there was room) and the
/// connection must be closed after flushing.
pub fn step(
    input: &[u8],
    ctx: &mut Context<'_>,
    out: &mut ConnBuffer,
) -> Result<Step, DecodeError> {
    debug_assert!(out.free_space() >= REPLY_SIZE_MAX);
    let frame_size_max = ctx.table.limits().frame_size_max;
    match input.first() {
        None => Ok(Step::NeedMore),
        Some(&first) if legacy::is_legacy(first) => {
            match legacy::decode_request(input, frame_size_max) {
                Ok(None) => Ok(Step::NeedMore),
                Ok(Some((request, used))) => {
                    execute_legacy(request, ctx, out);
                    Ok(Step::Executed {
                        used,
                        queued: false,
                    })
                }
                Err(e) => {
                    write_legacy(out, legacy::STATUS_INVALID, format_args!("{e}"));
                    Err(e)
                }
            }
        }
        Some(_) => match protocol::decode_request(input, frame_size_max) {
            Ok(None) => Ok(Step::NeedMore),
            Ok(Some((request, used))) => {
                let queued = execute(request, ctx, out);
                Ok(Step::Executed { used, queued })
            }
            Err(e) => {
                write_error(out, e.code(), format_args!("{e}"));
                Err(e)
            }
        },
    }
}

/// Why a connection must be closed once its last reply is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The input cannot be decoded.
    Decode(DecodeError),
    /// A request before AUTH, a wrong secret, or the original protocol on a
    /// server that requires AUTH.
    Unauthenticated,
}

/// [`step`] on a server that may require AUTH. `authenticated` is the
/// connection's state, false until a good AUTH when `auth` is set. Until
/// then only HELLO and AUTH are answered; anything else, and a wrong
/// secret, get ERROR AUTH and the connection is closed. The original
/// protocol cannot authenticate: its frames are refused with its ERROR
/// status unless [`Auth::allow_legacy`]. AUTH on a server without a secret
/// is accepted, so clients can be given the secret before the server.
#[inline]
pub fn step_gated(
    input: &[u8],
    ctx: &mut Context<'_>,
    auth: Option<&Auth>,
    authenticated: &mut bool,
    out: &mut ConnBuffer,
) -> Result<Step, Refusal> {
    match input.first() {
        None => return Ok(Step::NeedMore),
        Some(&kind::AUTH) => {}
        Some(_) if *authenticated => return step(input, ctx, out).map_err(Refusal::Decode),
        Some(&first) if legacy::is_legacy(first) => {
            if auth.is_none_or(|a| a.allow_legacy) {
                return step(input, ctx, out).map_err(Refusal::Decode);
            }
            write_legacy(
                out,
                legacy::STATUS_ERROR,
                format_args!(
                    "authentication required: this server needs AUTH, which the original protocol cannot send; use a native client with the secret, or start the server with --auth-allow-legacy"
                ),
            );
            return Err(Refusal::Unauthenticated);
        }
        Some(_) => {}
    }
    let frame_size_max = ctx.table.limits().frame_size_max;
    let (request, used) = match protocol::decode_request(input, frame_size_max) {
        Ok(None) => return Ok(Step::NeedMore),
        Ok(Some(decoded)) => decoded,
        Err(e) => {
            write_error(out, e.code(), format_args!("{e}"));
            return Err(Refusal::Decode(e));
        }
    };
    match request {
        Request::Auth { secret } => {
            if !auth.is_none_or(|a| a.accepts(secret)) {
                *authenticated = false;
                write_error(
                    out,
                    ErrorCode::Auth,
                    format_args!(
                        "wrong auth secret ({} bytes); use the contents of the server's --auth-secret-file",
                        secret.len()
                    ),
                );
                return Err(Refusal::Unauthenticated);
            }
            *authenticated = true;
            out.write_with(REPLY_SIZE_MAX, |buf| Reply::Authed.encode(buf));
        }
        Request::Hello { version, .. } => hello(version, ctx, out),
        _ => {
            write_error(
                out,
                ErrorCode::Auth,
                format_args!(
                    "authentication required: send AUTH with the server's secret first (the server runs with --auth-secret-file)"
                ),
            );
            return Err(Refusal::Unauthenticated);
        }
    }
    Ok(Step::Executed {
        used,
        queued: false,
    })
}

/// Applies one native request and encodes its reply. Returns whether the
/// request was queued (its reply comes later as a table event).
fn execute(request: Request<'_>, ctx: &mut Context<'_>, out: &mut ConnBuffer) -> bool {
    let (table, now) = (&mut *ctx.table, ctx.now_ms);
    let outcome = match request {
        Request::Hello { version, .. } => {
            hello(version, ctx, out);
            return false;
        }
        Request::Status { name, cursor } => {
            status(name, cursor, ctx, out);
            return false;
        }
        Request::Auth { .. } => {
            // Only reached without a secret (see `step_gated`).
            out.write_with(REPLY_SIZE_MAX, |buf| Reply::Authed.encode(buf));
            return false;
        }
        Request::Ping => {
            let reply = Reply::Pong {
                uptime_ms: ctx.uptime_ms,
                server_version: SERVER_VERSION.as_bytes(),
            };
            out.write_with(REPLY_SIZE_MAX, |buf| reply.encode(buf));
            return false;
        }
        Request::Acquire(acquire) => table.acquire(ctx.session, &acquire, now),
        Request::Release { name, owner, token } => match table.check_name_owner(name, owner) {
            Err(e) => Outcome::Rejected(e),
            Ok(()) => table.release(name, owner, token, now),
        },
        Request::Extend {
            name,
            owner,
            token,
            ttl_ms,
        } => match table.check_name_owner(name, owner) {
            Err(e) => Outcome::Rejected(e),
            Ok(()) => table.extend(name, owner, token, ttl_ms, now),
        },
    };
    let reply = match outcome {
        Outcome::Queued => return true,
        Outcome::Granted {
            token,
            ttl_ms,
            reentered,
        } => Reply::granted(ctx.version, token, ttl_ms, reentered),
        Outcome::Busy {
            remaining_ms,
            waiters,
        } => Reply::Busy {
            remaining_ms,
            waiters,
        },
        Outcome::Released => Reply::Released,
        Outcome::Extended { ttl_ms } => Reply::Extended { ttl_ms },
        Outcome::NotHeld(reason) => Reply::NotHeld { reason },
        Outcome::Rejected(e) => {
            let code = match e {
                ArgError::LocksFull { .. } | ArgError::WaitersFull { .. } => ErrorCode::Limit,
                _ => ErrorCode::BadArgument,
            };
            write_error(out, code, format_args!("{e}"));
            return false;
        }
    };
    out.write_with(REPLY_SIZE_MAX, |buf| reply.encode(buf));
    false
}

/// Applies one request of the original protocol (see [`crate::protocol::legacy`]).
fn execute_legacy(request: LegacyRequest<'_>, ctx: &mut Context<'_>, out: &mut ConnBuffer) {
    let LegacyRequest {
        command,
        name,
        client_id,
    } = request;
    let (table, now) = (&mut *ctx.table, ctx.now_ms);
    if command == Command::Health {
        write_legacy(out, legacy::STATUS_OK, format_args!(""));
        return;
    }
    if let Err(e) = table.check_name_owner(name, client_id) {
        let e = LegacyArgError(e);
        write_legacy(out, legacy::STATUS_INVALID, format_args!("{e}"));
        return;
    }
    let outcome = match command {
        Command::Acquire => {
            // The original protocol has no TTL field and never renews: its
            // holds get their own lifetime, not the native default.
            let acquire = protocol::Acquire {
                name,
                owner: client_id,
                ttl_ms: table.limits().legacy_ttl_ms,
                wait_ms: 0,
                flags: 0,
            };
            table.acquire(ctx.session, &acquire, now)
        }
        Command::Release => table.release_by_owner(name, client_id, now),
        Command::Health => unreachable!("answered above"),
    };
    match outcome {
        Outcome::Granted { .. } | Outcome::Released => {
            write_legacy(out, legacy::STATUS_OK, format_args!(""))
        }
        Outcome::Busy { .. } => {
            write_legacy(out, legacy::STATUS_TIMEOUT, format_args!("Lock is busy"))
        }
        Outcome::NotHeld(_) => {
            write_legacy(out, legacy::STATUS_ERROR, format_args!("Invalid release"))
        }
        Outcome::Rejected(e @ ArgError::LocksFull { .. }) => {
            write_legacy(out, legacy::STATUS_ERROR, format_args!("{e}"))
        }
        Outcome::Rejected(e) => write_legacy(
            out,
            legacy::STATUS_INVALID,
            format_args!("{}", LegacyArgError(e)),
        ),
        Outcome::Queued | Outcome::Extended { .. } => {
            unreachable!("a try-acquire or release cannot answer {outcome:?}")
        }
    }
}

/// The original protocol calls the owner "client id".
struct LegacyArgError(crate::table::ArgError);

impl std::fmt::Display for LegacyArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            ArgError::OwnerEmpty => write!(f, "client id is empty; use 1 or more bytes"),
            ArgError::OwnerTooLong { len, max } => {
                write!(
                    f,
                    "client id is {len} bytes, over owner_len_max {max}; use a shorter client id"
                )
            }
            other => write!(f, "{other}"),
        }
    }
}

/// Answers HELLO and makes the connection speak the version it names.
fn hello(version: u16, ctx: &mut Context<'_>, out: &mut ConnBuffer) {
    if version == 0 {
        write_error(
            out,
            ErrorCode::UnsupportedVersion,
            format_args!(
                "protocol version 0 is not supported; this server speaks 1 to {PROTOCOL_VERSION}"
            ),
        );
        return;
    }
    ctx.version = version.min(PROTOCOL_VERSION);
    let limits = ctx.table.limits();
    let reply = Reply::Hello(HelloReply::new(
        ctx.version,
        limits,
        SERVER_VERSION.as_bytes(),
    ));
    out.write_with(REPLY_SIZE_MAX, |buf| reply.encode(buf));
}

/// Answers STATUS: one lock's state, or a page of all held locks packed
/// into as much of the output buffer as is free (up to
/// STATUS_REPLY_SIZE_MAX; REPLY_SIZE_MAX, which the caller reserved, holds
/// at least one entry).
fn status(name: &[u8], cursor: u32, ctx: &mut Context<'_>, out: &mut ConnBuffer) {
    let (table, now) = (&mut *ctx.table, ctx.now_ms);
    let max = table.limits().name_len_max;
    if name.len() > max {
        let e = ArgError::NameTooLong {
            len: name.len(),
            max,
        };
        write_error(out, ErrorCode::BadArgument, format_args!("{e}"));
        return;
    }
    let room = out.free_space().min(STATUS_REPLY_SIZE_MAX);
    let total = u32::try_from(table.len()).unwrap_or(u32::MAX);
    out.write_with(room, |buf| {
        let mut writer = StatusWriter::begin(&mut buf[..room], total);
        let next_cursor = if name.is_empty() {
            table.status_page(cursor, now, |entry| writer.push(entry))
        } else {
            table.status_of(name, now, |entry| {
                writer.push(entry);
            });
            0
        };
        writer.finish(next_cursor)
    });
}

/// Encodes a native ERROR reply whose message is formatted on the stack,
/// cut at the protocol's 255 bytes. Skipped if the output has no room (only
/// possible for a decode error, after which the connection closes anyway).
pub fn write_error(out: &mut ConnBuffer, code: ErrorCode, message: std::fmt::Arguments<'_>) {
    if out.free_space() < REPLY_SIZE_MAX {
        return;
    }
    let text = StackText::format(message);
    let reply = Reply::Error {
        code,
        message: text.as_bytes(),
    };
    out.write_with(REPLY_SIZE_MAX, |buf| reply.encode(buf));
}

/// Writes an error in the protocol the client at the front of `input`
/// speaks: the original protocol's ERROR status when its first byte is one
/// of that protocol's commands, else a native ERROR frame with `code`.
pub fn write_error_for(
    input: &[u8],
    out: &mut ConnBuffer,
    code: ErrorCode,
    message: std::fmt::Arguments<'_>,
) {
    match input.first() {
        Some(&first) if legacy::is_legacy(first) => {
            write_legacy(out, legacy::STATUS_ERROR, message)
        }
        _ => write_error(out, code, message),
    }
}

/// Encodes a reply of the original protocol.
fn write_legacy(out: &mut ConnBuffer, status: u8, message: std::fmt::Arguments<'_>) {
    if out.free_space() < REPLY_SIZE_MAX {
        return;
    }
    let text = StackText::format(message);
    out.write_with(REPLY_SIZE_MAX, |buf| {
        legacy::encode_reply(status, text.as_bytes(), buf)
    });
}

/// A message formatted into a fixed stack buffer, cut at 255 bytes.
struct StackText {
    buf: [u8; 255],
    len: usize,
}

impl StackText {
    fn format(message: std::fmt::Arguments<'_>) -> StackText {
        let mut text = StackText {
            buf: [0; 255],
            len: 0,
        };
        let _ = text.write_fmt(message);
        text
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::CONN_OUTPUT_BUFFER_SIZE;

    /// Random bytes, native and legacy first bytes mixed in, through the
    /// whole per-frame path: every step either needs more, executes, or
    /// returns a decode error; nothing panics and the table stays sound.
    #[test]
    fn random_input_never_panics() {
        let mut state = 0x0123_4567_89ab_cdefu64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let firsts = [b'H', b'P', b'A', b'R', b'E', 1, 2, 3, 0, 0xff, b'x'];
        let mut table = LockTable::new(crate::limits::Limits::default(), 1, 0);
        let mut session = table.open_session(0);
        for round in 0..20_000u64 {
            let len = (next() % 48) as usize;
            let mut input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = input.first_mut() {
                *first = firsts[(next() % firsts.len() as u64) as usize];
            }
            if input.len() > 2 && next() % 2 == 0 {
                input[1] = 0; // plausible lengths reach the body parsers
            }
            let mut out = ConnBuffer::with_capacity(CONN_OUTPUT_BUFFER_SIZE);
            let mut ctx = Context {
                table: &mut table,
                session,
                version: [1, 2][(round % 2) as usize],
                now_ms: round,
                uptime_ms: round,
            };
            let mut rest = &input[..];
            while !rest.is_empty() {
                match step(rest, &mut ctx, &mut out) {
                    Ok(Step::Executed { used, queued }) => {
                        assert!(used > 0 && used <= rest.len());
                        rest = &rest[used..];
                        if queued {
                            break; // the server would decode nothing more
                        }
                    }
                    Ok(Step::NeedMore) | Err(_) => break,
                }
                if out.free_space() < REPLY_SIZE_MAX {
                    out.consume(out.len());
                }
            }
            if ctx.table.is_waiting(session) {
                ctx.table.close_session(session, round);
                ctx.table.clear_events();
                session = ctx.table.open_session(round);
            }
            table.clear_events();
            if round % 1000 == 0 {
                table.invariants();
            }
        }
        table.invariants();
    }
}
