//! The blocking Rust client: named locks with fencing tokens over TCP.
//!
//! A [`Client`] owns a bounded pool of connections to one server and is
//! `Send + Sync`: share it between threads with `&`, or clone it (a clone
//! is another handle on the same pool, as cheap as an `Arc`). Every request
//! checks a connection out of the pool, writes one frame, reads one reply and
//! checks the connection back in; nothing is held between requests, so a
//! thread holding a lock holds no connection.
//!
//! # Taking a lock
//!
//! ```no_run
//! use std::time::Duration;
//! use distlockd::client::{Client, Error, LockOptions};
//!
//! # fn main() -> Result<(), Error> {
//! // The client's settings are every lock's defaults.
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
//! // A lock of its own TTL and wait, as redis-py's
//! // lock(name, timeout=600, blocking_timeout=30).
//! let long_job = LockOptions::new()
//!     .ttl(Duration::from_secs(600))
//!     .wait(Duration::from_secs(30));
//! match client.lock_with("rebuild-index", &long_job) {
//!     Ok(guard) => println!("rebuilding under token {}", guard.token()),
//!     Err(Error::AcquireTimeout { .. }) => println!("still held after 30 s"),
//!     Err(e) => return Err(e),
//! }
//! // Renewed in the background for as long as the work takes; the guard
//! // keeps its own handle on the client.
//! let short = LockOptions::new().ttl(Duration::from_secs(10));
//! let guard = client.lock_renewing_with("compaction", &short)?;
//! for _ in 0..100 {
//!     if guard.is_lost() {
//!         break; // stop writing: another worker may hold it now
//!     }
//!     // ... one step of the work, passing guard.token() along ...
//! }
//! guard.unlock()?;
//! # Ok(())
//! # }
//! ```
//!
//! [`LockOptions`] sets a lock's TTL, wait, SESSION hold and owner for that
//! lock alone; `acquire_with`, `lock_with`, `lock_renewing_with`,
//! [`Client::acquire_session`] and [`Election::with_options`] take them.
//! The plain calls ([`Client::acquire`], [`Client::try_acquire`],
//! [`Client::lock`], [`Client::lock_renewing`]) use the client's settings.
//!
//! # Renewal
//!
//! One engine renews every hold that is renewed in the background: the
//! [`RenewingGuard`] from [`Client::lock_renewing`], every [`Leadership`],
//! and a hold the caller took and hands to [`Client::renew`] ([`Held`]: a
//! [`Lease`], or a [`SessionLease`] on a connection of its own), with a
//! [`Renewal`] that sets its schedule and hears each step. `distlockd run`
//! renews its lock through it. The engine counts a lease from
//! [`Lease::sent_at`], when the client sent the request that granted it,
//! so the caller never supplies the instant the loss rule rests on.
//!
//! # Layout
//!
//! `builder.rs` ([`ClientBuilder`], the defaults), `options.rs`
//! ([`LockOptions`]), `calls.rs` (each request as a type naming the replies
//! that answer it, and the [`Client`] methods that send them), `pool.rs`
//! (the bounded pool and the retry loop), `connection.rs` (connect, HELLO,
//! AUTH, and one request and its reply through
//! [`protocol::blocking`](crate::protocol::blocking), the protocol's one
//! loop that writes a frame and reads one whole reply),
//! `leases.rs` ([`Lease`], [`LockGuard`], [`SessionLease`]), `renewal.rs`
//! (the engine), `election.rs`, `errors.rs`, `servers.rs` (addresses).
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
//!   The exception is [`WAIT_FOREVER`], which reads with no timeout: with
//!   the `keepalive` feature TCP keepalive notices a server whose host
//!   vanished; without it that wait is not bounded (see [`WAIT_FOREVER`]).
//!   A thread that finds all `pool_size` connections busy waits (without a
//!   timeout of its own) for one of those requests to finish, and each of
//!   them is bounded as above.
//! - **Renewal never outlives its guard, and loss is told.** A
//!   [`RenewingGuard`] renews from a background thread that is stopped and
//!   joined before the guard's release is sent. It reports the lease lost
//!   when the server says so, or at the earliest moment the server could
//!   have expired it with no renewal confirmed (see [`Lost`]).
//!   [`Election`] builds leader election on the same guard.
//! - **A release that fails in a drop is told.** A guard dropped while
//!   its release fails (the hold expired and may be someone else's, or
//!   the server cannot be reached and the hold lasts until its TTL) never
//!   panics: the failure is logged, counted
//!   ([`Client::drop_release_errors`]) and handed to the callback set with
//!   [`ClientBuilder::on_drop_release_error`], as a [`DropReleaseError`].
//!   `unlock` and `resign` return the error instead. A SESSION hold whose
//!   connection closed ([`Lost::SessionClosed`]) ended with it, so a
//!   release failing after that is no failure: nothing is left behind.
//! - **A release is never starved by waiters.** At most `pool_size - 1`
//!   connections sit in waiting ACQUIREs, so a thread that holds a lock can
//!   always reach the server to release it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod builder;
mod calls;
mod connection;
mod election;
mod errors;
mod leases;
mod options;
mod pool;
mod renewal;
// Server lists as the client and the `distlockd` CLI parse them; the CLI's
// helpers in it are the binary's, not part of the interface.
#[doc(hidden)]
pub mod servers;

