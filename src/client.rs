//! The blocking Rust client: named locks with fencing tokens over TCP.
//!
//! A [`Client`] owns a bounded pool of connections to one server and is
//! `Send + Sync`: share it between threads with `&` or `Arc`. Every request
//! checks a connection out of the pool, writes one frame, reads one reply and
//! checks the connection back in; nothing is held between requests, so a
//! thread holding a lock holds no connection.
//!
//! ```no_run
//! use std::time::Duration;
//! use distlockd::client::{Client, Error};
//!
//! # fn main() -> Result<(), Error> {
//! let client = Client::builder("127.0.0.1:9999").ttl(Duration::from_secs(30)).build()?;
//! if !client.check_server_health() {
//!     eprintln!("distlockd is not answering");
//! }
//! {
//!     // Waits on the server, in FIFO order, for up to 5 s.
//!     let guard = client.lock("nightly-report", Duration::from_secs(5))?;
//!     // Pass the fencing token to whatever the lock protects, so it can
//!     // refuse writes carrying an older token.
//!     println!("working under token {}", guard.token());
//! } // released here
//! match client.try_acquire("nightly-report")? {
//!     Some(lease) => client.release_lease(&lease)?,
//!     None => println!("someone else is running it"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **Exclusion while the lease is valid.** A hold ends at [`Client::release`],
//!   at its TTL (the server expires it; only a [`RenewingGuard`] from
//!   [`Client::lock_renewing`] or a [`Leadership`] renews on its own,
//!   otherwise call [`Client::extend`]), or, for a client built with
//!   [`ClientBuilder::session`], when the connection that acquired it closes.
//!   Work that may outlive the TTL must be fenced: the resource compares
//!   [`Lease::token`]s, which only ever increase, also across server restarts.
//!   A SESSION hold can end at any moment its connection closes, so for
//!   it "gone before another holder could be granted" is not promised:
//!   only fencing protects the resource then.
//! - **Each acquisition has its own owner** (`{client_id}:{counter}`), so
//!   threads sharing one `Client` exclude each other like separate processes.
//!   For the same reason a lock is not reentrant: acquiring a name this
//!   client already holds waits like any other owner.
//! - **Retries are idempotent.** A failed connection is retried with
//!   exponential backoff and jitter; a retried ACQUIRE carries the same owner,
//!   and the server answers a repeated ACQUIRE from the current holder with the
//!   same token, so a lost reply never makes the client hold a lock it does
//!   not know about (short of running out of retries: then the hold lapses at
//!   its TTL). RELEASE and EXTEND carry owner and token and are safe to repeat.
//! - **Bounded waits.** Every read and write has a timeout; a waiting ACQUIRE
//!   reads for at most `wait + timeout`, because the server answers by `wait`.
//!   A thread that finds all `pool_size` connections busy waits (without a
//!   timeout of its own) for one of those requests to finish, and each of
//!   them is bounded as above.
//! - **Renewal never outlives its guard, and loss is told.** A
//!   [`RenewingGuard`] renews from a background thread that is stopped and
//!   joined before the guard's release is sent. It reports the lease lost
//!   when the server says so, or at the earliest moment the server could
//!   have expired it with no renewal confirmed (see [`Lost`]).
//!   [`Election`] builds leader election on the same guard.
//! - **A release is never starved by waiters.** At most `pool_size - 1`
//!   connections sit in waiting ACQUIREs, so a thread that holds a lock can
//!   always reach the server to release it.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, warn};

mod election;
mod renew;
pub mod servers;

pub use election::{Election, Leadership};
pub use renew::{Lost, RenewingGuard};
pub use servers::{SERVER_DEFAULT, SERVER_ENV};

use crate::auth::{SECRET_FILE_ENV, SECRET_LEN_MAX, Secret, read_secret_file};
use crate::limits::{FRAME_SIZE_CEILING, NAME_LEN_CEILING, OWNER_LEN_CEILING, PROTOCOL_VERSION};
use crate::limits::{TCP_KEEPALIVE_IDLE_S, TCP_KEEPALIVE_INTERVAL_S, WAIT_MS_UNBOUNDED};
use crate::protocol::{
    Acquire, ErrorCode, FLAG_SESSION, FLAG_WAIT_FOREVER, GRANTED_FLAGS_VERSION, HelloReply,
    NotHeldReason, Reply, Request, StatusEntry, decode_reply,
};

/// A wait with no deadline: `client.acquire(name, WAIT_FOREVER)` waits in
/// the server's queue until the lock is granted, keeping its place (one
/// request, not a loop of shorter waits). Needs a server without a
/// `--wait-max-ms` bound. If the connection breaks, the retry joins the
/// queue again at its tail.
pub const WAIT_FOREVER: Duration = Duration::MAX;

/// The longest finite wait the protocol carries: `wait_ms` is a u32 (about
/// 49.7 days). Longer finite waits are refused; use [`WAIT_FOREVER`].
pub const WAIT_FINITE_MAX: Duration = Duration::from_millis(u32::MAX as u64);

/// How long a hold lasts unless released or extended (the original's 10 s).
pub const TTL_DEFAULT: Duration = Duration::from_secs(10);
/// Connect, write and read timeout for one request (a waiting ACQUIRE reads
/// for its wait plus this).
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Retries after a connection failure, so four attempts in all.
pub const RETRIES_DEFAULT: u32 = 3;
/// A renewing guard renews every TTL/3: two renewals can fail before the
/// lease ends.
pub const RENEWALS_PER_TTL_DEFAULT: u32 = 3;
/// At least two renewals per TTL, so one failed renewal leaves time for
/// another before the lease ends.
pub const RENEWALS_PER_TTL_MIN: u32 = 2;
/// More than this would renew every few milliseconds at common TTLs and
/// only load the server.
pub const RENEWALS_PER_TTL_MAX: u32 = 100;
/// Connections per client: enough for a handful of threads waiting at once.
pub const POOL_SIZE_DEFAULT: usize = 8;
/// One connection for waiting ACQUIREs and one kept for everything else, so
/// a holder can release while another thread of the same client waits.
pub const POOL_SIZE_MIN: usize = 2;

/// First retry delay; doubles per retry.
const BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Longest delay between retries (before jitter): a restarting server is
/// usually back within seconds, and a caller should not sleep much longer.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Decimal digits of the largest per-client counter in an owner id.
const OWNER_COUNTER_LEN_MAX: usize = 20;
/// Longest client id: `{client_id}:{counter}` must fit the server's owner
/// ceiling for any counter value.
pub const CLIENT_ID_LEN_MAX: usize = OWNER_LEN_CEILING - 1 - OWNER_COUNTER_LEN_MAX;
/// The generated id is `{pid:x}-{nanos:x}-{seq:x}`: at most 8 + 1 + 16 + 1 + 16.
const _: () = assert!(8 + 1 + 16 + 1 + 16 <= CLIENT_ID_LEN_MAX);
const _: () = assert!((u64::MAX).ilog10() as usize + 1 == OWNER_COUNTER_LEN_MAX);

/// Sent in HELLO so server logs say which client connected.
const CLIENT_NAME: &str = concat!("distlockd-rust/", env!("CARGO_PKG_VERSION"));
const _: () = assert!(CLIENT_NAME.len() <= u8::MAX as usize);

/// Makes the ids of clients created in the same process and nanosecond differ.
static CLIENT_SEQ: AtomicU64 = AtomicU64::new(0);

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the client could not do what was asked.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The lock stayed held by others for the whole wait (the original's
    /// `LockAcquisitionTimeout`).
    AcquireTimeout { name: String, waited: Duration },
    /// RELEASE or EXTEND of a hold we do not have (the original's
    /// `LockReleaseError`).
    NotHeld { name: String, reason: NotHeldCause },
    /// The server could not be reached, or the connection failed mid-request,
    /// on every attempt (the original's `ConnectionError`).
    Connection {
        addr: String,
        attempts: u32,
        source: io::Error,
    },
    /// The server sent something that is not a valid reply to our request.
    Protocol { message: String },
    /// The server refused the request with an ERROR reply.
    Server { code: ErrorCode, message: String },
    /// A value was refused before anything was sent.
    InvalidArgument { what: String },
    /// The address answered in HTTP: most likely the server's `--http-port`
    /// (health and metrics) rather than its lock port.
    HttpServer { addr: String },
}

