//! The load engine: a few threads, each a mio `Poll` driving many
//! non-blocking connections, closed-loop, with latencies in HDR histograms.
//!
//! Model. A run has `conns` connections; each connection has `lanes`
//! (1 normally, 16 when pipelining). A lane is one client's lock loop:
//!
//! ```text
//!   Idle → Acquiring ─granted→ [Holding ─hold timer→] Releasing ─reply→ Idle …
//!              │  └─not granted (Redis, wait left)→ PollSleep ─poll timer→ Acquiring
//!              └─not granted, no wait left→ Idle (attempt failed)
//!   any state → Done (budget spent, or the measured window closed)
//! ```
//!
//! A lane has at most one request in flight, so a connection has at most
//! `lanes` in flight, and both servers answer in request order: a FIFO of
//! lane indices per connection matches replies to requests. Output and input
//! buffers are fixed at connect ([`ConnBuffer`]) and sized so that every
//! lane's request fits: nothing in the request loop allocates.
//!
//! Measuring. A timed run has a warm-up, then the measured window
//! `[measure_start, measure_end)`, then a drain (no new acquisitions, holds
//! released, queued acquisitions answered) so the server is left empty.
//! Only replies that arrive inside the window count. An acquisition's latency
//! is from the start of the attempt (first request sent) to the grant,
//! across Redis poll retries. Attempts still waiting when the window closes
//! are recorded at their age then (a lower bound): a starved client shows up
//! in p99 instead of vanishing from it.
//!
//! Checks (cheap, always on). For shared lock names the engine counts, per
//! lock, holders as the clients see them: +1 on a grant, −1 when the release
//! is sent (a correct server grants the next holder only after it has read
//! that release). A grant that finds another holder is a violation. It also
//! records each attempt's start order and checks that a grant goes to the
//! longest-waiting client on that lock ("FIFO grants"). Because that needs
//! one view of the order, shared-lock runs use one thread. A release answered
//! "not held" (expired or stolen) is counted as a lost release.
//!
//! Handoffs, in the usual lock terminology: a grant that passes the lock to a
//! client that was waiting for it, as opposed to barging (a client that
//! never waited takes the lock while others wait). A Redis client waited if
//! a SET of this attempt was refused; a distlockd client waited if its
//! ACQUIRE was queued, seen from here as another client's grant arriving
//! during the attempt (the server queues FIFO, so nobody barges past it).
//! Grants to a different client than the previous one, barging included,
//! are counted too ("changed hands").

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::resp;
use crate::protocol::{self, Acquire, ConnBuffer, Reply, Request};

/// Longest lock name the engine builds (`bench:{label}:{run}:{thread}.{n}`).
const NAME_LEN_MAX: usize = 64;
/// Owner ids (`{client_id}:{counter}`, about 20 bytes) and Redis tokens
/// (32 hex digits, like redis-py's `uuid1().hex`).
const OWNER_LEN_MAX: usize = 40;
const REDIS_TOKEN_LEN: usize = 32;
/// Largest native request: ACQUIRE with the longest name and owner.
const NATIVE_REQUEST_LEN_MAX: usize = 3 + 9 + 2 + NAME_LEN_MAX + OWNER_LEN_MAX;
/// Input buffer: room for the longest Redis error line plus pipelined replies.
const INPUT_BUFFER_SIZE_MIN: usize = 2 * resp::REPLY_LINE_LEN_MAX;
/// Readiness events taken per poll.
const POLL_EVENTS_MAX: usize = 1024;
/// Latencies are recorded in nanoseconds, up to an hour, 3 significant digits.
const LATENCY_NS_MAX: u64 = 3_600_000_000_000;
/// How long the drain after a timed window may take before connections are
/// simply closed (then the server drops the queued waits; held locks expire
/// by TTL; names are unique per run so nothing later trips over them).
const DRAIN_DURATION_MAX: Duration = Duration::from_secs(2);
/// Connect timeout per connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const _: () = assert!(NATIVE_REQUEST_LEN_MAX <= crate::protocol::FRAME_SIZE_CEILING);

/// The protocol a target speaks.
#[derive(Clone, Copy, Debug)]
pub enum Proto {
    /// distlockd's native protocol; blocking acquire waits on the server.
    Native,
    /// Redis: `SET NX PX`, release by EVALSHA of the compare-and-delete
    /// script `sha`, blocking acquire by polling every `poll`.
    Redis {
        sha: [u8; resp::SCRIPT_SHA_LEN],
        poll: Duration,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub proto: Proto,
}

/// Which names lanes lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Names {
    /// Each lane its own name, again and again (uncontended).
    PerLane,
    /// A name never used before for every acquisition.
    Fresh,
    /// Like `Fresh`, but every name exactly `len` bytes
    /// (`m{thread}.{n}`, n zero-padded), for memory per name length.
    FreshSized { len: usize },
    /// Lane `i` locks name `i % locks`, shared with the other lanes.
    Shared { locks: usize },
}