pub use builder::{
    CLIENT_ID_LEN_MAX, ClientBuilder, POOL_SIZE_DEFAULT, POOL_SIZE_MIN, RENEWALS_PER_TTL_DEFAULT,
    RENEWALS_PER_TTL_MAX, RENEWALS_PER_TTL_MIN, RETRIES_DEFAULT, TIMEOUT_DEFAULT, TTL_DEFAULT,
};
pub use calls::{LockList, LockStatus, ServerInfo, WAIT_FINITE_MAX, WAIT_FOREVER};
pub use election::{Election, Leadership};
pub use errors::{DropReleaseError, Error, NotHeldCause, not_held_reason_text};
pub use leases::{Lease, LockGuard, SESSION_PROBE_INTERVAL, SessionLease};
pub use options::LockOptions;
pub use renewal::{Held, Lost, Renewal, RenewalEvent, RenewingGuard};
pub use servers::{SERVER_DEFAULT, SERVER_ENV, SERVERS_MAX};

// The secret file's variable and reader that `Client::builder_from_env`
// and the `distlockd` CLI use, for a program that takes the same file.
pub use crate::auth::{SECRET_FILE_ENV, SECRET_LEN_MAX, SECRET_LEN_MIN, read_secret_file};

use leases::Binding;

use crate::auth::Secret;
use calls::{check_name, check_owner, check_wait, duration_to_ms};
use connection::{Conn, Failure};
use errors::{DropReleaseHook, invalid, not_held_text};
use pool::Pool;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A blocking distlockd client. See the module documentation.
///
/// Cloning is cheap and gives another handle on the same client: the same
/// pool, settings and owner ids. A [`RenewingGuard`] or an [`Election`]
/// keeps a handle of its own, so neither needs the caller to share the
/// client in an `Arc`.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// What every handle on one [`Client`] shares.
struct Inner {
    /// `servers` joined by commas, for messages.
    addr: String,
    /// Tried in order on every connect; the first that accepts is used.
    servers: Vec<String>,
    client_id: String,
    ttl_ms: u32,
    timeout: Duration,
    retries: u32,
    /// SESSION holds unless a lock says otherwise.
    session: bool,
    owner_counter: AtomicU64,
    /// xorshift state for backoff jitter; races between threads only make
    /// the numbers more random, so a relaxed load/store is enough.
    jitter: AtomicU64,
    pool: Pool,
    /// The latest hold this client took on each name, for [`Client::release`].
    holds: Mutex<HashMap<String, Lease>>,
    auth_secret: Option<Secret>,
    renewals_per_ttl: u32,
    /// Releases that failed in a guard's drop.
    drop_release_errors: AtomicU64,
    on_drop_release_error: Option<DropReleaseHook>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Client")
            .field("addr", &inner.addr)
            .field("client_id", &inner.client_id)
            .field("ttl_ms", &inner.ttl_ms)
            .field("timeout", &inner.timeout)
            .field("retries", &inner.retries)
            .field("session", &inner.session)
            .field("pool_size", &inner.pool.size)
            .field("renewals_per_ttl", &inner.renewals_per_ttl)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::OWNER_LEN_CEILING;
    use crate::limits::PROTOCOL_VERSION;
    use crate::protocol::Request;
    use crate::protocol::blocking::{Connection, INPUT_BUFFER_SIZE_MIN};
    use builder::{check_addr, generated_client_id};
    use pool::{BACKOFF_BASE, BACKOFF_MAX};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

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
        // What a request on a connection to a server that answers `bytes`
        // and closes comes to.
        fn answered(bytes: &'static [u8]) -> Failure {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = std::thread::spawn(move || {
                let (mut stream, _) = listener.accept().unwrap();
                // Read the request first: a close with it unread would
                // reset the connection, which may drop `bytes`.
                let mut request = [0u8; 64];
                let _ = stream.read(&mut request).unwrap();
                stream.write_all(bytes).unwrap();
            });
            let mut conn = Conn {
                server: addr.to_string(),
                wire: Connection::with_input_buffer_size(
                    TcpStream::connect(addr).unwrap(),
                    INPUT_BUFFER_SIZE_MIN,
                ),
                version: PROTOCOL_VERSION,
            };
            let timeout = Some(Duration::from_secs(5));
            let failure = conn.exchange(&Request::Ping, timeout, |_| ()).unwrap_err();
            server.join().unwrap();
            failure
        }
        let http = answered(b"HTTP/1.1 400 Bad Request\r\n");
        assert!(matches!(http, Failure::Fatal(Error::HttpServer { .. })));
        // Could still have become "HTTP/": read on, to the close.
        for start in [&b"HTTP"[..], b"H"] {
            let Failure::Io(e) = answered(start) else {
                panic!("{start:?} was told apart");
            };
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        }
        for frame in [&b"HELLO"[..], &[0xff, 0, 0]] {
            let failure = answered(frame);
            assert!(matches!(failure, Failure::Fatal(Error::Protocol { .. })));
        }
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
    pub(super) fn backoff_doubles_and_is_capped() {
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
        assert_send_sync::<SessionLease>();
        assert_send_sync::<Held>();
        assert_send_sync::<DropReleaseError>();
    }

    #[test]
    fn errors_a_program_sees_are_std_errors() {
        fn as_error<T: std::error::Error + Send + Sync + 'static>(
            e: T,
        ) -> Box<dyn std::error::Error> {
            Box::new(e)
        }
        let lost = as_error(Lost::SessionClosed {
            error: "reset".to_owned(),
        });
        assert!(lost.to_string().contains("reset"), "{lost}");
        let failure = DropReleaseError {
            lease: Lease::from_parts("a", "o", 1, Duration::from_secs(1)),
            error: Error::InvalidArgument {
                what: "why".to_owned(),
            },
        };
        let failure = as_error(failure);
        assert!(failure.to_string().contains("on drop failed"), "{failure}");
        assert_eq!(
            failure.source().map(|e| e.to_string()),
            Some("why".to_owned())
        );
    }
}