/// Why a hold is not ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotHeldCause {
    /// This `Client` has no record of holding the name: it never acquired it,
    /// or it already released it. Nothing was sent.
    NotAcquiredHere,
    /// The server's answer.
    Server(NotHeldReason),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AcquireTimeout { name, waited } => write!(
                f,
                "lock {name:?} was not acquired within {:.3}s: another owner held it the whole time; wait longer or check who holds it",
                waited.as_secs_f64()
            ),
            Error::NotHeld { name, reason } => write!(
                f,
                "lock {name:?} is not held by this lease: {}",
                not_held_text(*reason)
            ),
            Error::Connection {
                addr,
                attempts,
                source,
            } if source.kind() == io::ErrorKind::ConnectionRefused => write!(
                f,
                "nothing is listening at {addr} (connection refused, {attempts} attempt{}: {source}); start a server there, e.g. `{}`, or use the address of a running one",
                if *attempts == 1 { "" } else { "s" },
                servers::start_command(addr)
            ),
            Error::Connection {
                addr,
                attempts,
                source,
            } => write!(
                f,
                "request to {addr} failed after {attempts} attempt{} (connecting, or the connection broke or timed out): {source}; check that `distlockd server` is running there and reachable",
                if *attempts == 1 { "" } else { "s" }
            ),
            Error::Protocol { message } => write!(
                f,
                "{message}; check that the address is a distlockd server speaking protocol version {PROTOCOL_VERSION}"
            ),
            Error::Server { code, message } => {
                write!(f, "server refused the request ({}): {message}", code.name())
            }
            Error::InvalidArgument { what } => f.write_str(what),
            Error::HttpServer { addr } => write!(
                f,
                "{addr} answered in HTTP: this looks like an HTTP server, such as distlockd's --http-port (health and metrics); the lock protocol is on the server's --port (default 9999)"
            ),
        }
    }
}

fn not_held_text(reason: NotHeldCause) -> &'static str {
    match reason {
        NotHeldCause::NotAcquiredHere => {
            "this client never acquired it or already released it; release only names acquired through the same Client"
        }
        NotHeldCause::Server(reason) => not_held_reason_text(reason),
    }
}

/// What the server's NOT_HELD reason says, and no more: it cannot tell a
/// hold that expired from one that was released or never taken.
pub fn not_held_reason_text(reason: NotHeldReason) -> &'static str {
    match reason {
        NotHeldReason::Free => "the server says it is not held: released, expired, or never taken",
        NotHeldReason::OtherOwner => "the server says another owner holds it",
        NotHeldReason::TokenMismatch => "the server says this owner holds it under another token",
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connection { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// One granted hold: what RELEASE and EXTEND need to name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    name: String,
    owner: String,
    token: u64,
    ttl: Duration,
    reentered: bool,
}

impl Lease {
    /// A lease known by its parts, e.g. from another process (the lock
    /// CLI's `release --owner --token`), to release or extend it.
    pub fn from_parts(name: &str, owner: &str, token: u64, ttl: Duration) -> Lease {
        Lease {
            name: name.to_owned(),
            owner: owner.to_owned(),
            token,
            ttl,
            reentered: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The owner id the server knows this hold by.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The fencing token: larger than every token granted before it.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The TTL the server granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether the server said this owner held the lock already when the
    /// ACQUIRE arrived: a re-entry of that hold (same token, TTL restarted
    /// from the ACQUIRE), not a new grant. Owners are per acquisition unless
    /// [`ClientBuilder::client_id`] makes two clients share one; a retry
    /// after a lost reply also re-enters the hold its first attempt took.
    /// Always false from a server that speaks only protocol version 1,
    /// which cannot say.
    pub fn reentered(&self) -> bool {
        self.reentered
    }
}

/// A held lock that is released when dropped (the original's `with
/// client.lock(...)`). A failed release on drop is logged, never panics; use
/// [`LockGuard::unlock`] to see the error.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct LockGuard<'a> {
    client: &'a Client,
    lease: Lease,
    released: bool,
}

impl LockGuard<'_> {
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    pub fn token(&self) -> u64 {
        self.lease.token
    }

    pub fn name(&self) -> &str {
        &self.lease.name
    }

    /// Sets the hold's remaining TTL to `ttl` from now.
    pub fn extend(&self, ttl: Duration) -> Result<Duration> {
        self.client.extend(&self.lease, ttl)
    }

    /// Releases now and reports the outcome.
    pub fn unlock(mut self) -> Result<()> {
        self.released = true;
        self.client.release_lease(&self.lease)
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Err(e) = self.client.release_lease(&self.lease) {
            warn!(
                "releasing lock {:?} (token {}) on drop failed: {e}",
                self.lease.name, self.lease.token
            );
        }
    }
}

/// One held lock, as STATUS shows it (owners are never shown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockStatus {
    /// The name, with bytes that are not UTF-8 replaced.
    pub name: String,
    pub token: u64,
    /// Time until the hold expires unless extended or released.
    pub remaining: Duration,
    /// ACQUIREs queued on the lock.
    pub waiters: u32,
    /// The hold ends when the connection that took it closes.
    pub session: bool,
}

impl From<&StatusEntry<'_>> for LockStatus {
    fn from(e: &StatusEntry<'_>) -> LockStatus {
        LockStatus {
            name: String::from_utf8_lossy(e.name).into_owned(),
            token: e.token,
            remaining: Duration::from_millis(e.remaining_ms as u64),
            waiters: e.waiters,
            session: e.session,
        }
    }
}

/// A page of held locks from [`Client::list_locks`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockList {
    /// Locks held on the server.
    pub total: u32,
    pub locks: Vec<LockStatus>,
    /// More locks follow (the listing stopped at `limit`).
    pub truncated: bool,
}

/// The server's version and limits, from its HELLO reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub protocol_version: u16,
    pub server_version: String,
    pub frame_size_max: usize,
    pub name_len_max: usize,
    pub owner_len_max: usize,
    pub lock_ttl_default: Duration,
    pub lock_ttl_max: Duration,
    /// The longest wait the server takes; `None`: no bound, and
    /// [`WAIT_FOREVER`] is taken.
    pub wait_max: Option<Duration>,
}

impl From<&HelloReply<'_>> for ServerInfo {
    fn from(h: &HelloReply<'_>) -> ServerInfo {
        ServerInfo {
            protocol_version: h.version,
            server_version: String::from_utf8_lossy(h.server_version).into_owned(),
            frame_size_max: h.frame_size_max as usize,
            name_len_max: h.name_len_max as usize,
            owner_len_max: h.owner_len_max as usize,
            lock_ttl_default: Duration::from_millis(h.lock_ttl_ms_default as u64),
            lock_ttl_max: Duration::from_millis(h.lock_ttl_ms_max as u64),
            wait_max: (h.wait_ms_max != WAIT_MS_UNBOUNDED)
                .then(|| Duration::from_millis(h.wait_ms_max as u64)),
        }
    }
}

/// Settings for a [`Client`]; see [`Client::builder`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    addr: String,
    ttl: Duration,
    timeout: Duration,
    retries: u32,
    pool_size: usize,
    session: bool,
    client_id: Option<String>,
    auth_secret: Option<Secret>,
    renewals_per_ttl: u32,
    /// Ask for TTL 0, the server's default, instead of `ttl`.
    ttl_server_default: bool,
}

impl ClientBuilder {
    /// Holds take the server's default TTL (its `--ttl-default-ms`): ACQUIRE
    /// sends TTL 0, and each [`Lease::ttl`] is what the server granted. For
    /// the lock CLI without `--ttl`, so that it follows the server's setting.
    pub(crate) fn ttl_server_default(mut self) -> Self {
        self.ttl_server_default = true;
        self
    }

    /// TTL of every hold this client takes (default 10 s). Must be positive.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Connect, read and write timeout (default 5 s). Must be positive.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries after a connection failure (default 3).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Most connections open at once (default 8, at least 2).
    pub fn pool_size(mut self, pool_size: usize) -> Self {
        self.pool_size = pool_size;
        self
    }

    /// `true`: the server also releases a hold when the connection that took
    /// it closes (the client is dropped, the process dies, a network
    /// failure, the server's idle or write timeout, or this client drops
    /// that connection after an I/O error on it). `false` (default): holds
    /// survive disconnects until released or expired.
    ///
    /// A hold from [`Client::acquire`], [`Client::lock`] or
    /// [`Client::try_acquire`] is bound to a pooled connection, which any
    /// request of this client may drop after an I/O error, ending the hold
    /// without a word. [`Client::lock_renewing`] (and [`Election`]) gives a
    /// SESSION hold a connection of its own and reports its loss; see
    /// [SESSION holds](RenewingGuard#session-holds).
    pub fn session(mut self, session: bool) -> Self {
        self.session = session;
        self
    }

