//! Every bound the server enforces, in one place.
//!
//! Constants ending in `_CEILING` are hard protocol or memory ceilings; the
//! [`Limits`] fields are the configurable values, each checked against its
//! ceiling by [`Limits::validate`]. Units come last in every name.
//!
//! The client alone (no `server` feature) uses only the protocol's
//! ceilings; the server's bounds stay named here all the same, so that one
//! file keeps every bound and the compile-time asserts that tie them.
#![cfg_attr(not(feature = "server"), allow(dead_code))]

/// Protocol version spoken by this build (HELLO exchange). Version 2 adds
/// GRANTED's flags byte (re-entry); everything else is version 1's.
pub const PROTOCOL_VERSION: u16 = 2;

/// Bytes in a frame header: kind (1) + body length (2, big-endian).
pub const FRAME_HEADER_SIZE: usize = 3;

/// Largest frame the decoder accepts at all; a u16 body length allows more,
/// but no request needs more than 336 bytes (see [`longest_request`]) and a
/// small bound keeps per-connection buffers small.
pub const FRAME_SIZE_CEILING: usize = 1024;

/// A lock name's length is a u8 on the wire.
pub const NAME_LEN_CEILING: usize = 255;

/// Owners are opaque ids (client id + counter); 64 bytes fits a UUID pair and
/// keeps waiters fixed-size.
pub const OWNER_LEN_CEILING: usize = 64;

/// Longest encoding of one lock in a STATUS reply: name (1 + 255), token
/// (8), remaining_ms (4), waiters (4), flags (1).
pub const STATUS_ENTRY_SIZE_MAX: usize = 1 + NAME_LEN_CEILING + 8 + 4 + 4 + 1;

/// A STATUS reply before its entries: header, total (4), next_cursor (4),
/// count (1).
pub const STATUS_REPLY_HEADER_SIZE: usize = FRAME_HEADER_SIZE + 4 + 4 + 1;

/// A STATUS reply packs as many entries as fit in this many bytes (and as
/// the connection's free output space allows; at least one always fits).
pub const STATUS_REPLY_SIZE_MAX: usize = FRAME_SIZE_CEILING;

/// Longest fixed-size reply: a STATUS with one entry of a 255-byte name
/// (285 bytes), just above an ERROR with a 255-byte message (261). Output
/// space for one reply is reserved before a request is executed.
pub const REPLY_SIZE_MAX: usize = STATUS_REPLY_HEADER_SIZE + STATUS_ENTRY_SIZE_MAX;
const _: () = assert!(REPLY_SIZE_MAX >= FRAME_HEADER_SIZE + 2 + 1 + 255);
const _: () = assert!(STATUS_REPLY_SIZE_MAX >= REPLY_SIZE_MAX);

/// Per-connection input buffer: a few pipelined frames per read syscall.
pub const CONN_INPUT_BUFFER_SIZE: usize = 4096;

/// Default per-connection output buffer: pipelined replies wait here until
/// written. It never grows: when less than [`REPLY_SIZE_MAX`] is free the
/// connection stops being read (backpressure), and a connection whose
/// replies stay unwritten for `write_timeout_ms` is closed.
pub const CONN_OUTPUT_BUFFER_SIZE: usize = 16 * 1024;

/// Smallest configurable output buffer: room for a few of the longest replies.
pub const CONN_OUTPUT_BUFFER_SIZE_MIN: usize = 4 * REPLY_SIZE_MAX;

/// Largest configurable output buffer (per connection with replies waiting).
pub const CONN_OUTPUT_BUFFER_SIZE_CEILING: usize = 1 << 20;

/// Default bound on ACQUIREs queued on one lock.
pub const WAITERS_PER_LOCK_MAX_DEFAULT: usize = 1024;

/// Default deadline for a frame that has started to arrive (slow-loris):
/// a client on a sane network sends a few hundred bytes in far less.
pub const FRAME_TIMEOUT_MS_DEFAULT: u32 = 10_000;

/// Default deadline for pending replies to make progress: a client that
/// sends but never reads is closed after this long.
pub const WRITE_TIMEOUT_MS_DEFAULT: u32 = 30_000;

/// Default time a connection has to authenticate, on a server with a
/// secret: a client that has the secret sends AUTH in its first exchange.
pub const AUTH_TIMEOUT_MS_DEFAULT: u32 = 10_000;

#[cfg(feature = "server")]
/// Frames decoded per connection per turn of the event loop, so one
/// pipelining client cannot starve the others.
pub const FRAMES_PER_TURN_MAX: usize = 64;

