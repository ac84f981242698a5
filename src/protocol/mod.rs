//! The native wire protocol: frame layouts, in-place decoding, encoding.
//!
//! Every frame, in both directions, is
//!
//! ```text
//! +------+-----------------+----------------------+
//! | kind | body_len (u16)  | body (body_len bytes) |
//! +------+-----------------+----------------------+
//!   1 B     2 B big-endian
//! ```
//!
//! so the whole frame length is known, and checked against `frame_size_max`,
//! as soon as three bytes have arrived. Variable fields inside a body are
//! length-prefixed (u8). Decoding is check-then-parse: `Ok(None)` means "need
//! more bytes" and nothing is consumed; a complete frame decodes into
//! [`Request`]/[`Reply`] values that borrow from the input buffer (no
//! allocation, no copy). docs/PROTOCOL.md is the normative description.
//!
//! First bytes 0x01, 0x02 and 0x03 are reserved for the original Python
//! daemon's protocol and never start a native frame.
//!
//! [`blocking`] writes frames and reads replies on a blocking stream;
//! [`legacy`] is the original daemon's protocol.

pub mod blocking;
pub mod legacy;

/// For the `distlockd` binary's load tester, which reads and writes
/// frames through the server's buffers; not part of the interface.
#[doc(hidden)]
pub use crate::buffer::ConnBuffer;
pub use crate::limits::{
    CLIENT_NAME_LEN_CEILING, FRAME_HEADER_SIZE, FRAME_SIZE_CEILING, NAME_LEN_CEILING,
    OWNER_LEN_CEILING, PROTOCOL_VERSION, REPLY_SIZE_MAX, RequestKind, RequestSize,
    STATUS_REPLY_SIZE_MAX, longest_request,
};

/// Request kinds (client → server).
pub mod kind {
    pub const HELLO: u8 = b'H';
    pub const PING: u8 = b'P';
    pub const ACQUIRE: u8 = b'A';
    pub const RELEASE: u8 = b'R';
    pub const EXTEND: u8 = b'E';
    pub const AUTH: u8 = b'U';
    pub const STATUS: u8 = b'S';
    /// Reply kinds (server → client).
    pub const HELLO_REPLY: u8 = b'h';
    pub const PONG: u8 = b'p';
    pub const GRANTED: u8 = b'g';
    pub const BUSY: u8 = b'b';
    pub const TIMEOUT: u8 = b't';
    pub const RELEASED: u8 = b'r';
    pub const EXTENDED: u8 = b'x';
    pub const NOT_HELD: u8 = b'n';
    pub const ERROR: u8 = b'-';
    pub const AUTHED: u8 = b'u';
    pub const STATUS_REPLY: u8 = b's';
    /// First bytes of the original daemon's frames: acquire, release, health.
    pub const LEGACY_RESERVED: [u8; 3] = [
        crate::protocol::legacy::CMD_ACQUIRE,
        crate::protocol::legacy::CMD_RELEASE,
        crate::protocol::legacy::CMD_HEALTH,
    ];
}

/// ACQUIRE flag: release the hold when the acquiring connection closes.
pub const FLAG_SESSION: u8 = 0x01;
/// ACQUIRE flag: wait in the queue with no deadline (`wait_ms` must be 0).
pub const FLAG_WAIT_FOREVER: u8 = 0x02;
/// Every flag bit this version understands; other bits are a BAD_ARGUMENT.
pub const FLAGS_KNOWN: u8 = FLAG_SESSION | FLAG_WAIT_FOREVER;

/// GRANTED flag (protocol version 2): the owner already held the lock, so
/// this is a re-entry: the same token, the TTL restarted.
pub const GRANTED_FLAG_REENTERED: u8 = 0x01;
/// Every GRANTED flag bit; others are a PROTOCOL error for the client.
pub const GRANTED_FLAGS_KNOWN: u8 = GRANTED_FLAG_REENTERED;
/// The first protocol version whose GRANTED carries flags.
pub const GRANTED_FLAGS_VERSION: u16 = 2;

/// A decoded request, borrowing its byte fields from the input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Hello {
        version: u16,
        client_name: &'a [u8],
    },
    Ping,
    Acquire(Acquire<'a>),
    Release {
        name: &'a [u8],
        owner: &'a [u8],
        token: u64,
    },
    Extend {
        name: &'a [u8],
        owner: &'a [u8],
        token: u64,
        ttl_ms: u32,
    },
    /// The shared secret, when the server requires authentication.
    Auth {
        secret: &'a [u8],
    },
    /// One lock's state (`name` not empty), or a page of all held locks
    /// starting at `cursor` (`name` empty; 0 is the first page).
    Status {
        name: &'a [u8],
        cursor: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acquire<'a> {
    pub name: &'a [u8],
    pub owner: &'a [u8],
    /// 0 means the server's default TTL.
    pub ttl_ms: u32,
    /// 0 means try once and answer BUSY if held.
    pub wait_ms: u32,
    pub flags: u8,
}

/// Why a RELEASE or EXTEND was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum NotHeldReason {
    /// Nobody holds the lock (never taken, released, or expired).
    Free = 0,
    /// Another owner holds it.
    OtherOwner = 1,
    /// The owner holds it under a different token.
    TokenMismatch = 2,
}