    /// How often a [`RenewingGuard`] (and a [`Leadership`]) renews: every
    /// TTL / `renewals_per_ttl` (default 3, from 2 to 100).
    pub fn renewals_per_ttl(mut self, renewals_per_ttl: u32) -> Self {
        self.renewals_per_ttl = renewals_per_ttl;
        self
    }

    /// Prefix of every owner id this client sends (default: generated from
    /// the process id, the time and a counter). At most
    /// [`CLIENT_ID_LEN_MAX`] bytes. Two clients must never share one.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The server's shared secret (its `--auth-secret-file`), sent in AUTH
    /// on every new connection. [`crate::auth::read_secret_file`] reads one
    /// the way the server does.
    pub fn auth_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.auth_secret = Some(Secret::from(secret.into()));
        self
    }

    pub fn build(self) -> Result<Client> {
        let servers = check_addr(&self.addr)?;
        if let Some(secret) = &self.auth_secret
            && !(1..=SECRET_LEN_MAX).contains(&secret.as_bytes().len())
        {
            return invalid(format!(
                "auth secret of {} bytes; use 1 to {SECRET_LEN_MAX} bytes (the server's --auth-secret-file)",
                secret.as_bytes().len()
            ));
        }
        if self.ttl.is_zero() {
            return invalid("ttl 0: a hold needs a positive TTL; use e.g. Duration::from_secs(10)");
        }
        if self.timeout.is_zero() {
            return invalid(
                "timeout 0: I/O needs a positive timeout; use e.g. Duration::from_secs(5)",
            );
        }
        if self.pool_size < POOL_SIZE_MIN {
            return invalid(format!(
                "pool_size {}: too small; use at least {POOL_SIZE_MIN} so a release can run while an acquire waits",
                self.pool_size
            ));
        }
        if !(RENEWALS_PER_TTL_MIN..=RENEWALS_PER_TTL_MAX).contains(&self.renewals_per_ttl) {
            return invalid(format!(
                "renewals_per_ttl {}: use {RENEWALS_PER_TTL_MIN} to {RENEWALS_PER_TTL_MAX} (3 renews every TTL/3)",
                self.renewals_per_ttl
            ));
        }
        let client_id = match self.client_id {
            Some(id) => id,
            None => generated_client_id(),
        };
        if client_id.is_empty() || client_id.len() > CLIENT_ID_LEN_MAX {
            return invalid(format!(
                "client_id {client_id:?} is {} bytes; use 1 to {CLIENT_ID_LEN_MAX} bytes",
                client_id.len()
            ));
        }
        Ok(Client {
            jitter: AtomicU64::new(jitter_seed()),
            addr: servers.join(","),
            servers,
            client_id,
            ttl_ms: match self.ttl_server_default {
                true => 0,
                false => duration_to_ms(self.ttl),
            },
            timeout: self.timeout,
            retries: self.retries,
            flags: if self.session { FLAG_SESSION } else { 0 },
            owner_counter: AtomicU64::new(1),
            pool: Pool::new(self.pool_size),
            holds: Mutex::new(HashMap::new()),
            auth_secret: self.auth_secret,
            renewals_per_ttl: self.renewals_per_ttl,
        })
    }
}

/// A blocking distlockd client. See the module documentation.
pub struct Client {
    /// `servers` joined by commas, for messages.
    addr: String,
    /// Tried in order on every connect; the first that accepts is used.
    servers: Vec<String>,
    client_id: String,
    ttl_ms: u32,
    timeout: Duration,
    retries: u32,
    flags: u8,
    owner_counter: AtomicU64,
    /// xorshift state for backoff jitter; races between threads only make
    /// the numbers more random, so a relaxed load/store is enough.
    jitter: AtomicU64,
    pool: Pool,
    /// The latest hold this client took on each name, for [`Client::release`].
    holds: Mutex<HashMap<String, Lease>>,
    auth_secret: Option<Secret>,
    renewals_per_ttl: u32,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("client_id", &self.client_id)
            .field("ttl_ms", &self.ttl_ms)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("session", &(self.flags & FLAG_SESSION != 0))
            .field("pool_size", &self.pool.size)
            .field("renewals_per_ttl", &self.renewals_per_ttl)
            .finish()
    }
}

impl Client {
    /// A client with the default settings. `addr` is `host:port`, or a
    /// comma-separated list of them: each connect tries them in order and
    /// uses the first that accepts.
    pub fn new(addr: impl ToString) -> Result<Client> {
        Client::builder(addr).build()
    }

    /// A client with the default settings for the server the environment
    /// names; see [`Client::builder_from_env`].
    pub fn from_env() -> Result<Client> {
        Client::builder_from_env()?.build()
    }

    /// A builder for the server(s) in `$DISTLOCKD_SERVER` (a `host:port`
    /// or a comma-separated list of them), or [`SERVER_DEFAULT`] if it is
    /// unset or empty, with the secret from the file named by
    /// `$DISTLOCKD_AUTH_SECRET_FILE` if that is set and not empty: the
    /// variables the `distlockd` CLI reads. A bad value is an
    /// [`Error::InvalidArgument`] naming the variable.
    pub fn builder_from_env() -> Result<ClientBuilder> {
        let servers = servers::from_env().map_err(|what| Error::InvalidArgument { what })?;
        let addr = servers.map_or_else(|| SERVER_DEFAULT.to_owned(), |list| list.join(","));
        let mut builder = Client::builder(addr);
        if let Some(file) = std::env::var_os(SECRET_FILE_ENV).filter(|v| !v.is_empty()) {
            let (secret, _) = read_secret_file(std::path::Path::new(&file)).map_err(|e| {
                Error::InvalidArgument {
                    what: format!("{SECRET_FILE_ENV}: {e}"),
                }
            })?;
            builder = builder.auth_secret(secret);
        }
        Ok(builder)
    }

    pub fn builder(addr: impl ToString) -> ClientBuilder {
        ClientBuilder {
            addr: addr.to_string(),
            ttl: TTL_DEFAULT,
            timeout: TIMEOUT_DEFAULT,
            retries: RETRIES_DEFAULT,
            pool_size: POOL_SIZE_DEFAULT,
            session: false,
            client_id: None,
            auth_secret: None,
            renewals_per_ttl: RENEWALS_PER_TTL_DEFAULT,
            ttl_server_default: false,
        }
    }

    /// The server address, or the comma-separated list of them.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Whether the server answers PING, right now: one attempt, no retries
    /// and no backoff. Never panics; the reason for `false` is logged at
    /// debug level.
    pub fn check_server_health(&self) -> bool {
        match self.call(&Op::Ping, 0) {
            Ok(Answer::Pong) => true,
            Ok(other) => {
                debug!("health check of {}: answered {other:?}", self.addr);
                false
            }
            Err(e) => {
                debug!("health check of {}: {e}", self.addr);
                false
            }
        }
    }

    /// PING: whether the server serves this client's requests, with the
    /// reason if not (for example [`ErrorCode::Auth`] from a server that
    /// needs a secret this client does not have; HELLO alone is answered
    /// before AUTH, so [`Client::server_info`] cannot tell).
    pub fn ping(&self) -> Result<()> {
        match self.call(&Op::Ping, self.retries)? {
            Answer::Pong => Ok(()),
            Answer::Error { code, message } => Err(Error::Server { code, message }),
            other => unreachable!("Op::accepts admitted {other:?} for PING"),
        }
    }

    /// The server's version and limits.
    pub fn server_info(&self) -> Result<ServerInfo> {
        match self.call(&Op::Hello, self.retries)? {
            Answer::Hello(info) => Ok(info),
            Answer::Error { code, message } => Err(Error::Server { code, message }),
            other => unreachable!("Op::accepts admitted {other:?} for HELLO"),
        }
    }

    /// The state of lock `name`: `None` if nobody holds it.
    pub fn status(&self, name: &str) -> Result<Option<LockStatus>> {
        check_name(name)?;
        match self.call(&Op::Status { name, cursor: 0 }, self.retries)? {
            Answer::Status { locks, .. } => Ok(locks.into_iter().next()),
            Answer::Error { code, message } => Err(Error::Server { code, message }),
            other => unreachable!("Op::accepts admitted {other:?} for STATUS"),
        }
    }

