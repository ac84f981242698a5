//! Decoding a stream split into arbitrary reads gives what decoding it
//! whole gives: the same frames at the same offsets, then the same error at
//! the same offset or the same incomplete tail.
//!
//! The split stream goes through a [`ConnBuffer`] the way the server reads
//! it: append what fits, decode every whole frame at the front, consume.
//! Each time the decoder asks for more bytes, the check confirms from the
//! bytes alone that it had to: the first byte is one it may wait on, and a
//! frame whose header is there fits `frame_size_max` (an oversize frame is
//! refused from its header, before its body arrives).

use super::{ByteSource, Source};
use crate::buffer::ConnBuffer;
use crate::limits::{CONN_INPUT_BUFFER_SIZE, FRAME_HEADER_SIZE, FRAME_SIZE_CEILING};
use crate::protocol::legacy;
use crate::protocol::{self, Acquire, DecodeError, FLAG_SESSION, Request};

/// Which decoder reads the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The server: native requests, and the original protocol's requests
    /// told apart by their first byte.
    Requests,
    /// A native client.
    NativeReplies,
    /// A client of the original protocol.
    LegacyReplies,
}

/// One test case: a stream and how it arrives.
#[derive(Clone, Debug)]
pub struct Case<'a> {
    pub side: Side,
    pub frame_size_max: usize,
    /// Read sizes, used in turn and repeated; each at least 1.
    pub reads: Vec<usize>,
    pub stream: &'a [u8],
}

/// What the decoder made of the stream, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Decoded {
    Frame {
        offset: usize,
        frame: String,
    },
    Error {
        offset: usize,
        error: DecodeError,
    },
    /// The stream ended inside a frame with this many bytes of it.
    Incomplete {
        offset: usize,
        len: usize,
    },
}

enum One {
    Frame(String, usize),
    NeedMore,
    Error(DecodeError),
}

/// Fuzz entry: side, frame_size_max and read sizes from the first bytes,
/// the stream is the rest.
pub fn run(src: &mut ByteSource<'_>) {
    let side = [Side::Requests, Side::NativeReplies, Side::LegacyReplies][src.below(3) as usize];
    let frame_size_max = [FRAME_SIZE_CEILING, 336, 64, 8][src.below(4) as usize];
    let reads = (0..=src.below(8))
        .map(|_| 1 + src.byte() as usize)
        .collect();
    check(&Case {
        side,
        frame_size_max,
        reads,
        stream: src.rest(),
    });
}

/// Runs one case; panics on the first disagreement.
pub fn check(case: &Case<'_>) {
    assert!(case.reads.iter().all(|&n| n > 0), "reads of 0 bytes");
    let whole = decode_whole(case);
    let split = decode_split(case);
    assert_eq!(split, whole, "split into reads of {:?}", case.reads);
}

fn decode_whole(case: &Case<'_>) -> Vec<Decoded> {
    let mut decoded = Vec::new();
    let mut offset = 0;
    loop {
        let rest = &case.stream[offset..];
        match decode_one(case, rest) {
            One::Frame(frame, used) => {
                decoded.push(Decoded::Frame { offset, frame });
                offset += used;
            }
            One::Error(error) => {
                decoded.push(Decoded::Error { offset, error });
                return decoded;
            }
            One::NeedMore => {
                let len = rest.len();
                decoded.push(Decoded::Incomplete { offset, len });
                return decoded;
            }
        }
    }
}

fn decode_split(case: &Case<'_>) -> Vec<Decoded> {
    let mut buffer = ConnBuffer::with_capacity(CONN_INPUT_BUFFER_SIZE);
    let mut decoded = Vec::new();
    let (mut offset, mut fed) = (0, 0);
    for &read in case.reads.iter().cycle() {
        loop {
            match decode_one(case, buffer.unread()) {
                One::Frame(frame, used) => {
                    decoded.push(Decoded::Frame { offset, frame });
                    buffer.consume(used);
                    offset += used;
                }
                One::Error(error) => {
                    decoded.push(Decoded::Error { offset, error });
                    return decoded;
                }
                One::NeedMore => {
                    check_need_more(case, buffer.unread());
                    break;
                }
            }
        }
        if fed == case.stream.len() {
            let len = buffer.len();
            decoded.push(Decoded::Incomplete { offset, len });
            return decoded;
        }
        let spare = buffer.spare_mut();
        let n = read.min(spare.len()).min(case.stream.len() - fed);
        assert!(n > 0, "input buffer full without a whole frame");
        spare[..n].copy_from_slice(&case.stream[fed..fed + n]);
        buffer.commit(n);
        buffer.invariants();
        fed += n;
    }
    unreachable!("reads cycle forever")
}

