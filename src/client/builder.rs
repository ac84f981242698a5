//! [`ClientBuilder`]: a client's settings, their defaults and checks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    Client, DropReleaseError, DropReleaseHook, Error, Inner, Pool, Result, SERVER_DEFAULT, invalid,
    servers,
};
use crate::auth::{SECRET_FILE_ENV, SECRET_LEN_MAX, SECRET_LEN_MIN, Secret, read_secret_file};
use crate::limits::OWNER_LEN_CEILING;

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

/// Decimal digits of the largest per-client counter in an owner id.
const OWNER_COUNTER_LEN_MAX: usize = 20;
/// Longest client id: `{client_id}:{counter}` must fit the server's owner
/// ceiling for any counter value.
pub const CLIENT_ID_LEN_MAX: usize = OWNER_LEN_CEILING - 1 - OWNER_COUNTER_LEN_MAX;
/// The generated id is `{pid:x}-{nanos:x}-{seq:x}`: at most 8 + 1 + 16 + 1 + 16.
const _: () = assert!(8 + 1 + 16 + 1 + 16 <= CLIENT_ID_LEN_MAX);
const _: () = assert!((u64::MAX).ilog10() as usize + 1 == OWNER_COUNTER_LEN_MAX);

/// Makes the ids of clients created in the same process and nanosecond differ.
static CLIENT_SEQ: AtomicU64 = AtomicU64::new(0);

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
    on_drop_release_error: Option<DropReleaseHook>,
}

impl ClientBuilder {
    /// TTL of every hold this client takes unless a lock sets its own
    /// ([`LockOptions::ttl`](super::LockOptions::ttl)); default 10 s. Must
    /// be positive.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Connect, read and write timeout (default 5 s). Must be positive;
    /// `Duration::MAX` is no deadline.
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

    /// `true`: holds are SESSION holds unless a lock says otherwise
    /// ([`LockOptions::session`](super::LockOptions::session)): the server
    /// also releases one when the connection that took it closes (the
    /// process dies, a network failure, the server's idle or write
    /// timeout, this client drops that connection after an I/O error on
    /// it, or it is closed on purpose: a pooled connection when the last
    /// handle on the client is dropped, which means every clone and every
    /// [`RenewingGuard`](super::RenewingGuard),
    /// [`Election`](super::Election) and
    /// [`SessionLease`](super::SessionLease), as each keeps one; a SESSION
    /// hold's own connection when its guard or `SessionLease` is dropped).
    /// `false` (default): holds survive disconnects until released or
    /// expired.
    ///
    /// A SESSION hold from [`Client::acquire`], [`Client::lock`],
    /// [`Client::try_acquire`] or their `_with` forms is bound to a pooled
    /// connection, which any request of this client may drop after an I/O
    /// error, ending the hold without a word. [`Client::acquire_session`],
    /// [`Client::lock_renewing`] and [`Election`](super::Election) give a
    /// SESSION hold a connection of its own (a
    /// [`SessionLease`](super::SessionLease)); the renewing guard reports
    /// its loss, see [SESSION
    /// holds](super::RenewingGuard#session-holds).
    pub fn session(mut self, session: bool) -> Self {
        self.session = session;
        self
    }

    /// How often a [`RenewingGuard`](super::RenewingGuard) (and a
    /// [`Leadership`](super::Leadership)) renews: every TTL /
    /// `renewals_per_ttl` (default 3, from 2 to 100).
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
    /// on every new connection: [`SECRET_LEN_MIN`](super::SECRET_LEN_MIN)
    /// to [`SECRET_LEN_MAX`](super::SECRET_LEN_MAX) bytes (16 to 255), as
    /// the server takes; [`build`](ClientBuilder::build) refuses others.
    /// [`Client::builder_from_env`] reads it from the file
    /// `$DISTLOCKD_AUTH_SECRET_FILE` names, the way the server reads its
    /// own.
    pub fn auth_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.auth_secret = Some(Secret::from(secret.into()));
        self
    }

    /// Calls `f` whenever a guard of this client
    /// ([`LockGuard`](super::LockGuard),
    /// [`RenewingGuard`](super::RenewingGuard),
    /// [`Leadership`](super::Leadership)) fails to release its lock when
    /// dropped: a drop cannot return the error, and a hold left behind
    /// lasts until its TTL. `f` runs in the drop, on the thread that dropped
    /// the guard, after the failure is logged and counted
    /// ([`Client::drop_release_errors`]); keep it short, and it must not
    /// panic (a panic in a drop during unwinding aborts). `unlock` and
    /// `resign` return the error instead.
    pub fn on_drop_release_error(
        mut self,
        f: impl Fn(&DropReleaseError) + Send + Sync + 'static,
    ) -> Self {
        self.on_drop_release_error = Some(DropReleaseHook(Arc::new(f)));
        self
    }

    pub fn build(self) -> Result<Client> {
        let servers = check_addr(&self.addr)?;
        // No server starts with a secret of another length, so none could
        // accept it: refused here rather than by every AUTH.
        if let Some(secret) = &self.auth_secret
            && !(SECRET_LEN_MIN..=SECRET_LEN_MAX).contains(&secret.as_bytes().len())
        {
            return invalid(format!(
                "auth secret of {} bytes: no server takes it; use {SECRET_LEN_MIN} to {SECRET_LEN_MAX} bytes, the contents of the server's --auth-secret-file",
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
        let ttl_ms = super::options::ttl_to_ms(self.ttl, "ClientBuilder::ttl")?;
        Ok(Client {
            inner: Arc::new(Inner {
                jitter: AtomicU64::new(jitter_seed()),
                addr: servers.join(","),
                servers,
                client_id,
                ttl_ms,
                timeout: self.timeout,
                retries: self.retries,
                session: self.session,
                owner_counter: AtomicU64::new(1),
                pool: Pool::new(self.pool_size),
                holds: Mutex::new(HashMap::new()),
                auth_secret: self.auth_secret,
                renewals_per_ttl: self.renewals_per_ttl,
                drop_release_errors: AtomicU64::new(0),
                on_drop_release_error: self.on_drop_release_error,
            }),
        })
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
            on_drop_release_error: None,
        }
    }

    /// The server address, or the comma-separated list of them.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// How many times a request is retried after a connection failure
    /// ([`ClientBuilder::retries`]).
    pub fn retries(&self) -> u32 {
        self.inner.retries
    }
}

/// Checks the `host:port` shape of each address in the list without
/// resolving it, so a client can be built while DNS or the server is down.
pub(super) fn check_addr(addr: &str) -> Result<Vec<String>> {
    servers::parse_list(addr).or_else(|e| {
        invalid(format!(
            "address {addr:?}: {e}; use host:port, or a comma-separated list of them, e.g. 127.0.0.1:9999"
        ))
    })
}

pub(super) fn nanos_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Unique per client with overwhelming likelihood: another process differs
/// in pid or start time, another client of this process in the sequence.
pub(super) fn generated_client_id() -> String {
    let seq = CLIENT_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{:x}-{seq:x}", std::process::id(), nanos_since_epoch())
}

pub(super) fn jitter_seed() -> u64 {
    let seed = nanos_since_epoch()
        ^ (CLIENT_SEQ.load(Ordering::Relaxed) << 32)
        ^ std::process::id() as u64;
    seed | 1 // xorshift must not start at zero
}
