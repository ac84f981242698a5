//! The event loop: one thread, a mio `Poll`, a slab of connections.
//!
//! Each turn: poll (timeout = the lock table's next deadline, or zero while
//! some connection has work left over) → fire due timers → for each ready
//! connection: read into its input buffer, decode frames in place, execute
//! them against the table, encode replies into its output buffer → write
//! each connection's replies once (one segment per connection per turn, as
//! Redis does before it sleeps) → close the connections marked closing.
//! WRITABLE readiness is asked for only while replies wait to be written.
//!
//! Fairness: a connection decodes at most [`FRAMES_PER_TURN_MAX`] frames per
//! turn; leftover work puts it on the `ready` list, served next turn after
//! polling (with a zero timeout), so one pipelining client cannot starve the
//! others. Memory: a connection's buffers have fixed capacities, set at
//! accept, but hold storage from a [`BufferPool`] only while bytes are in
//! flight: input before reading (kept while a frame is partial or frames
//! wait behind a queued ACQUIRE), output before encoding (kept until the
//! replies are written); a drained buffer gives its storage back, so an idle
//! connection holds none. When the output buffer cannot hold one more reply
//! the connection is not read (backpressure).
//!
//! Ordering: replies leave in request order. While a connection's ACQUIRE
//! waits in a lock's queue, its later frames stay unread in its input buffer.
//!
//! A read of 0 bytes (the peer closed or half-closed) closes the connection
//! at once, like Redis: its queued ACQUIRE leaves the queue and its SESSION
//! holds are released (past the first few, in batches of
//! [`SESSION_RELEASES_PER_TURN_MAX`] per turn; the table releases one on the
//! spot if a request touches it first). Frames still unread are dropped.
//!
//! Per-connection timeouts (frame, write, idle) live in a second timer
//! wheel, keyed by connection, apart from the lock table's.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::auth::Auth;
use crate::buffer::ConnBuffer;
use crate::buffer::pool::BufferPool;
use crate::execute::{
    self, Context, Refusal, Step, VERSION_BEFORE_HELLO, write_error, write_error_for,
};
use crate::http::{self, HTTP_CONNECTIONS_MAX, HTTP_REQUEST_SIZE_MAX, Parsed, Route};
use crate::limits::{
    CONN_INPUT_BUFFER_SIZE, FDS_RESERVED, FRAMES_PER_TURN_MAX, Limits, REPLY_SIZE_MAX,
    SESSION_RELEASES_PER_TURN_MAX, TCP_KEEPALIVE_IDLE_S, TCP_KEEPALIVE_INTERVAL_S,
    TCP_RECEIVE_BUFFER_SIZE, TCP_SEND_BUFFER_SIZE, TIMER_STEPS_PER_TURN_MAX, WAIT_MS_UNBOUNDED,
};
use crate::metrics::{CloseReason, Metrics, Snapshot};
use crate::protocol::{ErrorCode, Reply};
use crate::table::{EventKind, LockTable, SessionId};
use crate::wheel::{TimerHandle, TimerWheel};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
const HTTP_LISTENER: Token = Token(usize::MAX - 4);

/// HTTP connection `k` has token (and deadline key) `HTTP_TOKEN_BASE + k`,
/// above every lock-protocol connection's key (at most 2^24).
const HTTP_TOKEN_BASE: usize = 1 << 28;

/// Readiness events taken per poll; more simply wait for the next turn.
const POLL_EVENTS_MAX: usize = 1024;

/// Connections accepted per listener event before other work is served.
const ACCEPTS_PER_TURN_MAX: usize = 256;

/// After accept fails (EMFILE: out of file descriptors), how long to wait
/// before trying again. The listener is edge-triggered: connections already
/// queued would otherwise wait for the next new arrival.
const ACCEPT_RETRY_MS: u64 = 10;

/// Listen backlog for the kernel's accept queue.
const LISTEN_BACKLOG: i32 = 1024;

pub use crate::execute::SERVER_VERSION;

/// How to run a server.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub limits: Limits,
    /// First fencing token. `None`: nanoseconds since the Unix epoch, so
    /// tokens keep increasing across restarts (see README, "Fencing tokens").
    pub token_seed: Option<u64>,
    /// Where to serve `GET /health` and `GET /metrics` (see [`crate::http`]);
    /// `None` (the default) serves no HTTP.
    pub http_listen: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9999)),
            limits: Limits::default(),
            token_seed: None,
            http_listen: None,
        }
    }
}

/// Asks a running server to stop, from any thread.
#[derive(Clone)]
pub struct Stopper {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Stopper {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // A failed wake only delays the stop to the next timer or event.
        let _ = self.waker.wake();
    }
}

