//! The server's request path, frame by frame, against the reference model.
//!
//! A few connections send real frames of both protocols, each encoded,
//! appended to the connection's input buffer (sometimes in two reads) and
//! run through [`execute::step`] on one [`LockTable`], as the server does;
//! the reply is decoded from the connection's output buffer. The same
//! requests go to [`Model`]. Time moves the way the server's loop moves it:
//! either tick by tick to each deadline, or in one late jump.
//!
//! After every operation: replies equal the model's, later answers to queued
//! ACQUIREs (table events) equal the model's, go to a connection that waits
//! and come exactly once, new tokens are the next ones in grant order, both
//! sides count the same locks and waiters, and `table.invariants()` holds.
//!
//! Like the server, a connection whose ACQUIRE waits sends nothing more: it
//! can only wait or close.

use super::Source;
use super::model::{Answer, Later, Model};
use crate::buffer::ConnBuffer;
use crate::execute::{self, Context, Step};
use crate::limits::{
    CONN_INPUT_BUFFER_SIZE, CONN_OUTPUT_BUFFER_SIZE, Limits, PROTOCOL_VERSION, REPLY_SIZE_MAX,
    WAIT_MS_UNBOUNDED,
};
use crate::protocol::legacy::{self, Command};
use crate::protocol::{self, Acquire, DecodeError, ErrorCode, HelloReply, Reply, Request, kind};
use crate::table::{EventKind, LockTable, SessionId};

/// Connections open at once, at most.
const CONNECTIONS_MAX: usize = 6;
const NAMES: [&[u8]; 4] = [b"n0", b"n1", b"n2", b"n3"];
const OWNERS: [&[u8]; 3] = [b"o0", b"o1", b"o2"];
/// Over the check's name and owner limit (8 bytes).
const TOO_LONG: &[u8] = b"123456789";
/// First bytes that no request starts with.
const NOT_KINDS: [u8; 6] = [0x00, 0x04, b'Z', b'g', b'-', 0xff];

/// How often each kind of answer came, so tests can tell that the
/// generated cases reach every branch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub ops: u64,
    pub granted: u64,
    pub busy: u64,
    pub queued: u64,
    pub granted_later: u64,
    pub timed_out: u64,
    pub released: u64,
    pub extended: u64,
    pub not_held: u64,
    pub errors: u64,
    pub legacy: u64,
    pub closes: u64,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.ops += other.ops;
        self.granted += other.granted;
        self.busy += other.busy;
        self.queued += other.queued;
        self.granted_later += other.granted_later;
        self.timed_out += other.timed_out;
        self.released += other.released;
        self.extended += other.extended;
        self.not_held += other.not_held;
        self.errors += other.errors;
        self.legacy += other.legacy;
        self.closes += other.closes;
    }
}

/// Runs up to `ops_max` operations with choices from `src` (fewer if it
/// runs out), then closes every connection and lets every lock expire.
pub fn run(src: &mut impl Source, ops_max: usize) -> Tally {
    let mut world = World::new(src);
    for op in 0..ops_max {
        if src.is_exhausted() {
            break;
        }
        world.op = op;
        world.tally.ops += 1;
        world.random_op(src);
        world.check_state();
    }
    world.finish()
}

struct Conn {
    /// The model's number for it.
    number: usize,
    session: SessionId,
    input: ConnBuffer,
    output: ConnBuffer,
    /// Its ACQUIRE is queued: it sends nothing until answered.
    waiting: bool,
    /// The protocol version the implementation keeps for it (as the server
    /// does, from [`Context::version`] after each step); checked against
    /// HELLO's rule in `hello`.
    version: u16,
}

struct World {
    limits: Limits,
    table: LockTable,
    model: Model,
    conns: Vec<Conn>,
    next_number: usize,
    start_ms: u64,
    now_ms: u64,
    /// Tokens granted so far (the last few), for RELEASE and EXTEND.
    tokens_seen: Vec<u64>,
    /// How many of [`NAMES`] this run uses: fewer names, more contention.
    names: usize,
    /// This run mostly takes SESSION holds and closes connections more
    /// often, so that closes release several holds with waiters.
    session_heavy: bool,
    /// The operation under way, for messages.
    op: usize,
    tally: Tally,
}