#[cfg(feature = "server")]
/// SESSION holds of closed connections released per turn of the event loop
/// (about 0.1 ms of work), so a disconnect with a million of them is spread
/// over many turns instead of stalling every other client.
pub const SESSION_RELEASES_PER_TURN_MAX: usize = 1024;

#[cfg(feature = "server")]
/// Timer steps per turn of the event loop: expiries and wait deadlines
/// fired, or timers the wheel's cascade places again (0.05 µs to 0.3 µs
/// each), so a million locks expiring at once are spread over many turns
/// instead of stalling every other client. A lock whose expiry is due but
/// not fired yet is freed by the first request that touches it.
pub const TIMER_STEPS_PER_TURN_MAX: usize = 1024;

/// Connection timeouts (frame, write, idle, auth; an HTTP request's) fired
/// per loop turn. Each may cost a read and a write syscall (a few µs), so
/// ten thousand connections idling out together are spread over turns
/// (about 1 ms each at most) instead of stalling every other client; the
/// rest fire on the next turns, which do not sleep while any is due.
#[cfg(feature = "server")]
pub const CONN_TIMEOUTS_PER_TURN_MAX: usize = 256;

/// Server default TTL when a request says 0 (the original's 10 s).
pub const LOCK_TTL_MS_DEFAULT: u32 = 10_000;

/// Lifetime of a hold taken through the original protocol: the original
/// server's STALE_LOCK_TIMEOUT (3600 s). Its client never renews, so a
/// shorter lifetime would hand a running job's lock to another worker.
pub const LEGACY_TTL_MS_DEFAULT: u32 = 60 * 60 * 1000;

/// Default bound on a requested TTL: a day covers long batch jobs.
pub const LOCK_TTL_MS_MAX_DEFAULT: u32 = 24 * 60 * 60 * 1000;

/// `wait_ms_max` that bounds nothing: any `wait_ms` is taken, and so is an
/// ACQUIRE that waits with no deadline (flag WAIT_FOREVER). Any smaller
/// value bounds `wait_ms` and refuses WAIT_FOREVER.
pub const WAIT_MS_UNBOUNDED: u32 = u32::MAX;

/// Default bound on how long an ACQUIRE may wait on the server: none, as
/// flock(1) and `etcdctl lock` wait forever by default. A waiter costs a
/// queue slot (bounded by waiters_per_lock_max) on a connection (bounded by
/// connections_max), and leaves the queue when its connection closes.
pub const WAIT_MS_MAX_DEFAULT: u32 = WAIT_MS_UNBOUNDED;

/// Default bound on locks held at once: about 60 MB of lock records at
/// ~59 bytes each (short names), far above what lock users hold, low enough
/// that a runaway client cannot exhaust the machine's memory.
pub const LOCKS_MAX_DEFAULT: usize = 1_000_000;

/// Hard ceiling on locks held: lock indexes must fit the timer keys.
pub const LOCKS_CEILING: usize = 1 << 30;

/// Default bound on simultaneous connections.
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;

#[cfg(feature = "keepalive")]
/// TCP keepalive on every accepted connection: a peer whose host vanished
/// without closing the connection (power loss, a partition) is noticed
/// instead of never; its queued ACQUIRE leaves the queue and its SESSION
/// holds end then. The first probe goes after IDLE of silence, the next
/// every INTERVAL. The socket's TCP_USER_TIMEOUT (`write_timeout_ms`, see
/// [`TCP_SEND_BUFFER_SIZE`]) replaces the probe count: the connection is
/// dropped at the first probe that finds the peer silent for at least
/// `write_timeout_ms`, so after max(40 s, `write_timeout_ms` rounded up to
/// 30 s plus a multiple of 10 s): 40 s at the default 30 000 ms.
pub const TCP_KEEPALIVE_IDLE_S: u64 = 30;
#[cfg(feature = "keepalive")]
pub const TCP_KEEPALIVE_INTERVAL_S: u64 = 10;

#[cfg(feature = "server")]
/// The kernel's send buffer per connection (SO_SNDBUF; Linux reserves
/// twice this, for its bookkeeping as well as the bytes). Fixed, which
/// turns off the kernel's autotuning: replies a client does not read
/// cannot pile up to megabytes (tcp_wmem's maximum, 4 MiB by default) out
/// of the server's sight, and the server's own output buffer fills behind
/// them, which starts `write_timeout_ms`. Replies the kernel holds because
/// the client's window is closed are bounded by TCP_USER_TIMEOUT, set to
/// `write_timeout_ms`. 64 KiB still keeps a 100 Mbit/s link busy over a
/// 5 ms round trip, far more than lock replies need.
pub const TCP_SEND_BUFFER_SIZE: usize = 64 * 1024;