/// When a run ends.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// Warm up, then measure for a fixed time.
    Timed { warmup: Duration, measure: Duration },
    /// Start `acquisitions` attempts in all, each lane at most
    /// `per_lane_max`; fail if not done within `deadline`.
    Count {
        acquisitions: u64,
        per_lane_max: u64,
        deadline: Duration,
    },
}

/// What each lane does.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Part of every lock name: `bench:{label}:{run_id}:…`.
    pub label: &'static str,
    /// Distinguishes runs, so locks left by one never meet the next.
    pub run_id: u64,
    pub conns: usize,
    pub lanes_per_conn: usize,
    pub names: Names,
    pub ttl_ms: u32,
    /// How long an acquisition may wait (server-side for distlockd, polling
    /// deadline for Redis); 0 tries once.
    pub wait_ms: u32,
    /// How long a grant is held before the release is sent.
    pub hold: Duration,
    /// Release after the hold; `false` keeps every lock (memory fill).
    pub release: bool,
    pub stop: Stop,
    /// Load threads (shared-name runs always use one).
    pub threads: usize,
    /// CPUs (a taskset list) the load threads pin themselves to; `None`
    /// lets them float. See [`super::affinity`].
    pub load_cpus: Option<String>,
}

/// Figures of one run, merged over threads.
#[derive(Clone, Debug)]
pub struct RunStats {
    /// Attempts that ended (granted or not) inside the window.
    pub attempts: u64,
    pub grants: u64,
    /// Attempts that ended without the lock (busy, timed out).
    pub not_granted: u64,
    /// Completed lock cycles: acquire + release (or grants when not
    /// releasing) whose last reply arrived inside the window.
    pub cycles: u64,
    /// Grants to a waiting client (see module docs), other than the
    /// previous holder.
    pub handoffs: u64,
    /// Grants to a different client than the previous grant, barging
    /// included.
    pub changed_hands: u64,
    pub fifo_checked: u64,
    pub fifo_ok: u64,
    /// Grants seen while another client still held the lock.
    pub violations: u64,
    /// Releases answered "not held".
    pub lost_releases: u64,
    /// Acquisition latency in ns (attempt start to grant; open waits at
    /// window end at their age).
    pub acquire_ns: Histogram<u64>,
    /// The measured window (timed), or start to finish (counted).
    pub window: Duration,
    /// Server CPU seconds inside the window, when a server pid was given.
    pub server_cpu_seconds: Option<f64>,
    /// This process's CPU seconds over the same span (the load threads;
    /// the coordinating thread sleeps), to show whether the load generator
    /// was the bottleneck.
    pub load_cpu_seconds: Option<f64>,
    /// The drain did not finish within [`DRAIN_DURATION_MAX`].
    pub drain_incomplete: bool,
}

impl RunStats {
    fn new() -> RunStats {
        RunStats {
            attempts: 0,
            grants: 0,
            not_granted: 0,
            cycles: 0,
            handoffs: 0,
            changed_hands: 0,
            fifo_checked: 0,
            fifo_ok: 0,
            violations: 0,
            lost_releases: 0,
            acquire_ns: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)
                .expect("static histogram bounds are valid"),
            window: Duration::ZERO,
            server_cpu_seconds: None,
            load_cpu_seconds: None,
            drain_incomplete: false,
        }
    }

    fn merge(&mut self, other: &RunStats) {
        self.attempts += other.attempts;
        self.grants += other.grants;
        self.not_granted += other.not_granted;
        self.cycles += other.cycles;
        self.handoffs += other.handoffs;
        self.changed_hands += other.changed_hands;
        self.fifo_checked += other.fifo_checked;
        self.fifo_ok += other.fifo_ok;
        self.violations += other.violations;
        self.lost_releases += other.lost_releases;
        self.drain_incomplete |= other.drain_incomplete;
        self.acquire_ns
            .add(&other.acquire_ns)
            .expect("histograms share bounds");
    }

    pub fn per_second(&self, count: u64) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 { count as f64 / secs } else { 0.0 }
    }
}

/// Times shared by all threads of a run.
#[derive(Clone, Copy, Debug)]
struct Window {
    measure_start: Instant,
    measure_end: Instant,
    /// Timed: end of the drain. Counted: the deadline.
    hard_end: Instant,
    timed: bool,
}