fn decode_one(case: &Case<'_>, buf: &[u8]) -> One {
    let result = match case.side {
        Side::Requests => match buf.first() {
            Some(&first) if legacy::is_legacy(first) => {
                legacy::decode_request(buf, case.frame_size_max)
                    .map(|d| d.map(|(r, used)| (format!("{r:?}"), used)))
            }
            _ => protocol::decode_request(buf, case.frame_size_max)
                .map(|d| d.map(|(r, used)| (format!("{r:?}"), used))),
        },
        Side::NativeReplies => {
            protocol::decode_reply(buf).map(|d| d.map(|(r, used)| (format!("{r:?}"), used)))
        }
        Side::LegacyReplies => Ok(legacy::decode_reply(buf)
            .map(|(status, message, used)| (format!("{status} {message:?}"), used))),
    };
    match result {
        Ok(Some((frame, used))) => {
            assert!(
                used > 0 && used <= buf.len(),
                "used {used} of {}",
                buf.len()
            );
            let limit = size_limit(case);
            assert!(
                used <= limit,
                "a {used}-byte frame passed the limit {limit}"
            );
            One::Frame(frame, used)
        }
        Ok(None) => One::NeedMore,
        Err(error) => One::Error(error),
    }
}

fn size_limit(case: &Case<'_>) -> usize {
    match case.side {
        Side::Requests => case.frame_size_max,
        Side::NativeReplies => FRAME_SIZE_CEILING,
        Side::LegacyReplies => legacy::LEGACY_REPLY_HEADER_SIZE + u16::MAX as usize,
    }
}

/// The decoder waits for more of `buf`: that must be right by the bytes
/// alone (docs/PROTOCOL.md, "Writing a decoder").
fn check_need_more(case: &Case<'_>, buf: &[u8]) {
    let Some(&first) = buf.first() else {
        return;
    };
    let legacy_request = case.side == Side::Requests && legacy::is_legacy(first);
    let header = match case.side {
        _ if legacy_request => legacy::LEGACY_HEADER_SIZE,
        Side::LegacyReplies => legacy::LEGACY_REPLY_HEADER_SIZE,
        _ => FRAME_HEADER_SIZE,
    };
    if buf.len() < header {
        // Only a first byte that may start a frame is waited on: every
        // shorter prefix must be waited on too.
        assert!(
            matches!(decode_one(case, &buf[..1]), One::NeedMore),
            "{first:#04x} waited on alone but not with more"
        );
        return;
    }
    let be16 = |i: usize| u16::from_be_bytes([buf[i], buf[i + 1]]) as usize;
    let size = if legacy_request {
        header + be16(1) + be16(3)
    } else {
        header + be16(1)
    };
    let limit = size_limit(case);
    assert!(
        size <= limit,
        "frame of {size} bytes over the limit {limit} not refused from its header"
    );
    assert!(
        size > buf.len(),
        "waiting for more with the whole {size}-byte frame present"
    );
}

/// A random case for the randomized tests: mostly valid frames of both
/// protocols, some cut, corrupted or replaced by noise, so the decoders'
/// every branch is reached far more often than by random bytes.
pub fn random_stream(src: &mut impl Source, side: Side, out: &mut Vec<u8>) {
    for _ in 0..src.below(12) {
        let start = out.len();
        match side {
            Side::Requests if src.one_in(4) => {
                let command = [
                    legacy::Command::Acquire,
                    legacy::Command::Release,
                    legacy::Command::Health,
                ][src.below(3) as usize];
                let name = random_bytes(src, 300);
                let client_id = random_bytes(src, 80);
                legacy::encode_request(command, &name, &client_id, out);
            }
            Side::Requests => random_request(src, out),
            Side::NativeReplies => random_reply(src, out),
            Side::LegacyReplies => {
                let message = random_bytes(src, 300);
                let mut frame = vec![0u8; legacy::LEGACY_REPLY_HEADER_SIZE + message.len()];
                let n = legacy::encode_reply(src.byte() % 4, &message, &mut frame);
                out.extend_from_slice(&frame[..n]);
            }
        }
        corrupt(src, out, start);
    }
}