#[cfg(feature = "server")]
/// The kernel's receive buffer per connection (SO_RCVBUF, set on the
/// listener so accepted connections inherit it; doubled likewise):
/// requests a client pipelines while the server is not reading it (its
/// output buffer full of replies it does not read) wait here, and
/// autotuning would let them grow to tcp_rmem's maximum. Asking 64 KiB
/// keeps the 128 KiB a connection starts with by default (tcp_rmem's middle
/// value) and stops it growing.
pub const TCP_RECEIVE_BUFFER_SIZE: usize = 64 * 1024;

#[cfg(all(feature = "server", any(test, feature = "internals")))]
/// The most reply bytes the kernel holds for one connection: the send
/// buffer as Linux reserves it (twice SO_SNDBUF), plus the one segment it
/// may fill past that (up to 64 KiB, the default GSO size). Measured, not
/// set: README and docs/PROTOCOL.md give it as the bound.
pub const TCP_SEND_QUEUE_SIZE_MAX: usize = 2 * TCP_SEND_BUFFER_SIZE + 64 * 1024;

#[cfg(all(feature = "server", any(test, feature = "internals")))]
/// The most request bytes the kernel holds for one connection: the window
/// the kernel offers the client never exceeds its receive buffer.
pub const TCP_RECEIVE_QUEUE_SIZE_MAX: usize = 2 * TCP_RECEIVE_BUFFER_SIZE;

#[cfg(feature = "server")]
/// File descriptors the server needs besides its connections (listener,
/// epoll, waker, signal pipe, standard streams), with room to spare.
pub const FDS_RESERVED: usize = 16;

const _: () = assert!(LEGACY_TTL_MS_DEFAULT <= LOCK_TTL_MS_MAX_DEFAULT);
/// Timer deadlines must stay within the wheel's horizon.
#[cfg(feature = "server")]
const _: () = assert!((u32::MAX as u64) * 2 < crate::wheel::WHEEL_HORIZON_MS);
const _: () = assert!(CONN_INPUT_BUFFER_SIZE >= 2 * FRAME_SIZE_CEILING);
const _: () = assert!(CONN_OUTPUT_BUFFER_SIZE >= CONN_OUTPUT_BUFFER_SIZE_MIN);
const _: () = assert!(CONN_OUTPUT_BUFFER_SIZE_MIN >= STATUS_REPLY_SIZE_MAX);
const _: () = assert!(FRAME_SIZE_CEILING <= u16::MAX as usize + FRAME_HEADER_SIZE);
// Every request fits at the largest name and owner limits, so the default
// limits are valid.
const _: () =
    assert!(longest_request(NAME_LEN_CEILING, OWNER_LEN_CEILING).size <= FRAME_SIZE_CEILING);
// Whatever the name and owner limits, the floor of `frame_size_max` is at
// least the longest HELLO, which also covers AUTH with the longest secret:
// every valid secret fits every valid configuration.
const _: () = assert!(longest_request(1, 1).size == HELLO_SIZE_MAX);
const _: () = assert!(AUTH_SIZE_MAX <= HELLO_SIZE_MAX);

/// A HELLO's client name is `bytes` (its length a u8 on the wire), and the
/// protocol bounds it no further.
pub const CLIENT_NAME_LEN_CEILING: usize = 255;

/// The longest HELLO the protocol allows. A client sends HELLO before it
/// learns the server's limits, so it cannot shorten its client name to
/// fit them: every server accepts this HELLO.
pub const HELLO_SIZE_MAX: usize = FRAME_HEADER_SIZE + 2 + 1 + CLIENT_NAME_LEN_CEILING;

/// The longest AUTH: the longest secret a server may have.
pub const AUTH_SIZE_MAX: usize = FRAME_HEADER_SIZE + 1 + crate::auth::SECRET_LEN_MAX;

/// The kinds of requests a client sends, for naming the longest one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Hello,
    Auth,
    Ping,
    Status,
    Acquire,
    Release,
    Extend,
    /// A request of the original protocol (acquire, release or health).
    Legacy,
}