/// Runs a workload against a target. With `server_pid`, samples the
/// server's CPU time at the window's edges.
pub fn run(target: &Target, wl: &Workload, server_pid: Option<u32>) -> Result<RunStats, String> {
    assert!(wl.conns > 0 && wl.lanes_per_conn > 0);
    if let Names::Shared { locks } = wl.names {
        assert!(locks > 0);
        assert_eq!(
            wl.lanes_per_conn, 1,
            "a queued distlockd ACQUIRE holds up its connection's later requests"
        );
    }
    let threads = match wl.names {
        Names::Shared { .. } => 1,
        _ => wl.threads.clamp(1, wl.conns),
    };
    let total_lanes = (wl.conns * wl.lanes_per_conn) as u64;
    let ready = Arc::new(Barrier::new(threads + 1));
    let window = Arc::new(OnceLock::new());
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let conns = wl.conns * (t + 1) / threads - wl.conns * t / threads;
        let lanes = (conns * wl.lanes_per_conn) as u64;
        let budget = match wl.stop {
            Stop::Timed { .. } => u64::MAX,
            Stop::Count { acquisitions, .. } => {
                let before = wl.conns * t / threads * wl.lanes_per_conn;
                let share = |lanes_before: u64| acquisitions * lanes_before / total_lanes;
                share(before as u64 + lanes) - share(before as u64)
            }
        };
        let ctx = ThreadCtx {
            target: *target,
            wl: wl.clone(),
            thread: t,
            conns,
            budget,
            ready: ready.clone(),
            window: window.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("loadtest-{t}"))
            .spawn(move || thread_main(ctx))
            .map_err(|e| format!("cannot start a load thread: {e}"))?;
        handles.push(handle);
    }
    ready.wait(); // every thread has connected (or failed to)
    let start = Instant::now();
    let w = match wl.stop {
        Stop::Timed { warmup, measure } => Window {
            measure_start: start + warmup,
            measure_end: start + warmup + measure,
            hard_end: start + warmup + measure + DRAIN_DURATION_MAX + wl.hold,
            timed: true,
        },
        Stop::Count { deadline, .. } => Window {
            measure_start: start,
            measure_end: start + deadline,
            hard_end: start + deadline,
            timed: false,
        },
    };
    window.set(w).expect("window is set once");
    ready.wait(); // go
    let mut cpu = None;
    let mut load_cpu = None;
    if let Some(pid) = server_pid {
        let own = std::process::id();
        if w.timed {
            sleep_until(w.measure_start);
            let before = super::procstat::cpu_seconds(pid)?;
            let load_before = super::procstat::cpu_seconds(own)?;
            sleep_until(w.measure_end);
            cpu = Some(super::procstat::cpu_seconds(pid)? - before);
            load_cpu = Some(super::procstat::cpu_seconds(own)? - load_before);
        } else {
            cpu = Some(-super::procstat::cpu_seconds(pid)?);
        }
    }
    let mut merged = RunStats::new();
    let mut first_error = None;
    let mut finished = start;
    for handle in handles {
        match handle.join() {
            Ok(Ok((stats, done_at))) => {
                merged.merge(&stats);
                finished = finished.max(done_at);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert_with(|| "a load thread panicked".to_string());
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if let (Some(pid), Some(c), false) = (server_pid, cpu, w.timed) {
        cpu = Some(c + super::procstat::cpu_seconds(pid)?);
    }
    merged.window = if w.timed {
        w.measure_end - w.measure_start
    } else {
        finished - start
    };
    merged.server_cpu_seconds = cpu;
    merged.load_cpu_seconds = load_cpu;
    Ok(merged)
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

struct ThreadCtx {
    target: Target,
    wl: Workload,
    thread: usize,
    conns: usize,
    budget: u64,
    ready: Arc<Barrier>,
    window: Arc<OnceLock<Window>>,
}

fn thread_main(ctx: ThreadCtx) -> Result<(RunStats, Instant), String> {
    let pinned = match &ctx.wl.load_cpus {
        Some(cpus) => super::affinity::pin_current_thread(cpus),
        None => Ok(()),
    };
    // A panic before the barriers would leave the coordinator waiting
    // forever; turn it into an error that reaches them.
    let engine = pinned.and_then(|()| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Engine::connect(&ctx)))
            .unwrap_or_else(|_| Err("a load thread panicked while connecting".to_string()))
    });
    ctx.ready.wait();
    ctx.ready.wait();
    let window = *ctx.window.get().expect("window set before go");
    let mut engine = engine?;
    engine.window = window;
    engine.run()?;
    Ok((engine.stats, Instant::now()))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LaneState {
    Idle,
    Acquiring,
    PollSleep,
    Holding,
    Releasing,
    Done,
}

/// One client's lock loop. Fixed-size, no heap.
struct Lane {
    conn: u32,
    state: LaneState,
    /// Shared-lock index (Names::Shared), else 0.
    lock: u32,
    name: [u8; NAME_LEN_MAX],
    name_len: u8,
    owner: [u8; OWNER_LEN_MAX],
    owner_len: u8,
    token: u64,
    attempt_start: Instant,
    attempt_seq: u64,
    deadline: Instant,
    attempts: u64,
    timer_generation: u32,
    /// A request of this attempt was refused (Redis SET answered nil).
    refused: bool,
    /// The lock's grant count when this attempt started (shared names).
    lock_grants_at_start: u64,
}

impl Lane {
    /// A lane with nothing in flight, for connection `conn` and lock `lock`.
    fn idle(conn: u32, lock: u32, now: Instant) -> Lane {
        Lane {
            conn,
            state: LaneState::Idle,
            lock,
            name: [0; NAME_LEN_MAX],
            name_len: 0,
            owner: [0; OWNER_LEN_MAX],
            owner_len: 0,
            token: 0,
            attempt_start: now,
            attempt_seq: 0,
            deadline: now,
            attempts: 0,
            timer_generation: 0,
            refused: false,
            lock_grants_at_start: 0,
        }
    }
}

impl Lane {
    fn name(&self) -> &[u8] {
        &self.name[..self.name_len as usize]
    }
    fn owner(&self) -> &[u8] {
        &self.owner[..self.owner_len as usize]
    }
    fn waiting(&self) -> bool {
        matches!(self.state, LaneState::Acquiring | LaneState::PollSleep)
    }
}

struct Conn {
    stream: TcpStream,
    input: ConnBuffer,
    output: ConnBuffer,
    /// Lanes with a request sent or queued, in request order.
    in_flight: VecDeque<u32>,
    dirty: bool,
    /// Prefix of this connection's owner ids.
    client_id: [u8; 24],
    client_id_len: u8,
    owner_counter: u64,
}

/// Per shared lock: holders as the clients see them, and the last grantee.
#[derive(Clone, Copy)]
struct SharedLock {
    holders: u32,
    last_grantee: u32,
    /// Grants of this lock so far (in and out of the window).
    grants: u64,
}

/// A lane's reply, decoded and copied out of the input buffer.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Granted { token: u64 },
    NotGranted,
    Released,
    NotHeld,
}