impl NotHeldReason {
    /// The reason's name in docs/PROTOCOL.md.
    pub fn name(self) -> &'static str {
        match self {
            NotHeldReason::Free => "FREE",
            NotHeldReason::OtherOwner => "OTHER_OWNER",
            NotHeldReason::TokenMismatch => "TOKEN_MISMATCH",
        }
    }
}

/// Error codes carried by ERROR replies. See docs/PROTOCOL.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed frame (lengths disagree). The connection is closed.
    Protocol,
    /// First byte is not a known kind. The connection is closed.
    UnknownKind,
    /// Frame longer than frame_size_max. The connection is closed.
    FrameTooLarge,
    /// A field is out of range; the request is refused, the connection stays.
    BadArgument,
    /// HELLO asked for a protocol version this server does not speak.
    UnsupportedVersion,
    /// A resource limit was reached (reserved for locks_max and the like).
    Limit,
    /// The server is shutting down.
    ShuttingDown,
    /// Authentication required or failed.
    Auth,
    /// A code this client does not know.
    Other(u16),
}

impl ErrorCode {
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Protocol => 1,
            ErrorCode::UnknownKind => 2,
            ErrorCode::FrameTooLarge => 3,
            ErrorCode::BadArgument => 4,
            ErrorCode::UnsupportedVersion => 5,
            ErrorCode::Limit => 6,
            ErrorCode::ShuttingDown => 7,
            ErrorCode::Auth => 8,
            ErrorCode::Other(code) => code,
        }
    }

    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::Protocol,
            2 => ErrorCode::UnknownKind,
            3 => ErrorCode::FrameTooLarge,
            4 => ErrorCode::BadArgument,
            5 => ErrorCode::UnsupportedVersion,
            6 => ErrorCode::Limit,
            7 => ErrorCode::ShuttingDown,
            8 => ErrorCode::Auth,
            other => ErrorCode::Other(other),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Protocol => "PROTOCOL",
            ErrorCode::UnknownKind => "UNKNOWN_KIND",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::BadArgument => "BAD_ARGUMENT",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::Limit => "LIMIT",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::Auth => "AUTH",
            ErrorCode::Other(_) => "OTHER",
        }
    }
}

/// A decoded reply, borrowing byte fields from the buffer it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    Hello(HelloReply<'a>),
    Pong {
        uptime_ms: u64,
        server_version: &'a [u8],
    },
    /// `reentered`: `None` in the version 1 layout (no flags byte), which
    /// cannot say; `Some` in version 2's.
    Granted {
        token: u64,
        ttl_ms: u32,
        reentered: Option<bool>,
    },
    Busy {
        remaining_ms: u32,
        waiters: u32,
    },
    Timeout {
        waited_ms: u32,
    },
    Released,
    Extended {
        ttl_ms: u32,
    },
    NotHeld {
        reason: NotHeldReason,
    },
    Error {
        code: ErrorCode,
        message: &'a [u8],
    },
    /// AUTH accepted: every request may follow.
    Authed,
    Status(StatusReply<'a>),
}

/// What STATUS tells about one held lock. Owners are never revealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusEntry<'a> {
    pub name: &'a [u8],
    pub token: u64,
    /// Time until the hold expires, unless extended or released.
    pub remaining_ms: u32,
    /// ACQUIREs queued on the lock.
    pub waiters: u32,
    /// The hold ends when its connection closes (SESSION).
    pub session: bool,
}

/// STATUS entry flag: a SESSION hold.
pub const STATUS_FLAG_SESSION: u8 = 0x01;

/// A STATUS reply: `count` entries, checked when decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusReply<'a> {
    /// Locks held on the server.
    pub total: u32,
    /// Where the next page starts; 0: this is the last page.
    pub next_cursor: u32,
    pub count: u8,
    /// The encoded entries.
    pub entries: &'a [u8],
}

impl<'a> StatusReply<'a> {
    pub fn entries(&self) -> impl Iterator<Item = StatusEntry<'a>> + use<'a> {
        let mut r = Reader {
            body: self.entries,
            kind: kind::STATUS_REPLY,
        };
        (0..self.count)
            .map(move |_| read_status_entry(&mut r).expect("entries were checked when decoded"))
    }
}

