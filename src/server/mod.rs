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
//! Fairness: a connection decodes at most `FRAMES_PER_TURN_MAX` frames per
//! turn; leftover work puts it on the `ready` list, served next turn after
//! polling (with a zero timeout), so one pipelining client cannot starve the
//! others. Memory: a connection's buffers have fixed capacities, set at
//! accept, but hold storage from a `BufferPool` only while bytes are in
//! flight: input before reading (kept while a frame is partial or frames
//! wait behind a queued ACQUIRE), output before encoding (kept until the
//! replies are written); a drained buffer gives its storage back, so an idle
//! connection holds none. When the output buffer cannot hold one more reply
//! the connection is not read (backpressure).
//!
//!
//! Ordering: replies leave in request order. While a connection's ACQUIRE
//! waits in a lock's queue, its later frames stay unread in its input buffer.
//!
//! A read of 0 bytes (the peer closed or half-closed) closes the connection
//! at once, like Redis: its queued ACQUIRE leaves the queue and its SESSION
//! holds are released (past the first few, in batches of
//! `SESSION_RELEASES_PER_TURN_MAX` per turn; the table releases one on the
//! spot if a request touches it first). Frames still unread are dropped.
//!
//! Per-connection timeouts (frame, write, idle, auth; an HTTP request's
//! and response's) live in a second timer wheel, keyed by connection, apart
//! from the lock table's.
//!
//! # Files, in the order a request passes
//!
//! - `mod.rs` (this file): [`Config`], [`Server`], [`ServerHandle`],
//!   [`Stopper`], and the loop: `Server::turn` polls, fires timers,
//!   hands each event to its connection, writes, closes.
//! - `accept.rs`: the listeners; a new connection registered, or refused
//!   past `connections_max` before any state is made for it.
//! - `connection.rs`: a lock-protocol connection (`Conn`): its socket,
//!   buffers and state; reading its socket into the input buffer, writing
//!   the output buffer to it, closing it gently.
//! - `service.rs`: serving it: read → decode → execute → encode (one frame
//!   at a time by `execute`, decoded in place), the lock table's
//!   later answers to queued ACQUIREs, the one write per turn, closing.
//! - `timeouts.rs`: the frame, write, idle and auth timeouts, on a timer
//!   wheel whose entries say which connection they time (`Deadline`), and
//!   how long a poll may sleep.
//! - `http.rs`: HTTP connections (`GET /health`, `GET /metrics`; requests
//!   parsed by `http`).
//! - `signals.rs`: SIGINT and SIGTERM: a graceful stop, or at once on a
//!   second.

mod accept;
mod connection;
mod http;
mod service;
mod signals;
mod timeouts;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::buffer::pool::BufferPool;
use crate::limits::{SESSION_RELEASES_PER_TURN_MAX, TIMER_STEPS_PER_TURN_MAX};
use crate::metrics::Metrics;
use crate::replication::durable::Durable;
use crate::table::LockTable;
use crate::wheel::TimerWheel;
use accept::{bind_listener, check_open_file_limit};
use connection::Conn;
use http::HttpConn;
use timeouts::Deadline;

pub use crate::auth::Auth;
pub use crate::execute::SERVER_VERSION;
/// For the `distlockd` binary's no-op reference server, which sizes its
/// buffers as the server does; not part of the interface.
#[doc(hidden)]
pub use crate::limits::{CONN_INPUT_BUFFER_SIZE, CONN_OUTPUT_BUFFER_SIZE};
pub use crate::limits::{LOCKS_CEILING, Limit, Limits, LimitsError, WAIT_MS_UNBOUNDED};
pub use signals::{SECOND_SIGNAL_MESSAGE, SignalCatcher};

/// What a poll event is about: its token, decoded. A lock-protocol
/// connection's token is its key in `Server::conns`; an HTTP connection's is
/// its key in `Server::http_conns` with [`HTTP_TOKEN_BIT`] set; the fixed
/// sources take the last few tokens. Slab keys stay below
/// [`SLAB_KEY_END`], so the three kinds cannot meet, whatever
/// `connections_max` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Listener,
    HttpListener,
    Waker,
    Signals,
    Lock(usize),
    Http(usize),
}

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
const HTTP_LISTENER: Token = Token(usize::MAX - 4);

/// Set in an HTTP connection's token, clear in a lock-protocol one's.
const HTTP_TOKEN_BIT: usize = 1 << (usize::BITS - 1);

/// Above every slab key: a slab's entries lie in one allocation of at most
/// `isize::MAX` bytes, and a connection's entry takes far more than 2.
const SLAB_KEY_END: usize = isize::MAX as usize / 2;