    /// Up to `limit` held locks, fetched page by page. A listing that spans
    /// changes may miss or repeat locks taken or released meanwhile.
    pub fn list_locks(&self, limit: usize) -> Result<LockList> {
        let mut list = LockList {
            total: 0,
            locks: Vec::new(),
            truncated: false,
        };
        let mut cursor = 0;
        loop {
            let op = Op::Status { name: "", cursor };
            let (total, next_cursor, locks) = match self.call(&op, self.retries)? {
                Answer::Status {
                    total,
                    next_cursor,
                    locks,
                } => (total, next_cursor, locks),
                Answer::Error { code, message } => return Err(Error::Server { code, message }),
                other => unreachable!("Op::accepts admitted {other:?} for STATUS"),
            };
            list.total = total;
            for lock in locks {
                if list.locks.len() == limit {
                    list.truncated = true;
                    return Ok(list);
                }
                list.locks.push(lock);
            }
            if next_cursor == 0 {
                return Ok(list);
            }
            cursor = next_cursor;
        }
    }

    /// Takes `name`, waiting on the server (in FIFO order with other waiters)
    /// for up to `wait`, or with no deadline for [`WAIT_FOREVER`].
    /// `Err(AcquireTimeout)` if it stayed held; a finite wait over
    /// [`WAIT_FINITE_MAX`] is `Err(InvalidArgument)`.
    pub fn acquire(&self, name: &str, wait: Duration) -> Result<Lease> {
        let started = Instant::now();
        match self.acquire_inner(name, wait, self.flags)? {
            Some(lease) => Ok(lease),
            None => Err(Error::AcquireTimeout {
                name: name.to_owned(),
                waited: started.elapsed(),
            }),
        }
    }

    /// Takes `name` if it is free: `Ok(None)` if someone else holds it.
    pub fn try_acquire(&self, name: &str) -> Result<Option<Lease>> {
        self.acquire_inner(name, Duration::ZERO, self.flags)
    }

