//! A blocking connection: write a frame, read back one whole reply; std
//! only, so a client-only build has it. The client talks through it, and so
//! can a program that speaks the protocol itself.
//!
//! Replies are read into a fixed buffer (the server's kind) and
//! decoded in place: a [`Reply`]
//! borrows the buffer until the next call, and no call allocates once the
//! connection exists. The buffer holds at least one largest reply
//! ([`FRAME_SIZE_CEILING`], checked from a reply's header before its body
//! arrives), so a reply always has room. Bytes past one reply stay for the
//! next read: requests may be pipelined.
//!
//! Every failure is an [`io::Error`] that says what happened:
//! `UnexpectedEof` when the server closes before a reply is whole,
//! `TimedOut` when the read timeout expires (naming it), and `InvalidData`
//! carrying a [`BadReply`] when the bytes are not a reply. After
//! `InvalidData` frame boundaries are lost: close the connection.
//!
//! ```no_run
//! use std::net::TcpStream;
//! use std::time::Duration;
//!
//! use distlockd::protocol::blocking::Connection;
//! use distlockd::protocol::{Reply, Request};
//!
//! let mut conn = Connection::new(TcpStream::connect("127.0.0.1:9999")?);
//! conn.set_read_timeout(Some(Duration::from_secs(5)))?;
//! match conn.exchange(&Request::Ping)? {
//!     Reply::Pong { server_version, .. } => {
//!         println!("distlockd {}", String::from_utf8_lossy(server_version));
//!     }
//!     other => println!("answered PING with {other:?}"),
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::{DecodeError, Reply, Request, decode_reply, is_reply_kind, split_frame};
use crate::buffer::ConnBuffer;
use crate::limits::{FRAME_SIZE_CEILING, STATUS_REPLY_SIZE_MAX};

/// Default input buffer: one read takes several pipelined replies, and
/// the largest reply fits.
pub const INPUT_BUFFER_SIZE_DEFAULT: usize = 4 * FRAME_SIZE_CEILING;

/// Smallest input buffer: the largest reply the decoder accepts.
pub const INPUT_BUFFER_SIZE_MIN: usize = FRAME_SIZE_CEILING;
const _: () = assert!(STATUS_REPLY_SIZE_MAX <= INPUT_BUFFER_SIZE_MIN);
const _: () = assert!(INPUT_BUFFER_SIZE_DEFAULT >= INPUT_BUFFER_SIZE_MIN);

/// Longest request [`Connection::send`] encodes (on the stack): every
/// server refuses a longer frame, and valid requests are far shorter.
const REQUEST_SIZE_MAX: usize = FRAME_SIZE_CEILING;

/// How an HTTP response starts. Its first byte is not a reply kind, so an
/// HTTP server's answer is told apart from garbage by its first bytes.
const HTTP_STATUS_LINE_START: &[u8] = b"HTTP/";

/// Why the bytes a server sent are not a reply: the source of an
/// `InvalidData` error from a [`Connection`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadReply {
    /// Not a reply frame (kind, length), or a frame whose fields disagree
    /// with its length.
    Undecodable(DecodeError),
    /// An HTTP response: the address is an HTTP endpoint (such as
    /// distlockd's health and metrics port), not a lock-protocol port.
    Http,
}

impl BadReply {
    /// The `BadReply` that `e` carries, if it is one.
    pub fn of(e: &io::Error) -> Option<&BadReply> {
        e.get_ref()?.downcast_ref()
    }
}

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadReply::Undecodable(e) => write!(f, "undecodable reply: {e}"),
            BadReply::Http => f.write_str(
                "the server answered in HTTP: this is an HTTP endpoint (such as distlockd's health and metrics port), not the lock protocol's port",
            ),
        }
    }
}

impl std::error::Error for BadReply {}

/// A stream with a fixed input buffer; see the module docs.
pub struct Connection<S = TcpStream> {
    stream: S,
    input: ConnBuffer,
    /// The read timeout last set by [`Connection::set_read_timeout`], to
    /// skip the syscall when it does not change and to name it when it
    /// expires; `None` until set.
    read_timeout: Option<Option<Duration>>,
}