impl World {
    fn new(src: &mut impl Source) -> World {
        let limits = Limits {
            name_len_max: 8,
            owner_len_max: 8,
            lock_ttl_ms_default: 40,
            lock_ttl_ms_max: 300,
            // Apart from the default, so the model tells them apart.
            legacy_ttl_ms: 120,
            wait_ms_max: [200, 200, WAIT_MS_UNBOUNDED, 0][src.below(4) as usize],
            locks_max: [1, 2, 3, 100][src.below(4) as usize],
            ..Limits::default()
        };
        limits.validate().expect("the check's limits are valid");
        let token_seed = [0, 1, 1 << 60, src.next_u64() >> 2][src.below(4) as usize];
        let start_ms = [0, 1_000_000, 1 << 40][src.below(3) as usize];
        let mut world = World {
            table: LockTable::new(limits.clone(), token_seed, start_ms),
            model: Model::new(limits.clone(), token_seed),
            limits,
            conns: Vec::new(),
            next_number: 0,
            start_ms,
            now_ms: start_ms,
            tokens_seen: Vec::new(),
            names: 1 + src.below(NAMES.len() as u64) as usize,
            session_heavy: src.one_in(3),
            op: 0,
            tally: Tally::default(),
        };
        world.open();
        world.open();
        world
    }

    fn random_op(&mut self, src: &mut impl Source) {
        // Every operation takes at least one choice from `src`, so a run
        // recorded as bytes replays to its last operation (a replay stops
        // when the bytes run out).
        if self.conns.is_empty() {
            self.open();
        }
        let c = src.below(self.conns.len() as u64) as usize;
        match src.below(32) {
            0..=2 => self.advance(src),
            3 if self.conns.len() < CONNECTIONS_MAX => self.open(),
            4 => self.close(c, src),
            5 if self.session_heavy => self.close(c, src),
            _ if self.conns[c].waiting => {
                if src.one_in(4) {
                    self.advance(src)
                }
            }
            5..=13 => self.acquire(c, src),
            14..=17 => self.release(c, src),
            18..=20 => self.extend(c, src),
            21..=24 => self.legacy(c, src),
            25 => self.ping(c, src),
            26 => self.hello(c, src),
            27 => self.bad_frame(c, src),
            _ => self.advance(src),
        }
    }

    fn open(&mut self) {
        let number = self.next_number;
        self.next_number += 1;
        let session = self.table.open_session(number as u64);
        self.conns.push(Conn {
            number,
            session,
            input: ConnBuffer::with_capacity(CONN_INPUT_BUFFER_SIZE),
            output: ConnBuffer::with_capacity(CONN_OUTPUT_BUFFER_SIZE),
            waiting: false,
            version: execute::VERSION_BEFORE_HELLO,
        });
    }

    /// The connection goes away, sometimes in the middle of a frame.
    fn close(&mut self, c: usize, src: &mut impl Source) {
        if src.one_in(4) && !self.conns[c].waiting {
            let mut frame = Vec::new();
            Request::Ping.encode_to_vec(&mut frame);
            let cut = 1 + src.below(frame.len() as u64 - 1) as usize;
            assert_eq!(self.send(c, &frame[..cut], cut), Ok(Step::NeedMore));
        }
        self.drop_conn(c);
    }

    fn drop_conn(&mut self, c: usize) {
        self.tally.closes += 1;
        let conn = self.conns.swap_remove(c);
        self.table.close_session(conn.session, self.now_ms);
        self.model.close(conn.number, self.now_ms);
        self.deliver_later_answers();
    }