/// The longest frame of one request kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestSize {
    pub kind: RequestKind,
    pub size: usize,
}

/// The longest frame of each kind a valid client sends to a server whose
/// names are at most `name_len_max` bytes and owners `owner_len_max`
/// (header included): HELLO with the longest client name the protocol
/// allows, AUTH with the longest secret, STATUS with the longest name,
/// ACQUIRE, RELEASE and EXTEND with the longest name and owner, and the
/// original protocol's requests with the longest name and client id (its
/// client ids are owners). The one place that knows these sizes; the tests
/// below check them against the encoder and the decoders.
pub const fn request_sizes_max(name_len_max: usize, owner_len_max: usize) -> [RequestSize; 8] {
    let name = 1 + name_len_max;
    let owner = 1 + owner_len_max;
    [
        sized(RequestKind::Hello, HELLO_SIZE_MAX),
        sized(RequestKind::Auth, AUTH_SIZE_MAX),
        sized(RequestKind::Ping, FRAME_HEADER_SIZE),
        sized(RequestKind::Status, FRAME_HEADER_SIZE + 4 + name),
        sized(
            RequestKind::Acquire,
            FRAME_HEADER_SIZE + 1 + 4 + 4 + name + owner,
        ),
        sized(RequestKind::Release, FRAME_HEADER_SIZE + 8 + name + owner),
        sized(
            RequestKind::Extend,
            FRAME_HEADER_SIZE + 8 + 4 + name + owner,
        ),
        sized(
            RequestKind::Legacy,
            crate::protocol::legacy::LEGACY_HEADER_SIZE + name_len_max + owner_len_max,
        ),
    ]
}

const fn sized(kind: RequestKind, size: usize) -> RequestSize {
    RequestSize { kind, size }
}

/// The longest request of `request_sizes_max`: the least `frame_size_max`
/// with which no valid request is refused for size. The first of equals.
pub const fn longest_request(name_len_max: usize, owner_len_max: usize) -> RequestSize {
    let sizes = request_sizes_max(name_len_max, owner_len_max);
    let mut longest = sizes[0];
    let mut i = 1;
    while i < sizes.len() {
        if sizes[i].size > longest.size {
            longest = sizes[i];
        }
        i += 1;
    }
    longest
}

/// The configurable limits of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub frame_size_max: usize,
    pub name_len_max: usize,
    pub owner_len_max: usize,
    pub lock_ttl_ms_default: u32,
    pub lock_ttl_ms_max: u32,
    /// TTL of every hold taken or re-taken through the original protocol,
    /// which has no TTL field and never renews.
    pub legacy_ttl_ms: u32,
    pub wait_ms_max: u32,
    pub connections_max: usize,
    pub locks_max: usize,
    /// ACQUIREs queued on one lock; one more gets a LIMIT error.
    pub waiters_per_lock_max: usize,
    /// Bytes of unwritten replies a connection may have (allocated per
    /// connection up front; never grows).
    pub output_buffer_size: usize,
    /// A frame that has started must be whole within this many ms, else the
    /// connection gets a LIMIT error and is closed.
    pub frame_timeout_ms: u32,
    /// Pending replies that make no progress for this long close the
    /// connection (a client that sends but never reads).
    pub write_timeout_ms: u32,
    /// A connection with nothing received, nothing queued and nothing
    /// pending for this long is closed; 0 disables the idle timeout.
    pub idle_timeout_ms: u32,
    /// On a server with a secret, a connection without a good AUTH this
    /// long after it was accepted gets ERROR AUTH and is closed.
    pub auth_timeout_ms: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            frame_size_max: FRAME_SIZE_CEILING,
            name_len_max: NAME_LEN_CEILING,
            owner_len_max: OWNER_LEN_CEILING,
            lock_ttl_ms_default: LOCK_TTL_MS_DEFAULT,
            lock_ttl_ms_max: LOCK_TTL_MS_MAX_DEFAULT,
            legacy_ttl_ms: LEGACY_TTL_MS_DEFAULT,
            wait_ms_max: WAIT_MS_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            locks_max: LOCKS_MAX_DEFAULT,
            waiters_per_lock_max: WAITERS_PER_LOCK_MAX_DEFAULT,
            output_buffer_size: CONN_OUTPUT_BUFFER_SIZE,
            frame_timeout_ms: FRAME_TIMEOUT_MS_DEFAULT,
            write_timeout_ms: WRITE_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: 0,
            auth_timeout_ms: AUTH_TIMEOUT_MS_DEFAULT,
        }
    }
}

