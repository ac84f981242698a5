//! [`Error`]: why the client could not do what was asked.

use std::fmt;
use std::io;
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use log::warn;

use super::{Client, Lease, Result, servers};
use crate::limits::PROTOCOL_VERSION;
use crate::protocol::{ErrorCode, NotHeldReason};

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
#[non_exhaustive]
pub enum NotHeldCause {
    /// This `Client` has no record of holding the name: it never acquired it,
    /// or it already released it. Nothing was sent.
    NotAcquiredHere,
    /// The server's answer.
    Server(NotHeldReason),
    /// The hold was a SESSION hold whose connection closed: the close ended
    /// it (the server releases such holds when it sees the close), so
    /// nothing is left behind, even when the RELEASE sent after it could
    /// not reach the server.
    SessionClosed,
}

impl NotHeldCause {
    /// A short upper-case name, for machine-readable output: the server's
    /// reason name, `NOT_ACQUIRED_HERE` or `SESSION_CLOSED`.
    pub fn name(self) -> &'static str {
        match self {
            NotHeldCause::NotAcquiredHere => "NOT_ACQUIRED_HERE",
            NotHeldCause::Server(reason) => reason.name(),
            NotHeldCause::SessionClosed => "SESSION_CLOSED",
        }
    }

    /// What it means, in words.
    pub fn text(self) -> &'static str {
        not_held_text(self)
    }
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

pub(super) fn not_held_text(reason: NotHeldCause) -> &'static str {
    match reason {
        NotHeldCause::NotAcquiredHere => {
            "this client never acquired it or already released it; release only names acquired through the same Client"
        }
        NotHeldCause::Server(reason) => not_held_reason_text(reason),
        NotHeldCause::SessionClosed => {
            "its SESSION connection closed, which ended the hold; nothing is left behind"
        }
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

pub(super) fn invalid<T>(what: impl Into<String>) -> Result<T> {
    Err(Error::InvalidArgument { what: what.into() })
}

/// A release that failed when a guard was dropped, as
/// [`ClientBuilder::on_drop_release_error`](super::ClientBuilder::on_drop_release_error)
/// hears it: a drop cannot return the error, and a hold left behind lasts
/// until its TTL, so a program may want to know.
#[derive(Debug)]
#[non_exhaustive]
pub struct DropReleaseError {
    /// The hold that was to be released.
    pub lease: Lease,
    /// Why the release failed: `Error::NotHeld` if the hold was gone
    /// already (it expired, and may be someone else's), `Error::Connection`
    /// if the server could not be reached (the hold lasts until its TTL).
    pub error: Error,
}

impl fmt::Display for DropReleaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "releasing lock {:?} (token {}) on drop failed: {}",
            self.lease.name, self.lease.token, self.error
        )
    }
}

impl std::error::Error for DropReleaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

type DropReleaseCallback = dyn Fn(&DropReleaseError) + Send + Sync;

/// The callback set with `on_drop_release_error`, shared by the builder's
/// clones and the client's handles.
#[derive(Clone)]
pub(super) struct DropReleaseHook(pub(super) Arc<DropReleaseCallback>);

impl fmt::Debug for DropReleaseHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DropReleaseHook(..)")
    }
}

impl Client {
    /// How many releases failed when a guard ([`LockGuard`](super::LockGuard),
    /// [`RenewingGuard`](super::RenewingGuard),
    /// [`Leadership`](super::Leadership)) of this client was dropped, since
    /// it was built; every handle on the client counts into the same total.
    pub fn drop_release_errors(&self) -> u64 {
        self.inner.drop_release_errors.load(Ordering::Relaxed)
    }

    /// Tells a release that failed in a guard's drop: logged, counted, and
    /// handed to the builder's callback if one is set.
    pub(super) fn report_drop_release(&self, lease: &Lease, error: Error) {
        let failure = DropReleaseError {
            lease: lease.clone(),
            error,
        };
        warn!("{failure}");
        self.inner
            .drop_release_errors
            .fetch_add(1, Ordering::Relaxed);
        if let Some(DropReleaseHook(callback)) = &self.inner.on_drop_release_error {
            callback(&failure);
        }
    }
}
