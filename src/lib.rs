//! distlockd: named locks with fencing tokens, served by a small daemon.
//!
//! Most programs need only the [`client`]: take a lock, do the work, let the
//! guard release it.
//!
//! ```no_run
//! use std::time::Duration;
//! use distlockd::client::Client;
//!
//! let client = Client::new("127.0.0.1:9999")?;
//! // Wait on the server, FIFO behind other waiters, for up to 5 s.
//! let guard = client.lock("nightly-report", Duration::from_secs(5))?;
//! // Pass the fencing token to what the lock protects, so that it can
//! // refuse a write carrying an older one.
//! println!("holding nightly-report under token {}", guard.token());
//! drop(guard); // released
//! # Ok::<(), distlockd::client::Error>(())
//! ```
//!
//! # Modules and features
//!
//! - [`client`]: the blocking client: a pool of `std::net` connections,
//!   guards that release on drop, renewal, leader election.
//! - [`protocol`]: the wire format both sides speak, decoded in place, and
//!   a blocking connection that sends a frame and reads one reply.
//! - `server` (feature `server`, on by default): the daemon, to embed it:
//!   `server::{Server, Config, ServerHandle, Stopper}` and `Limits`.
//!
//! With `default-features = false` the library is the client and the
//! protocol alone and depends on `log` only; feature `keepalive` adds TCP
//! keepalive on the client's connections (through `socket2`), which a wait
//! with no deadline needs to notice a server whose host vanished.

#![forbid(unsafe_code)]

pub mod client;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;

#[cfg(feature = "server")]
pub use limits::{Limit, Limits, LimitsError};

/// Modules that are not the library's interface: `pub(crate)`, except with
/// the `internals` feature, which this package's own tests and benches turn
/// on (a dev-dependency on itself) to reach them.
macro_rules! internal_modules {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {$(
        $(#[$attr])*
        #[cfg(feature = "internals")]
        #[doc(hidden)]
        pub mod $name;
        $(#[$attr])*
        #[cfg(not(feature = "internals"))]
        pub(crate) mod $name;
    )*};
}

internal_modules! {
    auth,
    buffer,
    limits,
    #[cfg(feature = "server")] execute,
    #[cfg(feature = "server")] http,
    #[cfg(feature = "server")] metrics,
    #[cfg(feature = "server")] replication,
    #[cfg(feature = "server")] storage,
    #[cfg(feature = "server")] table,
    #[cfg(feature = "server")] wheel,
}

/// The fuzz targets' checks (`fuzz/`), also run by the unit tests.
#[cfg(all(feature = "server", any(test, feature = "fuzzing")))]
#[doc(hidden)]
pub mod check;

/// Compiles the README's examples as doctests, so they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