impl Limits {
    /// Checks every field against its range; the error names the limit,
    /// its value and the allowed range.
    pub fn validate(&self) -> Result<(), LimitsError> {
        check(Limit::NameLenMax, self.name_len_max as u64)?;
        check(Limit::OwnerLenMax, self.owner_len_max as u64)?;
        let longest = longest_request(self.name_len_max, self.owner_len_max);
        if self.frame_size_max < longest.size {
            return Err(LimitsError::FrameBelowRequest {
                frame_size_max: self.frame_size_max,
                longest,
                name_len_max: self.name_len_max,
                owner_len_max: self.owner_len_max,
            });
        }
        check(Limit::FrameSizeMax, self.frame_size_max as u64)?;
        check(Limit::LockTtlMsMax, self.lock_ttl_ms_max as u64)?;
        let ttl_max = self.lock_ttl_ms_max as u64;
        check_within(
            Limit::LockTtlMsDefault,
            self.lock_ttl_ms_default as u64,
            ttl_max,
        )?;
        check_within(Limit::LegacyTtlMs, self.legacy_ttl_ms as u64, ttl_max)?;
        check(Limit::WaitMsMax, self.wait_ms_max as u64)?;
        check(Limit::ConnectionsMax, self.connections_max as u64)?;
        check(Limit::LocksMax, self.locks_max as u64)?;
        check(Limit::WaitersPerLockMax, self.waiters_per_lock_max as u64)?;
        check(Limit::OutputBufferSize, self.output_buffer_size as u64)?;
        check(Limit::FrameTimeoutMs, self.frame_timeout_ms as u64)?;
        check(Limit::WriteTimeoutMs, self.write_timeout_ms as u64)?;
        check(Limit::AuthTimeoutMs, self.auth_timeout_ms as u64)?;
        check(Limit::IdleTimeoutMs, self.idle_timeout_ms as u64)?;
        Ok(())
    }
}

/// `value` within `limit`'s [`Limit::range`].
fn check(limit: Limit, value: u64) -> Result<(), LimitsError> {
    let (min, max) = limit.range();
    check_range(limit, value, min, max)
}

/// `value` within `limit`'s [`Limit::range`] and at most `bound`, the value
/// of the limit it is [`Limit::bounded_by`].
fn check_within(limit: Limit, value: u64, bound: u64) -> Result<(), LimitsError> {
    let (min, max) = limit.range();
    check_range(limit, value, min, max.min(bound))
}

fn check_range(limit: Limit, value: u64, min: u64, max: u64) -> Result<(), LimitsError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(LimitsError::OutOfRange {
            limit,
            value,
            min,
            max,
        })
    }
}

/// One configurable limit: a field of [`Limits`]. Errors carry it rather
/// than its name, so that each interface names it in its own words (the
/// field for the library, the flag for `distlockd server`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    FrameSizeMax,
    NameLenMax,
    OwnerLenMax,
    LockTtlMsDefault,
    LockTtlMsMax,
    LegacyTtlMs,
    WaitMsMax,
    ConnectionsMax,
    LocksMax,
    WaitersPerLockMax,
    OutputBufferSize,
    FrameTimeoutMs,
    WriteTimeoutMs,
    IdleTimeoutMs,
    AuthTimeoutMs,
}