fn read_status_entry<'a>(r: &mut Reader<'a>) -> Result<StatusEntry<'a>, DecodeError> {
    Ok(StatusEntry {
        name: r.bytes()?,
        token: r.u64()?,
        remaining_ms: r.u32()?,
        waiters: r.u32()?,
        session: r.u8()? & STATUS_FLAG_SESSION != 0,
    })
}

/// Encodes a STATUS reply entry by entry into `out`, whose length bounds
/// the frame (at most [`STATUS_REPLY_SIZE_MAX`]).
pub struct StatusWriter<'a> {
    w: Writer<'a>,
    count: u8,
}

impl<'a> StatusWriter<'a> {
    pub fn begin(out: &'a mut [u8], total: u32) -> StatusWriter<'a> {
        debug_assert!(out.len() >= crate::limits::STATUS_REPLY_HEADER_SIZE);
        let mut w = Writer::begin(out, kind::STATUS_REPLY);
        w.u32(total);
        w.u32(0); // next_cursor, set by finish
        w.u8(0); // count, set by finish
        StatusWriter { w, count: 0 }
    }

    /// Adds an entry if it fits; false (and nothing written) if not.
    pub fn push(&mut self, e: &StatusEntry<'_>) -> bool {
        let size = 1 + e.name.len() + 8 + 4 + 4 + 1;
        if self.count == u8::MAX || self.w.pos + size > self.w.out.len() {
            return false;
        }
        self.w.bytes(e.name);
        self.w.u64(e.token);
        self.w.u32(e.remaining_ms);
        self.w.u32(e.waiters);
        self.w.u8(if e.session { STATUS_FLAG_SESSION } else { 0 });
        self.count += 1;
        true
    }

    pub fn finish(self, next_cursor: u32) -> usize {
        let StatusWriter { w, count } = self;
        let at = FRAME_HEADER_SIZE + 4;
        w.out[at..at + 4].copy_from_slice(&next_cursor.to_be_bytes());
        w.out[at + 4] = count;
        w.finish()
    }
}

/// The server's answer to HELLO: its version and the limits a client needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloReply<'a> {
    pub version: u16,
    pub frame_size_max: u16,
    pub name_len_max: u8,
    pub owner_len_max: u8,
    pub lock_ttl_ms_default: u32,
    pub lock_ttl_ms_max: u32,
    pub wait_ms_max: u32,
    pub server_version: &'a [u8],
}

impl<'a> HelloReply<'a> {
    /// The reply of a server with `limits`, speaking `version`.
    #[cfg(feature = "server")]
    pub fn new(version: u16, limits: &crate::limits::Limits, server_version: &'a [u8]) -> Self {
        HelloReply {
            version,
            frame_size_max: limits.frame_size_max as u16,
            name_len_max: limits.name_len_max as u8,
            owner_len_max: limits.owner_len_max as u8,
            lock_ttl_ms_default: limits.lock_ttl_ms_default,
            lock_ttl_ms_max: limits.lock_ttl_ms_max,
            wait_ms_max: limits.wait_ms_max,
            server_version,
        }
    }
}

/// Why bytes could not be decoded as a frame. Every variant closes the
/// connection that sent them: after it, frame boundaries are unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    UnknownKind {
        kind: u8,
    },
    /// A first byte of the original daemon's protocol.
    Legacy {
        kind: u8,
    },
    FrameTooLarge {
        kind: u8,
        size: usize,
        max: usize,
    },
    /// The body's declared length disagrees with its contents.
    Malformed {
        kind: u8,
        reason: &'static str,
    },
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownKind { .. } | DecodeError::Legacy { .. } => ErrorCode::UnknownKind,
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::Malformed { .. } => ErrorCode::Protocol,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            DecodeError::UnknownKind { kind } => write!(
                f,
                "frame kind 0x{kind:02x} is not a distlockd frame; check that the client speaks the distlockd protocol"
            ),
            DecodeError::Legacy { kind } => write!(
                f,
                "frame kind 0x{kind:02x} belongs to the original Python protocol; decode it with distlockd::protocol::legacy"
            ),
            DecodeError::FrameTooLarge { kind, size, max } => write!(
                f,
                "frame of kind 0x{kind:02x} is {size} bytes, over frame_size_max {max}; send shorter names and owners"
            ),
            DecodeError::Malformed { kind, reason } => {
                write!(
                    f,
                    "malformed frame of kind 0x{kind:02x}: {reason}; the connection is closed"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

fn is_request_kind(kind: u8) -> bool {
    matches!(
        kind,
        kind::HELLO
            | kind::PING
            | kind::ACQUIRE
            | kind::RELEASE
            | kind::EXTEND
            | kind::AUTH
            | kind::STATUS
    )
}

fn is_reply_kind(kind: u8) -> bool {
    matches!(
        kind,
        kind::HELLO_REPLY
            | kind::PONG
            | kind::GRANTED
            | kind::BUSY
            | kind::TIMEOUT
            | kind::RELEASED
            | kind::EXTENDED
            | kind::NOT_HELD
            | kind::ERROR
            | kind::AUTHED
            | kind::STATUS_REPLY
    )
}

/// A complete frame found at the start of a buffer.
struct RawFrame<'a> {
    kind: u8,
    body: &'a [u8],
    /// Header plus body: the bytes to consume.
    size: usize,
}

/// Finds the next complete frame at the start of `buf`. The length is
/// checked against `frame_size_max` from the header alone, before the body
/// has arrived.
fn split_frame(
    buf: &[u8],
    frame_size_max: usize,
    known: fn(u8) -> bool,
) -> Result<Option<RawFrame<'_>>, DecodeError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    if kind::LEGACY_RESERVED.contains(&kind) {
        return Err(DecodeError::Legacy { kind });
    }
    if !known(kind) {
        return Err(DecodeError::UnknownKind { kind });
    }
    if buf.len() < FRAME_HEADER_SIZE {
        return Ok(None);
    }
    let size = FRAME_HEADER_SIZE + u16::from_be_bytes([buf[1], buf[2]]) as usize;
    if !whole_frame_present(buf, kind, size, frame_size_max)? {
        return Ok(None);
    }
    Ok(Some(RawFrame {
        kind,
        body: &buf[FRAME_HEADER_SIZE..size],
        size,
    }))
}