struct Engine {
    target: Target,
    wl: Workload,
    thread: usize,
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    lanes: Vec<Lane>,
    /// Output space reserved per request; every lane's fits at once.
    request_len_max: usize,
    shared: Vec<SharedLock>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    dirty: Vec<u32>,
    window: Window,
    stopping: bool,
    window_closed: bool,
    active_lanes: usize,
    budget: u64,
    per_lane_max: u64,
    next_seq: u64,
    fresh_counter: u64,
    rng: u64,
    stats: RunStats,
}

impl Engine {
    fn connect(ctx: &ThreadCtx) -> Result<Engine, String> {
        let wl = &ctx.wl;
        let poll = Poll::new().map_err(|e| format!("cannot create a poll: {e}"))?;
        let request_len_max = match ctx.target.proto {
            Proto::Native => NATIVE_REQUEST_LEN_MAX,
            Proto::Redis { .. } => resp::lock_command_len_max(NAME_LEN_MAX, REDIS_TOKEN_LEN),
        };
        let output_size = wl.lanes_per_conn * request_len_max;
        let input_size = INPUT_BUFFER_SIZE_MIN.max(wl.lanes_per_conn * 64);
        let mut conns = Vec::with_capacity(ctx.conns);
        for c in 0..ctx.conns {
            let mut stream = connect(ctx.target.addr)?;
            poll.registry()
                .register(
                    &mut stream,
                    Token(c),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| format!("cannot register a socket: {e}"))?;
            let mut client_id = [0u8; 24];
            let len = {
                let mut w = &mut client_id[..];
                let _ = write!(w, "lt{:x}.{}.{}", std::process::id(), ctx.thread, c);
                24 - w.len()
            };
            conns.push(Conn {
                stream,
                input: ConnBuffer::with_capacity(input_size),
                output: ConnBuffer::with_capacity(output_size),
                in_flight: VecDeque::with_capacity(wl.lanes_per_conn),
                dirty: false,
                client_id,
                client_id_len: len as u8,
                owner_counter: 0,
            });
        }
        let lane_count = ctx.conns * wl.lanes_per_conn;
        let now = Instant::now();
        let mut lanes = Vec::with_capacity(lane_count);
        for i in 0..lane_count {
            let lock = match wl.names {
                Names::Shared { locks } => (i % locks) as u32,
                _ => 0,
            };
            let mut lane = Lane::idle((i / wl.lanes_per_conn) as u32, lock, now);
            match wl.names {
                Names::PerLane => set_name(&mut lane, wl, format_args!("{}.{i}", ctx.thread)),
                Names::Shared { .. } => set_name(&mut lane, wl, format_args!("{lock}")),
                Names::Fresh | Names::FreshSized { .. } => {}
            }
            lanes.push(lane);
        }
        let shared_locks = match wl.names {
            Names::Shared { locks } => locks,
            _ => 0,
        };
        let per_lane_max = match wl.stop {
            Stop::Count { per_lane_max, .. } => per_lane_max,
            Stop::Timed { .. } => u64::MAX,
        };
        Ok(Engine {
            target: ctx.target,
            wl: wl.clone(),
            thread: ctx.thread,
            poll,
            events: Events::with_capacity(POLL_EVENTS_MAX),
            conns,
            lanes,
            request_len_max,
            shared: vec![
                SharedLock {
                    holders: 0,
                    last_grantee: u32::MAX,
                    grants: 0,
                };
                shared_locks
            ],
            timers: BinaryHeap::with_capacity(lane_count + 1),
            dirty: Vec::with_capacity(ctx.conns),
            window: Window {
                measure_start: now,
                measure_end: now,
                hard_end: now,
                timed: false,
            },
            stopping: false,
            window_closed: false,
            active_lanes: lane_count,
            budget: ctx.budget,
            per_lane_max,
            next_seq: 0,
            fresh_counter: 0,
            rng: seed(ctx.thread),
            stats: RunStats::new(),
        })
    }