impl Limit {
    /// The name of its [`Limits`] field.
    pub fn field(self) -> &'static str {
        match self {
            Limit::FrameSizeMax => "frame_size_max",
            Limit::NameLenMax => "name_len_max",
            Limit::OwnerLenMax => "owner_len_max",
            Limit::LockTtlMsDefault => "lock_ttl_ms_default",
            Limit::LockTtlMsMax => "lock_ttl_ms_max",
            Limit::LegacyTtlMs => "legacy_ttl_ms",
            Limit::WaitMsMax => "wait_ms_max",
            Limit::ConnectionsMax => "connections_max",
            Limit::LocksMax => "locks_max",
            Limit::WaitersPerLockMax => "waiters_per_lock_max",
            Limit::OutputBufferSize => "output_buffer_size",
            Limit::FrameTimeoutMs => "frame_timeout_ms",
            Limit::WriteTimeoutMs => "write_timeout_ms",
            Limit::IdleTimeoutMs => "idle_timeout_ms",
            Limit::AuthTimeoutMs => "auth_timeout_ms",
        }
    }

    /// The values this limit may take, whatever the others are (a flag's
    /// parse error can say so before the others are known). [`Limits::validate`]
    /// narrows two: the maximum of a limit [`Limit::bounded_by`] another, and
    /// the minimum of `frame_size_max`, which must hold the longest request
    /// that `name_len_max` and `owner_len_max` allow.
    pub const fn range(self) -> (u64, u64) {
        /// A `u32` of milliseconds: what the wire and the timer wheel carry.
        const MS_MAX: u64 = u32::MAX as u64;
        /// Connections and waiters per lock: each costs memory up front or
        /// per entry; past 2^24 a typo is likelier than a need.
        const COUNT_MAX: u64 = 1 << 24;
        match self {
            Limit::FrameSizeMax => (longest_request(1, 1).size as u64, FRAME_SIZE_CEILING as u64),
            Limit::NameLenMax => (1, NAME_LEN_CEILING as u64),
            Limit::OwnerLenMax => (1, OWNER_LEN_CEILING as u64),
            Limit::LockTtlMsDefault
            | Limit::LockTtlMsMax
            | Limit::LegacyTtlMs
            | Limit::FrameTimeoutMs
            | Limit::WriteTimeoutMs
            | Limit::AuthTimeoutMs => (1, MS_MAX),
            Limit::WaitMsMax | Limit::IdleTimeoutMs => (0, MS_MAX),
            Limit::ConnectionsMax | Limit::WaitersPerLockMax => (1, COUNT_MAX),
            Limit::LocksMax => (1, LOCKS_CEILING as u64),
            Limit::OutputBufferSize => (
                CONN_OUTPUT_BUFFER_SIZE_MIN as u64,
                CONN_OUTPUT_BUFFER_SIZE_CEILING as u64,
            ),
        }
    }

    /// The limit whose value is this one's maximum, if another limit's.
    pub fn bounded_by(self) -> Option<Limit> {
        match self {
            Limit::LockTtlMsDefault | Limit::LegacyTtlMs => Some(Limit::LockTtlMsMax),
            _ => None,
        }
    }
}

/// Why [`Limits::validate`] refused a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitsError {
    /// A limit outside its allowed range.
    OutOfRange {
        limit: Limit,
        value: u64,
        min: u64,
        max: u64,
    },
    /// `frame_size_max` below the longest request a valid client may send
    /// (see [`longest_request`]): such a request would be refused.
    FrameBelowRequest {
        frame_size_max: usize,
        longest: RequestSize,
        name_len_max: usize,
        owner_len_max: usize,
    },
}

impl LimitsError {
    /// The message, with each limit named by `name`: [`Limit::field`] for
    /// the library (the [`std::fmt::Display`] form), a flag for a CLI.
    pub fn describe(&self, name: impl Fn(Limit) -> &'static str) -> String {
        self.describe_defaults(name, |_| false)
    }

    /// [`LimitsError::describe`], saying of a value out of range that it is
    /// the limit's default when `defaulted` says so (the person never set
    /// it, so would not know it from the message).
    pub fn describe_defaults(
        &self,
        name: impl Fn(Limit) -> &'static str,
        defaulted: impl Fn(Limit) -> bool,
    ) -> String {
        match *self {
            LimitsError::OutOfRange {
                limit,
                value,
                min,
                max,
            } => {
                let or_raise = match limit.bounded_by() {
                    Some(bound) if value > max => format!(" ({}), or raise {0}", name(bound)),
                    _ => String::new(),
                };
                let default = if defaulted(limit) {
                    " (its default)"
                } else {
                    ""
                };
                format!(
                    "{} {value}{default}: out of range; use a value from {min} to {max}{or_raise}",
                    name(limit)
                )
            }
            LimitsError::FrameBelowRequest {
                frame_size_max,
                longest,
                name_len_max,
                owner_len_max,
            } => {
                let frame = name(Limit::FrameSizeMax);
                let (names, owners) = (name(Limit::NameLenMax), name(Limit::OwnerLenMax));
                let lengths = format!(
                    "a {name_len_max}-byte name ({names} {name_len_max}) and a {owner_len_max}-byte owner ({owners} {owner_len_max})"
                );
                let (what, or_else) = match longest.kind {
                    RequestKind::Hello => (
                        format!(
                            "a HELLO with a {CLIENT_NAME_LEN_CEILING}-byte client name, the longest the protocol allows (a client sends HELLO before it learns the server's limits)"
                        ),
                        String::new(),
                    ),
                    RequestKind::Auth => (
                        format!(
                            "an AUTH with a {}-byte secret, the longest allowed",
                            crate::auth::SECRET_LEN_MAX
                        ),
                        String::new(),
                    ),
                    RequestKind::Ping => ("a PING".to_owned(), String::new()),
                    RequestKind::Status => (
                        format!(
                            "a STATUS with a {name_len_max}-byte name ({names} {name_len_max})"
                        ),
                        format!(", or lower {names}"),
                    ),
                    RequestKind::Acquire => (
                        format!("an ACQUIRE with {lengths}"),
                        format!(", or lower {names} or {owners}"),
                    ),
                    RequestKind::Release => (
                        format!("a RELEASE with {lengths}"),
                        format!(", or lower {names} or {owners}"),
                    ),
                    RequestKind::Extend => (
                        format!("an EXTEND with {lengths}"),
                        format!(", or lower {names} or {owners}"),
                    ),
                    RequestKind::Legacy => (
                        format!("an original-protocol request with {lengths}"),
                        format!(", or lower {names} or {owners}"),
                    ),
                };
                let size = longest.size;
                format!(
                    "{frame} {frame_size_max} is below {size}, the size of {what}; raise {frame} to at least {size}{or_else}"
                )
            }
        }
    }
}