/// A server running on its own thread (see [`Server::spawn`]).
pub struct ServerHandle {
    addr: SocketAddr,
    stopper: Stopper,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server, closes every connection and waits for the thread.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> io::Result<()> {
        self.stopper.stop();
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("server thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    session: SessionId,
    input: ConnBuffer,
    output: ConnBuffer,
    /// The socket may have unread bytes (edge-triggered: set by a readable
    /// event, cleared when a read returns WouldBlock).
    want_read: bool,
    /// An ACQUIRE of this connection is queued; nothing more is decoded,
    /// but the socket is still read so that a close is noticed at once.
    waiting: bool,
    /// The peer closed or the socket failed (epoll's RDHUP/ERR hint).
    peer_gone: bool,
    closing: bool,
    in_ready: bool,
    /// Registered for WRITABLE too: only while replies wait in `output`.
    /// Always asking for it would wake the loop on every ACK that frees
    /// send-buffer space, which is most of them on a busy connection.
    write_interest: bool,
    /// Listed in `Server::writes` for this turn.
    in_writes: bool,
    /// Sent the right AUTH, or the server requires none.
    authenticated: bool,
    /// The protocol version negotiated by HELLO (see [`Context::version`]).
    version: u16,
    /// When the incomplete frame at the front of `input` began to arrive.
    partial_since_ms: Option<u64>,
    /// Last time the kernel took reply bytes or there were none to write.
    write_progress_ms: u64,
    /// Last time the kernel took reply bytes (or the accept): unlike
    /// `write_progress_ms`, a look at a connection with nothing to write
    /// does not move it, so it can tell idleness.
    replied_ms: u64,
    /// Last time bytes arrived.
    read_ms: u64,
    /// When the connection was accepted (for auth_timeout_ms).
    accepted_ms: u64,
    /// This connection's entry in `Server::deadlines`, and when it fires.
    /// Lazy: a deadline that moved later is found when the entry fires and
    /// re-armed then, so the common path never touches the wheel.
    deadline: Option<(TimerHandle, u64)>,
}

/// [`Server::run`]'s error after a second SIGINT or SIGTERM (its kind is
/// [`io::ErrorKind::Interrupted`]): the daemon exits with status 1 at once.
pub const SECOND_SIGNAL_MESSAGE: &str =
    "a second signal: stopped at once, without answering waiters or closing connections";

/// Why a connection's deadline closed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expired {
    /// A frame began and stayed incomplete for frame_timeout_ms.
    Frame,
    /// Replies stayed unwritten for write_timeout_ms.
    Write,
    /// Nothing happened for idle_timeout_ms.
    Idle,
    /// No good AUTH within auth_timeout_ms of the accept.
    Auth,
}

pub struct Server {
    poll: Poll,
    events: Events,
    listener: TcpListener,
    addr: SocketAddr,
    conns: Slab<Conn>,
    table: LockTable,
    started: Instant,
    stop: Arc<AtomicBool>,
    /// SIGINT/SIGTERM, when [`Server::handle_signals`] was called.
    signals: Option<signal_hook_mio::v1_0::Signals>,
    /// A first signal came: the server is stopping.
    shutting_down: bool,
    /// A second signal came: stop at once, without the graceful close.
    aborted: bool,
    waker: Arc<Waker>,
    /// Connections with work left over from the previous turn.
    ready: Vec<usize>,
    ready_next: Vec<usize>,
    /// Accept failed for lack of resources; retry every ACCEPT_RETRY_MS.
    accept_retry: bool,
    /// Connections with replies to write at the end of the turn: one write
    /// per connection per turn, however often it was serviced.
    writes: Vec<usize>,
    /// Connections to close at the end of the turn (keys must not be reused
    /// while events of this turn may still name them).
    closing: Vec<usize>,
    /// Per-connection deadlines (frame, write and idle timeouts), keyed by
    /// connection; separate from the lock table, which is replicated state.
    deadlines: TimerWheel<usize>,
    /// The shared secret every native connection must send, if set.
    auth: Option<Auth>,
    metrics: Metrics,
    /// Milliseconds since start as last read; never goes back (see
    /// [`Server::tick`]).
    clock_ms: u64,
    http_listener: Option<TcpListener>,
    http_conns: Slab<HttpConn>,
    /// HTTP connections accepted so far: each one's `seq`.
    http_accepted: u64,
    /// Storage for lock-protocol connections' input buffers, lent while
    /// they hold unread bytes.
    input_pool: BufferPool,
    /// Storage for their output buffers, lent while replies wait.
    output_pool: BufferPool,
}

/// An HTTP connection: one request, one response, then closed.
struct HttpConn {
    stream: TcpStream,
    input: ConnBuffer,
    /// The whole response, once the request is parsed.
    output: Vec<u8>,
    written: usize,
    answered: bool,
    deadline: Option<TimerHandle>,
    /// Accept order: the lowest is the oldest.
    seq: u64,
}

impl Server {
    pub fn bind(config: Config) -> io::Result<Server> {
        config.limits.validate().map_err(io::Error::other)?;
        let listener = bind_listener(config.listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {}: {e}; is another server using this port?",
                    config.listen
                ),
            )
        })?;
        let addr = listener.local_addr()?;
        let poll = Poll::new()?;
        let mut listener = listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let http_listener = match config.http_listen {
            Some(http_addr) => {
                let mut listener = bind_listener(http_addr).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen for HTTP on {http_addr}: {e}; is another server using this port?"),
                    )
                })?;
                poll.registry()
                    .register(&mut listener, HTTP_LISTENER, Interest::READABLE)?;
                let http_addr = listener.local_addr()?;
                info!("HTTP health and metrics on http://{http_addr}/health and /metrics");
                if !http_addr.ip().is_loopback() {
                    warn!(
                        "HTTP health and metrics on {http_addr} are served without authentication to anyone who can reach it; use --http-host 127.0.0.1 or a firewall"
                    );
                }
                Some(listener)
            }
            None => None,
        };
        let seed = config.token_seed.unwrap_or_else(wall_clock_token_seed);
        let started = Instant::now();
        let limits = config.limits;
        info!(
            "distlockd {SERVER_VERSION} listening on {addr}; limits: connections_max {} frame_size_max {} name_len_max {} owner_len_max {} lock_ttl_ms_default {} lock_ttl_ms_max {} legacy_ttl_ms {} wait_ms_max {} locks_max {} waiters_per_lock_max {} output_buffer_size {} frame_timeout_ms {} write_timeout_ms {} idle_timeout_ms {}",
            limits.connections_max,
            limits.frame_size_max,
            limits.name_len_max,
            limits.owner_len_max,
            limits.lock_ttl_ms_default,
            limits.lock_ttl_ms_max,
            limits.legacy_ttl_ms,
            WaitMax(limits.wait_ms_max),
            limits.locks_max,
            limits.waiters_per_lock_max,
            limits.output_buffer_size,
            limits.frame_timeout_ms,
            limits.write_timeout_ms,
            limits.idle_timeout_ms
        );
        debug!("first fencing token {seed}");
        check_open_file_limit(limits.connections_max);
        let output_pool = BufferPool::new(limits.output_buffer_size);
        Ok(Server {
            poll,
            events: Events::with_capacity(POLL_EVENTS_MAX),
            listener,
            addr,
            conns: Slab::with_capacity(64),
            table: LockTable::new(limits, seed, 0),
            started,
            stop: Arc::new(AtomicBool::new(false)),
            signals: None,
            shutting_down: false,
            aborted: false,
            waker,
            ready: Vec::with_capacity(64),
            ready_next: Vec::with_capacity(64),
            accept_retry: false,
            writes: Vec::with_capacity(64),
            closing: Vec::with_capacity(64),
            deadlines: TimerWheel::with_capacity(0, 64),
            auth: None,
            metrics: Metrics::default(),
            clock_ms: 0,
            http_listener,
            http_conns: Slab::new(),
            http_accepted: 0,
            input_pool: BufferPool::new(CONN_INPUT_BUFFER_SIZE),
            output_pool,
        })
    }

    /// Binds and runs the server on a new thread.
    pub fn spawn(config: Config) -> io::Result<ServerHandle> {
        Server::bind(config)?.start()
    }

    /// Runs this bound server on a new thread.
    pub fn start(mut self) -> io::Result<ServerHandle> {
        let stopper = self.stopper();
        let addr = self.addr;
        let thread = std::thread::Builder::new()
            .name("distlockd-server".into())
            .spawn(move || self.run())?;
        Ok(ServerHandle {
            addr,
            stopper,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stopper(&self) -> Stopper {
        Stopper {
            flag: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Requires AUTH with this secret on every native connection (see
    /// [`execute::step_gated`]). Call before [`Server::run`]. Every secret
    /// [`Auth`] accepts fits in an AUTH under every valid `frame_size_max`
    /// (see [`crate::limits::AUTH_SIZE_MAX`]), so no secret can leave the
    /// server unable to authenticate anyone.
    pub fn set_auth(&mut self, auth: Option<Auth>) {
        self.auth = auth;
    }

    /// The token the next grant will carry.
    pub fn next_token(&self) -> u64 {
        self.table.next_token()
    }

    /// Runs until a [`Stopper`] fires, then closes every connection.
    /// Stops gracefully on the first SIGINT or SIGTERM: no new connections,
    /// every queued ACQUIRE answered SHUTTING_DOWN, pending replies written,
    /// then [`Server::run`] returns. A second signal makes `run` return at
    /// once, without that, with an [`io::ErrorKind::Interrupted`] error
    /// (the daemon then exits with status 1). For the daemon; embedders use
    /// a [`Stopper`].
    pub fn handle_signals(&mut self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM])?;
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    fn on_signal(&mut self, now: u64) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let count = signals.pending().count();
        if count == 0 {
            return;
        }
        if self.shutting_down || count > 1 {
            // The caller (the daemon's main) exits with status 1; library
            // code does not end the process itself.
            warn!("second signal: exiting at once");
            self.aborted = true;
            self.stop.store(true, Ordering::SeqCst);
            return;
        }
        info!("signal received: stopping (a second signal exits at once)");
        self.shutting_down = true;
        let _ = self.poll.registry().deregister(&mut self.listener);
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            if conn.waiting && !conn.closing {
                self.output_pool.lend(&mut conn.output);
                write_error(
                    &mut conn.output,
                    ErrorCode::ShuttingDown,
                    format_args!("the server is shutting down; retry against a running server"),
                );
            }
            let _ = flush(conn, now);
            self.metrics.count_close(CloseReason::Shutdown);
            self.mark_closing(key, now);
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn run(&mut self) -> io::Result<()> {
        if self.auth.is_none() && !self.addr.ip().is_loopback() {
            warn!(
                "listening on {} without authentication: anyone who can reach this address can take and release locks; set --auth-secret-file (or {}), or listen on 127.0.0.1",
                self.addr,
                crate::auth::SECRET_FILE_ENV
            );
        }
        while !self.stop.load(Ordering::SeqCst) {
            self.turn()?;
        }
        if self.aborted {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                SECOND_SIGNAL_MESSAGE,
            ));
        }
        let now = self.tick();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, now);
        }
        info!("distlockd stopped");
        Ok(())
    }

    /// One turn of the loop. Public so tests can drive the server step by step
    /// on their own thread.
    pub fn turn(&mut self) -> io::Result<()> {
        let timeout = self.poll_timeout();
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let now = self.tick();
        self.table.advance_bounded(now, TIMER_STEPS_PER_TURN_MAX);
        if self.table.has_deferred_work() {
            self.table.run_deferred(now, SESSION_RELEASES_PER_TURN_MAX);
        }
        self.deliver_table_events();
        self.expire_connections(now);
        if self.accept_retry {
            self.accept(now);
            self.accept_http(now);
        }
        // Take the events out of `self` so handlers can borrow it mutably;
        // an empty `Events` does not allocate.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            let gone = event.is_read_closed() || event.is_error();
            // `service` reads the clock itself, after reading the socket.
            match event.token() {
                LISTENER => {
                    let now = self.tick();
                    self.accept(now)
                }
                HTTP_LISTENER => {
                    let now = self.tick();
                    self.accept_http(now)
                }
                WAKER => {}
                SIGNALS => {
                    let now = self.tick();
                    self.on_signal(now)
                }
                // After the fixed tokens, which are above HTTP_TOKEN_BASE too.
                Token(token) if token >= HTTP_TOKEN_BASE => {
                    let now = self.tick();
                    self.service_http(token - HTTP_TOKEN_BASE, now)
                }
                Token(key) => {
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.want_read |= event.is_readable() || gone;
                        conn.peer_gone |= gone;
                        self.service(key);
                    }
                }
            }
        }
        self.events = events;
        std::mem::swap(&mut self.ready, &mut self.ready_next);
        for i in 0..self.ready_next.len() {
            let key = self.ready_next[i];
            if let Some(conn) = self.conns.get_mut(key) {
                conn.in_ready = false;
                self.service(key);
            }
        }
        self.ready_next.clear();
        let now = self.tick();
        self.write_pending(now);
        for i in 0..self.closing.len() {
            let key = self.closing[i];
            self.close(key, now);
        }
        self.closing.clear();
        self.input_pool.trim(now);
        self.output_pool.trim(now);
        self.input_pool.invariants();
        self.output_pool.invariants();
        Ok(())
    }

    /// Reads the clock. Every handler takes a fresh reading, and every
    /// reading is at least the one before, so the table's time never goes
    /// back. A request is executed with a reading taken after its bytes
    /// were read, so a TTL counted from it (plus the table's rounding
    /// millisecond) never ends before the TTL counted from when it was sent.
    fn tick(&mut self) -> u64 {
        self.tick_at(Instant::now())
    }

    fn tick_at(&mut self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.started).as_millis() as u64;
        self.clock_ms = self.clock_ms.max(ms);
        self.clock_ms
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() || self.table.has_deferred_work() {
            return Some(Duration::ZERO);
        }
        let retry = self
            .accept_retry
            .then(|| Duration::from_millis(ACCEPT_RETRY_MS));
        let deadline = match (self.table.next_deadline(), self.deadlines.next_deadline()) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(d) => d,
                None => return retry,
            },
        };
        let until_deadline = poll_sleep(deadline, self.started.elapsed());
        Some(retry.map_or(until_deadline, |r| r.min(until_deadline)))
    }

    fn accept(&mut self, now: u64) {
        for _ in 0..ACCEPTS_PER_TURN_MAX {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_retry = false;
                    return;
                }
                Err(e) => {
                    // EMFILE and the like: the connection stays in the kernel
                    // queue; retry shortly rather than spin or forget it.
                    if !self.accept_retry {
                        warn!(
                            "accept failed: {e}; retrying every {ACCEPT_RETRY_MS} ms; check the open-file limit (ulimit -n) against --connections-max"
                        );
                    }
                    self.accept_retry = true;
                    return;
                }
            };
            if self.conns.len() >= self.table.limits().connections_max {
                refuse(stream, peer, self.table.limits().connections_max);
                self.metrics.connections_refused += 1;
                continue;
            }
            match self.register(stream, peer, now) {
                Ok(()) => self.metrics.connections_accepted += 1,
                Err(e) => debug!("{peer}: cannot register: {e}"),
            }
        }
        // More may be waiting; the listener is edge-triggered, so come back.
        let _ = self.waker.wake();
    }

    fn register(&mut self, mut stream: TcpStream, peer: SocketAddr, now: u64) -> io::Result<()> {
        stream.set_nodelay(true)?;
        if let Err(e) = set_socket_options(&stream, self.table.limits()) {
            debug!("{peer}: cannot set socket options: {e}");
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)?;
        let session = self.table.open_session(key as u64);
        entry.insert(Conn {
            stream,
            peer,
            session,
            input: ConnBuffer::detached(CONN_INPUT_BUFFER_SIZE),
            output: ConnBuffer::detached(self.table.limits().output_buffer_size),
            want_read: true,
            waiting: false,
            closing: false,
            in_ready: false,
            write_interest: false,
            in_writes: false,
            peer_gone: false,
            authenticated: self.auth.is_none(),
            version: VERSION_BEFORE_HELLO,
            partial_since_ms: None,
            write_progress_ms: now,
            replied_ms: now,
            read_ms: now,
            accepted_ms: now,
            deadline: None,
        });
        self.arm_deadline(key, now);
        debug!("{peer}: connected (connection {key})");
        Ok(())
    }

    /// Reads, decodes, executes and writes for one connection, within the
    /// per-turn bounds; re-queues it if work is left.
    fn service(&mut self, key: usize) {
        let now = self.clock_ms;
        let conn = &mut self.conns[key];
        if conn.closing {
            return;
        }
        // Read even while an ACQUIRE waits: a read of 0 bytes is how a
        // waiter's disconnect is seen, and it must leave the queue at once.
        // With a full input buffer that read cannot happen; the RDHUP hint
        // covers it.
        let ended = if conn.peer_gone {
            // A hint, not a read: the socket's pending error says why, if any.
            Err(conn.stream.take_error().ok().flatten())
        } else if conn.want_read {
            self.input_pool.lend(&mut conn.input);
            read_available(conn, now).map_err(Some)
        } else {
            Ok(())
        };
        if let Err(error) = ended {
            self.close_ended(key, error.as_ref(), now);
            return;
        }
        // The clock is read after the bytes: see `tick`.
        let started = Instant::now();
        let now = self.tick_at(started);
        let conn = &mut self.conns[key];
        if conn.output.is_empty() {
            // The write timeout counts from when replies start to wait.
            conn.write_progress_ms = now;
        }
        if !conn.input.is_empty() {
            self.output_pool.lend(&mut conn.output);
        }
        let mut ctx = Context {
            table: &mut self.table,
            session: conn.session,
            version: conn.version,
            now_ms: now,
            uptime_ms: started.duration_since(self.started).as_millis() as u64,
        };
        let frames = process_frames(conn, &mut ctx, self.auth.as_ref(), &mut self.metrics);
        let elapsed_ns = started.elapsed().as_nanos() as u64;
        self.metrics.observe_handling(elapsed_ns, frames.executed);
        let more = match frames.end {
            Ok(more) => more,
            Err(refusal) => {
                self.metrics.count_close(match refusal {
                    Refusal::Decode(_) => CloseReason::ProtocolError,
                    Refusal::Unauthenticated => CloseReason::AuthFailed,
                });
                let _ = flush(&mut self.conns[key], now);
                self.mark_closing(key, now);
                return;
            }
        };
        self.deliver_table_events();
        self.queue_write(key);
        let conn = &mut self.conns[key];
        self.input_pool.reclaim(&mut conn.input);
        self.output_pool.reclaim(&mut conn.output);
        let can_read = conn.want_read && !conn.input.is_full();
        let has_room = conn.output.free_space() >= REPLY_SIZE_MAX;
        if (more || can_read) && has_room && !conn.waiting {
            self.queue_ready(key);
        }
        self.arm_deadline(key, now);
    }

    fn queue_ready(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.in_ready {
            conn.in_ready = true;
            self.ready.push(key);
        }
    }

    fn queue_write(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.output.is_empty() && !conn.in_writes {
            conn.in_writes = true;
            self.writes.push(key);
        }
    }

    /// Writes every connection's replies of this turn. A connection whose
    /// output was too full to decode more is put back on the ready list
    /// once it has room.
    fn write_pending(&mut self, now: u64) {
        for i in 0..self.writes.len() {
            let key = self.writes[i];
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.in_writes = false;
            if conn.closing {
                continue;
            }
            if let Err(e) = flush(conn, now) {
                self.close_ended(key, Some(&e), now);
                continue;
            }
            if self.update_write_interest(key).is_err() {
                self.close_ended(key, None, now);
                continue;
            }
            let conn = &mut self.conns[key];
            self.output_pool.reclaim(&mut conn.output);
            let has_work = conn.want_read || !conn.input.is_empty();
            if has_work && !conn.waiting && conn.output.free_space() >= REPLY_SIZE_MAX {
                self.queue_ready(key);
            }
            self.arm_deadline(key, now);
        }
        self.writes.clear();
    }

    /// Asks for WRITABLE events exactly while output is pending.
    fn update_write_interest(&mut self, key: usize) -> io::Result<()> {
        let conn = &mut self.conns[key];
        let want = !conn.output.is_empty();
        if want == conn.write_interest {
            return Ok(());
        }
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        self.poll
            .registry()
            .reregister(&mut conn.stream, Token(key), interest)?;
        conn.write_interest = want;
        Ok(())
    }

    /// Writes the later answers of queued ACQUIREs and wakes their
    /// connections so they decode their next frames.
    fn deliver_table_events(&mut self) {
        for i in 0..self.table.events().len() {
            let event = self.table.events()[i];
            let key = event.tag as usize;
            let Some(conn) = self
                .conns
                .get_mut(key)
                .filter(|c| c.session == event.session && !c.closing)
            else {
                // mark_closing delivers what is due before it closes a
                // session, so this is a bug; a debug build stops on it, a
                // release build drops the answer rather than every lock.
                if cfg!(debug_assertions) {
                    panic!("event for a closed session: {event:?}");
                }
                warn!("dropped an answer for a closed connection: {event:?}");
                continue;
            };
            debug_assert!(conn.waiting);
            conn.waiting = false;
            if conn.output.is_empty() {
                conn.write_progress_ms = self.clock_ms;
            }
            self.output_pool.lend(&mut conn.output);
            let reply = match event.kind {
                // A waiter is never the holder: its grant is a new hold.
                EventKind::Granted { token, ttl_ms } => {
                    execute::granted(conn.version, token, ttl_ms, false)
                }
                EventKind::TimedOut { waited_ms } => Reply::Timeout { waited_ms },
            };
            conn.output
                .write_with(REPLY_SIZE_MAX, |out| reply.encode(out));
            if !conn.in_ready {
                conn.in_ready = true;
                self.ready.push(key);
            }
        }
        self.table.clear_events();
    }

    /// Makes sure the connection's entry in `deadlines` fires no later than
    /// its earliest timeout. An entry that would fire early is left alone:
    /// [`Server::expire_connections`] re-arms it when it fires.
    fn arm_deadline(&mut self, key: usize, now: u64) {
        let conn = &mut self.conns[key];
        let Some((due, _)) = next_timeout(conn, self.table.limits()) else {
            return;
        };
        if let Some((handle, at)) = conn.deadline {
            if at <= due {
                return;
            }
            self.deadlines.cancel(handle);
        }
        let at = due.max(now);
        conn.deadline = Some((self.deadlines.insert(at, key), at));
    }

    /// Closes the connections whose frame, write, idle or auth timeout has
    /// passed, and re-arms those whose deadline moved later.
    ///
    /// A timeout judges what the client did, not how late the server
    /// looked: after a pause of the server (SIGSTOP, a VM pause, a long
    /// turn) what the client sent, and the room it made by reading, wait in
    /// the kernel, their events perhaps later in this very turn. So a
    /// connection found due is first caught up ([`Server::catch_up`]) and
    /// judged again on what that found.
    fn expire_connections(&mut self, now: u64) {
        while let Some((_, key)) = self.deadlines.poll(now) {
            if key >= HTTP_TOKEN_BASE {
                self.expire_http(key - HTTP_TOKEN_BASE);
                continue;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.deadline = None;
            if conn.closing {
                continue;
            }
            let limits = self.table.limits();
            if next_timeout(conn, limits).is_none_or(|(due, _)| due > now) {
                self.arm_deadline(key, now);
                continue;
            }
            self.catch_up(key);
            let now = self.clock_ms;
            let Some(conn) = self.conns.get(key).filter(|c| !c.closing) else {
                continue;
            };
            match next_timeout(conn, self.table.limits()) {
                Some((due, why)) if due <= now => self.expire(key, why, now),
                _ => self.arm_deadline(key, now),
            }
        }
    }

    /// Reads and serves what the connection's socket holds and writes what
    /// its peer has room for, as its events would have: the last look
    /// before one of its timeouts closes it.
    fn catch_up(&mut self, key: usize) {
        // Edge-triggered: the readiness may be in an event this turn has not
        // handled yet, or one that did not fit in this poll's events.
        self.conns[key].want_read = true;
        self.service(key);
        let now = self.clock_ms;
        let conn = &mut self.conns[key];
        if conn.closing {
            return;
        }
        if let Err(e) = flush(conn, now) {
            self.close_ended(key, Some(&e), now);
        } else if self.update_write_interest(key).is_err() {
            self.close_ended(key, None, now);
        } else {
            self.output_pool.reclaim(&mut self.conns[key].output);
        }
    }

    /// Closes a connection whose peer closed it or whose socket failed
    /// (`error`, if one is known), counted under the reason it tells.
    fn close_ended(&mut self, key: usize, error: Option<&io::Error>, now: u64) {
        let conn = &self.conns[key];
        let reason = ended_reason(conn, error, now);
        if reason == CloseReason::WriteTimeout {
            debug!(
                "{}: the kernel gave up on replies the peer did not take for {} ms (write_timeout_ms); closing (connection {key})",
                conn.peer,
                self.table.limits().write_timeout_ms
            );
        }
        self.metrics.count_close(reason);
        self.mark_closing(key, now);
    }

    fn expire(&mut self, key: usize, why: Expired, now: u64) {
        self.metrics.count_close(match why {
            Expired::Frame => CloseReason::FrameTimeout,
            Expired::Write => CloseReason::WriteTimeout,
            Expired::Idle => CloseReason::IdleTimeout,
            Expired::Auth => CloseReason::AuthFailed,
        });
        let limits = self.table.limits();
        let conn = &mut self.conns[key];
        match why {
            Expired::Frame => {
                let ms = limits.frame_timeout_ms;
                debug!(
                    "{}: frame incomplete after {ms} ms; closing (connection {key})",
                    conn.peer
                );
                last_error(
                    conn,
                    &mut self.output_pool,
                    now,
                    ErrorCode::Limit,
                    format_args!(
                        "frame incomplete after {ms} ms (frame_timeout_ms {ms}); send each frame whole, or raise --frame-timeout-ms"
                    ),
                );
            }
            Expired::Write => debug!(
                "{}: replies unread for {} ms (write_timeout_ms); closing (connection {key})",
                conn.peer, limits.write_timeout_ms
            ),
            Expired::Idle => debug!(
                "{}: idle for {} ms (idle_timeout_ms); closing (connection {key})",
                conn.peer, limits.idle_timeout_ms
            ),
            Expired::Auth => {
                let ms = limits.auth_timeout_ms;
                debug!(
                    "{}: no AUTH within {ms} ms; closing (connection {key})",
                    conn.peer
                );
                last_error(
                    conn,
                    &mut self.output_pool,
                    now,
                    ErrorCode::Auth,
                    format_args!(
                        "not authenticated within {ms} ms (auth_timeout_ms {ms}); send AUTH with the server's secret first"
                    ),
                );
            }
        }
        self.mark_closing(key, now);
    }

    /// The address `GET /health` and `GET /metrics` are served on, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    fn accept_http(&mut self, now: u64) {
        for _ in 0..ACCEPTS_PER_TURN_MAX {
            let Some(listener) = self.http_listener.as_ref() else {
                return;
            };
            let mut stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // As for the lock port: retry every ACCEPT_RETRY_MS.
                    debug!("HTTP accept failed: {e}");
                    self.accept_retry = true;
                    return;
                }
            };
            self.make_http_room(now);
            let entry = self.http_conns.vacant_entry();
            let key = entry.key();
            let token = HTTP_TOKEN_BASE + key;
            if self
                .poll
                .registry()
                .register(&mut stream, Token(token), Interest::READABLE)
                .is_err()
            {
                continue;
            }
            let deadline = now + self.table.limits().frame_timeout_ms as u64;
            entry.insert(HttpConn {
                stream,
                input: ConnBuffer::with_capacity(HTTP_REQUEST_SIZE_MAX),
                output: Vec::new(),
                written: 0,
                answered: false,
                deadline: Some(self.deadlines.insert(deadline, token)),
                seq: self.http_accepted,
            });
            self.http_accepted += 1;
            // Its request is often here already (always, once accepts lag
            // behind a flood): answered now, it never waits for a slot.
            self.service_http(key, now);
        }
        let _ = self.waker.wake();
    }

    /// Makes room for one more HTTP connection when HTTP_CONNECTIONS_MAX
    /// are open: closes the oldest that has not sent a whole request (408),
    /// or if every one has, the oldest whose response is not taken yet.
    /// Before closing one, it reads its socket: a request that has arrived
    /// is answered instead. So idle peers cannot keep a probe out: a probe
    /// is lost only if enough newer connections (HTTP_CONNECTIONS_MAX when
    /// all wait for a request) arrive between its connect and its request.
    fn make_http_room(&mut self, now: u64) {
        while self.http_conns.len() >= HTTP_CONNECTIONS_MAX {
            let oldest = |answered: bool| {
                self.http_conns
                    .iter()
                    .filter(|(_, c)| c.answered == answered)
                    .min_by_key(|(_, c)| c.seq)
                    .map(|(key, _)| key)
            };
            let Some(key) = oldest(false).or_else(|| oldest(true)) else {
                return;
            };
            if !self.http_conns[key].answered {
                self.service_http(key, now);
                match self.http_conns.get(key) {
                    // Answered: closed if the response went out, else it is
                    // an answered one now, and the next candidate is looked at.
                    None => continue,
                    Some(conn) if conn.answered => continue,
                    Some(conn) => {
                        let mut out = Vec::new();
                        let message = format!(
                            "no whole request while all {HTTP_CONNECTIONS_MAX} HTTP connections were taken; send the request as soon as you connect"
                        );
                        http::write_error(&mut out, 408, &message);
                        let _ = (&conn.stream).write(&out);
                        self.metrics.count_http(408);
                    }
                }
            }
            debug!("HTTP connection {key}: closed to make room for a new one");
            self.close_http(key);
        }
    }

    /// Reads the request, answers it, writes the answer, closes.
    fn service_http(&mut self, key: usize, now: u64) {
        let Some(conn) = self.http_conns.get_mut(key) else {
            return;
        };
        if !conn.answered {
            let eof = match read_http(conn) {
                Ok(eof) => eof,
                Err(()) => return self.close_http(key),
            };
            let parsed = http::parse(conn.input.unread(), conn.input.is_full());
            let (code, body, content_type, head_only) = match parsed {
                Parsed::NeedMore if eof => return self.close_http(key),
                Parsed::NeedMore => return,
                Parsed::Error { code, message } => (
                    code,
                    format!("{{\"error\":\"{message}\"}}\n"),
                    "application/json",
                    false,
                ),
                Parsed::Request { route, head_only } => {
                    let (code, body, content_type) = self.http_body(route);
                    (code, body, content_type, head_only)
                }
            };
            self.metrics.count_http(code);
            let conn = &mut self.http_conns[key];
            http::write_response(
                &mut conn.output,
                code,
                content_type,
                body.as_bytes(),
                head_only,
            );
            conn.answered = true;
            if let Some(handle) = conn.deadline.take() {
                self.deadlines.cancel(handle);
            }
            let deadline = now + self.table.limits().write_timeout_ms as u64;
            conn.deadline = Some(self.deadlines.insert(deadline, HTTP_TOKEN_BASE + key));
        }
        let conn = &mut self.http_conns[key];
        loop {
            match conn.stream.write(&conn.output[conn.written..]) {
                Ok(0) => return self.close_http(key),
                Ok(n) => {
                    conn.written += n;
                    if conn.written == conn.output.len() {
                        return self.close_http(key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close_http(key),
            }
        }
        let token = Token(HTTP_TOKEN_BASE + key);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .poll
            .registry()
            .reregister(&mut conn.stream, token, interest)
            .is_err()
        {
            self.close_http(key);
        }
    }

    /// The response to a parsed request: status, body, content type.
    fn http_body(&self, route: Route) -> (u16, String, &'static str) {
        let uptime_ms = self.started.elapsed().as_millis() as u64;
        match route {
            Route::Health => {
                let limits = self.table.limits();
                let (code, status) = if self.shutting_down {
                    (503, "shutting_down")
                } else {
                    (200, "ok")
                };
                let body = format!(
                    "{{\"status\":\"{status}\",\"version\":\"{SERVER_VERSION}\",\"uptime_ms\":{uptime_ms},\"connections\":{},\"connections_full\":{},\"locks_held\":{},\"waiters\":{}}}\n",
                    self.conns.len(),
                    self.conns.len() >= limits.connections_max,
                    self.table.len(),
                    self.table.waiter_count()
                );
                (code, body, "application/json")
            }
            Route::Metrics => {
                let mut body = String::with_capacity(8 * 1024);
                self.metrics.render(
                    &Snapshot {
                        version: SERVER_VERSION,
                        uptime_ms,
                        connections: self.conns.len(),
                        connections_max: self.table.limits().connections_max,
                        http_connections: self.http_conns.len(),
                        locks_held: self.table.len(),
                        locks_max: self.table.limits().locks_max,
                        waiters: self.table.waiter_count(),
                        table: self.table.stats(),
                    },
                    &mut body,
                );
                (200, body, "text/plain; version=0.0.4; charset=utf-8")
            }
        }
    }

    /// The request did not arrive in time (408), or the response was not
    /// taken in time. Judged, as for the lock protocol, after a last look
    /// at the socket: a request that arrived is answered, and a response
    /// that moved restarts the write deadline.
    fn expire_http(&mut self, key: usize) {
        let Some(conn) = self.http_conns.get_mut(key) else {
            return;
        };
        conn.deadline = None;
        let before = (conn.answered, conn.written);
        let now = self.tick();
        self.service_http(key, now);
        let Some(conn) = self.http_conns.get_mut(key) else {
            return; // answered and written
        };
        if (conn.answered, conn.written) != before {
            if conn.deadline.is_none() {
                let deadline = now + self.table.limits().write_timeout_ms as u64;
                conn.deadline = Some(self.deadlines.insert(deadline, HTTP_TOKEN_BASE + key));
            }
            return;
        }
        if !conn.answered {
            let mut out = Vec::new();
            http::write_error(&mut out, 408, "request incomplete after frame_timeout_ms");
            let _ = conn.stream.write(&out);
            self.metrics.count_http(408);
        }
        debug!("HTTP connection {key}: timed out at {now} ms");
        self.close_http(key);
    }

    fn close_http(&mut self, key: usize) {
        let Some(mut conn) = self.http_conns.try_remove(key) else {
            return;
        };
        if let Some(handle) = conn.deadline {
            self.deadlines.cancel(handle);
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        close_gently(&mut conn.stream);
    }

    /// Ends the connection's session at once (its queued ACQUIRE leaves the
    /// queue, its SESSION holds pass to their waiters) so that nothing is
    /// granted to it in the rest of this turn; its slab slot is freed at the
    /// end of the turn, when no event of this turn can name it any more.
    fn mark_closing(&mut self, key: usize, now: u64) {
        if self.conns[key].closing {
            return;
        }
        // Answers already made go out first: one for the session closed
        // below would have nowhere to go. (close_session fires no timer, so
        // it makes none for this session.)
        self.deliver_table_events();
        let conn = &mut self.conns[key];
        conn.closing = true;
        conn.waiting = false;
        let session = conn.session;
        self.closing.push(key);
        self.table.close_session(session, now);
        self.deliver_table_events();
    }

    fn close(&mut self, key: usize, now: u64) {
        self.mark_closing(key, now);
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        self.input_pool.reclaim_discarding(&mut conn.input);
        self.output_pool.reclaim_discarding(&mut conn.output);
        if let Some((handle, _)) = conn.deadline {
            self.deadlines.cancel(handle);
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        close_gently(&mut conn.stream);
        debug!("{}: closed (connection {key})", conn.peer);
    }
}

/// The connection's earliest timeout and its kind, if any applies:
/// - frame: an incomplete frame the server would decode if it were whole
///   (not while an ACQUIRE waits or replies fill the output buffer: then the
///   server, not the client, holds the frame back);
/// - write: replies pending and no progress in writing them;
/// - idle: nothing pending, nothing queued, nothing received and no reply
///   written (idle_timeout_ms 0 turns it off). An idle connection's SESSION
///   holds end with it;
/// - auth: on a server with a secret, no good AUTH yet, auth_timeout_ms
///   after the accept (a connection without the secret cannot sit on a
///   connection slot).
fn next_timeout(conn: &Conn, limits: &Limits) -> Option<(u64, Expired)> {
    let frame = conn
        .partial_since_ms
        .filter(|_| !conn.waiting && conn.output.free_space() >= REPLY_SIZE_MAX)
        .map(|since| (since + limits.frame_timeout_ms as u64, Expired::Frame));
    let write = (!conn.output.is_empty()).then(|| {
        (
            conn.write_progress_ms + limits.write_timeout_ms as u64,
            Expired::Write,
        )
    });
    let quiet = !conn.waiting && conn.input.is_empty() && conn.output.is_empty();
    let idle = (limits.idle_timeout_ms > 0 && quiet).then(|| {
        let active = conn.read_ms.max(conn.replied_ms);
        (active + limits.idle_timeout_ms as u64, Expired::Idle)
    });
    let auth = (!conn.authenticated).then(|| {
        (
            conn.accepted_ms + limits.auth_timeout_ms as u64,
            Expired::Auth,
        )
    });
    [frame, write, idle, auth]
        .into_iter()
        .flatten()
        .min_by_key(|&(at, _)| at)
}

/// Reads until the socket is drained or the buffer is full. Err: EOF
/// (UnexpectedEof) or a socket error.
///
/// A read that fills less than the space offered has drained the socket:
/// no second read is made just to see WouldBlock. That is safe with
/// edge-triggered epoll, which reports any data (or FIN) arriving after this
/// read as a new event, and it saves a syscall per request on the common
/// path.
fn read_available(conn: &mut Conn, now: u64) -> io::Result<()> {
    loop {
        let spare = conn.input.spare_mut();
        let offered = spare.len();
        if offered == 0 {
            return Ok(()); // full: want_read stays set; decoding makes room
        }
        match conn.stream.read(spare) {
            Ok(0) => {
                debug!("{}: peer closed", conn.peer);
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(n) => {
                conn.input.commit(n);
                conn.read_ms = now;
                if n < offered {
                    conn.want_read = false;
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.want_read = false;
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!("{}: read failed: {e}", conn.peer);
                return Err(e);
            }
        }
    }
}

/// Writes a last error (in the protocol the connection speaks) before the
/// server closes the connection, and tries once to send it.
fn last_error(
    conn: &mut Conn,
    output_pool: &mut BufferPool,
    now: u64,
    code: ErrorCode,
    message: std::fmt::Arguments<'_>,
) {
    output_pool.lend(&mut conn.output);
    write_error_for(conn.input.unread(), &mut conn.output, code, message);
    let _ = flush(conn, now);
}

/// Reads an HTTP request until WouldBlock or a full buffer. Ok(true): the
/// peer closed its side. Err: the socket failed.
fn read_http(conn: &mut HttpConn) -> Result<bool, ()> {
    loop {
        let spare = conn.input.spare_mut();
        if spare.is_empty() {
            return Ok(false);
        }
        match conn.stream.read(spare) {
            Ok(0) => return Ok(true),
            Ok(n) => conn.input.commit(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
}

/// Writes buffered replies until WouldBlock. Err: the socket failed.
/// Any progress, or nothing to write, restarts the write timeout.
fn flush(conn: &mut Conn, now: u64) -> io::Result<()> {
    if conn.output.is_empty() {
        conn.write_progress_ms = now;
    }
    while !conn.output.is_empty() {
        match conn.stream.write(conn.output.unread()) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.output.consume(n);
                conn.write_progress_ms = now;
                conn.replied_ms = now;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!("{}: write failed: {e}", conn.peer);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// What [`process_frames`] did.
struct Frames {
    /// Requests executed.
    executed: u64,
    /// Ok(true): frames may be left that this turn did not reach. Err: the
    /// input was refused (answered if possible) and the connection must
    /// close.
    end: Result<bool, Refusal>,
}

/// Decodes and executes up to FRAMES_PER_TURN_MAX frames.
fn process_frames(
    conn: &mut Conn,
    ctx: &mut Context<'_>,
    auth: Option<&Auth>,
    metrics: &mut Metrics,
) -> Frames {
    let mut executed = 0;
    let end = process_frames_counted(conn, ctx, auth, metrics, &mut executed);
    conn.version = ctx.version;
    Frames { executed, end }
}

fn process_frames_counted(
    conn: &mut Conn,
    ctx: &mut Context<'_>,
    auth: Option<&Auth>,
    metrics: &mut Metrics,
    executed: &mut u64,
) -> Result<bool, Refusal> {
    for _ in 0..FRAMES_PER_TURN_MAX {
        if conn.waiting || conn.output.free_space() < REPLY_SIZE_MAX {
            return Ok(false);
        }
        let input = conn.input.unread();
        let first_byte = input.first().copied().unwrap_or(0);
        match execute::step_gated(input, ctx, auth, &mut conn.authenticated, &mut conn.output) {
            Ok(Step::NeedMore) => {
                if conn.input.is_empty() {
                    conn.partial_since_ms = None;
                } else if conn.partial_since_ms.is_none() {
                    conn.partial_since_ms = Some(ctx.now_ms);
                }
                return Ok(false);
            }
            Ok(Step::Executed { used, queued }) => {
                conn.input.consume(used);
                conn.waiting = queued;
                conn.partial_since_ms = None;
                metrics.count_command(first_byte);
                *executed += 1;
            }
            Err(refusal) => {
                match refusal {
                    Refusal::Decode(e) => debug!("{}: protocol error: {e}", conn.peer),
                    Refusal::Unauthenticated => {
                        debug!("{}: not authenticated; closing", conn.peer)
                    }
                }
                return Err(refusal);
            }
        }
    }
    Ok(true)
}

/// Answers a connection over connections_max with an error frame, best
/// effort, before any state is created for it.
fn refuse(mut stream: TcpStream, peer: SocketAddr, max: usize) {
    let mut out = ConnBuffer::with_capacity(REPLY_SIZE_MAX);
    write_error(
        &mut out,
        ErrorCode::Limit,
        format_args!("server is at connections_max {max}; retry later or raise --connections-max"),
    );
    let _ = stream.write(out.unread());
    close_gently(&mut stream);
    debug!("{peer}: refused, at connections_max {max}");
}

/// Bytes read and dropped before closing a connection we answered and are
/// done with: closing with unread bytes in the socket makes the kernel send
/// a reset, which can destroy our last reply before the peer reads it.
const CLOSE_DRAIN_BYTES_MAX: usize = 64 * 1024;

/// Reads (non-blocking, bounded) and drops what the peer already sent, then
/// sends FIN; the socket is closed when the caller drops it.
fn close_gently(stream: &mut TcpStream) {
    let mut scratch = [0u8; 4096];
    let mut drained = 0;
    while drained < CLOSE_DRAIN_BYTES_MAX {
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// `wait_ms_max` for the start-up log: the number, or `forever`.
struct WaitMax(u32);

impl std::fmt::Display for WaitMax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            WAIT_MS_UNBOUNDED => f.write_str("forever"),
            ms => write!(f, "{ms}"),
        }
    }
}

/// Socket options of an accepted lock-protocol connection: keepalive finds
/// a peer whose host vanished; a fixed send buffer and TCP_USER_TIMEOUT
/// bound what replies the client does not read cost, and for how long (see
/// [`TCP_SEND_BUFFER_SIZE`]). The receive buffer is the listener's.
fn set_socket_options(stream: &TcpStream, limits: &Limits) -> io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(TCP_KEEPALIVE_IDLE_S))
            .with_interval(Duration::from_secs(TCP_KEEPALIVE_INTERVAL_S)),
    )?;
    socket.set_send_buffer_size(TCP_SEND_BUFFER_SIZE)?;
    #[cfg(target_os = "linux")]
    socket.set_tcp_user_timeout(Some(Duration::from_millis(limits.write_timeout_ms as u64)))?;
    #[cfg(not(target_os = "linux"))]
    let _ = limits; // elsewhere the kernel's own retransmission limits apply
    Ok(())
}

/// The soonest a keepalive probe can find a peer dead: the first probe
/// goes after TCP_KEEPALIVE_IDLE_S without a byte from the peer, the
/// verdict comes at the next. Keepalive probes only a connection with
/// nothing in flight, so by then every reply was acknowledged.
const KEEPALIVE_VERDICT_MS_MIN: u64 = (TCP_KEEPALIVE_IDLE_S + TCP_KEEPALIVE_INTERVAL_S) * 1000;

/// Why a connection whose socket ended is closed. With TCP_USER_TIMEOUT
/// set to write_timeout_ms, the kernel aborts a connection with ETIMEDOUT
/// when replies it holds stayed untaken that long (in a window the peer
/// keeps closed, or unacknowledged): a write timeout, as if the server's
/// own deadline had found it. Unanswered keepalive probes end in ETIMEDOUT
/// too, but never sooner than KEEPALIVE_VERDICT_MS_MIN after the last reply
/// the kernel took; such a close, like any other, is the peer's.
fn ended_reason(conn: &Conn, error: Option<&io::Error>, now: u64) -> CloseReason {
    let timed_out = error.is_some_and(|e| e.kind() == io::ErrorKind::TimedOut);
    if timed_out && now.saturating_sub(conn.replied_ms) < KEEPALIVE_VERDICT_MS_MIN {
        CloseReason::WriteTimeout
    } else {
        CloseReason::Peer
    }
}

/// Warns when connections_max cannot be reached under the process's
/// open-file limit (read from /proc; skipped where there is none).
fn check_open_file_limit(connections_max: usize) {
    let Some(soft) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| open_file_soft_limit(&text))
    else {
        return;
    };
    if soft < connections_max.saturating_add(FDS_RESERVED) {
        warn!(
            "connections_max {connections_max} is above what the open-file limit {soft} (ulimit -n) allows; past about {} connections new ones wait in the kernel's queue; raise ulimit -n or lower --connections-max",
            soft.saturating_sub(FDS_RESERVED)
        );
    }
}

/// The soft "Max open files" of a /proc/PID/limits text.
fn open_file_soft_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(usize::MAX),
        n => n.parse().ok(),
    }
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    // Before listen, so that accepted connections inherit it and their
    // window scale is chosen for it.
    socket.set_recv_buffer_size(TCP_RECEIVE_BUFFER_SIZE)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// How long to sleep in poll, `elapsed` after the server started, so that
/// [`Server::tick`] reads at least `deadline_ms` on waking: the time left,
/// rounded up to whole milliseconds. epoll counts whole milliseconds (mio
/// rounds up too); rounding here makes the sleep asked for the sleep taken.
/// So a wake-up for a deadline is never before it and less than 1 ms after
/// it, plus the kernel's timer slack and the thread's scheduling delay.
fn poll_sleep(deadline_ms: u64, elapsed: Duration) -> Duration {
    let left = Duration::from_millis(deadline_ms).saturating_sub(elapsed);
    Duration::from_millis(left.as_nanos().div_ceil(NANOS_PER_MS) as u64)
}

const NANOS_PER_MS: u128 = 1_000_000;

/// Nanoseconds since the Unix epoch: every token this run hands out is above
/// every token an earlier run handed out, as long as the earlier run granted
/// fewer than one lock per nanosecond on average and the wall clock did not
/// step back across the restart.
fn wall_clock_token_seed() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_else(|_| {
        warn!("system clock is before 1970; fencing tokens start at 1 and may repeat after a restart");
        Duration::ZERO
    });
    (since_epoch.as_nanos() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::{Duration, open_file_soft_limit, poll_sleep};
    use crate::limits::Limits;
    use crate::protocol::Acquire;
    use crate::table::{EventKind, LockTable};

    /// The server's clock reading at `elapsed` (see `Server::tick_at`).
    fn reading_ms(elapsed: Duration) -> u64 {
        elapsed.as_millis() as u64
    }

    /// Instants from `from` to `to`, in steps that fall on every offset
    /// within a millisecond.
    fn instants(from: Duration, to: Duration) -> impl Iterator<Item = Duration> {
        let step = Duration::from_nanos(7_919);
        std::iter::successors(Some(from), move |&t| Some(t + step)).take_while(move |&t| t <= to)
    }

    #[test]
    fn poll_wakes_at_a_deadline_never_before_and_less_than_1_ms_after() {
        for deadline_ms in [0, 1, 2, 7, 1_000] {
            let deadline = Duration::from_millis(deadline_ms);
            let late = deadline + Duration::from_millis(2);
            for elapsed in instants(deadline.saturating_sub(Duration::from_millis(3)), late) {
                let sleep = poll_sleep(deadline_ms, elapsed);
                assert_eq!(sleep.subsec_nanos() % 1_000_000, 0, "whole ms: {sleep:?}");
                let wake = elapsed + sleep;
                if elapsed >= deadline {
                    assert_eq!(sleep, Duration::ZERO, "due at {elapsed:?}");
                    continue;
                }
                assert!(wake >= deadline, "{deadline_ms}: woke at {wake:?}");
                assert!(wake < deadline + Duration::from_millis(1), "{wake:?}");
                assert!(reading_ms(wake) >= deadline_ms, "fires on waking");
            }
        }
        let far = u32::MAX as u64 * 2;
        assert_eq!(poll_sleep(far, Duration::ZERO), Duration::from_millis(far));
    }

    /// Where the last poll before a deadline may start: anywhere from
    /// `from` to just before the deadline.
    fn polls_before(from: Duration, deadline_ms: u64) -> [Duration; 3] {
        let deadline = Duration::from_millis(deadline_ms);
        [
            from,
            (from + deadline) / 2,
            deadline - Duration::from_nanos(1),
        ]
    }

    /// The documented precision (docs/PROTOCOL.md, "Timing"): a hold ends,
    /// and its lock passes to the head waiter, more than TTL and less than
    /// TTL + 2 ms after the grant in real time (plus scheduling delay),
    /// wherever the grant and the last poll before the end fall within
    /// their milliseconds.
    #[test]
    fn holds_end_between_ttl_and_ttl_plus_2_ms_after_the_grant() {
        const MS: Duration = Duration::from_millis(1);
        for ttl_ms in [1u32, 2, 3, 250] {
            let ttl = Duration::from_millis(ttl_ms as u64);
            for granted in instants(Duration::ZERO, 3 * MS) {
                let mut table = LockTable::new(Limits::default(), 1, 0);
                let (holder, waiter) = (table.open_session(1), table.open_session(2));
                let acquire = |owner, wait_ms| Acquire {
                    name: b"job",
                    owner,
                    ttl_ms,
                    wait_ms,
                    flags: 0,
                };
                let at = reading_ms(granted);
                let _ = table.acquire(holder, &acquire(b"a", 0), at);
                let _ = table.acquire(waiter, &acquire(b"b", 60_000), at);
                let deadline_ms = table.next_deadline().unwrap();
                for polled in polls_before(granted, deadline_ms) {
                    let woke = polled + poll_sleep(deadline_ms, polled);
                    let after = woke - granted;
                    assert!(
                        after > ttl && after < ttl + 2 * MS,
                        "ttl {ttl_ms}: {after:?}"
                    );
                }
                table.advance(deadline_ms - 1);
                assert!(table.events().is_empty(), "ended before its deadline");
                // Any wake-up for the deadline reads it (see the test above).
                table.advance(deadline_ms);
                assert!(
                    matches!(table.events(), [e] if matches!(e.kind, EventKind::Granted { .. })),
                    "{:?}",
                    table.events()
                );
            }
        }
    }

    /// A queued ACQUIRE is answered TIMEOUT when the server's clock reads
    /// its arrival + wait_ms: in real time more than wait_ms - 1 ms and less
    /// than wait_ms + 1 ms after it arrived.
    #[test]
    fn waits_time_out_within_1_ms_either_side_of_wait_ms() {
        const MS: Duration = Duration::from_millis(1);
        for wait_ms in [1u32, 2, 250] {
            let wait = Duration::from_millis(wait_ms as u64);
            for arrived in instants(Duration::ZERO, 3 * MS) {
                let mut table = LockTable::new(Limits::default(), 1, 0);
                let (holder, waiter) = (table.open_session(1), table.open_session(2));
                let acquire = |owner, ttl_ms, wait_ms| Acquire {
                    name: b"job",
                    owner,
                    ttl_ms,
                    wait_ms,
                    flags: 0,
                };
                let at = reading_ms(arrived);
                let _ = table.acquire(holder, &acquire(b"a", 60_000, 0), 0);
                let _ = table.acquire(waiter, &acquire(b"b", 1, wait_ms), at);
                let deadline_ms = table.next_deadline().unwrap();
                for polled in polls_before(arrived, deadline_ms) {
                    let woke = polled + poll_sleep(deadline_ms, polled);
                    let after = woke - arrived;
                    assert!(
                        after + MS > wait && after < wait + MS,
                        "wait {wait_ms}: {after:?}"
                    );
                }
                table.advance(deadline_ms);
                assert!(
                    matches!(table.events(), [e] if e.kind == EventKind::TimedOut { waited_ms: wait_ms }),
                    "{:?}",
                    table.events()
                );
            }
        }
    }

    /// Drives `server` a turn at a time (woken, so no turn sleeps) until
    /// `done` holds; at most 10 s.
    fn turn_until(server: &mut super::Server, mut done: impl FnMut(&super::Server) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done(server) {
            assert!(std::time::Instant::now() < deadline, "not reached in 10 s");
            server.waker.wake().unwrap();
            server.turn().unwrap();
        }
    }

    fn send(stream: &mut std::net::TcpStream, request: crate::protocol::Request<'_>) {
        use std::io::Write;
        let mut frame = [0u8; 128];
        let n = request.encode(&mut frame);
        stream.write_all(&frame[..n]).unwrap();
    }

    /// The first byte of the next reply on `stream` (non-blocking), after
    /// serving turns until one whole reply is there.
    fn reply_kind(server: &mut super::Server, stream: &mut std::net::TcpStream) -> u8 {
        use std::io::Read;
        let mut reply = Vec::new();
        turn_until(server, |_| {
            let mut buf = [0u8; 64];
            while let Ok(n) = stream.read(&mut buf) {
                reply.extend_from_slice(&buf[..n]);
                if n == 0 {
                    break;
                }
            }
            matches!(crate::protocol::decode_reply(&reply), Ok(Some(_)))
        });
        reply[0]
    }

    fn lent(server: &super::Server) -> (usize, usize) {
        (server.input_pool.lent(), server.output_pool.lent())
    }

    /// Buffers are lent while bytes are in flight only: not to a connection
    /// served and drained, nor to one whose ACQUIRE waits in a queue; a
    /// partial frame keeps its input buffer until the frame is whole.
    #[test]
    fn only_connections_with_bytes_in_flight_hold_buffers() {
        use crate::protocol::{FLAG_SESSION, Request, kind};
        let config = super::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..super::Config::default()
        };
        let mut server = super::Server::bind(config).unwrap();
        let connect = || {
            let s = std::net::TcpStream::connect(server.local_addr()).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        };
        let (mut holder, mut waiter) = (connect(), connect());
        let acquire = |owner, wait_ms, flags| {
            Request::Acquire(Acquire {
                name: b"job",
                owner,
                ttl_ms: 60_000,
                wait_ms,
                flags,
            })
        };
        send(&mut holder, acquire(b"holder", 0, FLAG_SESSION));
        assert_eq!(reply_kind(&mut server, &mut holder), kind::GRANTED);
        assert_eq!(lent(&server), (0, 0), "served and drained");
        send(&mut waiter, acquire(b"waiter", 60_000, 0));
        turn_until(&mut server, |s| s.conns.iter().any(|(_, c)| c.waiting));
        assert_eq!(lent(&server), (0, 0), "a queued ACQUIRE holds no buffer");
        assert_eq!(server.conns.len(), 2);

        // Half a PING's header: the input buffer stays lent, the output not.
        let mut ping = [0u8; 16];
        let n = Request::Ping.encode(&mut ping);
        std::io::Write::write_all(&mut holder, &ping[..1]).unwrap();
        turn_until(&mut server, |s| s.input_pool.lent() == 1);
        assert_eq!(lent(&server), (1, 0));
        std::io::Write::write_all(&mut holder, &ping[1..n]).unwrap();
        assert_eq!(reply_kind(&mut server, &mut holder), kind::PONG);
        assert_eq!(lent(&server), (0, 0));

        // The holder goes: the lock passes to the waiter, whose answer is
        // lent an output buffer until written.
        drop(holder);
        assert_eq!(reply_kind(&mut server, &mut waiter), kind::GRANTED);
        turn_until(&mut server, |s| s.conns.len() == 1);
        assert_eq!(lent(&server), (0, 0));
        assert!(server.output_pool.allocated() >= 1);
        server.input_pool.invariants();
        server.output_pool.invariants();
    }

    #[test]
    fn reads_the_soft_open_file_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             95340                95340                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(open_file_soft_limit(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(open_file_soft_limit(unlimited), Some(usize::MAX));
        assert_eq!(open_file_soft_limit("nothing here"), None);
    }
}