impl<S: Read + Write> Connection<S> {
    /// A connection with an input buffer of [`INPUT_BUFFER_SIZE_DEFAULT`].
    pub fn new(stream: S) -> Connection<S> {
        Connection::with_input_buffer_size(stream, INPUT_BUFFER_SIZE_DEFAULT)
    }

    /// A connection with an input buffer of `size` bytes, at least
    /// [`INPUT_BUFFER_SIZE_MIN`]; allocated here, once.
    pub fn with_input_buffer_size(stream: S, size: usize) -> Connection<S> {
        assert!(
            size >= INPUT_BUFFER_SIZE_MIN,
            "an input buffer of {size} bytes cannot hold the largest reply ({INPUT_BUFFER_SIZE_MIN})"
        );
        Connection {
            stream,
            input: ConnBuffer::with_capacity(size),
            read_timeout: None,
        }
    }

    /// The stream. Set the read timeout with
    /// [`Connection::set_read_timeout`], not on the stream: the connection
    /// remembers the one it set, to skip setting it again and to name it
    /// when it expires.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream, mutably; bytes read from it directly bypass the buffer.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Bytes read but not yet returned as a reply.
    pub fn buffered(&self) -> &[u8] {
        self.input.unread()
    }

    /// Encodes `request` (on the stack) and writes it.
    pub fn send(&mut self, request: &Request<'_>) -> io::Result<()> {
        let len = request.encoded_len();
        if len > REQUEST_SIZE_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a request of {len} bytes is over the {REQUEST_SIZE_MAX}-byte frame ceiling; shorten its name or owner"
                ),
            ));
        }
        let mut frame = [0u8; REQUEST_SIZE_MAX];
        let n = request.encode(&mut frame);
        self.send_raw(&frame[..n])
    }

    /// Writes `bytes` as they are: one or more frames, or anything else.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).map_err(|e| match e.kind() {
            // Socket timeouts surface as WouldBlock on Unix.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                io::Error::new(io::ErrorKind::TimedOut, "timed out sending a request")
            }
            _ => e,
        })
    }

    /// Sends `request` and reads its reply.
    pub fn exchange(&mut self, request: &Request<'_>) -> io::Result<Reply<'_>> {
        self.send(request)?;
        self.read_reply()
    }

    /// Reads until one whole reply is in, and returns it, borrowing the
    /// buffer; bytes after it stay for the next call.
    pub fn read_reply(&mut self) -> io::Result<Reply<'_>> {
        let whole = |buf: &[u8]| Ok::<_, BadReply>(reply_len(buf)?.map(|len| ((), len)));
        let ((), len) = self.read_until_whole(whole)?;
        decode_whole(self.take(len))
    }

    /// The next reply if it is already whole in the buffer; reads nothing.
    pub fn buffered_reply(&mut self) -> io::Result<Option<Reply<'_>>> {
        let Some(len) = reply_len(self.buffered()).map_err(invalid_data)? else {
            return Ok(None);
        };
        decode_whole(self.take(len)).map(Some)
    }

    /// Reads one frame of another framing (the load tester reads Redis
    /// replies with it) and returns what `parse` made of it. `parse` gets
    /// the unread bytes and returns `None` while more are needed, or the
    /// value and the frame's length (consumed), or an error for bytes that
    /// are no frame (`InvalidData`). A frame longer than the input buffer is
    /// an `InvalidData` error.
    pub fn read_frame<T, E>(
        &mut self,
        parse: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, E>,
    ) -> io::Result<T>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (value, len) = self.read_until_whole(parse)?;
        self.take(len);
        Ok(value)
    }

    /// Reads until `parse` finds a whole frame at the start of the unread
    /// bytes; consumes nothing.
    fn read_until_whole<T, E>(
        &mut self,
        mut parse: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, E>,
    ) -> io::Result<(T, usize)>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        loop {
            if let Some((value, len)) = parse(self.buffered()).map_err(invalid_data)? {
                return Ok((value, len));
            }
            match self.fill() {
                Ok(0) => return Err(self.closed_before_whole()),
                Ok(_) => {}
                Err(e) => return Err(self.name_timeout(e, "for a reply")),
            }
        }
    }

    /// Reads until the server closes the connection (end of file, or a
    /// reset: how a close with bytes unread arrives), keeping what arrives
    /// for [`Connection::buffered_reply`]. More than the input buffer holds
    /// is an `InvalidData` error.
    pub fn read_to_close(&mut self) -> io::Result<()> {
        loop {
            match self.fill() {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(self.name_timeout(e, "for the server to close")),
            }
        }
    }

    /// One read into the free space, making room first; the number of
    /// bytes read, 0 at end of file. Errors are the stream's own (`WouldBlock`
    /// from a non-blocking stream, for one), except a full buffer
    /// (`InvalidData`).
    pub fn fill(&mut self) -> io::Result<usize> {
        if self.input.is_full() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} unread bytes fill the {}-byte input buffer; take the replies in it before reading more, or use a larger buffer",
                    self.input.len(),
                    self.input.capacity()
                ),
            ));
        }
        loop {
            match self.stream.read(self.input.spare_mut()) {
                Ok(n) => {
                    self.input.commit(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Consumes the first `len` unread bytes and returns them.
    fn take(&mut self, len: usize) -> &[u8] {
        assert!(len > 0, "a frame of no bytes");
        self.input.take(len)
    }

    fn closed_before_whole(&self) -> io::Error {
        let unread = self.input.len();
        let message = if unread == 0 {
            "the server closed the connection before replying".to_owned()
        } else {
            format!("the server closed the connection {unread} bytes into a reply")
        };
        io::Error::new(io::ErrorKind::UnexpectedEof, message)
    }

    /// Socket timeouts surface as WouldBlock on Unix ("Resource
    /// temporarily unavailable"); say what timed out instead.
    fn name_timeout(&self, e: io::Error, waiting_for: &str) -> io::Error {
        if !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            return e;
        }
        let message = match self.read_timeout {
            Some(Some(t)) => format!("timed out waiting {:.3}s {waiting_for}", t.as_secs_f64()),
            _ => format!("timed out waiting {waiting_for}"),
        };
        io::Error::new(io::ErrorKind::TimedOut, message)
    }
}

impl<S: fmt::Debug> fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("stream", &self.stream)
            .field("buffered", &self.input.len())
            .finish_non_exhaustive()
    }
}