    fn run(&mut self) -> Result<(), String> {
        let now = Instant::now();
        for l in 0..self.lanes.len() {
            self.start_acquire(l as u32, now);
        }
        self.flush_dirty()?;
        loop {
            let now = Instant::now();
            if self.window.timed && !self.window_closed && now >= self.window.measure_end {
                self.close_window();
            }
            if self.active_lanes == 0 {
                return Ok(());
            }
            if now >= self.window.hard_end {
                if self.window.timed {
                    self.stats.drain_incomplete = true;
                    return Ok(());
                }
                return Err(format!(
                    "{}: the run did not finish in {:.1} s ({} lanes still busy); is the server overloaded?",
                    self.target.addr,
                    (self.window.hard_end - self.window.measure_start).as_secs_f64(),
                    self.active_lanes
                ));
            }
            self.fire_timers(now);
            self.flush_dirty()?;
            let timeout = self.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(format!("poll failed: {e}"));
                }
            }
            let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
            let result = self.handle_events(&events);
            self.events = events;
            result?;
        }
    }

    /// Reads each ready connection and sends its next requests at once: a
    /// reply is timed when its own event is handled (not when the batch
    /// started), and a new request leaves before the rest of the batch is
    /// read, so its timestamp is its send time.
    fn handle_events(&mut self, events: &Events) -> Result<(), String> {
        for event in events.iter() {
            let c = event.token().0;
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                self.read_replies(c, Instant::now())?;
            }
            if event.is_writable() {
                self.mark_dirty(c as u32);
            }
            self.flush_dirty()?;
        }
        Ok(())
    }

    fn poll_timeout(&self, now: Instant) -> Duration {
        let mut at = self.window.hard_end;
        if self.window.timed && !self.window_closed {
            at = at.min(self.window.measure_end);
        }
        if let Some(Reverse((t, _, _))) = self.timers.peek() {
            at = at.min(*t);
        }
        at.saturating_duration_since(now)
    }

    fn counting(&self, now: Instant) -> bool {
        now >= self.window.measure_start && now < self.window.measure_end
    }

    /// The window is over: record open waits, stop new acquisitions.
    fn close_window(&mut self) {
        self.window_closed = true;
        self.stopping = true;
        let end = self.window.measure_end;
        for l in 0..self.lanes.len() {
            let lane = &self.lanes[l];
            if lane.waiting() && lane.attempt_start < end {
                let age = (end - lane.attempt_start).as_nanos() as u64;
                self.stats.acquire_ns.saturating_record(age.max(1));
            }
            // A Redis poller simply stops polling; nothing is held.
            if matches!(lane.state, LaneState::PollSleep | LaneState::Idle) {
                self.finish_lane(l as u32);
            }
        }
    }

    fn finish_lane(&mut self, l: u32) {
        let lane = &mut self.lanes[l as usize];
        debug_assert_ne!(lane.state, LaneState::Done);
        lane.state = LaneState::Done;
        self.active_lanes -= 1;
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, l, generation))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let lane = &self.lanes[l as usize];
            if lane.timer_generation != generation {
                continue;
            }
            match lane.state {
                LaneState::Holding => self.send_release(l),
                LaneState::PollSleep => self.send_acquire(l, now),
                _ => {}
            }
        }
    }

    fn arm_timer(&mut self, l: u32, at: Instant) {
        let lane = &mut self.lanes[l as usize];
        lane.timer_generation = lane.timer_generation.wrapping_add(1);
        self.timers.push(Reverse((at, l, lane.timer_generation)));
    }

    /// Starts the lane's next acquisition, or ends the lane.
    fn start_acquire(&mut self, l: u32, now: Instant) {
        let lane = &self.lanes[l as usize];
        if self.stopping || self.budget == 0 || lane.attempts >= self.per_lane_max {
            self.finish_lane(l);
            return;
        }
        self.budget -= 1;
        match self.wl.names {
            Names::Fresh => {
                self.fresh_counter += 1;
                let (n, thread) = (self.fresh_counter, self.thread);
                set_name(
                    &mut self.lanes[l as usize],
                    &self.wl,
                    format_args!("{thread}.{n}"),
                );
            }
            Names::FreshSized { len } => {
                self.fresh_counter += 1;
                let (n, thread) = (self.fresh_counter, self.thread);
                set_sized_name(&mut self.lanes[l as usize], len, thread, n);
            }
            Names::PerLane | Names::Shared { .. } => {}
        }
        self.new_owner(l);
        let seq = self.next_seq;
        self.next_seq += 1;
        let wait = Duration::from_millis(self.wl.wait_ms as u64);
        let lane = &mut self.lanes[l as usize];
        lane.refused = false;
        lane.lock_grants_at_start = self.shared.get(lane.lock as usize).map_or(0, |s| s.grants);
        lane.attempts += 1;
        lane.attempt_start = now;
        lane.attempt_seq = seq;
        lane.deadline = now + wait;
        self.send_acquire(l, now);
    }

    /// A fresh owner id (native) or random token (Redis) per acquisition.
    fn new_owner(&mut self, l: u32) {
        let lane = &mut self.lanes[l as usize];
        match self.target.proto {
            Proto::Native => {
                let conn = &mut self.conns[lane.conn as usize];
                conn.owner_counter += 1;
                let id = &conn.client_id[..conn.client_id_len as usize];
                let mut w = &mut lane.owner[..];
                let _ = w.write_all(id);
                let _ = write!(w, ":{}", conn.owner_counter);
                lane.owner_len = (OWNER_LEN_MAX - w.len()) as u8;
            }
            Proto::Redis { .. } => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let (a, b) = (next_random(&mut self.rng), next_random(&mut self.rng));
                let bits = (a as u128) << 64 | b as u128;
                for i in 0..REDIS_TOKEN_LEN {
                    lane.owner[i] = HEX[((bits >> (4 * i)) & 0xf) as usize];
                }
                lane.owner_len = REDIS_TOKEN_LEN as u8;
            }
        }
    }

    fn send_acquire(&mut self, l: u32, now: Instant) {
        let lane = &mut self.lanes[l as usize];
        lane.state = LaneState::Acquiring;
        let conn = &mut self.conns[lane.conn as usize];
        match self.target.proto {
            Proto::Native => {
                let wait_ms = clamp_u32(lane.deadline.saturating_duration_since(now).as_millis());
                let request = Request::Acquire(Acquire {
                    name: lane.name(),
                    owner: lane.owner(),
                    ttl_ms: self.wl.ttl_ms,
                    wait_ms,
                    flags: 0,
                });
                conn.output
                    .write_with(self.request_len_max, |out| request.encode(out));
            }
            Proto::Redis { .. } => {
                let ttl_ms = self.wl.ttl_ms;
                let (name, token) = (lane.name(), lane.owner());
                conn.output.write_with(self.request_len_max, |out| {
                    resp::encode_set_nx_px(out, name, token, ttl_ms)
                });
            }
        }
        conn.in_flight.push_back(l);
        let c = lane.conn;
        self.mark_dirty(c);
    }

    fn send_release(&mut self, l: u32) {
        let lane = &mut self.lanes[l as usize];
        lane.state = LaneState::Releasing;
        if let Names::Shared { .. } = self.wl.names {
            self.shared[lane.lock as usize].holders -= 1;
        }
        let conn = &mut self.conns[lane.conn as usize];
        match self.target.proto {
            Proto::Native => {
                let request = Request::Release {
                    name: lane.name(),
                    owner: lane.owner(),
                    token: lane.token,
                };
                conn.output
                    .write_with(self.request_len_max, |out| request.encode(out));
            }
            Proto::Redis { sha, .. } => {
                let (name, token) = (lane.name(), lane.owner());
                conn.output.write_with(self.request_len_max, |out| {
                    resp::encode_release(out, &sha, name, token)
                });
            }
        }
        conn.in_flight.push_back(l);
        let c = lane.conn;
        self.mark_dirty(c);
    }

    fn mark_dirty(&mut self, c: u32) {
        let conn = &mut self.conns[c as usize];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(c);
        }
    }

    fn flush_dirty(&mut self) -> Result<(), String> {
        for i in 0..self.dirty.len() {
            let c = self.dirty[i] as usize;
            let conn = &mut self.conns[c];
            conn.dirty = false;
            while !conn.output.is_empty() {
                match conn.stream.write(conn.output.unread()) {
                    Ok(0) => return Err(self.conn_error("the server stopped reading")),
                    Ok(n) => conn.output.consume(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.conn_error(&format!("write failed: {e}"))),
                }
            }
        }
        self.dirty.clear();
        Ok(())
    }

    fn conn_error(&self, what: &str) -> String {
        let server = match self.target.proto {
            Proto::Native => "distlockd",
            Proto::Redis { .. } => "Redis",
        };
        format!("{server} at {}: {what}", self.target.addr)
    }

    /// Reads until the socket is drained, handling every complete reply as
    /// it arrives. A read shorter than the space offered means the socket's
    /// queue was empty: edge-triggered epoll reports the next arrival as a
    /// new event, so the extra read that would return WouldBlock is skipped
    /// (as tokio does). On loopback that is a third of the generator's
    /// syscalls per request.
    fn read_replies(&mut self, c: usize, now: Instant) -> Result<(), String> {
        loop {
            let conn = &mut self.conns[c];
            let spare = conn.input.spare_mut();
            let offered = spare.len();
            if offered == 0 {
                return Err(self.conn_error("a reply does not fit the input buffer"));
            }
            match conn.stream.read(spare) {
                Ok(0) => return Err(self.conn_error("the server closed the connection")),
                Ok(n) => {
                    conn.input.commit(n);
                    self.handle_replies(c, now)?;
                    if n < offered {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.conn_error(&format!("read failed: {e}"))),
            }
        }
    }

    fn handle_replies(&mut self, c: usize, now: Instant) -> Result<(), String> {
        loop {
            let conn = &mut self.conns[c];
            let Some(&l) = conn.in_flight.front() else {
                if conn.input.is_empty() {
                    return Ok(());
                }
                return Err(self.conn_error("a reply arrived with no request in flight"));
            };
            let state = self.lanes[l as usize].state;
            let decoded = match self.target.proto {
                Proto::Native => decode_native(conn.input.unread(), state),
                Proto::Redis { .. } => decode_redis(conn.input.unread(), state),
            };
            let (answer, used) = match decoded {
                Ok(Some(decoded)) => decoded,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.conn_error(&e)),
            };
            conn.input.consume(used);
            conn.in_flight.pop_front();
            self.on_answer(l, answer, now);
        }
    }

    fn on_answer(&mut self, l: u32, answer: Answer, now: Instant) {
        match answer {
            Answer::Granted { token } => self.on_grant(l, token, now),
            Answer::NotGranted => {
                let lane = &self.lanes[l as usize];
                if let Proto::Redis { poll, .. } = self.target.proto {
                    // redis-py: give up if the next try would be past the
                    // deadline, else sleep and try again.
                    let next_try = now + poll;
                    if self.wl.wait_ms > 0 && next_try <= lane.deadline && !self.stopping {
                        self.lanes[l as usize].state = LaneState::PollSleep;
                        self.lanes[l as usize].refused = true;
                        self.arm_timer(l, next_try);
                        return;
                    }
                }
                if self.counting(now) {
                    self.stats.attempts += 1;
                    self.stats.not_granted += 1;
                }
                self.lanes[l as usize].state = LaneState::Idle;
                self.start_acquire(l, now);
            }
            Answer::Released | Answer::NotHeld => {
                if matches!(answer, Answer::NotHeld) {
                    self.stats.lost_releases += 1;
                }
                if self.counting(now) {
                    self.stats.cycles += 1;
                }
                self.lanes[l as usize].state = LaneState::Idle;
                self.start_acquire(l, now);
            }
        }
    }

    fn on_grant(&mut self, l: u32, token: u64, now: Instant) {
        let counting = self.counting(now);
        let lane = &mut self.lanes[l as usize];
        lane.token = token;
        if counting {
            self.stats.attempts += 1;
            self.stats.grants += 1;
            let waited = (now - lane.attempt_start).as_nanos() as u64;
            self.stats.acquire_ns.saturating_record(waited.max(1));
        }
        if let Names::Shared { .. } = self.wl.names {
            self.check_shared_grant(l, counting);
        }
        if !self.wl.release {
            if counting {
                self.stats.cycles += 1;
            }
            self.lanes[l as usize].state = LaneState::Idle;
            self.start_acquire(l, now);
        } else if self.wl.hold > Duration::ZERO && !self.stopping {
            self.lanes[l as usize].state = LaneState::Holding;
            self.arm_timer(l, now + self.wl.hold);
        } else {
            self.send_release(l);
        }
    }

    /// Mutual exclusion, handoff and FIFO bookkeeping for a shared lock.
    fn check_shared_grant(&mut self, l: u32, counting: bool) {
        let lane = &self.lanes[l as usize];
        let lock = lane.lock;
        let shared = &mut self.shared[lock as usize];
        shared.holders += 1;
        if shared.holders > 1 {
            self.stats.violations += 1;
        }
        let waited = match self.target.proto {
            Proto::Native => shared.grants > lane.lock_grants_at_start,
            Proto::Redis { .. } => lane.refused,
        };
        shared.grants += 1;
        let changed_hands = shared.last_grantee != l;
        shared.last_grantee = l;
        if !counting {
            return;
        }
        if changed_hands {
            self.stats.changed_hands += 1;
            if waited {
                self.stats.handoffs += 1;
            }
        }
        // The longest-waiting client on this lock started its attempt first.
        let oldest = self
            .lanes
            .iter()
            .filter(|other| other.lock == lock && other.waiting())
            .map(|other| other.attempt_seq)
            .min();
        self.stats.fifo_checked += 1;
        if oldest == Some(lane.attempt_seq) {
            self.stats.fifo_ok += 1;
        }
    }
}