    /// [`Client::acquire`] returning a guard that releases on drop.
    pub fn lock(&self, name: &str, wait: Duration) -> Result<LockGuard<'_>> {
        let lease = self.acquire(name, wait)?;
        Ok(LockGuard {
            client: self,
            lease,
            released: false,
        })
    }

    /// Releases this client's latest hold on `name`.
    ///
    /// With threads sharing a `Client`, this releases whichever hold of this
    /// client on `name` is the most recent, which may be another thread's if
    /// ours expired and that thread took the name since; prefer
    /// [`LockGuard`] or [`Client::release_lease`] there.
    pub fn release(&self, name: &str) -> Result<()> {
        let lease = self.holds().get(name).cloned();
        match lease {
            Some(lease) => self.release_lease(&lease),
            None => Err(Error::NotHeld {
                name: name.to_owned(),
                reason: NotHeldCause::NotAcquiredHere,
            }),
        }
    }

    /// Releases the hold described by `lease`.
    ///
    /// If a retry was needed because the first attempt's reply was lost, that
    /// attempt may have released it already and the retry answers NotHeld.
    pub fn release_lease(&self, lease: &Lease) -> Result<()> {
        let op = Op::Release {
            name: &lease.name,
            owner: &lease.owner,
            token: lease.token,
        };
        let answer = self.call(&op, self.retries)?;
        // Released or refused, the hold is not ours any more; a connection
        // failure keeps the record so the caller can release again.
        self.forget(lease);
        release_answer(lease, answer)
    }

    /// Sets the remaining TTL of `lease`'s hold to `ttl` from now; returns the
    /// TTL the server applied. `Err(NotHeld)` if the hold was lost.
    pub fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Duration> {
        self.extend_within(lease, ttl, self.retries, None)
    }

    /// [`Client::extend`] with `retries` and, if given, no I/O past
    /// `deadline` (see [`Client::call_within`]).
    fn extend_within(
        &self,
        lease: &Lease,
        ttl: Duration,
        retries: u32,
        deadline: Option<Instant>,
    ) -> Result<Duration> {
        if ttl.is_zero() {
            // On the wire 0 means "the server's default", which is not what
            // a caller passing zero means.
            return invalid("extend ttl 0: use a positive TTL; release the lock to give it up");
        }
        let op = Op::Extend {
            name: &lease.name,
            owner: &lease.owner,
            token: lease.token,
            ttl_ms: duration_to_ms(ttl),
        };
        let answer = self.call_within(&op, retries, deadline)?;
        self.extend_answer(lease, answer)
    }

    /// What an EXTEND's answer means for `lease`.
    fn extend_answer(&self, lease: &Lease, answer: Answer) -> Result<Duration> {
        match answer {
            Answer::Extended { ttl_ms } => Ok(Duration::from_millis(ttl_ms as u64)),
            Answer::NotHeld(reason) => {
                self.forget(lease);
                Err(Error::NotHeld {
                    name: lease.name.clone(),
                    reason: NotHeldCause::Server(reason),
                })
            }
            Answer::Error { code, message } => Err(Error::Server { code, message }),
            other => unreachable!("Op::accepts admitted {other:?} for EXTEND"),
        }
    }

    /// `Ok(None)`: still held by another owner when the wait ended.
    fn acquire_inner(&self, name: &str, wait: Duration, flags: u8) -> Result<Option<Lease>> {
        self.acquire_as(name, self.next_owner(), wait, flags)
    }

    /// ACQUIRE under `owner` exactly, rather than one of this client's own
    /// per-acquisition owners: for the lock CLI, whose `--owner` names the
    /// owner that `release` and `extend` then take, so that an `acquire` of
    /// a lock the same owner holds re-enters it. `Ok(None)`: still held by
    /// another owner when the wait ended.
    pub(crate) fn acquire_as(
        &self,
        name: &str,
        owner: String,
        wait: Duration,
        flags: u8,
    ) -> Result<Option<Lease>> {
        check_name(name)?;
        check_wait(wait)?;
        check_owner(&owner)?;
        let op = Op::Acquire {
            name,
            owner: &owner,
            ttl_ms: self.ttl_ms,
            wait,
            flags,
        };
        let answer = self.call(&op, self.retries)?;
        self.acquired(name, owner, answer)
    }

    /// The lease an ACQUIRE's `answer` grants, recorded for
    /// [`Client::release`]; `Ok(None)` if it was not granted.
    fn acquired(&self, name: &str, owner: String, answer: Answer) -> Result<Option<Lease>> {
        match answer {
            Answer::Granted {
                token,
                ttl_ms,
                reentered,
            } => {
                let lease = Lease {
                    name: name.to_owned(),
                    owner,
                    token,
                    ttl: Duration::from_millis(ttl_ms as u64),
                    reentered: reentered.unwrap_or(false),
                };
                self.holds().insert(lease.name.clone(), lease.clone());
                Ok(Some(lease))
            }
            // BUSY answers a wait of zero, including a retry whose wait was
            // used up by failed attempts.
            Answer::Busy | Answer::Timeout => Ok(None),
            Answer::Error { code, message } => Err(Error::Server { code, message }),
            other => unreachable!("Op::accepts admitted {other:?} for ACQUIRE"),
        }
    }

    /// Takes `name` as a SESSION hold over a new connection that stays out
    /// of the pool (a [`Binding`]), so no other request can break it.
    /// `Ok(None)`: still held by another owner when the wait ended.
    ///
    /// Connection failures are retried on a new connection with the same
    /// owner, which is safe: if a lost reply had granted the hold to the
    /// closed connection, the server either released it at the close or
    /// rebinds it to the new one on the same-owner ACQUIRE.
    pub(crate) fn acquire_bound(
        &self,
        name: &str,
        wait: Duration,
    ) -> Result<Option<(Lease, Binding)>> {
        check_name(name)?;
        check_wait(wait)?;
        let owner = self.next_owner();
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            let op = Op::Acquire {
                name,
                owner: &owner,
                ttl_ms: self.ttl_ms,
                wait,
                flags: self.flags | FLAG_SESSION,
            };
            let wait_ms = op.wait_ms_left(started.elapsed());
            let exchanged = self.connect(self.timeout).and_then(|mut conn| {
                let answer = self.exchange_op(&mut conn, &op, wait_ms, self.timeout)?;
                Ok((conn, answer))
            });
            let error = match exchanged {
                Ok((conn, answer)) => {
                    let closes = answer.closes_connection();
                    let Some(lease) = self.acquired(name, owner, answer)? else {
                        return Ok(None);
                    };
                    // A granted ACQUIRE is never answered by a closing ERROR.
                    debug_assert!(!closes);
                    let binding = Binding::new(conn).map_err(|e| Error::Connection {
                        addr: self.addr.clone(),
                        attempts: attempts + 1,
                        source: e,
                    })?;
                    return Ok(Some((lease, binding)));
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Io(e)) => e,
            };
            attempts += 1;
            if attempts > self.retries {
                return Err(Error::Connection {
                    addr: self.addr.clone(),
                    attempts,
                    source: error,
                });
            }
            let delay = self.backoff(attempts);
            debug!(
                "{}: attempt {attempts} failed: {error}; retrying in {delay:?}",
                self.addr
            );
            std::thread::sleep(delay);
        }
    }

    /// EXTEND of a SESSION hold over its own connection, waiting for the
    /// reply until `read_until` (the lease's end; `None`: the client's
    /// timeout) rather than the client's timeout: giving up would close the connection, and the server would
    /// release the hold at the close. One attempt: a new connection cannot
    /// carry the binding. Nothing is sent once [`Binding::stop`] was called.
    /// If the connection fails, [`Binding::closed`] says why.
    pub(crate) fn extend_bound(
        &self,
        binding: &Binding,
        lease: &Lease,
        ttl: Duration,
        read_until: Option<Instant>,
    ) -> Result<Duration> {
        let read_until = read_until.unwrap_or_else(|| Instant::now() + self.timeout);
        let op = Op::Extend {
            name: &lease.name,
            owner: &lease.owner,
            token: lease.token,
            ttl_ms: duration_to_ms(ttl),
        };
        let answer = binding.request(self, &op, read_until, true)?;
        self.extend_answer(lease, answer)
    }

    /// RELEASE of a SESSION hold: over its own connection while that is
    /// open, else through the pool (the server released the hold at the
    /// close, or will when it sees it; a RELEASE in between frees it
    /// sooner and otherwise answers NOT_HELD).
    pub(crate) fn release_bound(&self, binding: &Binding, lease: &Lease) -> Result<()> {
        let op = Op::Release {
            name: &lease.name,
            owner: &lease.owner,
            token: lease.token,
        };
        let answer = match binding.request(self, &op, Instant::now() + self.timeout, false) {
            Ok(answer) => answer,
            // Stopping the renewals shut the socket down under a renewal in
            // flight: the server ended the hold at that disconnect, which is
            // the release asked for. The RELEASE through the pool then finds
            // the lock free (or already someone else's).
            Err(_) if binding.shut_by_stop() => {
                return match self.release_lease(lease) {
                    Err(Error::NotHeld { .. }) => Ok(()),
                    other => other,
                };
            }
            Err(_) if binding.closed().is_some() => return self.release_lease(lease),
            Err(e) => return Err(e),
        };
        self.forget(lease);
        release_answer(lease, answer)
    }

    fn next_owner(&self) -> String {
        let n = self.owner_counter.fetch_add(1, Ordering::Relaxed);
        let owner = format!("{}:{n}", self.client_id);
        debug_assert!(owner.len() <= OWNER_LEN_CEILING);
        owner
    }

    fn holds(&self) -> MutexGuard<'_, HashMap<String, Lease>> {
        // A panic elsewhere while holding this lock cannot leave the map
        // half-updated (every update is one insert or remove).
        self.holds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the record of `lease` unless the name has been re-acquired since.
    fn forget(&self, lease: &Lease) {
        let mut holds = self.holds();
        if holds
            .get(&lease.name)
            .is_some_and(|held| held.token == lease.token && held.owner == lease.owner)
        {
            holds.remove(&lease.name);
        }
    }

    /// Sends `op` and returns its reply, retrying connection failures up to
    /// `retries` times with backoff.
    fn call(&self, op: &Op<'_>, retries: u32) -> Result<Answer> {
        self.call_within(op, retries, None)
    }

    /// [`Client::call`], and with a `deadline` no attempt starts at or after
    /// it, each attempt's connect and read timeouts end by it, and backoff
    /// sleeps stop at it. Writes keep the client's timeout: a request frame
    /// is small enough for an empty socket buffer, so a write does not block.
    fn call_within(&self, op: &Op<'_>, retries: u32, deadline: Option<Instant>) -> Result<Answer> {
        let started = Instant::now();
        let mut attempts = 0u32;
        let mut stale_retry_used = false;
        loop {
            let mut slot = self.pool.checkout(op.may_wait());
            // After checkout: time spent waiting for a connection counts
            // against the caller's wait too.
            let wait_ms = op.wait_ms_left(started.elapsed());
            let reused = slot.conn.is_some();
            let io_timeout = match deadline {
                None => self.timeout,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Connection {
                            addr: self.addr.clone(),
                            attempts,
                            source: io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("{} not sent: its deadline passed", op.kind_name()),
                            ),
                        });
                    }
                    left.min(self.timeout)
                }
            };
            let error = match self.attempt(&mut slot, op, wait_ms, io_timeout) {
                Ok(answer) => return Ok(answer),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Io(e)) => e,
            };
            drop(slot);
            if reused && !stale_retry_used && is_dead_connection(&error) {
                // A pooled connection the server closed while idle (a
                // restart, a stop): the others are likely dead too. This is
                // not a failure to reach the server, so it costs no attempt.
                stale_retry_used = true;
                self.pool.discard_idle();
                debug!(
                    "{}: pooled connection was closed ({error}); reconnecting",
                    self.addr
                );
                continue;
            }
            attempts += 1;
            if attempts > retries {
                return Err(Error::Connection {
                    addr: self.addr.clone(),
                    attempts,
                    source: error,
                });
            }
            let mut delay = self.backoff(attempts);
            if let Some(deadline) = deadline {
                delay = delay.min(deadline.saturating_duration_since(Instant::now()));
            }
            debug!(
                "{}: attempt {attempts} failed: {error}; retrying in {delay:?}",
                self.addr
            );
            std::thread::sleep(delay);
        }
    }

    /// One request on one connection. On any failure the connection is
    /// dropped (it is not in `slot`), so the pool never holds a connection
    /// whose next bytes are unknown.
    /// `io_timeout` bounds connecting and each read (plus the server's wait
    /// for a waiting ACQUIRE).
    fn attempt(
        &self,
        slot: &mut Slot<'_>,
        op: &Op<'_>,
        wait_ms: u32,
        io_timeout: Duration,
    ) -> Result<Answer, Failure> {
        let mut conn = match slot.conn.take() {
            Some(conn) => conn,
            None => self.connect(io_timeout)?,
        };
        let answer = self.exchange_op(&mut conn, op, wait_ms, io_timeout)?;
        if !answer.closes_connection() {
            slot.conn = Some(conn);
        }
        Ok(answer)
    }

    /// Sends `op` on `conn` and reads its reply. On `Err` the connection's
    /// next bytes are unknown and it must be dropped.
    fn exchange_op(
        &self,
        conn: &mut Conn,
        op: &Op<'_>,
        wait_ms: u32,
        io_timeout: Duration,
    ) -> Result<Answer, Failure> {
        if op.waits_forever() && conn.version < GRANTED_FLAGS_VERSION {
            return Err(Failure::Fatal(Error::InvalidArgument {
                what: format!(
                    "wait WAIT_FOREVER: the server at {} speaks protocol version {}, which cannot wait without a deadline; pass a finite wait or upgrade the server",
                    self.addr, conn.version
                ),
            }));
        }
        let mut frame = Vec::with_capacity(64);
        op.request(wait_ms).encode_to_vec(&mut frame);
        // No deadline, no read timeout: the reply comes when the lock is
        // granted. A server that dies closes the connection; a host that
        // vanishes is found by TCP keepalive (see `handshake`).
        let read_timeout = (!op.waits_forever())
            .then(|| io_timeout.saturating_add(Duration::from_millis(wait_ms as u64)));
        let answer = conn.exchange(&frame, read_timeout)?;
        if !op.accepts(&answer) {
            return Err(Failure::Fatal(Error::Protocol {
                message: format!("{} answered {} with {answer:?}", self.addr, op.kind_name()),
            }));
        }
        Ok(answer)
    }

    /// Opens a connection to the first server that accepts one, in the
    /// order given, and exchanges HELLO.
    fn connect(&self, io_timeout: Duration) -> Result<Conn, Failure> {
        let mut tried = Vec::with_capacity(self.servers.len());
        for server in &self.servers {
            match servers::connect(server, io_timeout) {
                Ok(stream) => return self.handshake(stream, server, io_timeout),
                Err(e) => tried.push((server.as_str(), e)),
            }
        }
        Err(Failure::Io(servers::unreachable(tried)))
    }

    fn handshake(
        &self,
        stream: TcpStream,
        server: &str,
        io_timeout: Duration,
    ) -> Result<Conn, Failure> {
        // Requests are single small frames; Nagle would hold each one back
        // waiting for an ACK.
        stream.set_nodelay(true).map_err(Failure::Io)?;
        // A wait without deadline reads with no timeout: keepalive finds a
        // server whose host vanished (a server that dies closes the socket).
        socket2::SockRef::from(&stream)
            .set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(TCP_KEEPALIVE_IDLE_S))
                    .with_interval(Duration::from_secs(TCP_KEEPALIVE_INTERVAL_S)),
            )
            .map_err(Failure::Io)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(Failure::Io)?;
        let mut conn = Conn {
            server: server.to_owned(),
            stream,
            input: vec![0; FRAME_SIZE_CEILING].into_boxed_slice(),
            read_timeout: None,
            version: 1,
        };
        let mut frame = Vec::with_capacity(32);
        Request::Hello {
            version: PROTOCOL_VERSION,
            client_name: CLIENT_NAME.as_bytes(),
        }
        .encode_to_vec(&mut frame);
        match conn.exchange(&frame, Some(io_timeout))? {
            Answer::Hello(info) if (1..=PROTOCOL_VERSION).contains(&info.protocol_version) => {
                conn.version = info.protocol_version;
                self.authenticate(&mut conn, io_timeout)?;
                Ok(conn)
            }
            Answer::Hello(info) => Err(Failure::Fatal(Error::Protocol {
                message: format!(
                    "{server} chose protocol version {} for our version {PROTOCOL_VERSION}",
                    info.protocol_version
                ),
            })),
            Answer::Error { code, message } => Err(Failure::Fatal(Error::Server { code, message })),
            other => Err(Failure::Fatal(Error::Protocol {
                message: format!("{server} answered HELLO with {other:?}"),
            })),
        }
    }

    /// Sends AUTH when this client has a secret.
    fn authenticate(&self, conn: &mut Conn, io_timeout: Duration) -> Result<(), Failure> {
        let Some(secret) = &self.auth_secret else {
            return Ok(());
        };
        let secret = secret.as_bytes();
        let mut frame = Vec::with_capacity(4 + secret.len());
        Request::Auth { secret }.encode_to_vec(&mut frame);
        match conn.exchange(&frame, Some(io_timeout))? {
            Answer::Authed => Ok(()),
            Answer::Error { code, message } => Err(Failure::Fatal(Error::Server { code, message })),
            other => Err(Failure::Fatal(Error::Protocol {
                message: format!("{} answered AUTH with {other:?}", self.addr),
            })),
        }
    }

    /// Exponential backoff with up to 50% jitter, so clients that failed
    /// together do not retry together.
    fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        let delay = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_MAX);
        let jitter_ms = self.next_random() % (delay.as_millis() as u64 / 2 + 1);
        delay + Duration::from_millis(jitter_ms)
    }

    fn next_random(&self) -> u64 {
        let mut x = self.jitter.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter.store(x, Ordering::Relaxed);
        x
    }
}

