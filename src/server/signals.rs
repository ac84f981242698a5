//! SIGINT and SIGTERM: a graceful stop on the first, at once on a second.

use std::io;
use std::sync::atomic::Ordering;

use log::{info, warn};
use mio::Interest;

use super::connection::{Phase, flush};
use super::{Server, Source};
use crate::execute::write_error;
use crate::metrics::CloseReason;
use crate::protocol::ErrorCode;

/// [`Server::run`]'s error after a second SIGINT or SIGTERM (its kind is
/// [`io::ErrorKind::Interrupted`]): the daemon exits with status 1 at once.
pub const SECOND_SIGNAL_MESSAGE: &str =
    "a second signal: stopped at once, without answering waiters or closing connections";

/// SIGINT and SIGTERM, caught from the moment [`SignalCatcher::install`]
/// returns and kept until a [`Server`] handles them
/// ([`Server::handle_signals`]). A daemon installs it before it binds its
/// port: once a client can connect, a signal is a graceful stop, never the
/// default action that ends the process at once. Dropped without being
/// handed to a server, it leaves both signals ignored.
pub struct SignalCatcher(signal_hook_mio::v1_0::Signals);

impl SignalCatcher {
    /// Catches SIGINT and SIGTERM in this process from now on.
    pub fn install() -> io::Result<SignalCatcher> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        signal_hook_mio::v1_0::Signals::new([SIGINT, SIGTERM]).map(SignalCatcher)
    }
}

impl Server {
    /// Runs until a [`Stopper`] fires, then closes every connection.
    /// Stops gracefully on the first SIGINT or SIGTERM caught by `signals`
    /// (also one caught before this call): no new connections, every
    /// queued ACQUIRE answered SHUTTING_DOWN, pending replies written, then
    /// [`Server::run`] returns. A second signal makes `run` return at once,
    /// without that, with an [`io::ErrorKind::Interrupted`] error (the
    /// daemon then exits with status 1). For the daemon; embedders use a
    /// [`Stopper`].
    ///
    /// [`Stopper`]: super::Stopper
    pub fn handle_signals(&mut self, signals: SignalCatcher) -> io::Result<()> {
        let mut signals = signals.0;
        self.poll
            .registry()
            .register(&mut signals, Source::Signals.token(), Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    pub(super) fn on_signal(&mut self, now: u64) {
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
            // Replies of this turn go out with the last words below, once
            // the changes they reflect are in the log, including hand-offs
            // made by the closes earlier in this loop.
            let may_write = self.persist();
            let conn = &mut self.conns[key];
            if conn.phase == Phase::Waiting {
                self.output_pool.lend(&mut conn.output);
                write_error(
                    &mut conn.output,
                    ErrorCode::ShuttingDown,
                    format_args!("the server is shutting down; retry against a running server"),
                );
            }
            if may_write {
                let _ = flush(conn, now);
            }
            self.metrics.count_close(CloseReason::Shutdown);
            self.mark_closing(key, now);
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}