impl Connection<TcpStream> {
    /// Sets the socket's read timeout (`None`: wait forever) unless it is
    /// already that, so setting the same timeout before every request costs
    /// no syscall.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.read_timeout != Some(timeout) {
            self.stream.set_read_timeout(timeout)?;
            self.read_timeout = Some(timeout);
        }
        Ok(())
    }
}

/// The length of the whole reply at the start of `buf`; `None` while more
/// bytes are needed, including while they may still begin an HTTP response.
fn reply_len(buf: &[u8]) -> Result<Option<usize>, BadReply> {
    match split_frame(buf, FRAME_SIZE_CEILING, is_reply_kind) {
        Ok(frame) => Ok(frame.map(|frame| frame.size)),
        Err(_) if HTTP_STATUS_LINE_START.starts_with(buf) => Ok(None),
        Err(_) if buf.starts_with(HTTP_STATUS_LINE_START) => Err(BadReply::Http),
        Err(e) => Err(BadReply::Undecodable(e)),
    }
}

/// Decodes a frame that [`reply_len`] found whole.
fn decode_whole(frame: &[u8]) -> io::Result<Reply<'_>> {
    match decode_reply(frame) {
        Ok(Some((reply, used))) => {
            debug_assert_eq!(used, frame.len());
            Ok(reply)
        }
        Ok(None) => unreachable!("reply_len found a whole frame"),
        Err(e) => Err(invalid_data(BadReply::Undecodable(e))),
    }
}