fn decode_native(buf: &[u8], state: LaneState) -> Result<Option<(Answer, usize)>, String> {
    let Some((reply, used)) = protocol::decode_reply(buf).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let answer = match (state, reply) {
        (LaneState::Acquiring, Reply::Granted { token, .. }) => Answer::Granted { token },
        (LaneState::Acquiring, Reply::Busy { .. } | Reply::Timeout { .. }) => Answer::NotGranted,
        (LaneState::Releasing, Reply::Released) => Answer::Released,
        (LaneState::Releasing, Reply::NotHeld { .. }) => Answer::NotHeld,
        (_, Reply::Error { code, message }) => {
            return Err(format!(
                "answered ERROR {}: {}",
                code.name(),
                String::from_utf8_lossy(message)
            ));
        }
        (state, reply) => return Err(format!("unexpected reply {reply:?} in state {state:?}")),
    };
    Ok(Some((answer, used)))
}

fn decode_redis(buf: &[u8], state: LaneState) -> Result<Option<(Answer, usize)>, String> {
    let Some((value, used)) = resp::parse(buf).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let answer = match (state, value) {
        (LaneState::Acquiring, resp::Value::Simple(b"OK")) => Answer::Granted { token: 0 },
        (LaneState::Acquiring, resp::Value::Nil) => Answer::NotGranted,
        (LaneState::Releasing, resp::Value::Integer(1)) => Answer::Released,
        (LaneState::Releasing, resp::Value::Integer(0)) => Answer::NotHeld,
        (_, resp::Value::Error(message)) => {
            return Err(format!(
                "answered error: {}",
                String::from_utf8_lossy(message)
            ));
        }
        (state, value) => return Err(format!("unexpected reply {value:?} in state {state:?}")),
    };
    Ok(Some((answer, used)))
}