    fn acquire(&mut self, c: usize, src: &mut impl Source) {
        let name = self.pick_name(src);
        // Each connection its own owner, mostly, in SESSION-heavy runs: one
        // connection gathers several holds.
        let owner = match self.session_heavy && !src.one_in(4) {
            true => OWNERS[self.conns[c].number % OWNERS.len()],
            false => pick_owner(src),
        };
        let ttl_ms = match self.session_heavy && !src.one_in(4) {
            true => self.limits.lock_ttl_ms_max - src.below(100) as u32,
            false => self.pick_ms(src, self.limits.lock_ttl_ms_max),
        };
        let wait_ms = if src.one_in(2) {
            0
        } else {
            self.pick_ms(src, self.limits.wait_ms_max)
        };
        let flags = match src.below(32) {
            0 => src.byte(),
            1..=3 => protocol::FLAG_WAIT_FOREVER | (src.byte() & protocol::FLAG_SESSION),
            _ if self.session_heavy => protocol::FLAG_SESSION,
            4..=10 => protocol::FLAG_SESSION,
            _ => 0,
        };
        let request = Request::Acquire(Acquire {
            name,
            owner,
            ttl_ms,
            wait_ms,
            flags,
        });
        let number = self.conns[c].number;
        let expected = self
            .model
            .acquire(number, name, owner, ttl_ms, wait_ms, flags, self.now_ms);
        self.native(c, &request, expected, src);
    }

    fn release(&mut self, c: usize, src: &mut impl Source) {
        let name = self.pick_name(src);
        let owner = self.pick_owner_of(name, src);
        let token = self.pick_token(name, src);
        let expected = self.model.release(name, owner, Some(token), self.now_ms);
        let request = Request::Release { name, owner, token };
        self.native(c, &request, expected, src);
    }

    fn extend(&mut self, c: usize, src: &mut impl Source) {
        let name = self.pick_name(src);
        let owner = self.pick_owner_of(name, src);
        let token = self.pick_token(name, src);
        let ttl_ms = self.pick_ms(src, self.limits.lock_ttl_ms_max);
        let expected = self.model.extend(name, owner, token, ttl_ms, self.now_ms);
        let request = Request::Extend {
            name,
            owner,
            token,
            ttl_ms,
        };
        self.native(c, &request, expected, src);
    }

    /// A request of the original protocol: try-acquire with
    /// `legacy_ttl_ms`, release by owner alone, health.
    fn legacy(&mut self, c: usize, src: &mut impl Source) {
        let name: &[u8] = if src.one_in(32) {
            &[b'x'; 300]
        } else {
            self.pick_name(src)
        };
        let owner = pick_owner(src);
        let number = self.conns[c].number;
        let (command, expected_status) = match src.below(8) {
            0 => (Command::Health, legacy::STATUS_OK),
            1..=4 => {
                let ttl_ms = self.limits.legacy_ttl_ms;
                let answer = self
                    .model
                    .acquire(number, name, owner, ttl_ms, 0, 0, self.now_ms);
                (Command::Acquire, legacy_status(answer))
            }
            _ => {
                let answer = self.model.release(name, owner, None, self.now_ms);
                (Command::Release, legacy_status(answer))
            }
        };
        let mut frame = Vec::new();
        legacy::encode_request(command, name, owner, &mut frame);
        self.tally.legacy += 1;
        let split = pick_split(src, frame.len());
        let step = self.send(c, &frame, split);
        assert_eq!(
            step,
            Ok(Step::Executed {
                used: frame.len(),
                queued: false
            }),
            "op {}: {command:?} {name:?} {owner:?}",
            self.op
        );
        let (status, message) = self.take_legacy_reply(c);
        assert_eq!(
            status, expected_status,
            "op {}: {command:?} {name:?} {owner:?} answered {status} {message:?}",
            self.op
        );
        self.deliver_later_answers();
    }

    fn ping(&mut self, c: usize, src: &mut impl Source) {
        let uptime_ms = self.now_ms - self.start_ms;
        let mut frame = Vec::new();
        Request::Ping.encode_to_vec(&mut frame);
        let split = pick_split(src, frame.len());
        self.send_executed(c, &frame, split);
        self.expect_reply(
            c,
            Reply::Pong {
                uptime_ms,
                server_version: env!("CARGO_PKG_VERSION").as_bytes(),
            },
        );
    }