fn random_bytes(src: &mut impl Source, len_max: u64) -> Vec<u8> {
    let len = if src.one_in(4) {
        src.below(len_max + 1)
    } else {
        src.below(12)
    };
    (0..len).map(|_| src.byte()).collect()
}

fn random_request(src: &mut impl Source, out: &mut Vec<u8>) {
    let name = random_bytes(src, 255);
    let owner = random_bytes(src, 255);
    let (name, owner) = (&name[..name.len().min(255)], &owner[..owner.len().min(255)]);
    let request = match src.below(5) {
        0 => Request::Hello {
            version: src.below(3) as u16,
            client_name: owner,
        },
        1 => Request::Ping,
        2 => Request::Acquire(Acquire {
            name,
            owner,
            ttl_ms: src.next_u64() as u32,
            wait_ms: src.next_u64() as u32,
            flags: if src.one_in(8) {
                src.byte()
            } else {
                FLAG_SESSION
            },
        }),
        3 => Request::Release {
            name,
            owner,
            token: src.next_u64(),
        },
        _ => Request::Extend {
            name,
            owner,
            token: src.next_u64(),
            ttl_ms: src.next_u64() as u32,
        },
    };
    request.encode_to_vec(out);
}

fn random_reply(src: &mut impl Source, out: &mut Vec<u8>) {
    let message = random_bytes(src, 255);
    let message = &message[..message.len().min(255)];
    let reply = match src.below(9) {
        0 => protocol::Reply::Hello(protocol::HelloReply {
            version: 1,
            frame_size_max: 1024,
            name_len_max: 255,
            owner_len_max: 64,
            lock_ttl_ms_default: src.next_u64() as u32,
            lock_ttl_ms_max: src.next_u64() as u32,
            wait_ms_max: src.next_u64() as u32,
            server_version: message,
        }),
        1 => protocol::Reply::Pong {
            uptime_ms: src.next_u64(),
            server_version: message,
        },
        2 => protocol::Reply::Granted {
            token: src.next_u64(),
            ttl_ms: src.next_u64() as u32,
            reentered: [None, Some(false), Some(true)][src.below(3) as usize],
        },
        3 => protocol::Reply::Busy {
            remaining_ms: src.next_u64() as u32,
            waiters: src.next_u64() as u32,
        },
        4 => protocol::Reply::Timeout {
            waited_ms: src.next_u64() as u32,
        },
        5 => protocol::Reply::Released,
        6 => protocol::Reply::Extended {
            ttl_ms: src.next_u64() as u32,
        },
        7 => protocol::Reply::NotHeld {
            reason: [
                protocol::NotHeldReason::Free,
                protocol::NotHeldReason::OtherOwner,
                protocol::NotHeldReason::TokenMismatch,
            ][src.below(3) as usize],
        },
        _ => protocol::Reply::Error {
            code: protocol::ErrorCode::from_u16(src.below(10) as u16),
            message,
        },
    };
    // Room for a HELLO reply or PONG with a 255-byte version, longer than
    // any reply the server sends.
    let mut frame = [0u8; 2 * crate::limits::REPLY_SIZE_MAX];
    let n = reply.encode(&mut frame);
    out.extend_from_slice(&frame[..n]);
}

/// Sometimes damages the frame that starts at `start`: a changed byte (a
/// length, a kind), a cut, or noise.
fn corrupt(src: &mut impl Source, out: &mut Vec<u8>, start: usize) {
    let len = (out.len() - start) as u64;
    match src.below(16) {
        0 => {
            let i = start + src.below(len.min(6)) as usize;
            out[i] = src.byte();
        }
        1 => {
            let i = start + src.below(len) as usize;
            out[i] = out[i].wrapping_add(1 + src.below(2) as u8);
        }
        2 => out.truncate(start + src.below(len) as usize),
        3 => out.extend((0..src.below(8)).map(|_| src.byte())),
        _ => {}
    }
}