fn set_name(lane: &mut Lane, wl: &Workload, suffix: std::fmt::Arguments<'_>) {
    let mut w = &mut lane.name[..];
    let written = write!(w, "bench:{}:{}:", wl.label, wl.run_id).and_then(|()| w.write_fmt(suffix));
    assert!(written.is_ok(), "lock name over {NAME_LEN_MAX} bytes");
    lane.name_len = (NAME_LEN_MAX - w.len()) as u8;
}

/// `m{thread}.{n}` with n zero-padded to exactly `len` bytes in all. These
/// runs use freshly started servers, so no run id is needed.
fn set_sized_name(lane: &mut Lane, len: usize, thread: usize, n: u64) {
    assert!(len <= NAME_LEN_MAX);
    let mut w = &mut lane.name[..];
    let _ = write!(w, "m{thread}.");
    let width = len - (NAME_LEN_MAX - w.len());
    let written = write!(w, "{n:0width$}");
    let name_len = NAME_LEN_MAX - w.len();
    assert!(
        written.is_ok() && name_len == len,
        "name m{thread}.{n} does not fit {len} bytes"
    );
    lane.name_len = name_len as u8;
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| {
        format!(
            "cannot connect to {addr}: {e}; is the server running (and `ulimit -n` high enough)?"
        )
    })?;
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_nonblocking(true))
        .map_err(|e| format!("{addr}: cannot configure the socket: {e}"))?;
    Ok(TcpStream::from_std(stream))
}