const _: () = assert!(
    SLAB_KEY_END <= HTTP_TOKEN_BIT && (HTTP_TOKEN_BIT | SLAB_KEY_END) < HTTP_LISTENER.0,
    "lock tokens, HTTP tokens and the fixed tokens apart"
);

impl Source {
    fn token(self) -> Token {
        match self {
            Source::Listener => LISTENER,
            Source::HttpListener => HTTP_LISTENER,
            Source::Waker => WAKER,
            Source::Signals => SIGNALS,
            Source::Lock(key) => {
                debug_assert!(key < SLAB_KEY_END, "slab key {key}");
                Token(key)
            }
            Source::Http(key) => {
                debug_assert!(key < SLAB_KEY_END, "slab key {key}");
                Token(HTTP_TOKEN_BIT | key)
            }
        }
    }

    fn of(token: Token) -> Source {
        match token {
            LISTENER => Source::Listener,
            HTTP_LISTENER => Source::HttpListener,
            WAKER => Source::Waker,
            SIGNALS => Source::Signals,
            // After the fixed tokens, which have the bit set too.
            Token(token) if token & HTTP_TOKEN_BIT != 0 => Source::Http(token & !HTTP_TOKEN_BIT),
            Token(key) => Source::Lock(key),
        }
    }
}

/// Readiness events taken per poll; more simply wait for the next turn.
const POLL_EVENTS_MAX: usize = 1024;

/// How to run a server.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub limits: Limits,
    /// First fencing token. `None`: nanoseconds since the Unix epoch, so
    /// tokens keep increasing across restarts (see README, "Fencing tokens").
    pub token_seed: Option<u64>,
    /// Where to serve `GET /health` and `GET /metrics` (see `http`);
    /// `None` (the default) serves no HTTP.
    pub http_listen: Option<SocketAddr>,
    /// Where to keep every change before it is answered, and to find the
    /// holds again after a restart; `None` (the default): in memory only.
    pub data_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9999)),
            limits: Limits::default(),
            token_seed: None,
            http_listen: None,
            data_dir: None,
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
    /// A listener had more connections than ACCEPTS_PER_TURN_MAX: accept
    /// again next turn, without sleeping. The listeners are edge-triggered,
    /// so no new event would come for connections already queued.
    accept_more: bool,
    /// Connections with replies to write at the end of the turn: one write
    /// per connection per turn, however often it was serviced.
    writes: Vec<usize>,
    /// Connections to close at the end of the turn (keys must not be reused
    /// while events of this turn may still name them).
    closing: Vec<usize>,
    /// Per-connection deadlines (frame, write, idle and auth timeouts of
    /// lock-protocol connections, request and response timeouts of HTTP
    /// ones); separate from the lock table, which is replicated state.
    deadlines: TimerWheel<Deadline>,
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
    /// With a data directory: the log every change goes to before any
    /// reply that may reflect it is written (see [`Server::persist`]).
    durable: Option<Durable>,
    /// Writing the log failed: the server stops with this error.
    fatal: Option<io::Error>,
}