    fn hello(&mut self, c: usize, src: &mut impl Source) {
        let version = [0, 1, 2, u16::MAX][src.below(4) as usize];
        let mut frame = Vec::new();
        let client_name = b"check";
        Request::Hello {
            version,
            client_name,
        }
        .encode_to_vec(&mut frame);
        let split = pick_split(src, frame.len());
        let before = self.conns[c].version;
        self.send_executed(c, &frame, split);
        if version == 0 {
            assert_eq!(self.conns[c].version, before, "op {}", self.op);
            self.expect_error(c, ErrorCode::UnsupportedVersion);
            return;
        }
        assert_eq!(
            self.conns[c].version,
            version.min(PROTOCOL_VERSION),
            "op {}",
            self.op
        );
        let limits = &self.limits;
        let reply = Reply::Hello(HelloReply::new(
            version.min(PROTOCOL_VERSION),
            limits,
            env!("CARGO_PKG_VERSION").as_bytes(),
        ));
        self.expect_reply(c, reply);
    }

    /// A frame that cannot be decoded: answered with its error, then the
    /// connection is closed.
    fn bad_frame(&mut self, c: usize, src: &mut impl Source) {
        let frame_size_max = self.limits.frame_size_max;
        let mut frame = Vec::new();
        let (code, legacy_status) = match src.below(5) {
            0 => {
                frame.push(NOT_KINDS[src.below(NOT_KINDS.len() as u64) as usize]);
                frame.extend((0..src.below(8)).map(|_| src.byte()));
                (ErrorCode::UnknownKind, None)
            }
            1 => {
                // The header alone: the size is refused before the body.
                let kinds = [kind::HELLO, kind::PING, kind::ACQUIRE, kind::RELEASE];
                frame.push(kinds[src.below(kinds.len() as u64) as usize]);
                let over = frame_size_max - 2 + src.below(1 << 15) as usize;
                frame.extend_from_slice(&(over.min(u16::MAX as usize) as u16).to_be_bytes());
                (ErrorCode::FrameTooLarge, None)
            }
            2 => {
                frame.push(1 + src.below(3) as u8);
                let half = frame_size_max / 2;
                frame.extend_from_slice(&(half as u16).to_be_bytes());
                frame.extend_from_slice(&(half as u16).to_be_bytes());
                (ErrorCode::FrameTooLarge, Some(legacy::STATUS_INVALID))
            }
            3 => {
                // A PING with a body: longer than its fields.
                let body_len = 1 + src.below(4) as usize;
                frame.extend_from_slice(&[kind::PING, 0, body_len as u8]);
                frame.extend((0..body_len).map(|_| src.byte()));
                (ErrorCode::Protocol, None)
            }
            _ => {
                // An ACQUIRE whose name runs past its body.
                frame.extend_from_slice(&[kind::ACQUIRE, 0, 12]);
                frame.extend_from_slice(&[0; 9]);
                frame.extend_from_slice(&[2 + src.below(200) as u8, b'n', b'o']);
                (ErrorCode::Protocol, None)
            }
        };
        let split = pick_split(src, frame.len());
        let step = self.send(c, &frame, split);
        let error = step.expect_err("an undecodable frame was accepted");
        assert_eq!(error.code(), code, "op {}: {frame:?}", self.op);
        match legacy_status {
            Some(expected) => assert_eq!(self.take_legacy_reply(c).0, expected),
            None => self.expect_error(c, code),
        }
        self.drop_conn(c);
    }

    /// Sends a native request whose answer the model gave as `expected`.
    fn native(&mut self, c: usize, request: &Request<'_>, expected: Answer, src: &mut impl Source) {
        let mut frame = Vec::new();
        request.encode_to_vec(&mut frame);
        let split = pick_split(src, frame.len());
        let step = self.send(c, &frame, split);
        self.count(expected);
        let queued = expected == Answer::Queued;
        let used = frame.len();
        assert_eq!(
            step,
            Ok(Step::Executed { used, queued }),
            "op {}: {request:?}",
            self.op
        );
        if queued {
            assert!(self.conns[c].output.is_empty(), "a queued ACQUIRE answered");
            self.conns[c].waiting = true;
        } else {
            self.check_answer(c, request, expected);
        }
        self.deliver_later_answers();
    }

    fn count(&mut self, answer: Answer) {
        let t = &mut self.tally;
        let counter = match answer {
            Answer::Granted { .. } => &mut t.granted,
            Answer::Busy { .. } => &mut t.busy,
            Answer::Queued => &mut t.queued,
            Answer::Released => &mut t.released,
            Answer::Extended { .. } => &mut t.extended,
            Answer::NotHeld { .. } => &mut t.not_held,
            Answer::Error { .. } => &mut t.errors,
        };
        *counter += 1;
    }