/// A request with owned-by-caller fields, re-encoded on each attempt because
/// a waiting ACQUIRE's wait shrinks by the time already spent.
enum Op<'a> {
    Hello,
    Ping,
    Acquire {
        name: &'a str,
        owner: &'a str,
        ttl_ms: u32,
        wait: Duration,
        flags: u8,
    },
    Release {
        name: &'a str,
        owner: &'a str,
        token: u64,
    },
    Extend {
        name: &'a str,
        owner: &'a str,
        token: u64,
        ttl_ms: u32,
    },
    Status {
        name: &'a str,
        cursor: u32,
    },
}

impl Op<'_> {
    /// Whether the server may hold the reply back (a waiting ACQUIRE).
    fn may_wait(&self) -> bool {
        matches!(self, Op::Acquire { wait, .. } if !wait.is_zero())
    }

    /// `wait_ms` for the next attempt; 0 for a wait with no deadline,
    /// which [`Op::request`] sends as flag WAIT_FOREVER instead.
    fn wait_ms_left(&self, elapsed: Duration) -> u32 {
        match self {
            Op::Acquire { wait, .. } if *wait == WAIT_FOREVER => 0,
            Op::Acquire { wait, .. } => duration_to_ms(wait.saturating_sub(elapsed)),
            _ => 0,
        }
    }

    /// An ACQUIRE that waits with no deadline.
    fn waits_forever(&self) -> bool {
        matches!(self, Op::Acquire { wait, .. } if *wait == WAIT_FOREVER)
    }

    fn request(&self, wait_ms: u32) -> Request<'_> {
        match *self {
            Op::Hello => Request::Hello {
                version: PROTOCOL_VERSION,
                client_name: CLIENT_NAME.as_bytes(),
            },
            Op::Ping => Request::Ping,
            Op::Acquire {
                name,
                owner,
                ttl_ms,
                flags,
                ..
            } => Request::Acquire(Acquire {
                name: name.as_bytes(),
                owner: owner.as_bytes(),
                ttl_ms,
                wait_ms,
                flags: match self.waits_forever() {
                    true => flags | FLAG_WAIT_FOREVER,
                    false => flags,
                },
            }),
            Op::Release { name, owner, token } => Request::Release {
                name: name.as_bytes(),
                owner: owner.as_bytes(),
                token,
            },
            Op::Extend {
                name,
                owner,
                token,
                ttl_ms,
            } => Request::Extend {
                name: name.as_bytes(),
                owner: owner.as_bytes(),
                token,
                ttl_ms,
            },
            Op::Status { name, cursor } => Request::Status {
                name: name.as_bytes(),
                cursor,
            },
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            Op::Hello => "HELLO",
            Op::Ping => "PING",
            Op::Acquire { .. } => "ACQUIRE",
            Op::Release { .. } => "RELEASE",
            Op::Extend { .. } => "EXTEND",
            Op::Status { .. } => "STATUS",
        }
    }

    /// Whether `answer` is a possible reply to this request; anything else
    /// means the stream is out of step and the connection must go.
    fn accepts(&self, answer: &Answer) -> bool {
        matches!(
            (self, answer),
            (_, Answer::Error { .. })
                | (Op::Hello, Answer::Hello(_))
                | (Op::Ping, Answer::Pong)
                | (
                    Op::Acquire { .. },
                    Answer::Granted { .. } | Answer::Busy | Answer::Timeout
                )
                | (Op::Release { .. }, Answer::Released | Answer::NotHeld(_))
                | (
                    Op::Extend { .. },
                    Answer::Extended { .. } | Answer::NotHeld(_)
                )
                | (Op::Status { .. }, Answer::Status { .. })
        )
    }
}

/// What a RELEASE's answer means for `lease`.
fn release_answer(lease: &Lease, answer: Answer) -> Result<()> {
    match answer {
        Answer::Released => Ok(()),
        Answer::NotHeld(reason) => Err(Error::NotHeld {
            name: lease.name.clone(),
            reason: NotHeldCause::Server(reason),
        }),
        Answer::Error { code, message } => Err(Error::Server { code, message }),
        other => unreachable!("Op::accepts admitted {other:?} for RELEASE"),
    }
}

/// A reply copied out of the read buffer.
#[derive(Debug)]
enum Answer {
    Hello(ServerInfo),
    Pong,
    Granted {
        token: u64,
        ttl_ms: u32,
        reentered: Option<bool>,
    },
    Busy,
    Timeout,
    Released,
    Extended {
        ttl_ms: u32,
    },
    NotHeld(NotHeldReason),
    Error {
        code: ErrorCode,
        message: String,
    },
    Authed,
    Status {
        total: u32,
        next_cursor: u32,
        locks: Vec<LockStatus>,
    },
}

impl Answer {
    fn from_reply(reply: &Reply<'_>) -> Answer {
        match *reply {
            Reply::Hello(ref hello) => Answer::Hello(ServerInfo::from(hello)),
            Reply::Pong { .. } => Answer::Pong,
            Reply::Granted {
                token,
                ttl_ms,
                reentered,
            } => Answer::Granted {
                token,
                ttl_ms,
                reentered,
            },
            Reply::Busy { .. } => Answer::Busy,
            Reply::Timeout { .. } => Answer::Timeout,
            Reply::Released => Answer::Released,
            Reply::Extended { ttl_ms } => Answer::Extended { ttl_ms },
            Reply::NotHeld { reason } => Answer::NotHeld(reason),
            Reply::Error { code, message } => Answer::Error {
                code,
                message: String::from_utf8_lossy(message).into_owned(),
            },
            Reply::Authed => Answer::Authed,
            Reply::Status(status) => Answer::Status {
                total: status.total,
                next_cursor: status.next_cursor,
                locks: status.entries().map(|e| LockStatus::from(&e)).collect(),
            },
        }
    }

    /// The server closes the connection after these errors (frame
    /// boundaries are lost, or the connection was refused).
    fn closes_connection(&self) -> bool {
        matches!(
            self,
            Answer::Error {
                code: ErrorCode::Protocol
                    | ErrorCode::UnknownKind
                    | ErrorCode::FrameTooLarge
                    | ErrorCode::Limit
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Auth,
                ..
            }
        )
    }
}

