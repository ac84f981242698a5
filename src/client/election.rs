//! Leader election on one lock name: whoever holds the lock leads.
//!
//! A candidate [campaigns](Election::campaign) by waiting for the lock in the
//! server's FIFO queue, so candidates become leader in the order they asked.
//! The leader's hold is a SESSION hold (whatever the client's own
//! [`session`](super::ClientBuilder::session) setting): if the leader's
//! process dies or its connection to the server breaks, the server frees the
//! lock at once and the next candidate leads, without waiting for the TTL.
//! While leading, a [`RenewingGuard`] keeps the hold alive.
//!
//! # What is guaranteed, and what is not
//!
//! - **Leadership is a lease.** At most one candidate holds the lock at any
//!   moment on the server, and each term has its own fencing token, larger
//!   than every earlier term's. But a leader that is paused (GC, swap, a
//!   stopped VM) or cut off may lose the lock and not know it until its next
//!   renewal or the lease's end; another leader may act meanwhile. Anything
//!   the leader changes must therefore check the token
//!   ([`Leadership::token`]) and refuse writes from older terms.
//! - **Losing is told**, as for any [`RenewingGuard`]: by
//!   [`Leadership::is_lost`], [`Leadership::wait_lost`] and
//!   [`Leadership::on_lost`], at the lease's end at the latest (see the
//!   timing rule on [`RenewingGuard`]), and within about 100 ms of the
//!   server closing the leader's connection ([`Lost::SessionClosed`]).
//! - **Not promised: that a leader knows it lost before the next one
//!   leads.** The server ends the term the moment the leader's connection
//!   closes, and grants the lock to the next candidate at once; the old
//!   leader learns it afterwards (see [SESSION
//!   holds](RenewingGuard#session-holds)). Only the token check above keeps
//!   two terms from acting on the same resource.
//! - **The leader's identity is not published.** The server never reveals
//!   owners; [`Election::leader`] tells the current term's token and how
//!   long its hold has left. A leader that must be found (to send it work)
//!   publishes its address elsewhere, tagged with its token, so readers can
//!   ignore entries from older terms.
//! - **The leader's hold has a connection of its own**, opened for the
//!   campaign and kept out of the client's pool, so other requests of the
//!   same client cannot break it; renewals and the resignation go over it.
//!   Any failure of that connection ends the leadership
//!   ([`Lost::SessionClosed`]), and so does the server closing it (for
//!   example at its `idle_timeout_ms`, if that is shorter than the renewal
//!   interval). A renewal waits for its reply until the lease's end, so a
//!   server that pauses for less than that does not end the term.

use std::time::Duration;

use super::{
    Client, Lease, LockOptions, LockStatus, Lost, RenewingGuard, Result, check_name, invalid,
};

/// Candidates for leadership of one name, sharing a client.
#[derive(Clone, Debug)]
pub struct Election {
    client: Client,
    name: String,
    /// Every campaign's, with the campaign's wait and SESSION on.
    options: LockOptions,
}

impl Election {
    /// An election on lock `name`. Nothing is sent until
    /// [`campaign`](Election::campaign) or [`leader`](Election::leader).
    pub fn new(client: &Client, name: impl Into<String>) -> Result<Election> {
        Election::with_options(client, name, LockOptions::new())
    }

    /// An election whose leaders hold the lock as `options` say, e.g. with
    /// a TTL of their own. The hold is a SESSION hold whatever `options`
    /// say, and each [`campaign`](Election::campaign) gives its own wait.
    ///
    /// `options` with an [owner](LockOptions::owner) are refused
    /// (`Err(InvalidArgument)`): every campaign of this election and its
    /// clones would hold the lock as that one owner, so a second candidate
    /// would re-enter the first one's hold and both would lead. A TTL of
    /// zero is refused here too, not at the first campaign.
    pub fn with_options(
        client: &Client,
        name: impl Into<String>,
        options: LockOptions,
    ) -> Result<Election> {
        let name = name.into();
        check_name(&name)?;
        if let Some(owner) = options.owner_given()? {
            return invalid(format!(
                "election {name:?} with owner {owner:?}: an election's candidates need owners of their own, or a second candidate re-enters the first one's hold and both lead; drop LockOptions::owner"
            ));
        }
        options.ttl_ms(client.inner.ttl_ms)?;
        Ok(Election {
            client: client.clone(),
            name,
            options: options.with_session(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Blocks until this candidate leads, or `wait` passes
    /// (`Err(AcquireTimeout)`; campaign again to keep waiting). The wait is
    /// the server's: at most its `wait_ms_max` (no bound by default;
    /// [`crate::client::ServerInfo::wait_max`] tells).
    ///
    /// # Panics
    ///
    /// As [`Client::lock_renewing`].
    pub fn campaign(&self, wait: Duration) -> Result<Leadership> {
        let options = self.options.with_wait(wait);
        let guard = self.client.lock_renewing_with(&self.name, &options)?;
        Ok(Leadership { guard })
    }

    /// The current term: its token and how long its hold has left unless
    /// renewed; `None` while nobody leads. `waiters` counts the candidates
    /// queued behind the leader. Only a snapshot: a new term may begin as
    /// soon as it is read.
    pub fn leader(&self) -> Result<Option<LockStatus>> {
        self.client.status(&self.name)
    }
}

/// This candidate leads until it [resigns](Leadership::resign), drops this
/// value (which resigns too), or loses the lease.
#[must_use = "leadership ends as soon as it is dropped"]
#[derive(Debug)]
pub struct Leadership {
    guard: RenewingGuard,
}

impl Leadership {
    /// The term's fencing token: pass it with every action taken as leader.
    pub fn token(&self) -> u64 {
        self.guard.token()
    }

    pub fn name(&self) -> &str {
        self.guard.name()
    }

    pub fn lease(&self) -> &Lease {
        self.guard.lease()
    }

    /// See [`RenewingGuard::is_lost`]: exact for the lease's end; a closed
    /// connection is seen if the server's close has reached this client.
    pub fn is_lost(&self) -> bool {
        self.guard.is_lost()
    }

    /// See [`RenewingGuard::lost`].
    pub fn lost(&self) -> Option<Lost> {
        self.guard.lost()
    }

    /// See [`RenewingGuard::wait_lost`].
    pub fn wait_lost(&self, timeout: Duration) -> Option<Lost> {
        self.guard.wait_lost(timeout)
    }

    /// See [`RenewingGuard::on_lost`].
    pub fn on_lost(&self, f: impl FnOnce(&Lost) + Send + 'static) {
        self.guard.on_lost(f)
    }

    /// Stops renewing and releases the lock, so the next candidate leads at
    /// once. `Err(NotHeld)` if leadership was already lost.
    pub fn resign(self) -> Result<()> {
        self.guard.unlock()
    }
}