    fn check_answer(&mut self, c: usize, request: &Request<'_>, expected: Answer) {
        let reply = match expected {
            // Version 1 has no flags byte, so it cannot say.
            Answer::Granted {
                token,
                ttl_ms,
                reentered,
            } => Reply::Granted {
                token,
                ttl_ms,
                reentered: (self.conns[c].version >= 2).then_some(reentered),
            },
            Answer::Busy {
                remaining_ms,
                waiters,
            } => {
                // 0 is possible: the hold ends within this millisecond (its
                // expiry includes the rounding millisecond, EXPIRY_ROUNDING_MS).
                Reply::Busy {
                    remaining_ms,
                    waiters,
                }
            }
            Answer::Released => Reply::Released,
            Answer::Extended { ttl_ms } => Reply::Extended { ttl_ms },
            Answer::NotHeld { reason } => {
                self.with_native_reply(c, |reply, op| match reply {
                    Reply::NotHeld { reason: got } => {
                        assert_eq!(got as u8, reason, "op {op}: {request:?}")
                    }
                    other => panic!("op {op}: {request:?} answered {other:?}, not NOT_HELD"),
                });
                return;
            }
            Answer::Error { code } => {
                self.expect_error(c, ErrorCode::from_u16(code));
                return;
            }
            Answer::Queued => unreachable!("checked by the caller"),
        };
        if let Reply::Granted { token, .. } = reply {
            self.saw_grant(token);
        }
        self.expect_reply(c, reply);
    }

    /// Appends `frame` to the connection's input in two reads (split at
    /// `split`) and steps after each, as the server does after each read.
    fn send(&mut self, c: usize, frame: &[u8], split: usize) -> Result<Step, DecodeError> {
        let (first, second) = frame.split_at(split);
        let mut result = Ok(Step::NeedMore);
        for read in [first, second] {
            match result {
                _ if read.is_empty() => continue,
                Ok(Step::NeedMore) => {}
                Err(_) => break,
                Ok(executed) => panic!("op {}: {executed:?} before the frame's end", self.op),
            }
            let conn = &mut self.conns[c];
            assert!(conn.input.push(read), "input buffer full");
            let mut ctx = Context {
                table: &mut self.table,
                session: conn.session,
                version: conn.version,
                now_ms: self.now_ms,
                uptime_ms: self.now_ms - self.start_ms,
            };
            assert!(conn.output.free_space() >= REPLY_SIZE_MAX);
            result = execute::step(conn.input.unread(), &mut ctx, &mut conn.output);
            conn.version = ctx.version;
            match result {
                Ok(Step::Executed { used, .. }) => {
                    assert!(
                        used <= conn.input.len(),
                        "used {used} > {}",
                        conn.input.len()
                    );
                    conn.input.consume(used);
                }
                Ok(Step::NeedMore) => {
                    assert!(
                        conn.output.is_empty(),
                        "op {}: reply without a frame",
                        self.op
                    );
                }
                Err(_) => {}
            }
        }
        result
    }

    fn send_executed(&mut self, c: usize, frame: &[u8], split: usize) {
        let step = self.send(c, frame, split);
        let used = frame.len();
        let expected = Ok(Step::Executed {
            used,
            queued: false,
        });
        assert_eq!(step, expected, "op {}: {frame:?}", self.op);
    }