/// With a frame's total `size` known from its header: refuses it if it is
/// over `frame_size_max` (before the body arrives), else tells whether all of
/// it is in `buf`. Shared by the native and the original protocol.
pub(crate) fn whole_frame_present(
    buf: &[u8],
    kind: u8,
    size: usize,
    frame_size_max: usize,
) -> Result<bool, DecodeError> {
    if size > frame_size_max {
        return Err(DecodeError::FrameTooLarge {
            kind,
            size,
            max: frame_size_max,
        });
    }
    Ok(buf.len() >= size)
}

/// Decodes one request from the front of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some((request, n)))`: a request
/// borrowing from `buf`; the caller consumes `n` bytes. `Err`: close.
#[inline(always)]
pub fn decode_request(
    buf: &[u8],
    frame_size_max: usize,
) -> Result<Option<(Request<'_>, usize)>, DecodeError> {
    let Some(RawFrame { kind, body, size }) = split_frame(buf, frame_size_max, is_request_kind)?
    else {
        return Ok(None);
    };
    let mut r = Reader { body, kind };
    let request = match kind {
        kind::HELLO => Request::Hello {
            version: r.u16()?,
            client_name: r.bytes()?,
        },
        kind::PING => Request::Ping,
        kind::ACQUIRE => {
            let flags = r.u8()?;
            let ttl_ms = r.u32()?;
            let wait_ms = r.u32()?;
            let name = r.bytes()?;
            let owner = r.bytes()?;
            Request::Acquire(Acquire {
                name,
                owner,
                ttl_ms,
                wait_ms,
                flags,
            })
        }
        kind::RELEASE => {
            let token = r.u64()?;
            Request::Release {
                token,
                name: r.bytes()?,
                owner: r.bytes()?,
            }
        }
        kind::EXTEND => {
            let token = r.u64()?;
            let ttl_ms = r.u32()?;
            Request::Extend {
                token,
                ttl_ms,
                name: r.bytes()?,
                owner: r.bytes()?,
            }
        }
        kind::AUTH => Request::Auth { secret: r.bytes()? },
        kind::STATUS => {
            let cursor = r.u32()?;
            Request::Status {
                cursor,
                name: r.bytes()?,
            }
        }
        _ => unreachable!("split_frame admits request kinds only"),
    };
    r.finish()?;
    Ok(Some((request, size)))
}

