//! Every bound the server enforces, in one place.
//!
//! Constants ending in `_CEILING` are hard protocol or memory ceilings; the
//! [`Limits`] fields are the configurable values, each checked against its
//! ceiling by [`Limits::validate`]. Units come last in every name.

/// Protocol version spoken by this build (HELLO exchange).
pub const PROTOCOL_VERSION: u16 = 1;

/// Bytes in a frame header: kind (1) + body length (2, big-endian).
pub const FRAME_HEADER_SIZE: usize = 3;

/// Largest frame the decoder accepts at all; a u16 body length allows more,
/// but no request needs more than ~340 bytes and a small bound keeps
/// per-connection buffers small.
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

/// Largest configurable output buffer (per connection, allocated up front).
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

/// Frames decoded per connection per turn of the event loop, so one
/// pipelining client cannot starve the others.
pub const FRAMES_PER_TURN_MAX: usize = 64;

/// SESSION holds of closed connections released per turn of the event loop
/// (about 0.1 ms of work), so a disconnect with a million of them is spread
/// over many turns instead of stalling every other client.
pub const SESSION_RELEASES_PER_TURN_MAX: usize = 1024;

/// Server default TTL when a request says 0 (the original's 10 s).
pub const LOCK_TTL_MS_DEFAULT: u32 = 10_000;

/// Default bound on a requested TTL: a day covers long batch jobs.
pub const LOCK_TTL_MS_MAX_DEFAULT: u32 = 24 * 60 * 60 * 1000;

/// Default bound on how long an ACQUIRE may wait on the server: one hour.
pub const WAIT_MS_MAX_DEFAULT: u32 = 60 * 60 * 1000;

/// Default bound on locks held at once: about 60 MB of lock records at
/// ~59 bytes each (short names), far above what lock users hold, low enough
/// that a runaway client cannot exhaust the machine's memory.
pub const LOCKS_MAX_DEFAULT: usize = 1_000_000;

/// Hard ceiling on locks held: lock indexes must fit the timer keys.
pub const LOCKS_CEILING: usize = 1 << 30;

/// Default bound on simultaneous connections.
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;

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
pub const TCP_KEEPALIVE_INTERVAL_S: u64 = 10;

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

/// The kernel's receive buffer per connection (SO_RCVBUF, set on the
/// listener so accepted connections inherit it; doubled likewise):
/// requests a client pipelines while the server is not reading it (its
/// output buffer full of replies it does not read) wait here, and
/// autotuning would let them grow to tcp_rmem's maximum. Asking 64 KiB
/// keeps the 128 KiB a connection starts with by default (tcp_rmem's middle
/// value) and stops it growing.
pub const TCP_RECEIVE_BUFFER_SIZE: usize = 64 * 1024;

/// The most reply bytes the kernel holds for one connection: the send
/// buffer as Linux reserves it (twice SO_SNDBUF), plus the one segment it
/// may fill past that (up to 64 KiB, the default GSO size). Measured, not
/// set: README and docs/PROTOCOL.md give it as the bound.
pub const TCP_SEND_QUEUE_SIZE_MAX: usize = 2 * TCP_SEND_BUFFER_SIZE + 64 * 1024;

/// The most request bytes the kernel holds for one connection: the window
/// the kernel offers the client never exceeds its receive buffer.
pub const TCP_RECEIVE_QUEUE_SIZE_MAX: usize = 2 * TCP_RECEIVE_BUFFER_SIZE;

/// File descriptors the server needs besides its connections (listener,
/// epoll, waker, signal pipe, standard streams), with room to spare.
pub const FDS_RESERVED: usize = 16;

/// Timer deadlines must stay within the wheel's horizon.
const _: () = assert!((u32::MAX as u64) * 2 < crate::wheel::WHEEL_HORIZON_MS);
const _: () = assert!(CONN_INPUT_BUFFER_SIZE >= 2 * FRAME_SIZE_CEILING);
const _: () = assert!(CONN_OUTPUT_BUFFER_SIZE >= CONN_OUTPUT_BUFFER_SIZE_MIN);
const _: () = assert!(CONN_OUTPUT_BUFFER_SIZE_MIN >= STATUS_REPLY_SIZE_MAX);
const _: () = assert!(FRAME_SIZE_CEILING <= u16::MAX as usize + FRAME_HEADER_SIZE);
const _: () = assert!(request_size_max(NAME_LEN_CEILING, OWNER_LEN_CEILING) <= FRAME_SIZE_CEILING);

/// The largest request with the given name and owner bounds: an EXTEND
/// (token 8 + ttl 4 + two length bytes) has the most fixed bytes.
pub const fn request_size_max(name_len_max: usize, owner_len_max: usize) -> usize {
    FRAME_HEADER_SIZE + 8 + 4 + 1 + name_len_max + 1 + owner_len_max
}

/// The configurable limits of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub frame_size_max: usize,
    pub name_len_max: usize,
    pub owner_len_max: usize,
    pub lock_ttl_ms_default: u32,
    pub lock_ttl_ms_max: u32,
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
    /// Checks every field against its ceiling; the error names the field,
    /// its value and the allowed range.
    pub fn validate(&self) -> Result<(), String> {
        let min_frame = request_size_max(self.name_len_max, self.owner_len_max);
        check(
            "frame_size_max",
            self.frame_size_max as u64,
            min_frame as u64,
            FRAME_SIZE_CEILING as u64,
        )?;
        check(
            "name_len_max",
            self.name_len_max as u64,
            1,
            NAME_LEN_CEILING as u64,
        )?;
        check(
            "owner_len_max",
            self.owner_len_max as u64,
            1,
            OWNER_LEN_CEILING as u64,
        )?;
        check(
            "lock_ttl_ms_max",
            self.lock_ttl_ms_max as u64,
            1,
            u32::MAX as u64,
        )?;
        check(
            "lock_ttl_ms_default",
            self.lock_ttl_ms_default as u64,
            1,
            self.lock_ttl_ms_max as u64,
        )?;
        check("wait_ms_max", self.wait_ms_max as u64, 0, u32::MAX as u64)?;
        check("connections_max", self.connections_max as u64, 1, 1 << 24)?;
        check("locks_max", self.locks_max as u64, 1, LOCKS_CEILING as u64)?;
        check(
            "waiters_per_lock_max",
            self.waiters_per_lock_max as u64,
            1,
            1 << 24,
        )?;
        check(
            "output_buffer_size",
            self.output_buffer_size as u64,
            CONN_OUTPUT_BUFFER_SIZE_MIN as u64,
            CONN_OUTPUT_BUFFER_SIZE_CEILING as u64,
        )?;
        check(
            "frame_timeout_ms",
            self.frame_timeout_ms as u64,
            1,
            u32::MAX as u64,
        )?;
        check(
            "write_timeout_ms",
            self.write_timeout_ms as u64,
            1,
            u32::MAX as u64,
        )?;
        check(
            "auth_timeout_ms",
            self.auth_timeout_ms as u64,
            1,
            u32::MAX as u64,
        )?;
        check(
            "idle_timeout_ms",
            self.idle_timeout_ms as u64,
            0,
            u32::MAX as u64,
        )?;
        Ok(())
    }
}

fn check(field: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{field} {value}: out of range; use a value from {min} to {max}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let err = limits.validate().unwrap_err();
        assert!(err.contains("owner_len_max 65"), "{err}");
        let limits = Limits {
            lock_ttl_ms_default: 0,
            ..Limits::default()
        };
        assert!(
            limits
                .validate()
                .unwrap_err()
                .contains("lock_ttl_ms_default 0")
        );
    }
}