impl std::fmt::Display for LimitsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe(Limit::field))
    }
}

impl std::error::Error for LimitsError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_lie_in_each_limits_range() {
        let d = Limits::default();
        for (limit, value) in [
            (Limit::FrameSizeMax, d.frame_size_max as u64),
            (Limit::NameLenMax, d.name_len_max as u64),
            (Limit::OwnerLenMax, d.owner_len_max as u64),
            (Limit::LockTtlMsDefault, d.lock_ttl_ms_default as u64),
            (Limit::LockTtlMsMax, d.lock_ttl_ms_max as u64),
            (Limit::LegacyTtlMs, d.legacy_ttl_ms as u64),
            (Limit::WaitMsMax, d.wait_ms_max as u64),
            (Limit::ConnectionsMax, d.connections_max as u64),
            (Limit::LocksMax, d.locks_max as u64),
            (Limit::WaitersPerLockMax, d.waiters_per_lock_max as u64),
            (Limit::OutputBufferSize, d.output_buffer_size as u64),
            (Limit::FrameTimeoutMs, d.frame_timeout_ms as u64),
            (Limit::WriteTimeoutMs, d.write_timeout_ms as u64),
            (Limit::IdleTimeoutMs, d.idle_timeout_ms as u64),
            (Limit::AuthTimeoutMs, d.auth_timeout_ms as u64),
        ] {
            let (min, max) = limit.range();
            assert!((min..=max).contains(&value), "{limit:?} {value}");
        }
    }

    #[test]
    fn defaults_are_valid() {
        Limits::default().validate().unwrap();
    }

    #[test]
    fn out_of_range_names_field_and_value() {
        let limits = Limits {
            owner_len_max: 65,
            ..Limits::default()
        };
        let err = limits.validate().unwrap_err().to_string();
        assert!(err.contains("owner_len_max 65"), "{err}");
        let limits = Limits {
            lock_ttl_ms_default: 0,
            ..Limits::default()
        };
        assert!(
            limits
                .validate()
                .unwrap_err()
                .to_string()
                .contains("lock_ttl_ms_default 0")
        );
    }

    /// The original protocol's TTL is bounded like the default TTL: by
    /// `lock_ttl_ms_max`, which the error offers to raise.
    #[test]
    fn legacy_ttl_ms_is_from_1_to_lock_ttl_ms_max() {
        assert_eq!(Limits::default().legacy_ttl_ms, 3_600_000);
        let legacy = |legacy_ttl_ms, lock_ttl_ms_max| Limits {
            legacy_ttl_ms,
            lock_ttl_ms_max,
            ..Limits::default()
        };
        legacy(60_000, 60_000).validate().unwrap();
        legacy(1, 60_000).validate().unwrap();
        assert_eq!(
            legacy(0, 60_000).validate().unwrap_err().to_string(),
            "legacy_ttl_ms 0: out of range; use a value from 1 to 60000"
        );
        assert_eq!(
            legacy(3_600_000, 60_000)
                .validate()
                .unwrap_err()
                .to_string(),
            "legacy_ttl_ms 3600000: out of range; use a value from 1 to 60000 \
             (lock_ttl_ms_max), or raise lock_ttl_ms_max"
        );
    }

    /// Frame size limits that left a request of a valid client too long:
    /// a HELLO, and the AUTH of a 40-byte secret.
    #[test]
    fn frame_size_max_fits_every_request_of_a_valid_client() {
        let small = |frame_size_max, name_len_max, owner_len_max| Limits {
            frame_size_max,
            name_len_max,
            owner_len_max,
            ..Limits::default()
        };
        for limits in [small(33, 8, 8), small(19, 1, 1)] {
            let err = limits.validate().unwrap_err().to_string();
            assert!(
                err.contains(&format!("frame_size_max {}", limits.frame_size_max))
                    && err.contains("HELLO"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_error_names_the_longest_request_and_the_limits_to_change() {
        let limits = Limits {
            frame_size_max: 300,
            ..Limits::default()
        };
        let err = limits.validate().unwrap_err();
        let flag = |limit: Limit| match limit {
            Limit::FrameSizeMax => "--frame-size-max",
            Limit::NameLenMax => "--name-len-max",
            Limit::OwnerLenMax => "--owner-len-max",
            other => other.field(),
        };
        assert_eq!(
            err.describe(flag),
            "--frame-size-max 300 is below 336, the size of an EXTEND with a 255-byte name \
             (--name-len-max 255) and a 64-byte owner (--owner-len-max 64); raise \
             --frame-size-max to at least 336, or lower --name-len-max or --owner-len-max"
        );
        let hello = Limits {
            frame_size_max: 33,
            name_len_max: 8,
            owner_len_max: 8,
            ..Limits::default()
        };
        let err = hello.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("frame_size_max 33 is below 261, the size of a HELLO")
                && err.ends_with("raise frame_size_max to at least 261"),
            "{err}"
        );
    }

    /// The sizes in `request_sizes_max` are the encoder's, and at the
    /// smallest valid `frame_size_max` the decoder takes the longest request
    /// of every kind.
    #[test]
    fn at_the_floor_every_longest_request_decodes() {
        use crate::protocol::legacy::{self, Command};
        use crate::protocol::{Acquire, Request, decode_request};
        for (name_len_max, owner_len_max) in [(1, 1), (8, 8), (255, 1), (255, 64), (100, 64)] {
            let limits = Limits {
                frame_size_max: longest_request(name_len_max, owner_len_max).size,
                name_len_max,
                owner_len_max,
                ..Limits::default()
            };
            limits.validate().unwrap();
            let too_small = Limits {
                frame_size_max: limits.frame_size_max - 1,
                ..limits.clone()
            };
            assert!(too_small.validate().is_err(), "{too_small:?}");
            let name = vec![b'n'; name_len_max];
            let owner = vec![b'o'; owner_len_max];
            let client_name = [b'c'; CLIENT_NAME_LEN_CEILING];
            let secret = [b's'; crate::auth::SECRET_LEN_MAX];
            let (name, owner) = (&name[..], &owner[..]);
            for size in request_sizes_max(name_len_max, owner_len_max) {
                let mut frame = Vec::new();
                if size.kind == RequestKind::Legacy {
                    legacy::encode_request(Command::Acquire, name, owner, &mut frame);
                    let decoded = legacy::decode_request(&frame, limits.frame_size_max);
                    assert!(matches!(decoded, Ok(Some(_))), "{decoded:?}");
                } else {
                    let request = match size.kind {
                        RequestKind::Hello => Request::Hello {
                            version: PROTOCOL_VERSION,
                            client_name: &client_name,
                        },
                        RequestKind::Auth => Request::Auth { secret: &secret },
                        RequestKind::Ping => Request::Ping,
                        RequestKind::Status => Request::Status { name, cursor: 0 },
                        RequestKind::Acquire => Request::Acquire(Acquire {
                            name,
                            owner,
                            ttl_ms: 1,
                            wait_ms: 1,
                            flags: 0,
                        }),
                        RequestKind::Release => Request::Release {
                            name,
                            owner,
                            token: 1,
                        },
                        RequestKind::Extend => Request::Extend {
                            name,
                            owner,
                            token: 1,
                            ttl_ms: 1,
                        },
                        RequestKind::Legacy => unreachable!("encoded above"),
                    };
                    request.encode_to_vec(&mut frame);
                    let decoded = decode_request(&frame, limits.frame_size_max);
                    assert_eq!(decoded, Ok(Some((request, frame.len()))));
                }
                assert_eq!(frame.len(), size.size, "{size:?}");
            }
        }
    }
}