/// Decodes one reply from the front of `buf` (client side).
pub fn decode_reply(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, DecodeError> {
    let Some(RawFrame { kind, body, size }) = split_frame(buf, FRAME_SIZE_CEILING, is_reply_kind)?
    else {
        return Ok(None);
    };
    let mut r = Reader { body, kind };
    let reply = match kind {
        kind::HELLO_REPLY => Reply::Hello(HelloReply {
            version: r.u16()?,
            frame_size_max: r.u16()?,
            name_len_max: r.u8()?,
            owner_len_max: r.u8()?,
            lock_ttl_ms_default: r.u32()?,
            lock_ttl_ms_max: r.u32()?,
            wait_ms_max: r.u32()?,
            server_version: r.bytes()?,
        }),
        kind::PONG => Reply::Pong {
            uptime_ms: r.u64()?,
            server_version: r.bytes()?,
        },
        kind::GRANTED => Reply::Granted {
            token: r.u64()?,
            ttl_ms: r.u32()?,
            reentered: r.granted_flags()?,
        },
        kind::BUSY => Reply::Busy {
            remaining_ms: r.u32()?,
            waiters: r.u32()?,
        },
        kind::TIMEOUT => Reply::Timeout {
            waited_ms: r.u32()?,
        },
        kind::RELEASED => Reply::Released,
        kind::EXTENDED => Reply::Extended { ttl_ms: r.u32()? },
        kind::NOT_HELD => Reply::NotHeld {
            reason: match r.u8()? {
                0 => NotHeldReason::Free,
                1 => NotHeldReason::OtherOwner,
                2 => NotHeldReason::TokenMismatch,
                _ => return Err(r.malformed("unknown NOT_HELD reason")),
            },
        },
        kind::ERROR => Reply::Error {
            code: ErrorCode::from_u16(r.u16()?),
            message: r.bytes()?,
        },
        kind::AUTHED => Reply::Authed,
        kind::STATUS_REPLY => {
            let total = r.u32()?;
            let next_cursor = r.u32()?;
            let count = r.u8()?;
            let entries = r.body;
            for _ in 0..count {
                read_status_entry(&mut r)?;
            }
            Reply::Status(StatusReply {
                total,
                next_cursor,
                count,
                entries: &entries[..entries.len() - r.body.len()],
            })
        }
        _ => unreachable!("split_frame admits reply kinds only"),
    };
    r.finish()?;
    Ok(Some((reply, size)))
}

/// Reads fixed-layout fields from a frame body.
struct Reader<'a> {
    body: &'a [u8],
    kind: u8,
}

impl<'a> Reader<'a> {
    fn malformed(&self, reason: &'static str) -> DecodeError {
        DecodeError::Malformed {
            kind: self.kind,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.body.len() < n {
            return Err(self.malformed("body shorter than its fields"));
        }
        let (head, rest) = self.body.split_at(n);
        self.body = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// A u8 length followed by that many bytes.
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u8()? as usize;
        self.take(len)
    }
    /// GRANTED's flags byte: absent in version 1 (`None`), present in 2.
    fn granted_flags(&mut self) -> Result<Option<bool>, DecodeError> {
        if self.body.is_empty() {
            return Ok(None);
        }
        let flags = self.u8()?;
        if flags & !GRANTED_FLAGS_KNOWN != 0 {
            return Err(self.malformed("unknown GRANTED flag bits"));
        }
        Ok(Some(flags & GRANTED_FLAG_REENTERED != 0))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("body longer than its fields"))
        }
    }
}

/// Writes a frame into a caller-provided slice. The caller guarantees room:
/// running out is a programmer error (the server reserves REPLY_SIZE_MAX
/// before executing a request).
struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn begin(out: &mut [u8], kind: u8) -> Writer<'_> {
        let mut w = Writer { out, pos: 0 };
        w.put(&[kind, 0, 0]);
        w
    }
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.put(&v.to_be_bytes());
    }
    /// Fields longer than 255 bytes are truncated; callers validate lengths
    /// first, so only error messages can ever hit this.
    fn bytes(&mut self, v: &[u8]) {
        let v = &v[..v.len().min(u8::MAX as usize)];
        self.u8(v.len() as u8);
        self.put(v);
    }
    fn finish(self) -> usize {
        let body_len = self.pos - FRAME_HEADER_SIZE;
        debug_assert!(body_len <= u16::MAX as usize);
        self.out[1..3].copy_from_slice(&(body_len as u16).to_be_bytes());
        self.pos
    }
}

impl Request<'_> {
    /// Exact encoded size of this request.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_SIZE
            + match self {
                Request::Hello { client_name, .. } => 2 + 1 + client_name.len().min(255),
                Request::Ping => 0,
                Request::Acquire(a) => 1 + 4 + 4 + 2 + a.name.len() + a.owner.len(),
                Request::Release { name, owner, .. } => 8 + 2 + name.len() + owner.len(),
                Request::Extend { name, owner, .. } => 8 + 4 + 2 + name.len() + owner.len(),
                Request::Auth { secret } => 1 + secret.len().min(255),
                Request::Status { name, .. } => 4 + 1 + name.len().min(255),
            }
    }

    /// Encodes into `out`, which must hold `encoded_len()` bytes; returns the
    /// length written. Names and owners must already be within limits.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let n = match *self {
            Request::Hello {
                version,
                client_name,
            } => {
                let mut w = Writer::begin(out, kind::HELLO);
                w.u16(version);
                w.bytes(client_name);
                w.finish()
            }
            Request::Ping => Writer::begin(out, kind::PING).finish(),
            Request::Acquire(a) => {
                let mut w = Writer::begin(out, kind::ACQUIRE);
                w.u8(a.flags);
                w.u32(a.ttl_ms);
                w.u32(a.wait_ms);
                w.bytes(a.name);
                w.bytes(a.owner);
                w.finish()
            }
            Request::Release { name, owner, token } => {
                let mut w = Writer::begin(out, kind::RELEASE);
                w.u64(token);
                w.bytes(name);
                w.bytes(owner);
                w.finish()
            }
            Request::Extend {
                name,
                owner,
                token,
                ttl_ms,
            } => {
                let mut w = Writer::begin(out, kind::EXTEND);
                w.u64(token);
                w.u32(ttl_ms);
                w.bytes(name);
                w.bytes(owner);
                w.finish()
            }
            Request::Auth { secret } => {
                let mut w = Writer::begin(out, kind::AUTH);
                w.bytes(secret);
                w.finish()
            }
            Request::Status { name, cursor } => {
                let mut w = Writer::begin(out, kind::STATUS);
                w.u32(cursor);
                w.bytes(name);
                w.finish()
            }
        };
        debug_assert_eq!(n, self.encoded_len());
        n
    }

    /// Appends the encoded request to `out` (client side convenience).
    pub fn encode_to_vec(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.encoded_len(), 0);
        self.encode(&mut out[start..]);
    }
}

