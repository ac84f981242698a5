//! The original Python daemon's wire protocol (distlockd 1.0.x), served on
//! the same port as the native one.
//!
//! The two are told apart by the first byte of each frame: the original's
//! commands are 0x01, 0x02 and 0x03, which never start a native frame. All
//! integers are big-endian.
//!
//! ```text
//! request:  cmd u8 | name_len u16 | client_id_len u16 | name | client_id
//! reply:    status u8 | msg_len u16 | message
//! ```
//!
//! Semantics, as the original server had them, on the shared lock table:
//! ACQUIRE is a try-acquire owned by the client id with the TTL
//! `legacy_ttl_ms` (an hour by default, the original's stale-lock timeout:
//! its client never renews), not the native default; a client id that
//! already holds the lock gets OK again, its TTL reset to `legacy_ttl_ms`.
//! BUSY is answered TIMEOUT "Lock is busy". RELEASE by the holder's
//! client id is OK whatever the hold's fencing token, otherwise ERROR
//! "Invalid release". HEALTH is OK. Fields out of range are answered INVALID
//! with a message naming the field; the connection stays open. A frame over
//! frame_size_max is answered INVALID and the connection is closed.

use crate::limits::FRAME_SIZE_CEILING;
use crate::protocol::{DecodeError, whole_frame_present};

pub const CMD_ACQUIRE: u8 = 0x01;
pub const CMD_RELEASE: u8 = 0x02;
pub const CMD_HEALTH: u8 = 0x03;

pub const STATUS_OK: u8 = 0;
pub const STATUS_ERROR: u8 = 1;
/// The original's name for "the lock is busy".
pub const STATUS_TIMEOUT: u8 = 2;
pub const STATUS_INVALID: u8 = 3;

/// cmd (1) + name_len (2) + client_id_len (2).
pub const LEGACY_HEADER_SIZE: usize = 5;
/// status (1) + msg_len (2).
pub const LEGACY_REPLY_HEADER_SIZE: usize = 3;
/// Messages are kept short so any reply fits the space reserved for one.
pub const LEGACY_MESSAGE_LEN_MAX: usize = 255;

/// Whether a frame starting with `first` is in the original protocol.
pub fn is_legacy(first: u8) -> bool {
    matches!(first, CMD_ACQUIRE | CMD_RELEASE | CMD_HEALTH)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Acquire,
    Release,
    Health,
}

/// A decoded request borrowing from the input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegacyRequest<'a> {
    pub command: Command,
    pub name: &'a [u8],
    pub client_id: &'a [u8],
}

/// Decodes one request from the front of `buf`, like
/// [`crate::protocol::decode_request`]: `Ok(None)` means incomplete, the
/// length is checked against `frame_size_max` from the header alone.
pub fn decode_request(
    buf: &[u8],
    frame_size_max: usize,
) -> Result<Option<(LegacyRequest<'_>, usize)>, DecodeError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let command = match kind {
        CMD_ACQUIRE => Command::Acquire,
        CMD_RELEASE => Command::Release,
        CMD_HEALTH => Command::Health,
        _ => return Err(DecodeError::UnknownKind { kind }),
    };
    if buf.len() < LEGACY_HEADER_SIZE {
        return Ok(None);
    }
    let name_len = u16::from_be_bytes([buf[1], buf[2]]) as usize;
    let client_id_len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    let size = LEGACY_HEADER_SIZE + name_len + client_id_len;
    if !whole_frame_present(buf, kind, size, frame_size_max)? {
        return Ok(None);
    }
    let name = &buf[LEGACY_HEADER_SIZE..LEGACY_HEADER_SIZE + name_len];
    let client_id = &buf[LEGACY_HEADER_SIZE + name_len..size];
    Ok(Some((
        LegacyRequest {
            command,
            name,
            client_id,
        },
        size,
    )))
}

/// Encodes a reply into `out` (at least 258 bytes); the message is cut at
/// [`LEGACY_MESSAGE_LEN_MAX`]. Returns the length written.
pub fn encode_reply(status: u8, message: &[u8], out: &mut [u8]) -> usize {
    let message = &message[..message.len().min(LEGACY_MESSAGE_LEN_MAX)];
    out[0] = status;
    out[1..3].copy_from_slice(&(message.len() as u16).to_be_bytes());
    out[3..3 + message.len()].copy_from_slice(message);
    LEGACY_REPLY_HEADER_SIZE + message.len()
}

/// Encodes a request (for tests and tools speaking to old servers).
pub fn encode_request(command: Command, name: &[u8], client_id: &[u8], out: &mut Vec<u8>) {
    let cmd = match command {
        Command::Acquire => CMD_ACQUIRE,
        Command::Release => CMD_RELEASE,
        Command::Health => CMD_HEALTH,
    };
    out.push(cmd);
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(client_id);
}

/// Decodes a reply: (status, message, length) or None if incomplete.
pub fn decode_reply(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    if buf.len() < LEGACY_REPLY_HEADER_SIZE {
        return None;
    }
    let len = u16::from_be_bytes([buf[1], buf[2]]) as usize;
    let size = LEGACY_REPLY_HEADER_SIZE + len;
    (buf.len() >= size).then(|| (buf[0], &buf[LEGACY_REPLY_HEADER_SIZE..size], size))
}

const _: () = assert!(LEGACY_HEADER_SIZE + 255 + 64 <= FRAME_SIZE_CEILING);
const _: () =
    assert!(LEGACY_REPLY_HEADER_SIZE + LEGACY_MESSAGE_LEN_MAX <= crate::limits::REPLY_SIZE_MAX);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_command() {
        for command in [Command::Acquire, Command::Release, Command::Health] {
            let mut buf = Vec::new();
            encode_request(command, b"job", b"5f0c-uuid", &mut buf);
            let (req, used) = decode_request(&buf, 1024).unwrap().unwrap();
            assert_eq!(
                req,
                LegacyRequest {
                    command,
                    name: b"job",
                    client_id: b"5f0c-uuid"
                }
            );
            assert_eq!(used, buf.len());
            for end in 0..buf.len() {
                assert_eq!(decode_request(&buf[..end], 1024), Ok(None), "prefix {end}");
            }
        }
    }

    #[test]
    fn matches_the_original_byte_layout() {
        // struct.pack("!BHH", 1, 3, 2) + b"job" + b"id", as the Python client sends.
        let frame = [1, 0, 3, 0, 2, b'j', b'o', b'b', b'i', b'd'];
        let (req, used) = decode_request(&frame, 1024).unwrap().unwrap();
        assert_eq!(
            (req.command, req.name, req.client_id, used),
            (Command::Acquire, &b"job"[..], &b"id"[..], 10)
        );
        let mut out = [0u8; 300];
        let n = encode_reply(STATUS_TIMEOUT, b"Lock is busy", &mut out);
        assert_eq!(&out[..n], b"\x02\x00\x0cLock is busy");
        assert_eq!(
            decode_reply(&out[..n]),
            Some((STATUS_TIMEOUT, &b"Lock is busy"[..], n))
        );
    }

    #[test]
    fn oversize_is_rejected_from_the_header() {
        let header = [CMD_ACQUIRE, 0xff, 0xff, 0x00, 0x10];
        assert_eq!(
            decode_request(&header, 1024),
            Err(DecodeError::FrameTooLarge {
                kind: 1,
                size: 5 + 0xffff + 0x10,
                max: 1024
            })
        );
    }

    #[test]
    fn long_messages_are_cut() {
        let mut out = [0u8; 300];
        let n = encode_reply(STATUS_INVALID, &[b'x'; 400], &mut out);
        assert_eq!(n, 3 + 255);
    }
}