fn invalid_data(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::TcpListener;

    use super::*;
    use crate::protocol::{ErrorCode, NotHeldReason, StatusEntry, StatusWriter, kind};

    /// A stream whose reads return scripted chunks (split further when the
    /// reader's room is smaller; empty ones left out, as they would read as
    /// end of file), then end of file; writes are recorded.
    #[derive(Default)]
    struct Scripted {
        reads: VecDeque<io::Result<Vec<u8>>>,
        /// How many reads returned bytes.
        reads_done: usize,
        written: Vec<u8>,
    }

    impl Scripted {
        fn new(chunks: impl IntoIterator<Item = Vec<u8>>) -> Scripted {
            Scripted {
                reads: (chunks.into_iter())
                    .filter(|chunk| !chunk.is_empty())
                    .map(Ok)
                    .collect(),
                ..Scripted::default()
            }
        }
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.reads.pop_front() {
                None => Ok(0),
                Some(Err(e)) => Err(e),
                Some(Ok(mut chunk)) => {
                    if chunk.len() > buf.len() {
                        self.reads.push_front(Ok(chunk.split_off(buf.len())));
                    }
                    buf[..chunk.len()].copy_from_slice(&chunk);
                    self.reads_done += 1;
                    Ok(chunk.len())
                }
            }
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn encoded(reply: Reply<'_>) -> Vec<u8> {
        let mut out = vec![0u8; FRAME_SIZE_CEILING];
        let n = reply.encode(&mut out);
        out.truncate(n);
        out
    }

    fn sample_replies() -> Vec<Reply<'static>> {
        vec![
            Reply::Granted {
                token: 7,
                ttl_ms: 10_000,
                reentered: Some(false),
            },
            Reply::Released,
            Reply::Pong {
                uptime_ms: 5,
                server_version: b"2.0.0",
            },
            Reply::NotHeld {
                reason: NotHeldReason::OtherOwner,
            },
            Reply::Error {
                code: ErrorCode::BadArgument,
                message: &[b'm'; 255],
            },
            Reply::Authed,
        ]
    }

    fn stream_of(replies: &[Reply<'_>]) -> Vec<u8> {
        replies.iter().flat_map(|r| encoded(*r)).collect()
    }

    fn bad_reply(e: &io::Error) -> BadReply {
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        *BadReply::of(e).unwrap_or_else(|| panic!("no BadReply in {e}"))
    }

    #[test]
    fn a_reply_split_byte_by_byte_reads_whole() {
        let replies = sample_replies();
        let bytes = stream_of(&replies);
        let chunks = bytes.iter().map(|&b| vec![b]);
        let mut conn = Connection::new(Scripted::new(chunks));
        for expected in &replies {
            assert_eq!(&conn.read_reply().unwrap(), expected);
        }
        assert_eq!(conn.get_ref().reads_done, bytes.len());
        assert!(conn.buffered().is_empty());
    }

    #[test]
    fn every_split_point_reads_the_same_replies() {
        let replies = sample_replies();
        let bytes = stream_of(&replies);
        for split in 0..=bytes.len() {
            let chunks = [bytes[..split].to_vec(), bytes[split..].to_vec()];
            let mut conn = Connection::new(Scripted::new(chunks));
            for expected in &replies {
                assert_eq!(&conn.read_reply().unwrap(), expected, "split {split}");
            }
        }
    }

    #[test]
    fn two_replies_in_one_read_keep_the_second_for_the_next_call() {
        let second = encoded(Reply::Released);
        let mut both = encoded(Reply::Busy {
            remaining_ms: 9,
            waiters: 1,
        });
        both.extend_from_slice(&second);
        let mut conn = Connection::new(Scripted::new([both]));
        assert!(matches!(conn.read_reply().unwrap(), Reply::Busy { .. }));
        assert_eq!(conn.buffered(), &second[..]);
        assert_eq!(conn.buffered_reply().unwrap(), Some(Reply::Released));
        assert_eq!(conn.buffered_reply().unwrap(), None);
        assert_eq!(
            conn.get_ref().reads_done,
            1,
            "the second came from the buffer"
        );
    }

    /// A STATUS reply over half the smallest buffer.
    fn big_status() -> Vec<u8> {
        let mut status = vec![0u8; STATUS_REPLY_SIZE_MAX];
        let mut w = StatusWriter::begin(&mut status, 3);
        for token in 0..3 {
            assert!(w.push(&StatusEntry {
                name: &[b'n'; 255],
                token,
                remaining_ms: 1,
                waiters: 0,
                session: false,
            }));
        }
        let n = w.finish(0);
        status.truncate(n);
        assert!(
            n > INPUT_BUFFER_SIZE_MIN / 2,
            "{n}: not large enough to test"
        );
        status
    }

    /// A full buffer ending in the start of a reply longer than what was
    /// consumed before it: the reply still slides to the front to be read.
    #[test]
    fn a_large_reply_behind_small_ones_in_a_full_buffer_is_read() {
        let small = Reply::Released;
        let smalls = (INPUT_BUFFER_SIZE_MIN / 4) / encoded(small).len();
        let mut bytes = stream_of(&vec![small; smalls]);
        bytes.extend_from_slice(&big_status());
        let (first, rest) = bytes.split_at(INPUT_BUFFER_SIZE_MIN);
        let scripted = Scripted::new([first.to_vec(), rest.to_vec()]);
        let mut conn = Connection::with_input_buffer_size(scripted, INPUT_BUFFER_SIZE_MIN);
        for _ in 0..smalls {
            assert_eq!(conn.read_reply().unwrap(), small);
        }
        assert!(conn.buffered().len() > INPUT_BUFFER_SIZE_MIN / 2);
        assert!(matches!(conn.read_reply().unwrap(), Reply::Status(_)));
    }

    /// Thousands of pipelined replies, small and near the largest, in
    /// chunks that cut them anywhere, through the smallest buffer: unread
    /// bytes slide to the front and nothing is lost or reordered.
    #[test]
    fn pipelined_replies_through_the_smallest_buffer_arrive_in_order() {
        let status = big_status();
        let status = decode_reply(&status).unwrap().unwrap().0;
        let replies: Vec<Reply<'_>> = (0..3000u64)
            .map(|token| match token % 8 {
                7 => status,
                _ => Reply::Granted {
                    token,
                    ttl_ms: 1,
                    reentered: None,
                },
            })
            .collect();
        let bytes = stream_of(&replies);
        let chunks: Vec<Vec<u8>> = bytes.chunks(997).map(<[u8]>::to_vec).collect();
        let scripted = Scripted::new(chunks);
        let mut conn = Connection::with_input_buffer_size(scripted, INPUT_BUFFER_SIZE_MIN);
        for expected in &replies {
            assert_eq!(&conn.read_reply().unwrap(), expected);
        }
        assert!(conn.buffered().is_empty());
    }

    #[test]
    fn eof_before_or_inside_a_reply_is_unexpected_eof() {
        let mut conn = Connection::new(Scripted::new([]));
        let e = conn.read_reply().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            e.to_string(),
            "the server closed the connection before replying"
        );
        let granted = encoded(Reply::Granted {
            token: 1,
            ttl_ms: 2,
            reentered: None,
        });
        for cut in 1..granted.len() {
            let mut conn = Connection::new(Scripted::new([granted[..cut].to_vec()]));
            let e = conn.read_reply().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut {cut}");
            assert_eq!(
                e.to_string(),
                format!("the server closed the connection {cut} bytes into a reply")
            );
        }
    }

    #[test]
    fn a_reply_over_the_ceiling_is_refused_from_its_header() {
        // Only the header arrives, then the stream would block forever: the
        // error must come from the header alone, not from waiting.
        let header = vec![kind::GRANTED, 0xff, 0xff];
        let mut conn = Connection::new(Scripted::new([header]));
        let e = conn.read_reply().unwrap_err();
        assert!(matches!(
            bad_reply(&e),
            BadReply::Undecodable(DecodeError::FrameTooLarge {
                kind: kind::GRANTED,
                size: 65_538,
                max: FRAME_SIZE_CEILING,
            })
        ));
        assert!(e.to_string().starts_with("undecodable reply: "), "{e}");
    }

    #[test]
    fn malformed_replies_are_invalid_data() {
        let unknown_kind = vec![b'Z', 0, 0];
        let request_kind = vec![kind::PING, 0, 0];
        // GRANTED whose body is two bytes: shorter than its fields.
        let short_body = vec![kind::GRANTED, 0, 2, 0, 0];
        let bad_reason = vec![kind::NOT_HELD, 0, 1, 9];
        for bytes in [unknown_kind, request_kind, short_body, bad_reason] {
            let mut conn = Connection::new(Scripted::new([bytes.clone()]));
            let e = conn.read_reply().unwrap_err();
            assert!(
                matches!(bad_reply(&e), BadReply::Undecodable(_)),
                "{bytes:?}: {e}"
            );
        }
    }

    #[test]
    fn an_http_answer_is_named_even_when_its_first_bytes_come_alone() {
        let chunks = [
            b"H".to_vec(),
            b"TT".to_vec(),
            b"P/1.1 400 Bad Request\r\n".to_vec(),
        ];
        let mut conn = Connection::new(Scripted::new(chunks));
        let e = conn.read_reply().unwrap_err();
        assert_eq!(bad_reply(&e), BadReply::Http);
        // A first byte that only looks like one for a while.
        let mut conn = Connection::new(Scripted::new([b"HT".to_vec(), b"X".to_vec()]));
        let e = conn.read_reply().unwrap_err();
        assert!(matches!(bad_reply(&e), BadReply::Undecodable(_)), "{e}");
    }

    #[test]
    fn interrupted_reads_are_retried() {
        let granted = encoded(Reply::Released);
        let mut scripted = Scripted::new([granted[..1].to_vec(), granted[1..].to_vec()]);
        scripted
            .reads
            .insert(1, Err(io::ErrorKind::Interrupted.into()));
        let mut conn = Connection::new(scripted);
        assert_eq!(conn.read_reply().unwrap(), Reply::Released);
    }

    #[test]
    fn a_read_timeout_is_named() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // Accepted and never answered.
        let _server = listener.accept().unwrap();
        let mut conn = Connection::new(client);
        conn.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let e = conn.exchange(&Request::Ping).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert_eq!(e.to_string(), "timed out waiting 0.050s for a reply");
        // Unchanged, it is not set again (a timeout set behind its back
        // stays); changed, it is.
        let behind = Some(Duration::from_secs(7));
        conn.get_ref().set_read_timeout(behind).unwrap();
        conn.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        assert_eq!(conn.get_ref().read_timeout().unwrap(), behind);
        conn.set_read_timeout(None).unwrap();
        assert_eq!(conn.get_ref().read_timeout().unwrap(), None);
    }

    #[test]
    fn send_writes_the_encoded_request() {
        let request = Request::Release {
            name: b"job",
            owner: b"me",
            token: 3,
        };
        let mut conn = Connection::new(Scripted::new([]));
        conn.send(&request).unwrap();
        conn.send_raw(b"raw").unwrap();
        let mut expected = Vec::new();
        request.encode_to_vec(&mut expected);
        expected.extend_from_slice(b"raw");
        assert_eq!(conn.get_ref().written, expected);
    }

    #[test]
    fn read_to_close_keeps_what_came_before_the_close() {
        let mut bytes = stream_of(&[Reply::Released, Reply::Authed]);
        bytes.push(kind::GRANTED);
        let mut conn = Connection::new(Scripted::new([bytes]));
        conn.read_to_close().unwrap();
        assert_eq!(conn.buffered_reply().unwrap(), Some(Reply::Released));
        assert_eq!(conn.buffered_reply().unwrap(), Some(Reply::Authed));
        assert_eq!(conn.buffered_reply().unwrap(), None);
        assert_eq!(conn.buffered(), [kind::GRANTED]);
        // A reset is a close too.
        let mut scripted = Scripted::new([]);
        scripted
            .reads
            .push_back(Err(io::ErrorKind::ConnectionReset.into()));
        Connection::new(scripted).read_to_close().unwrap();
    }

    #[test]
    fn a_frame_longer_than_the_buffer_is_invalid_data() {
        let scripted = Scripted::new([vec![b'x'; 3 * INPUT_BUFFER_SIZE_MIN]]);
        let mut conn = Connection::with_input_buffer_size(scripted, INPUT_BUFFER_SIZE_MIN);
        let e = conn.read_frame(line).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            e.to_string().contains("fill the 1024-byte input buffer"),
            "{e}"
        );
    }

    /// A CRLF-terminated line, as text.
    fn line(buf: &[u8]) -> Result<Option<(String, usize)>, String> {
        let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let text = String::from_utf8(buf[..end].to_vec()).map_err(|e| e.to_string())?;
        Ok(Some((text, end + 2)))
    }

    #[test]
    fn other_framings_read_through_read_frame() {
        let chunks = [b"+PO".to_vec(), b"NG\r\n:1\r\n\xff\r\n".to_vec()];
        let mut conn = Connection::new(Scripted::new(chunks));
        assert_eq!(conn.read_frame(line).unwrap(), "+PONG");
        assert_eq!(conn.read_frame(line).unwrap(), ":1");
        let e = conn.read_frame(line).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("invalid utf-8"), "{e}");
    }
}