impl Reply<'static> {
    /// GRANTED as a connection speaking `version` reads it: version 2 and
    /// later carry the re-entry flag, version 1 has no room for it.
    pub fn granted(version: u16, token: u64, ttl_ms: u32, reentered: bool) -> Reply<'static> {
        Reply::Granted {
            token,
            ttl_ms,
            reentered: (version >= GRANTED_FLAGS_VERSION).then_some(reentered),
        }
    }
}

impl Reply<'_> {
    /// Encodes into `out` (at least [`REPLY_SIZE_MAX`] bytes
    /// for any reply); returns the length written.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        match *self {
            Reply::Hello(h) => {
                let mut w = Writer::begin(out, kind::HELLO_REPLY);
                w.u16(h.version);
                w.u16(h.frame_size_max);
                w.u8(h.name_len_max);
                w.u8(h.owner_len_max);
                w.u32(h.lock_ttl_ms_default);
                w.u32(h.lock_ttl_ms_max);
                w.u32(h.wait_ms_max);
                w.bytes(h.server_version);
                w.finish()
            }
            Reply::Pong {
                uptime_ms,
                server_version,
            } => {
                let mut w = Writer::begin(out, kind::PONG);
                w.u64(uptime_ms);
                w.bytes(server_version);
                w.finish()
            }
            Reply::Granted {
                token,
                ttl_ms,
                reentered,
            } => {
                let mut w = Writer::begin(out, kind::GRANTED);
                w.u64(token);
                w.u32(ttl_ms);
                if let Some(reentered) = reentered {
                    w.u8(if reentered { GRANTED_FLAG_REENTERED } else { 0 });
                }
                w.finish()
            }
            Reply::Busy {
                remaining_ms,
                waiters,
            } => {
                let mut w = Writer::begin(out, kind::BUSY);
                w.u32(remaining_ms);
                w.u32(waiters);
                w.finish()
            }
            Reply::Timeout { waited_ms } => {
                let mut w = Writer::begin(out, kind::TIMEOUT);
                w.u32(waited_ms);
                w.finish()
            }
            Reply::Released => Writer::begin(out, kind::RELEASED).finish(),
            Reply::Extended { ttl_ms } => {
                let mut w = Writer::begin(out, kind::EXTENDED);
                w.u32(ttl_ms);
                w.finish()
            }
            Reply::NotHeld { reason } => {
                let mut w = Writer::begin(out, kind::NOT_HELD);
                w.u8(reason as u8);
                w.finish()
            }
            Reply::Error { code, message } => {
                let mut w = Writer::begin(out, kind::ERROR);
                w.u16(code.to_u16());
                w.bytes(message);
                w.finish()
            }
            Reply::Authed => Writer::begin(out, kind::AUTHED).finish(),
            Reply::Status(status) => {
                let mut w = Writer::begin(out, kind::STATUS_REPLY);
                w.u32(status.total);
                w.u32(status.next_cursor);
                w.u8(status.count);
                w.put(status.entries);
                w.finish()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::REPLY_SIZE_MAX;

    fn sample_requests() -> Vec<Request<'static>> {
        let long_name: &'static [u8] = Box::leak(vec![b'n'; 255].into_boxed_slice());
        let long_owner: &'static [u8] = Box::leak(vec![b'o'; 64].into_boxed_slice());
        vec![
            Request::Hello {
                version: 1,
                client_name: b"rust-client",
            },
            Request::Hello {
                version: 7,
                client_name: b"",
            },
            Request::Ping,
            Request::Acquire(Acquire {
                name: b"job",
                owner: b"c1:1",
                ttl_ms: 5000,
                wait_ms: 0,
                flags: 0,
            }),
            Request::Acquire(Acquire {
                name: long_name,
                owner: long_owner,
                ttl_ms: u32::MAX,
                wait_ms: u32::MAX,
                flags: FLAG_SESSION,
            }),
            Request::Release {
                name: b"job",
                owner: b"c1:1",
                token: u64::MAX,
            },
            Request::Extend {
                name: b"job",
                owner: b"c1:1",
                token: 42,
                ttl_ms: 1,
            },
            Request::Auth {
                secret: b"0123456789abcdef",
            },
            Request::Status {
                name: b"",
                cursor: 7,
            },
            Request::Status {
                name: long_name,
                cursor: 0,
            },
        ]
    }

    /// A STATUS reply built with the writer, as the server does, then
    /// decoded and iterated.
    #[test]
    fn status_replies_pack_entries_up_to_the_room_given() {
        let long: &[u8] = &[b'n'; 255];
        let entry = |name, token| StatusEntry {
            name,
            token,
            remaining_ms: 5,
            waiters: 2,
            session: token % 2 == 0,
        };
        let mut buf = vec![0u8; crate::limits::STATUS_REPLY_SIZE_MAX];
        let mut w = StatusWriter::begin(&mut buf, 9);
        let mut pushed = 0u64;
        while w.push(&entry(long, pushed)) {
            pushed += 1;
        }
        assert_eq!(pushed, 3, "three 273-byte entries fit in 1024 bytes");
        let n = w.finish(42);
        assert!(n <= crate::limits::STATUS_REPLY_SIZE_MAX);
        let (reply, used) = decode_reply(&buf[..n]).unwrap().unwrap();
        assert_eq!(used, n);
        let Reply::Status(status) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!((status.total, status.next_cursor, status.count), (9, 42, 3));
        let tokens: Vec<u64> = status.entries().map(|e| e.token).collect();
        assert_eq!(tokens, [0, 1, 2]);
        assert!(status.entries().all(|e| e.name == long && e.waiters == 2));
        assert_eq!(
            status.entries().map(|e| e.session).collect::<Vec<_>>(),
            [true, false, true]
        );
        // The smallest room the server gives still takes one longest entry.
        let mut small = vec![0u8; crate::limits::REPLY_SIZE_MAX];
        let mut w = StatusWriter::begin(&mut small, 1);
        assert!(w.push(&entry(long, 1)));
        assert!(!w.push(&entry(b"x", 2)));
        // A count larger than the entries present is malformed.
        let n = StatusWriter::begin(&mut buf, 0).finish(0);
        buf[n - 1] = 1;
        assert!(decode_reply(&buf[..n]).is_err());
    }

    fn sample_replies() -> Vec<Reply<'static>> {
        vec![
            Reply::Hello(HelloReply {
                version: 1,
                frame_size_max: 1024,
                name_len_max: 255,
                owner_len_max: 64,
                lock_ttl_ms_default: 10_000,
                lock_ttl_ms_max: 86_400_000,
                wait_ms_max: 3_600_000,
                server_version: b"2.0.0",
            }),
            Reply::Pong {
                uptime_ms: 123_456,
                server_version: b"2.0.0",
            },
            Reply::Granted {
                token: 1_700_000_000_000_000_001,
                ttl_ms: 10_000,
                reentered: None,
            },
            Reply::Granted {
                token: 7,
                ttl_ms: 10_000,
                reentered: Some(false),
            },
            Reply::Granted {
                token: 7,
                ttl_ms: 10_000,
                reentered: Some(true),
            },
            Reply::Busy {
                remaining_ms: 999,
                waiters: 3,
            },
            Reply::Timeout { waited_ms: 250 },
            Reply::Released,
            Reply::Extended { ttl_ms: 30_000 },
            Reply::NotHeld {
                reason: NotHeldReason::Free,
            },
            Reply::NotHeld {
                reason: NotHeldReason::OtherOwner,
            },
            Reply::NotHeld {
                reason: NotHeldReason::TokenMismatch,
            },
            Reply::Error {
                code: ErrorCode::BadArgument,
                message: b"ttl_ms 5: too small",
            },
            Reply::Error {
                code: ErrorCode::Other(999),
                message: &[b'm'; 255],
            },
            Reply::Authed,
        ]
    }

    #[test]
    fn granted_layout_depends_on_the_version() {
        let encode = |reentered| {
            let mut buf = [0u8; 64];
            let reply = Reply::Granted {
                token: 5,
                ttl_ms: 9,
                reentered,
            };
            let n = reply.encode(&mut buf);
            buf[..n].to_vec()
        };
        // Version 1: token and TTL only; version 2 adds the flags byte.
        assert_eq!(encode(None).len(), 3 + 12);
        assert_eq!(encode(Some(true)).len(), 3 + 13);
        assert_eq!(encode(Some(true))[15], GRANTED_FLAG_REENTERED);
        assert_eq!(encode(Some(false))[15], 0);
        let mut unknown = encode(Some(false));
        unknown[15] = 0x80;
        assert!(decode_reply(&unknown).is_err());
    }

    #[test]
    fn every_request_kind_round_trips() {
        for request in sample_requests() {
            let mut buf = Vec::new();
            request.encode_to_vec(&mut buf);
            assert_eq!(buf.len(), request.encoded_len());
            assert!(buf.len() <= FRAME_SIZE_CEILING);
            let (decoded, used) = decode_request(&buf, FRAME_SIZE_CEILING).unwrap().unwrap();
            assert_eq!(decoded, request);
            assert_eq!(used, buf.len());
        }
    }

    #[test]
    fn every_reply_kind_round_trips() {
        for reply in sample_replies() {
            let mut buf = [0u8; REPLY_SIZE_MAX];
            let n = reply.encode(&mut buf);
            let (decoded, used) = decode_reply(&buf[..n]).unwrap().unwrap();
            assert_eq!(decoded, reply);
            assert_eq!(used, n);
        }
    }

    #[test]
    fn every_split_point_decodes_the_same() {
        let mut stream = Vec::new();
        let requests = sample_requests();
        for r in &requests {
            r.encode_to_vec(&mut stream);
        }
        for split in 0..=stream.len() {
            // Feed the stream in two chunks through a buffer that is decoded
            // after each chunk, as the server does.
            let mut buf: Vec<u8> = Vec::new();
            let mut decoded = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                buf.extend_from_slice(chunk);
                while let Some((req, used)) = decode_request(&buf, FRAME_SIZE_CEILING).unwrap() {
                    decoded.push(format!("{req:?}"));
                    buf.drain(..used);
                }
            }
            assert!(buf.is_empty(), "split {split}: leftover bytes");
            let expected: Vec<String> = requests.iter().map(|r| format!("{r:?}")).collect();
            assert_eq!(decoded, expected, "split {split}");
        }
    }

    #[test]
    fn byte_at_a_time_is_incomplete_until_the_last_byte() {
        for request in sample_requests() {
            let mut buf = Vec::new();
            request.encode_to_vec(&mut buf);
            for end in 0..buf.len() {
                assert_eq!(decode_request(&buf[..end], FRAME_SIZE_CEILING), Ok(None));
            }
        }
    }

    #[test]
    fn oversize_frames_are_rejected_from_the_header_alone() {
        let header = [kind::ACQUIRE, 0xff, 0xff];
        assert_eq!(
            decode_request(&header, FRAME_SIZE_CEILING),
            Err(DecodeError::FrameTooLarge {
                kind: kind::ACQUIRE,
                size: 3 + 0xffff,
                max: FRAME_SIZE_CEILING
            })
        );
        // The configured limit applies, not only the ceiling.
        let header = [kind::PING, 0x00, 0x80];
        assert!(matches!(
            decode_request(&header, 100),
            Err(DecodeError::FrameTooLarge {
                size: 131,
                max: 100,
                ..
            })
        ));
    }

    #[test]
    fn unknown_and_legacy_kinds_are_rejected_from_the_first_byte() {
        assert_eq!(
            decode_request(b"Z", 1024),
            Err(DecodeError::UnknownKind { kind: b'Z' })
        );
        for k in kind::LEGACY_RESERVED {
            assert_eq!(
                decode_request(&[k], 1024),
                Err(DecodeError::Legacy { kind: k })
            );
        }
        // A reply kind is not a request.
        assert!(decode_request(&[kind::GRANTED, 0, 0], 1024).is_err());
    }

    #[test]
    fn lying_lengths_are_protocol_errors() {
        // Body declares 5 bytes but an ACQUIRE needs at least 11.
        let frame = [kind::ACQUIRE, 0, 5, 0, 0, 0, 0, 0];
        assert!(matches!(
            decode_request(&frame, 1024),
            Err(DecodeError::Malformed { .. })
        ));
        // Name length points past the body.
        let mut frame = vec![kind::RELEASE, 0, 10];
        frame.extend_from_slice(&[0; 8]);
        frame.extend_from_slice(&[200, 0]);
        assert!(matches!(
            decode_request(&frame, 1024),
            Err(DecodeError::Malformed { .. })
        ));
        // Trailing bytes after the last field.
        let frame = [kind::PING, 0, 1, 0];
        assert!(matches!(
            decode_request(&frame, 1024),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let kinds = [b'H', b'P', b'A', b'R', b'E', b'g', b'-', 1, 0, 0xff];
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = buf.first_mut() {
                *first = kinds[(next() % kinds.len() as u64) as usize];
            }
            if buf.len() > 2 {
                buf[1] = 0;
            }
            let _ = decode_request(&buf, 1024);
            let _ = decode_reply(&buf);
        }
    }
}