    /// Decodes the one native reply the connection has and hands it to
    /// `check` (with the operation number), then consumes it.
    fn with_native_reply(&mut self, c: usize, check: impl FnOnce(Reply<'_>, usize)) {
        let output = &mut self.conns[c].output;
        let unread = output.unread();
        let (reply, used) = match protocol::decode_reply(unread) {
            Ok(Some(decoded)) => decoded,
            other => panic!(
                "op {}: no reply decodes from {unread:?}: {other:?}",
                self.op
            ),
        };
        assert_eq!(used, unread.len(), "op {}: more than one reply", self.op);
        check(reply, self.op);
        output.consume(used);
    }

    fn take_legacy_reply(&mut self, c: usize) -> (u8, Vec<u8>) {
        let output = &mut self.conns[c].output;
        let unread = output.unread();
        let Some((status, message, used)) = legacy::decode_reply(unread) else {
            panic!("op {}: no legacy reply in {unread:?}", self.op);
        };
        assert_eq!(used, unread.len(), "op {}: more than one reply", self.op);
        let message = message.to_vec();
        output.consume(used);
        (status, message)
    }

    fn expect_reply(&mut self, c: usize, expected: Reply<'_>) {
        self.with_native_reply(c, |reply, op| assert_eq!(reply, expected, "op {op}"));
    }

    fn expect_error(&mut self, c: usize, code: ErrorCode) {
        self.with_native_reply(c, |reply, op| match reply {
            Reply::Error { code: got, message } => {
                let text = String::from_utf8_lossy(message);
                assert_eq!(got, code, "op {op}: {text}");
                assert!(!message.is_empty(), "op {op}: ERROR without a message");
            }
            other => panic!("op {op}: {other:?} instead of ERROR {code:?}"),
        });
    }

    /// Moves time forward, tick by tick to each deadline or in one jump.
    fn advance(&mut self, src: &mut impl Source) {
        let step_ms = match src.below(8) {
            0 => 0,
            1..=2 => src.below(4),
            3..=5 if self.session_heavy => src.below(10),
            3..=5 => src.below(60),
            6 => src.below(400),
            _ => self
                .model
                .next_deadline()
                .map_or(1, |d| (d + src.below(3)).saturating_sub(self.now_ms + 1)),
        };
        let target_ms = self.now_ms + step_ms;
        if src.one_in(3) {
            self.now_ms = target_ms;
            self.advance_to_now();
            return;
        }
        // The server sleeps until the table's next deadline (checked in
        // `check_state` to be no later than the real one) and advances there.
        while let Some(next) = self.table.next_deadline() {
            let next = next.max(self.now_ms + 1);
            if next > target_ms {
                break;
            }
            self.now_ms = next;
            self.advance_to_now();
        }
        self.now_ms = target_ms;
        self.advance_to_now();
    }

    fn advance_to_now(&mut self) {
        self.table.advance(self.now_ms);
        self.model.advance(self.now_ms);
        self.deliver_later_answers();
    }

    /// The table's events against the model's later answers, in order.
    fn deliver_later_answers(&mut self) {
        let expected = self.model.take_later();
        let events = self.table.events().to_vec();
        self.table.clear_events();
        assert_eq!(
            events.len(),
            expected.len(),
            "op {} at {} ms: events {events:?}, model {expected:?}",
            self.op,
            self.now_ms
        );
        for (event, (number, later)) in events.into_iter().zip(expected) {
            let conn = self
                .conns
                .iter_mut()
                .find(|conn| conn.number == number)
                .expect("a later answer for an open connection");
            assert_eq!(event.session, conn.session, "op {}", self.op);
            assert_eq!(event.tag, number as u64, "op {}", self.op);
            assert!(conn.waiting, "op {}: answered twice: {event:?}", self.op);
            conn.waiting = false;
            let got = match event.kind {
                EventKind::Granted { token, ttl_ms } => Later::Granted { token, ttl_ms },
                EventKind::TimedOut { waited_ms } => Later::TimedOut { waited_ms },
            };
            assert_eq!(got, later, "op {} at {} ms", self.op, self.now_ms);
            match later {
                Later::Granted { token, .. } => {
                    self.tally.granted_later += 1;
                    self.saw_grant(token);
                }
                Later::TimedOut { .. } => self.tally.timed_out += 1,
            }
        }
    }

    /// Records a granted token for later RELEASE and EXTEND. The values
    /// are checked against the model, whose tokens come from one counter:
    /// strictly increasing in grant order, a same-owner grant repeating its
    /// hold's token.
    fn saw_grant(&mut self, token: u64) {
        assert_ne!(token, 0, "op {}: token 0", self.op);
        if !self.tokens_seen.contains(&token) {
            self.tokens_seen.push(token);
            if self.tokens_seen.len() > 64 {
                self.tokens_seen.remove(0);
            }
        }
    }

    fn check_state(&mut self) {
        self.table.invariants();
        let (table_next, model_next) = (self.table.next_deadline(), self.model.next_deadline());
        assert_eq!(table_next.is_some(), model_next.is_some(), "op {}", self.op);
        if let (Some(table_next), Some(model_next)) = (table_next, model_next) {
            assert!(
                (self.now_ms..=model_next).contains(&table_next),
                "op {}: next deadline {table_next}, not in {}..={model_next}",
                self.op,
                self.now_ms
            );
        }
        assert_eq!(
            self.table.len(),
            self.model.lock_count(),
            "op {}: locks",
            self.op
        );
        assert_eq!(
            self.table.waiter_count(),
            self.model.waiter_count(),
            "op {}: waiters",
            self.op
        );
        assert_eq!(
            self.table.next_token(),
            self.model.next_token(),
            "op {}",
            self.op
        );
        for conn in &self.conns {
            let waiting = self.model.is_waiting(conn.number);
            assert_eq!(
                conn.waiting, waiting,
                "op {}: conn {}",
                self.op, conn.number
            );
            assert_eq!(
                self.table.is_waiting(conn.session),
                waiting,
                "op {}",
                self.op
            );
            assert!(conn.output.is_empty() && conn.input.is_empty());
        }
    }

    /// Closes every connection, then lets every hold expire: nothing may
    /// be left.
    fn finish(mut self) -> Tally {
        while !self.conns.is_empty() {
            self.drop_conn(self.conns.len() - 1);
            self.check_state();
        }
        self.now_ms += self.limits.lock_ttl_ms_max as u64 + self.limits.wait_ms_max as u64 + 1;
        self.advance_to_now();
        self.check_state();
        assert!(self.table.is_empty(), "locks left after every TTL ran out");
        assert_eq!(self.model.lock_count(), 0);
        self.tally
    }

    fn pick_ms(&self, src: &mut impl Source, max: u32) -> u32 {
        match src.below(64) {
            0..=3 => 0,
            4 => max,
            5 => max.saturating_add(1),
            6 => u32::MAX,
            7..=23 => 1 + src.below(4) as u32,
            _ => 1 + src.below(120) as u32,
        }
    }

    fn pick_name(&self, src: &mut impl Source) -> &'static [u8] {
        match src.below(64) {
            0 => b"",
            1 => TOO_LONG,
            n => NAMES[n as usize % self.names],
        }
    }