/// How one attempt failed.
enum Failure {
    /// The connection failed or timed out: worth another attempt.
    Io(io::Error),
    /// The server answered, or answered nonsense: retrying will not help.
    Fatal(Error),
}

struct Conn {
    /// The address it was opened to, as configured, for messages.
    server: String,
    stream: TcpStream,
    /// One reply at a time: the server sends nothing unasked, so the buffer
    /// is empty between requests and one maximal frame always fits.
    input: Box<[u8]>,
    /// The read timeout currently set on the socket, to skip the syscall
    /// when it does not change.
    read_timeout: Option<Duration>,
    /// The protocol version HELLO chose.
    version: u16,
}

impl Conn {
    /// Writes `frame` and reads its reply; `read_timeout` `None` reads
    /// with no timeout.
    fn exchange(
        &mut self,
        frame: &[u8],
        read_timeout: Option<Duration>,
    ) -> Result<Answer, Failure> {
        if self.read_timeout != read_timeout {
            self.stream
                .set_read_timeout(read_timeout)
                .map_err(Failure::Io)?;
            self.read_timeout = read_timeout;
        }
        self.stream
            .write_all(frame)
            .map_err(|e| Failure::Io(name_timeout(e, "sending a request")))?;
        let mut filled = 0;
        loop {
            match decode_reply(&self.input[..filled]) {
                Ok(Some((reply, used))) if used == filled => return Ok(Answer::from_reply(&reply)),
                Ok(Some((reply, used))) => {
                    return Err(Failure::Fatal(Error::Protocol {
                        message: format!(
                            "server sent {} unexpected bytes after its reply {reply:?}",
                            filled - used
                        ),
                    }));
                }
                Ok(None) => {}
                Err(e) => match http_reply(&self.input[..filled]) {
                    Some(true) => {
                        return Err(Failure::Fatal(Error::HttpServer {
                            addr: self.server.clone(),
                        }));
                    }
                    // Could still be "HTTP/": read on to tell.
                    None => {}
                    Some(false) => {
                        return Err(Failure::Fatal(Error::Protocol {
                            message: format!("undecodable reply: {e}"),
                        }));
                    }
                },
            }
            // decode_reply rejects frames over FRAME_SIZE_CEILING from the
            // header, so an incomplete frame always has room left.
            debug_assert!(filled < self.input.len());
            match self.stream.read(&mut self.input[filled..]) {
                Ok(0) => {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection before replying",
                    )));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let waited = match read_timeout {
                        Some(t) => format!("waiting {:.3}s for a reply", t.as_secs_f64()),
                        None => "waiting for a reply".to_owned(),
                    };
                    return Err(Failure::Io(name_timeout(e, &waited)));
                }
            }
        }
    }
}

/// Whether `received`, the start of a reply, is an HTTP response:
/// `None` while it is too short to tell.
fn http_reply(received: &[u8]) -> Option<bool> {
    const STATUS_LINE_START: &[u8] = b"HTTP/";
    if received.len() < STATUS_LINE_START.len() {
        if STATUS_LINE_START.starts_with(received) {
            None
        } else {
            Some(false)
        }
    } else {
        Some(received.starts_with(STATUS_LINE_START))
    }
}

/// Socket timeouts surface as WouldBlock on Unix ("Resource temporarily
/// unavailable"); say what timed out instead.
fn name_timeout(e: io::Error, doing: &str) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(io::ErrorKind::TimedOut, format!("timed out {doing}"))
        }
        _ => e,
    }
}

fn is_dead_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// How often a holder of a SESSION hold looks, between renewals, whether
/// the server closed the hold's connection: a closed connection means the
/// hold is gone, and the holder should know within this long.
pub(crate) const SESSION_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// The connection a SESSION hold is bound to, kept out of the pool: the
/// server releases the hold the moment this connection closes, so only the
/// hold's own requests use it, and any failure on it counts as the end of
/// the hold (the client closes the connection, so the server releases the
/// hold if it has not already).
pub(crate) struct Binding {
    /// `None` once closed.
    conn: Mutex<Option<Conn>>,
    /// Why the connection closed; set once, read without waiting for a
    /// request in flight.
    closed: Mutex<Option<String>>,
    /// Another handle on the socket, to shut it down while a request is
    /// blocked on it.
    socket: TcpStream,
    /// Set by [`Binding::stop`]: renewals send nothing more.
    stopping: std::sync::atomic::AtomicBool,
    /// A renewal is between its `stopping` check and its reply.
    renewal_in_flight: std::sync::atomic::AtomicBool,
    /// [`Binding::stop`] shut the socket down under a renewal: the server
    /// ended the hold at that disconnect, as a release would have.
    shut_by_stop: std::sync::atomic::AtomicBool,
}

