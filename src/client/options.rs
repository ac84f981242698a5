//! [`LockOptions`]: how one lock is taken, when it should differ from the
//! client's defaults.

use std::time::Duration;

use super::calls::MS_FIELD_MAX;
use super::{Result, check_owner, check_wait, duration_to_ms, invalid};
use crate::protocol::FLAG_SESSION;

/// How one lock is taken: its TTL, how long to wait for it, whether it is a
/// SESSION hold, and its owner. What is not set comes from the client
/// ([`ClientBuilder::ttl`](super::ClientBuilder::ttl),
/// [`ClientBuilder::session`](super::ClientBuilder::session)); the wait is
/// zero (fail at once if the lock is held) unless set. Like redis-py's
/// `lock(name, timeout=, blocking_timeout=)`, each lock chooses for itself:
///
/// ```no_run
/// use std::time::Duration;
/// use distlockd::client::{Client, LockOptions};
///
/// # fn main() -> Result<(), distlockd::client::Error> {
/// let client = Client::new("127.0.0.1:9999")?;
/// let long_job = LockOptions::new()
///     .ttl(Duration::from_secs(600))
///     .wait(Duration::from_secs(30));
/// let guard = client.lock_with("nightly-report", &long_job)?;
/// println!("held under token {}", guard.token());
/// # Ok(())
/// # }
/// ```
///
/// The same options take a [renewing guard](super::Client::lock_renewing_with)
/// and [lead an election](super::Election::with_options).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockOptions {
    ttl: Option<Ttl>,
    wait: Duration,
    session: Option<bool>,
    owner: Option<String>,
}

/// The TTL an ACQUIRE asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ttl {
    Of(Duration),
    /// The server's `--ttl-default-ms`: sent as 0.
    ServerDefault,
}

impl LockOptions {
    /// The client's TTL and SESSION setting, no wait, an owner of the
    /// client's own.
    pub fn new() -> LockOptions {
        LockOptions::default()
    }

    /// How long the hold lasts unless released or extended. Must be
    /// positive; at most the server's `--ttl-max-ms` (the server refuses
    /// more).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(Ttl::Of(ttl));
        self
    }

    /// The server's default TTL (its `--ttl-default-ms`): the ACQUIRE
    /// asks for TTL 0 and [`Lease::ttl`](super::Lease::ttl) tells what was
    /// granted.
    pub fn ttl_server_default(mut self) -> Self {
        self.ttl = Some(Ttl::ServerDefault);
        self
    }

    /// Wait up to `wait` for a held lock, in the server's FIFO queue;
    /// [`WAIT_FOREVER`](super::WAIT_FOREVER) waits with no deadline (use
    /// the `keepalive` feature with it: without, a vanished server host
    /// blocks it forever).
    /// Default zero: fail at once. A finite wait over
    /// [`WAIT_FINITE_MAX`](super::WAIT_FINITE_MAX) is refused.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// `true`: a SESSION hold, which the server also releases when the
    /// connection that took it closes; see
    /// [`ClientBuilder::session`](super::ClientBuilder::session) for what
    /// that connection is, for each way of taking a lock.
    pub fn session(mut self, session: bool) -> Self {
        self.session = Some(session);
        self
    }

    /// Hold the lock as exactly this owner (1 to 64 bytes) instead of one
    /// the client generates for each acquisition. Another acquisition under
    /// the same owner re-enters the hold (same token,
    /// [`Lease::reentered`](super::Lease::reentered)) rather than waiting
    /// for it, so an owner must never be shared by two holders that should
    /// exclude each other. For a process that takes a lock another process
    /// releases, as `distlockd acquire --owner` does. An
    /// [`Election`](super::Election) refuses an owner: its candidates
    /// need owners of their own.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// These options with `wait` instead.
    pub(super) fn with_wait(&self, wait: Duration) -> LockOptions {
        LockOptions {
            wait,
            ..self.clone()
        }
    }

    /// These options as a SESSION hold.
    pub(super) fn with_session(&self) -> LockOptions {
        LockOptions {
            session: Some(true),
            ..self.clone()
        }
    }

    /// Whether the hold is a SESSION hold, given the client's default.
    pub(super) fn is_session(&self, client_default: bool) -> bool {
        self.session.unwrap_or(client_default)
    }

    /// The ACQUIRE's flags, given the client's SESSION default.
    pub(super) fn flags(&self, client_default: bool) -> u8 {
        match self.is_session(client_default) {
            true => FLAG_SESSION,
            false => 0,
        }
    }

    /// The ACQUIRE's `ttl_ms`, given the client's (0: the server's
    /// default).
    pub(super) fn ttl_ms(&self, client_ttl_ms: u32) -> Result<u32> {
        match self.ttl {
            None => Ok(client_ttl_ms),
            Some(Ttl::ServerDefault) => Ok(0),
            Some(Ttl::Of(ttl)) if ttl.is_zero() => invalid(
                "lock ttl 0: a hold needs a positive TTL; use e.g. LockOptions::ttl(Duration::from_secs(10)), or ttl_server_default() for the server's",
            ),
            Some(Ttl::Of(ttl)) => ttl_to_ms(ttl, "LockOptions::ttl"),
        }
    }

    /// The wait, checked.
    pub(super) fn checked_wait(&self) -> Result<Duration> {
        check_wait(self.wait).map(|()| self.wait)
    }

    /// The owner given, checked; `None`: the client generates one.
    pub(super) fn owner_given(&self) -> Result<Option<&str>> {
        match &self.owner {
            Some(owner) => check_owner(owner).map(|()| Some(owner.as_str())),
            None => Ok(None),
        }
    }
}

/// A TTL in milliseconds for the wire, refused past what an ACQUIRE can
/// carry rather than cut short without a word.
pub(super) fn ttl_to_ms(ttl: Duration, setter: &str) -> Result<u32> {
    if ttl > MS_FIELD_MAX {
        return invalid(format!(
            "{setter} {ttl:?}: over the longest TTL a request can carry, {} ms (about 49.7 days); use a shorter TTL (servers allow up to their --ttl-max-ms, a day by default)",
            u32::MAX
        ));
    }
    Ok(duration_to_ms(ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_past_what_a_request_carries_is_refused_not_cut() {
        let longest = MS_FIELD_MAX;
        assert_eq!(LockOptions::new().ttl(longest).ttl_ms(0).unwrap(), u32::MAX);
        for ttl in [longest + Duration::from_millis(1), Duration::MAX] {
            let err = LockOptions::new().ttl(ttl).ttl_ms(0).unwrap_err();
            assert!(
                err.to_string().contains("LockOptions::ttl")
                    && err.to_string().contains("49.7 days"),
                "{err}"
            );
        }
    }
}