impl Server {
    pub fn bind(config: Config) -> io::Result<Server> {
        config.limits.validate().map_err(io::Error::other)?;
        // The data directory first: a server that cannot use it (or whose
        // flock another server holds) never listens, so no client and no
        // test can take its port for a running server.
        let seed = config.token_seed.unwrap_or_else(wall_clock_token_seed);
        let mut table = LockTable::new(config.limits.clone(), seed, 0);
        let durable =
            match &config.data_dir {
                Some(dir) => Some(Durable::open(dir, &mut table, 0).map_err(|e| {
                    io::Error::other(format!("data directory {}: {e}", dir.display()))
                })?),
                None => None,
            };
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
            .register(&mut listener, Source::Listener.token(), Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), Source::Waker.token())?);
        let http_listener = match config.http_listen {
            Some(http_addr) => {
                let mut listener = bind_listener(http_addr).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen for HTTP on {http_addr}: {e}; is another server using this port?"),
                    )
                })?;
                poll.registry().register(
                    &mut listener,
                    Source::HttpListener.token(),
                    Interest::READABLE,
                )?;
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
        let started = Instant::now();
        let limits = config.limits;
        info!(
            "distlockd {SERVER_VERSION} listening on {addr}; limits: connections_max {} frame_size_max {} name_len_max {} owner_len_max {} lock_ttl_ms_default {} lock_ttl_ms_max {} legacy_ttl_ms {} wait_ms_max {} locks_max {} waiters_per_lock_max {} output_buffer_size {} frame_timeout_ms {} write_timeout_ms {} idle_timeout_ms {} auth_timeout_ms {}",
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
            limits.idle_timeout_ms,
            limits.auth_timeout_ms
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
            table,
            started,
            stop: Arc::new(AtomicBool::new(false)),
            signals: None,
            shutting_down: false,
            aborted: false,
            waker,
            ready: Vec::with_capacity(64),
            ready_next: Vec::with_capacity(64),
            accept_retry: false,
            accept_more: false,
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
            durable,
            fatal: None,
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
    /// `execute::step_gated`). Call before [`Server::run`]. Every secret
    /// [`Auth`] accepts fits in an AUTH under every valid `frame_size_max`
    /// (see `AUTH_SIZE_MAX`), so no secret can leave the
    /// server unable to authenticate anyone.
    pub fn set_auth(&mut self, auth: Option<Auth>) {
        self.auth = auth;
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
        // The SESSION holds those closes released, into the log too.
        if !self.persist() {
            return Err(self.fatal.take().expect("persist failed with an error"));
        }
        info!("distlockd stopped");
        Ok(())
    }

    /// One turn of the loop; the unit tests drive the server step by step
    /// with it.
    pub(crate) fn turn(&mut self) -> io::Result<()> {
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
        if self.accept_retry || std::mem::take(&mut self.accept_more) {
            self.accept(now);
            self.accept_http(now);
        }
        // Take the events out of `self` so handlers can borrow it mutably;
        // an empty `Events` does not allocate.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for event in events.iter() {
            let gone = event.is_read_closed() || event.is_error();
            // `service` reads the clock itself, after reading the socket.
            match Source::of(event.token()) {
                Source::Listener => {
                    let now = self.tick();
                    self.accept(now)
                }
                Source::HttpListener => {
                    let now = self.tick();
                    self.accept_http(now)
                }
                Source::Waker => {}
                Source::Signals => {
                    let now = self.tick();
                    self.on_signal(now)
                }
                Source::Http(key) => {
                    let now = self.tick();
                    self.service_http(key, now)
                }
                Source::Lock(key) => {
                    if let Some(conn) = self.conns.get_mut(key) {
                        if gone {
                            self.hang_up(key);
                        } else {
                            conn.want_read |= event.is_readable();
                            self.service(key);
                        }
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
        if self.persist() {
            self.write_pending(now);
        }
        for i in 0..self.closing.len() {
            let key = self.closing[i];
            self.close(key, now);
        }
        self.closing.clear();
        self.input_pool.trim(now);
        self.output_pool.trim(now);
        self.input_pool.invariants();
        self.output_pool.invariants();
        match self.fatal.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// With a data directory, makes the table's changes so far durable (one
    /// log entry, one fsync), so that no reply reflecting them leaves
    /// before: called before anything is written to a client. False if
    /// that failed: the server stops with the error, and nothing may be
    /// written.
    pub(super) fn persist(&mut self) -> bool {
        if self.fatal.is_some() {
            return false;
        }
        let Some(durable) = &mut self.durable else {
            return true;
        };
        match durable.persist(&mut self.table, self.clock_ms) {
            Ok(()) => true,
            Err(e) => {
                error!("cannot write the data directory, stopping: {e}");
                self.fatal = Some(io::Error::other(format!("data directory: {e}")));
                self.stop.store(true, Ordering::SeqCst);
                false
            }
        }
    }

    /// Every connection's invariants ([`Server::conn_invariants`]), and the
    /// loop's lists against the flags that mirror them; Err names what
    /// broke. Holds between turns. O(connections × listed): for tests.
    /// `ready` may also name a connection closed since it was listed, or
    /// the new one in its slot: the pass over it finds nothing to do.
    #[cfg(test)]
    fn invariants(&self) -> Result<(), &'static str> {
        use connection::check;
        for (key, conn) in &self.conns {
            self.conn_invariants(key)?;
            let listed_ready = self.ready.contains(&key) || self.ready_next.contains(&key);
            check(
                !conn.in_ready || listed_ready,
                "flagged ready but not on `ready`",
            )?;
            check(
                conn.in_writes == self.writes.contains(&key),
                "flagged for writing but not on `writes`, or the reverse",
            )?;
            check(
                conn.is_closing() == self.closing.contains(&key),
                "closing but not on `closing`, or the reverse",
            )?;
        }
        let live = |keys: &[usize]| keys.iter().all(|&key| self.conns.contains(key));
        check(live(&self.writes), "`writes` names no connection")?;
        check(live(&self.closing), "`closing` names no connection")
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
mod tests;