impl Binding {
    fn new(conn: Conn) -> io::Result<Binding> {
        Ok(Binding {
            socket: conn.stream.try_clone()?,
            conn: Mutex::new(Some(conn)),
            closed: Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
            renewal_in_flight: std::sync::atomic::AtomicBool::new(false),
            shut_by_stop: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Option<Conn>> {
        // Every update is one assignment: a panic cannot leave it half done.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why the connection closed (the server has released the hold, or
    /// will when it sees the close), or `None` while it is open.
    pub(crate) fn closed(&self) -> Option<String> {
        self.closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn close(&self, conn: &mut Option<Conn>, why: String) {
        *conn = None;
        self.closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(why);
    }

    /// Looks, without blocking, whether the server closed the connection;
    /// `false` if it did (then [`Binding::closed`] says so). A request in
    /// flight is not disturbed: the probe is skipped and that request finds
    /// out itself.
    pub(crate) fn probe(&self) -> bool {
        let Ok(mut conn) = self.conn.try_lock() else {
            return self.closed().is_none();
        };
        let Some(open) = conn.as_mut() else {
            return false;
        };
        let mut byte = [0u8; 1];
        let peeked = open
            .stream
            .set_nonblocking(true)
            .and_then(|()| open.stream.peek(&mut byte));
        let restored = open.stream.set_nonblocking(false);
        let why = match (peeked, restored) {
            (Ok(0), _) => "the server closed the connection".to_owned(),
            (Err(e), _) if e.kind() != io::ErrorKind::WouldBlock => e.to_string(),
            (_, Err(e)) => e.to_string(),
            // Open: nothing to read, or bytes the next request will see.
            _ => return true,
        };
        self.close(&mut conn, why);
        false
    }

    /// Sends no more renewals, and unblocks one in flight by shutting the
    /// socket down (which ends the hold on the server, as a release would).
    /// A renewal marks itself in flight before it checks `stopping`, and
    /// this sets `stopping` before it checks the mark, so either the
    /// renewal sees `stopping` or this sees the renewal (both SeqCst).
    /// Other holders of the connection lock (a probe) are not disturbed.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if self.renewal_in_flight.load(Ordering::SeqCst) {
            self.shut_by_stop.store(true, Ordering::SeqCst);
            let _ = self.socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Whether [`Binding::stop`] ended the hold by shutting the socket down.
    pub(crate) fn shut_by_stop(&self) -> bool {
        self.shut_by_stop.load(Ordering::SeqCst)
    }

    /// One request, reading until `read_until`; any failure closes the
    /// connection. `renewal`: refused once stopped.
    fn request(
        &self,
        client: &Client,
        op: &Op<'_>,
        read_until: Instant,
        renewal: bool,
    ) -> Result<Answer> {
        let mut conn = self.conn();
        let unsent = |why: String| Error::Connection {
            addr: client.addr.clone(),
            attempts: 0,
            source: io::Error::new(
                io::ErrorKind::NotConnected,
                format!("{} not sent: {why}", op.kind_name()),
            ),
        };
        if renewal {
            self.renewal_in_flight.store(true, Ordering::SeqCst);
            if self.stopping.load(Ordering::SeqCst) {
                self.renewal_in_flight.store(false, Ordering::SeqCst);
                return Err(unsent("renewal stopped".to_owned()));
            }
        }
        let result = self.request_locked(client, op, read_until, &mut conn, unsent);
        if renewal {
            self.renewal_in_flight.store(false, Ordering::SeqCst);
        }
        result
    }

    fn request_locked(
        &self,
        client: &Client,
        op: &Op<'_>,
        read_until: Instant,
        conn: &mut Option<Conn>,
        unsent: impl Fn(String) -> Error,
    ) -> Result<Answer> {
        let Some(open) = conn.as_mut() else {
            return Err(unsent(format!(
                "the SESSION connection was closed: {}",
                self.closed().unwrap_or_default()
            )));
        };
        let left = read_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(unsent("its deadline passed".to_owned()));
        }
        match client.exchange_op(open, op, 0, left) {
            Ok(answer) => {
                if answer.closes_connection() {
                    self.close(conn, format!("the server answered {answer:?}"));
                }
                Ok(answer)
            }
            Err(Failure::Io(e)) => {
                self.close(conn, e.to_string());
                Err(Error::Connection {
                    addr: client.addr.clone(),
                    attempts: 1,
                    source: e,
                })
            }
            Err(Failure::Fatal(e)) => {
                self.close(conn, e.to_string());
                Err(e)
            }
        }
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Binding")
            .field("closed", &self.closed())
            .finish_non_exhaustive()
    }
}

/// At most `size` connections; idle ones wait in `idle`.
struct Pool {
    size: usize,
    state: Mutex<PoolState>,
    changed: Condvar,
}

struct PoolState {
    idle: Vec<Conn>,
    /// Connections open or being opened, idle or not.
    open: usize,
    /// Slots checked out for an ACQUIRE that may wait on the server.
    waiting_acquires: usize,
}

impl PoolState {
    fn invariants(&self, size: usize) {
        debug_assert!(self.idle.len() <= self.open);
        debug_assert!(self.open <= size);
        debug_assert!(self.waiting_acquires < size);
    }
}

/// A checked-out share of the pool. `conn: None` means a connection may be
/// opened under this slot. On drop the connection (if any) goes back to the
/// idle list; without one, the slot's share is freed.
struct Slot<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    waits: bool,
}

impl Pool {
    fn new(size: usize) -> Pool {
        assert!(size >= POOL_SIZE_MIN);
        Pool {
            size,
            state: Mutex::new(PoolState {
                idle: Vec::with_capacity(size),
                open: 0,
                waiting_acquires: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        // Nothing panics while this lock is held; if it ever did, the counts
        // are still consistent (each update is a single statement).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until a connection (or room to open one) is free. A request
    /// that may wait on the server (`waits`) only gets one while fewer than
    /// `size - 1` such requests are out: the last share is kept for
    /// requests that answer at once, such as the RELEASE the waiters need.
    fn checkout(&self, waits: bool) -> Slot<'_> {
        let mut state = self.state();
        loop {
            state.invariants(self.size);
            let allowed = !waits || state.waiting_acquires < self.size - 1;
            if allowed {
                let conn = state.idle.pop();
                if conn.is_some() || state.open < self.size {
                    if conn.is_none() {
                        state.open += 1;
                    }
                    state.waiting_acquires += waits as usize;
                    return Slot {
                        pool: self,
                        conn,
                        waits,
                    };
                }
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Closes every idle connection.
    fn discard_idle(&self) {
        let idle = {
            let mut state = self.state();
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len();
            idle
        };
        drop(idle); // close the sockets outside the lock
        self.changed.notify_all();
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.state();
        state.waiting_acquires -= self.waits as usize;
        match self.conn.take() {
            Some(conn) => state.idle.push(conn),
            None => state.open -= 1,
        }
        state.invariants(self.pool.size);
        drop(state);
        // Waiters differ in what they need (any slot, or a waiting slot),
        // so wake them all rather than risk waking one that cannot proceed.
        self.pool.changed.notify_all();
    }
}

fn invalid<T>(what: impl Into<String>) -> Result<T> {
    Err(Error::InvalidArgument { what: what.into() })
}

/// A wait the protocol can carry: finite up to [`WAIT_FINITE_MAX`], or
/// [`WAIT_FOREVER`]. Longer finite waits are refused, not cut short.
fn check_wait(wait: Duration) -> Result<()> {
    if wait > WAIT_FINITE_MAX && wait != WAIT_FOREVER {
        return invalid(format!(
            "wait {:.0}s is over the longest finite wait, {}s (wait_ms is a u32 of milliseconds); pass WAIT_FOREVER to wait with no deadline",
            wait.as_secs_f64(),
            WAIT_FINITE_MAX.as_secs()
        ));
    }
    Ok(())
}

fn check_owner(owner: &str) -> Result<()> {
    if !(1..=OWNER_LEN_CEILING).contains(&owner.len()) {
        return invalid(format!(
            "owner is {} bytes; use 1 to {OWNER_LEN_CEILING} bytes",
            owner.len()
        ));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return invalid(format!(
            "lock name is empty; use 1 to {NAME_LEN_CEILING} bytes"
        ));
    }
    if name.len() > NAME_LEN_CEILING {
        return invalid(format!(
            "lock name {:?}... is {} bytes, over {NAME_LEN_CEILING}; use a shorter name",
            name.chars().take(16).collect::<String>(),
            name.len()
        ));
    }
    Ok(())
}

/// Checks the `host:port` shape of each address in the list without
/// resolving it, so a client can be built while DNS or the server is down.
fn check_addr(addr: &str) -> Result<Vec<String>> {
    servers::parse_list(addr).or_else(|e| {
        invalid(format!(
            "address {addr:?}: {e}; use host:port, or a comma-separated list of them, e.g. 127.0.0.1:9999"
        ))
    })
}

/// Milliseconds for the wire: rounded up (a positive wait never becomes 0,
/// which would mean "do not wait") and saturated at u32::MAX.
fn duration_to_ms(d: Duration) -> u32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    ms.min(u32::MAX as u128) as u32
}

fn nanos_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Unique per client with overwhelming likelihood: another process differs
/// in pid or start time, another client of this process in the sequence.
fn generated_client_id() -> String {
    let seq = CLIENT_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{:x}-{seq:x}", std::process::id(), nanos_since_epoch())
}

fn jitter_seed() -> u64 {
    let seed = nanos_since_epoch()
        ^ (CLIENT_SEQ.load(Ordering::Relaxed) << 32)
        ^ std::process::id() as u64;
    seed | 1 // xorshift must not start at zero
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_and_saturate() {
        assert_eq!(duration_to_ms(Duration::ZERO), 0);
        assert_eq!(duration_to_ms(Duration::from_nanos(1)), 1);
        assert_eq!(duration_to_ms(Duration::from_micros(1500)), 2);
        assert_eq!(duration_to_ms(Duration::from_millis(5000)), 5000);
        assert_eq!(duration_to_ms(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn addresses_need_host_and_port() {
        assert!(check_addr("127.0.0.1:9999").is_ok());
        assert!(check_addr("[::1]:9999").is_ok());
        assert!(check_addr("lockd.internal:1").is_ok());
        assert_eq!(check_addr("a:1, b:2").unwrap(), ["a:1", "b:2"]);
        for bad in ["127.0.0.1", ":9999", "host:", "host:99999", ""] {
            let err = check_addr(bad).unwrap_err().to_string();
            assert!(err.contains("host:port"), "{bad}: {err}");
        }
    }

    #[test]
    fn http_replies_are_told_from_frames() {
        assert_eq!(http_reply(b"HTTP/1.1 400 Bad Request\r\n"), Some(true));
        assert_eq!(http_reply(b"HTTP"), None);
        assert_eq!(http_reply(b"H"), None);
        assert_eq!(http_reply(b"HELLO"), Some(false));
        assert_eq!(http_reply(&[0xff, 0, 0]), Some(false));
    }

    #[test]
    fn generated_ids_fit_and_differ() {
        let a = generated_client_id();
        let b = generated_client_id();
        assert_ne!(a, b);
        assert!(a.len() <= CLIENT_ID_LEN_MAX);
        let longest = format!("{}:{}", "x".repeat(CLIENT_ID_LEN_MAX), u64::MAX);
        assert_eq!(longest.len(), OWNER_LEN_CEILING);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let client = Client::new("127.0.0.1:9").unwrap();
        for attempt in 1..40 {
            let base = BACKOFF_BASE
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(BACKOFF_MAX);
            let delay = client.backoff(attempt);
            assert!(
                delay >= base && delay <= base + base / 2,
                "attempt {attempt}: {delay:?}"
            );
        }
    }

    #[test]
    fn pool_keeps_one_connection_for_non_waiting_requests() {
        let pool = Pool::new(2);
        let waiting = pool.checkout(true);
        // A second waiting request would block; a non-waiting one gets the
        // reserved share at once.
        let quick = pool.checkout(false);
        assert_eq!(pool.state().open, 2);
        drop(quick);
        drop(waiting);
        let state = pool.state();
        assert_eq!((state.open, state.waiting_acquires), (0, 0));
    }

    #[test]
    fn client_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Client>();
        assert_send_sync::<Error>();
        assert_send_sync::<RenewingGuard>();
        assert_send_sync::<Leadership>();
        assert_send_sync::<Election>();
    }
}