fn clamp_u32(v: u128) -> u32 {
    v.min(u32::MAX as u128) as u32
}

fn seed(thread: usize) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos
        ^ (std::process::id() as u64) << 32
        ^ (thread as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        | 1
}

/// xorshift64*: tokens need to be unique, not secret.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank_lane() -> Lane {
        Lane::idle(0, 0, Instant::now())
    }

    #[test]
    fn sized_names_have_the_exact_length() {
        let mut lane = blank_lane();
        set_sized_name(&mut lane, 12, 0, 1);
        assert_eq!(lane.name(), b"m0.000000001");
        set_sized_name(&mut lane, 32, 63, 50_000_000);
        assert_eq!(lane.name().len(), 32);
        assert!(lane.name().starts_with(b"m63.0000"));
        assert!(lane.name().ends_with(b"50000000"));
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn a_sized_name_never_overflows_silently() {
        set_sized_name(&mut blank_lane(), 6, 0, 1_000_000);
    }

    #[test]
    fn names_carry_the_label_and_run() {
        let wl = Workload {
            label: "uncontended",
            run_id: 42,
            conns: 1,
            lanes_per_conn: 1,
            names: Names::PerLane,
            ttl_ms: 1,
            wait_ms: 0,
            hold: Duration::ZERO,
            release: true,
            stop: Stop::Timed {
                warmup: Duration::ZERO,
                measure: Duration::ZERO,
            },
            threads: 1,
            load_cpus: None,
        };
        let mut lane = blank_lane();
        set_name(&mut lane, &wl, format_args!("{}.{}", 1, 7));
        assert_eq!(lane.name(), b"bench:uncontended:42:1.7");
    }

    #[test]
    fn random_tokens_differ() {
        let mut rng = seed(0);
        let a = next_random(&mut rng);
        let b = next_random(&mut rng);
        assert_ne!(a, b);
    }
}