    /// Mostly the holder, so that RELEASE and EXTEND often succeed.
    fn pick_owner_of(&self, name: &[u8], src: &mut impl Source) -> &'static [u8] {
        let holder = self.model.owner_of(name);
        match OWNERS.iter().find(|&&owner| Some(owner) == holder) {
            Some(owner) if src.one_in(2) => owner,
            _ => pick_owner(src),
        }
    }

    fn pick_token(&self, name: &[u8], src: &mut impl Source) -> u64 {
        match src.below(8) {
            0..=3 => self.model.token_of(name).unwrap_or(0),
            4..=5 if !self.tokens_seen.is_empty() => {
                self.tokens_seen[src.below(self.tokens_seen.len() as u64) as usize]
            }
            6 => 0,
            _ => src.next_u64(),
        }
    }
}

fn pick_owner(src: &mut impl Source) -> &'static [u8] {
    match src.below(64) {
        0 => b"",
        1 => TOO_LONG,
        n => OWNERS[n as usize % OWNERS.len()],
    }
}

/// Where a frame is cut into two reads (its length: not cut).
fn pick_split(src: &mut impl Source, len: usize) -> usize {
    if src.one_in(4) {
        1 + src.below(len as u64) as usize
    } else {
        len
    }
}

/// The original protocol's status for the model's answer to a try-acquire
/// or a release by owner.
fn legacy_status(answer: Answer) -> u8 {
    match answer {
        Answer::Granted { .. } | Answer::Released => legacy::STATUS_OK,
        Answer::Busy { .. } => legacy::STATUS_TIMEOUT,
        Answer::NotHeld { .. } => legacy::STATUS_ERROR,
        Answer::Error { code } if code == super::model::CODE_LIMIT => legacy::STATUS_ERROR,
        Answer::Error { .. } => legacy::STATUS_INVALID,
        other => unreachable!("{other:?} for the original protocol"),
    }
}
