//! `distlockd run NAME [options] [--] COMMAND [ARGS...]`: a command under a
//! lock, like flock(1), `etcdctl lock` and `consul lock`, for distributed
//! cron and other jobs that must not run twice at once.
//!
//! This module owns the whole life of one run: acquire the lock, start the
//! command in its own process group with `DISTLOCKD_LOCK` and
//! `DISTLOCKD_TOKEN` in its environment, renew the lease from a background
//! thread, forward signals, stop the command if the lease is lost, release
//! the lock after the command exits, and turn all that into an exit status.
//!
//! # Threads
//!
//! ```text
//!   renewer  ──Renewed/RenewFailed/Lost──┐
//!   waiter   ──Exited (child.wait())─────┼──► main: Supervisor decides,
//!   signals  ──(kill -SIG -pgid directly)┘          main signals the group
//! ```
//!
//! The renewer is the client's renewal engine ([`Client::renew`], the one
//! behind every [`RenewingGuard`]), its events turned into the supervisor's
//! by `Event::from_renewal`.
//!
//! The main thread never blocks on the network while the command runs: a
//! renewal stuck on a hung server cannot delay the SIGTERM/SIGKILL.
//!
//! # When the command is stopped
//!
//! The server starts a hold's TTL when it handles the ACQUIRE or EXTEND, which
//! is after the client sent it. So the server cannot expire the hold before
//!
//! ```text
//!   expiry_earliest = t_sent + ttl_granted
//! ```
//!
//! where `t_sent` is read from this process's monotonic clock just before
//! the request that succeeded was sent (for the ACQUIRE, its attempt that
//! the server answered: [`Lease::sent_at`]; for an EXTEND, before its first
//! attempt, which is no later than the one that succeeded). With `grace` =
//! `--kill-grace` and `margin` = TTL/10 (for scheduling delays, signal
//! delivery and clock-rate differences between the two machines):
//!
//! - renewals: every TTL/3 after the last success; after a failure, again
//!   after TTL/10.
//! - renewals failing: SIGTERM to the command's process group at
//!   `expiry_earliest - margin - grace`, SIGKILL at
//!   `min(sigterm_time + grace, expiry_earliest - margin)`, so the group is
//!   dead `margin` before any other owner could be granted the lock.
//! - a renewal answered NOT_HELD (the hold is gone already): SIGTERM at once,
//!   SIGKILL by the same rule.
//!
//! Once started, the termination goes on even if a later renewal succeeds.
//! If the command's first process exits but others of its group remain,
//! SIGKILL still goes to the group at its time. `--kill-grace` is at most
//! TTL/2, so termination never begins before the first renewal (at TTL/3)
//! has been tried.
//!
//! Outside a loss, `run` signals the group only to forward a signal: the
//! lock is released when the command's first process exits, and
//! background processes it leaves behind are neither waited for nor
//! stopped.
//!
//! After a wait (`--wait`), the grant may have come at any moment of it, so
//! the hold is extended once before the command starts, to learn its
//! expiry (the renewal engine does so, see [`Client::renew`]).
//!
//! # `--session`
//!
//! The server releases a SESSION hold the moment the connection that
//! acquired it closes, and may grant the lock to a waiter at once. That
//! connection can close at any moment (a network failure, the server's idle
//! or write timeout), so with `--session` the rule above, dead before any
//! other owner could be granted the lock, cannot be kept; `--session` trades
//! it for fast release when `run` dies. To make a close rare and seen
//! quickly, the hold gets a connection of its own (a
//! [`SessionLease`](crate::client::SessionLease)), outside the client's
//! pool: renewals and the release go over it, a renewal waits for its reply
//! until `expiry_earliest` instead of `--timeout` (a server paused for less
//! costs nothing), and the renewal thread probes it every 100 ms
//! ([`SESSION_PROBE_INTERVAL`](crate::client::SESSION_PROBE_INTERVAL))
//! between renewals. Any failure or close of it counts as a loss, like
//! NOT_HELD: SIGTERM at once, SIGKILL by the same rule, and the message says
//! the SESSION connection was lost.
//!
//! # Exit status
//!
//! The command's status; 128+N if it died of signal N; `--conflict-exit-code`
//! (default 1) when the lock was not obtained; 2 for a bad command line; 3
//! when the server could not be reached or refused the request; 4
//! ([`EXIT_LEASE_LOST`]) when the lease was lost and the command was
//! terminated, whatever its own status; 126 if COMMAND could not be
//! executed and 127 if it was not found (the shell's codes).

use std::ffi::OsString;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::{Handle, Signals};

use super::{Arg, CONNECT_OPTIONS_HELP, ConnectOptions, EXIT_UNAVAILABLE, duration_value};
use crate::client::{
    Client, Error, Held, Lease, LockOptions, Lost, Renewal, RenewalEvent, RenewingGuard,
    not_held_reason_text,
};
use crate::protocol::NotHeldReason;

/// Exit status when the lease was lost and the command was terminated.
pub const EXIT_LEASE_LOST: u8 = 4;
/// Exit status when COMMAND exists but could not be executed (the shell's).
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
/// Exit status when COMMAND was not found (the shell's).
pub const EXIT_NOT_FOUND: u8 = 127;

/// `--ttl` default: a cron job survives a server restart of a few seconds
/// with renewals failing, and a lock dies within half a minute of its
/// holder.
pub const TTL_DEFAULT: Duration = Duration::from_secs(30);
/// Shortest `--ttl`: renewals every TTL/3 must stay well above a round trip
/// and the server's 1 ms timer tick.
pub const TTL_MIN: Duration = Duration::from_millis(100);
/// `--kill-grace` default is TTL/4, at most this: long enough for a job to
/// clean up, short enough to leave most of the TTL for renewal retries.
pub const KILL_GRACE_DEFAULT_MAX: Duration = Duration::from_secs(5);
/// `--kill-grace` is at most TTL / this, so termination never starts before
/// the first renewal (at TTL/3) has been tried.
const KILL_GRACE_TTL_DIVISOR_MIN: u32 = 2;
/// Renewals per TTL while they succeed.
const RENEWALS_PER_TTL: u32 = 3;
/// After a failed renewal, the next one comes after TTL / this.
const RENEW_RETRIES_PER_TTL: u32 = 10;
/// The safety margin is TTL / this: the group is dead that long before the
/// earliest moment the server could expire the hold.
const MARGIN_TTL_DIVISOR: u32 = 10;
const _: () = assert!(MARGIN_TTL_DIVISOR > KILL_GRACE_TTL_DIVISOR_MIN);
const _: () = assert!(RENEWALS_PER_TTL > KILL_GRACE_TTL_DIVISOR_MIN);

/// Signals `run` passes on to the command's process group.
const FORWARDED_SIGNALS: [i32; 6] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2];

/// The environment variables the command gets.
pub const ENV_LOCK: &str = "DISTLOCKD_LOCK";
pub const ENV_TOKEN: &str = "DISTLOCKD_TOKEN";

/// The shell `-c` runs its command with: always this one, not `$SHELL`,
/// so a job behaves the same under cron, systemd and a login shell.
pub const SHELL: &str = "/bin/sh";

const USAGE: &str = "\
Usage: distlockd run NAME [options] [--] COMMAND [ARGS...]
       distlockd run NAME [options] -c 'SHELL COMMAND'

Runs COMMAND while holding lock NAME, like flock(1): takes the lock (or
waits up to --wait for it), runs COMMAND with DISTLOCKD_LOCK=NAME and
DISTLOCKD_TOKEN=<fencing token> in its environment, renews the lease every
TTL/3 while it runs, releases the lock when it exits, and exits with its
status. Options may come before or after NAME; everything from COMMAND on
(or after `--`) is the command's, so NAME must come before `--`.

If the lease is lost (a renewal finds the hold gone, or renewals fail until
the TTL could run out), COMMAND's process group gets SIGTERM, then SIGKILL
after --kill-grace, timed so that it is dead TTL/10 before the server could
give the lock to anyone else; this is reported on standard error. With
renewals failing SIGTERM goes at T + TTL - TTL/10 - grace, where T is when
the last successful renewal (or the acquire) was sent.

SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to run are passed
to COMMAND's process group; run keeps holding the lock until COMMAND exits.
COMMAND runs in its own process group, so it should not read the terminal,
and Ctrl-Z (SIGTSTP) stops run, not COMMAND. The lock is released when
COMMAND exits; processes it left running in the background are not waited
for.

Options:
  -w, --wait DURATION|forever
                           wait this long for a held lock, in the server's
                           FIFO queue; forever: no deadline, like flock without
                           -w (default 0: fail at once, like flock -n)
  -n, --nonblock           fail at once if the lock is held (the default)
  -c, --command 'SHELL COMMAND'
                           run it with /bin/sh -c (flock -c uses $SHELL): $0 is
                           /bin/sh and there are no $1...; not with a COMMAND
  -E, --conflict-exit-code N
                           exit status when the lock is not obtained, 0-255
                           (default 1)
  -s, --shared             reserved for shared locks, which are not supported
                           yet: refused (exit 2), never taken as exclusive
  -x, -e, --exclusive      an exclusive lock: the only kind, so the default
  --ttl DURATION           the lease's TTL, at least 100ms (default 30s, or
                           the server's longest hold, its --ttl-max-ms, if
                           shorter)
  --kill-grace DURATION    SIGTERM to SIGKILL delay when the lease is lost
                           (default TTL/4, at most 5s; at most TTL/2)
  --session                a SESSION hold: the server also releases it as soon
                           as run's connection closes (run killed or crashed,
                           but also a network failure or the server's idle or
                           write timeout). If that connection closes while
                           COMMAND runs, COMMAND gets SIGTERM at once, but
                           another owner may have the lock already: the
                           timing above is not guaranteed with --session
  -q, --quiet              no message when the lock is busy, a renewal fails
                           or the release fails
  -h, --help               print this help
Durations: a number with a unit, ms, s, m, h or d (500ms, 1.5s, 10s, 5m, 1h,
2d), or a bare number of seconds (as flock's -w); --wait also takes forever.
Each option may be given once, and not both -n and -w. Unlike flock,
--timeout is the connection timeout (below), not -w.

Examples:
  distlockd run nightly-report -- ./make-report.sh --full
  distlockd run nightly-report -w 10m -E 0 -c 'make-report >> /var/log/report'

Connection options:";

const EXIT_CODES: &str = "\
Exit status: COMMAND's, or 128+N if it died of signal N; 1 (or
--conflict-exit-code) the lock is held by another owner (after --wait); 2 bad
usage; 3 the server could not be reached or refused the request; 4 the lease
was lost and COMMAND was terminated; 126 COMMAND could not be executed; 127
COMMAND was not found.";

/// The parsed command line.
#[derive(Debug)]
struct Options {
    connect: ConnectOptions,
    name: String,
    command: Vec<OsString>,
    wait: Duration,
    /// `--ttl`, if given.
    ttl: Option<Duration>,
    conflict_exit_code: u8,
    /// `--kill-grace`, if given.
    kill_grace: Option<Duration>,
    /// From `--ttl` and `--kill-grace` or their defaults; without `--ttl`,
    /// [`run`] caps it to the server's longest hold.
    timing: Timing,
    session: bool,
    quiet: bool,
}

/// Runs `distlockd run`.
pub fn main(parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    let Some(options) =
        parse(parser).map_err(|e| format!("run: {e}; run `distlockd run --help`"))?
    else {
        println!("{USAGE}\n{CONNECT_OPTIONS_HELP}\n\n{EXIT_CODES}");
        return Ok(ExitCode::SUCCESS);
    };
    run(options).map(ExitCode::from)
}

/// `Ok(None)`: `--help`.
fn parse(parser: &mut lexopt::Parser) -> Result<Option<Options>, String> {
    let mut connect = ConnectOptions::default();
    let mut name = None;
    let mut command = Vec::new();
    let mut once = Once::default();
    let mut wait = None;
    let mut nonblock = false;
    let mut ttl = None;
    let mut conflict_exit_code = super::EXIT_NOT_OBTAINED;
    let mut kill_grace = None;
    let mut session = false;
    let mut quiet = false;
    let mut shell_command: Option<OsString> = None;
    loop {
        // Everything after `--` is the command's: neither an option nor the
        // NAME, even when NAME was left out (`run -- sh -c ...` must not take
        // a lock named "sh").
        if let Some(mut raw) = parser.try_raw_args()
            && raw.next_if(|a| a == "--").is_some()
        {
            command.extend(raw);
            break;
        }
        let Some(arg) = Arg::next(parser)? else {
            break;
        };
        if connect.parse(&arg, parser)? {
            continue;
        }
        // flock's short forms, where they mean the same.
        let flag = match &arg {
            Arg::Long(flag) => flag.as_str(),
            Arg::Short('w') => "wait",
            Arg::Short('n') => "nonblock",
            Arg::Short('E') => "conflict-exit-code",
            Arg::Short('c') => "command",
            Arg::Short('s') => "shared",
            Arg::Short('x' | 'e') => "exclusive",
            Arg::Short('q') => "quiet",
            Arg::Short('h') => "help",
            _ => "",
        };
        match flag {
            "wait" => {
                let v = super::wait_value(parser, "--wait")?;
                once.check("-w/--wait", super::format_wait(v))?;
                wait = Some(v);
            }
            "nonblock" | "nb" => nonblock = true,
            "ttl" => {
                let v = duration_value(parser, "--ttl")?;
                once.check("--ttl", super::format_wait(v))?;
                ttl = Some(v);
            }
            "kill-grace" => {
                let v = duration_value(parser, "--kill-grace")?;
                once.check("--kill-grace", super::format_wait(v))?;
                kill_grace = Some(v);
            }
            "conflict-exit-code" => {
                let v = super::string_value(parser, "--conflict-exit-code")?;
                conflict_exit_code = v
                    .parse()
                    .map_err(|_| format!("--conflict-exit-code {v}: not an exit status (0-255)"))?;
                once.check("-E/--conflict-exit-code", v)?;
            }
            "command" => {
                let v = parser
                    .value()
                    .map_err(|_| "-c: missing value; use -c 'SHELL COMMAND'".to_owned())?;
                once.check("-c/--command", format!("{:?}", v.to_string_lossy()))?;
                shell_command = Some(v);
            }
            "shared" => {
                return Err(
                    "-s/--shared: shared locks are not supported yet; drop -s to take an exclusive lock"
                        .into(),
                );
            }
            "exclusive" => {}
            "session" => session = true,
            "quiet" => quiet = true,
            "help" => return Ok(None),
            _ => match &arg {
                Arg::Value(v) if name.is_none() => {
                    name = Some(
                        v.clone()
                            .into_string()
                            .map_err(|v| format!("lock name {v:?}: not valid UTF-8"))?,
                    );
                }
                Arg::Value(v) => {
                    // The command and everything after it are the command's
                    // own, options included.
                    command.push(v.clone());
                    command.extend(parser.raw_args().map_err(|e| e.to_string())?);
                    break;
                }
                _ => return Err(arg.unexpected()),
            },
        }
    }
    let name = name.ok_or(
        "the lock NAME is missing; it comes before the command (everything after `--` is the command's): `distlockd run NAME [options] -- COMMAND [ARGS...]`",
    )?;
    if let (true, Some(wait)) = (nonblock, wait) {
        return Err(format!(
            "-n/--nonblock and -w/--wait {} both given: -n fails at once if the lock is held, -w waits for it; give one of them",
            super::format_wait(wait)
        ));
    }
    let wait = wait.unwrap_or(Duration::ZERO);
    if let Some(shell_command) = shell_command {
        if !command.is_empty() {
            return Err(format!(
                "-c and a COMMAND ({:?}) both given; use either -c 'SHELL COMMAND' or -- COMMAND [ARGS...]",
                command[0].to_string_lossy()
            ));
        }
        // As flock -c: the one string is the script, with no arguments.
        command = vec![SHELL.into(), "-c".into(), shell_command];
    }
    if command.is_empty() {
        return Err(format!(
            "COMMAND is missing: put it after NAME and the options, e.g. `distlockd run {name} -- /usr/local/bin/job`, or give a shell command with -c 'SHELL COMMAND'"
        ));
    }
    let timing = timing(ttl, kill_grace, None)?;
    Ok(Some(Options {
        connect,
        name,
        command,
        wait,
        ttl,
        conflict_exit_code,
        kill_grace,
        timing,
        session,
        quiet,
    }))
}

/// The lease's TTL and the SIGTERM-to-SIGKILL delay of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Timing {
    ttl: Duration,
    kill_grace: Duration,
}

/// The timing from `--ttl` and `--kill-grace` (`None`: not given), checked.
/// Without `--ttl`, the TTL is [`TTL_DEFAULT`], capped to `ttl_cap` (the
/// server's longest hold) if known, so that run's defaults work with any
/// server.
fn timing(
    ttl: Option<Duration>,
    kill_grace: Option<Duration>,
    ttl_cap: Option<Duration>,
) -> Result<Timing, String> {
    let (ttl, ttl_words) = match (ttl, ttl_cap) {
        (Some(ttl), _) => (ttl, format!("--ttl {}", super::format_wait(ttl))),
        (None, Some(cap)) if cap < TTL_DEFAULT => (
            cap,
            format!(
                "the TTL, {} (run's default {} capped to this server's longest hold: it runs with --ttl-max-ms {})",
                super::format_wait(cap),
                super::format_wait(TTL_DEFAULT),
                cap.as_millis()
            ),
        ),
        (None, _) => (
            TTL_DEFAULT,
            format!(
                "the TTL, {} (run's default)",
                super::format_wait(TTL_DEFAULT)
            ),
        ),
    };
    if ttl < TTL_MIN {
        return Err(format!(
            "{ttl_words}: under the minimum {}ms; renewals every TTL/3 need time for a round trip",
            TTL_MIN.as_millis()
        ));
    }
    let kill_grace_max = ttl / KILL_GRACE_TTL_DIVISOR_MIN;
    let kill_grace = kill_grace.unwrap_or((ttl / 4).min(KILL_GRACE_DEFAULT_MAX));
    if kill_grace > kill_grace_max {
        return Err(format!(
            "--kill-grace {}: over half of {ttl_words}; use a shorter grace or a longer --ttl, so renewals get time to succeed before termination starts",
            super::format_wait(kill_grace),
        ));
    }
    Ok(Timing { ttl, kill_grace })
}

/// The options given so far that take a value: each may be given once, as a
/// second one silently winning would hide which was meant.
#[derive(Default)]
struct Once(Vec<(&'static str, String)>);

impl Once {
    /// Records `flag` given as `value`; an error if it was given before.
    fn check(&mut self, flag: &'static str, value: String) -> Result<(), String> {
        if let Some((_, first)) = self.0.iter().find(|(f, _)| *f == flag) {
            return Err(format!(
                "{flag} given twice ({first}, then {value}); give it once"
            ));
        }
        self.0.push((flag, value));
        Ok(())
    }
}

/// Acquires, runs, supervises, releases. Returns the exit status.
fn run(mut options: Options) -> Result<u8, String> {
    let builder = options.connect.builder()?.session(options.session);
    if options.ttl.is_none() {
        // Run's default TTL, capped to this server's longest hold: the
        // defaults work with any server.
        let probe = builder.clone().build().map_err(|e| format!("run: {e}"))?;
        match probe.server_info() {
            Ok(info) => {
                options.timing = timing(None, options.kill_grace, Some(info.lock_ttl_max))
                    .map_err(|e| format!("run: {e}"))?;
            }
            Err(e) => {
                eprintln!("distlockd run: {}", options.connect.describe(&e));
                return Ok(EXIT_UNAVAILABLE);
            }
        }
    }
    let options = &options;
    let client = builder
        .ttl(options.timing.ttl)
        .build()
        .map_err(|e| format!("run: {e}"))?;
    let held = match obtain(&client, options) {
        Ok(Some(held)) => held,
        Ok(None) => {
            if !options.quiet {
                eprintln!(
                    "distlockd run: lock {:?} is held by another owner{}; not running the command",
                    options.name,
                    if options.wait.is_zero() {
                        " (use --wait to wait for it)".to_owned()
                    } else {
                        format!(" after waiting {}", super::format_wait(options.wait))
                    }
                );
            }
            return Ok(options.conflict_exit_code);
        }
        Err(e @ Error::InvalidArgument { .. }) => return Err(format!("run: {e}")),
        Err(e) => return Ok(unavailable(&client, options, &e)),
    };
    let (events, inbox) = mpsc::channel();
    // After a wait this renews the hold once before it returns (a failure
    // is the server's or the network's, as for the ACQUIRE).
    let guard = match renew(&client, held, options, events.clone()) {
        Ok(guard) => guard,
        Err(e @ Error::InvalidArgument { .. }) => return Err(format!("run: {e}")),
        Err(e) => return Ok(unavailable(&client, options, &e)),
    };
    let sent_at = guard
        .lease()
        .sent_at()
        .expect("the renewal engine counts its lease from a send time");
    let code = run_under_lease(guard.lease(), sent_at, (events, inbox), options);
    let lost = code == EXIT_LEASE_LOST;
    release(guard, options.quiet, lost);
    Ok(code)
}

/// Says why the server could not be used and gives the exit status for it.
fn unavailable(client: &Client, options: &Options, e: &Error) -> u8 {
    // Only a --ttl the user gave is named as the cause; run's own default
    // was capped to the server's longest hold.
    let asked = super::Asked {
        wait: options.wait,
        ttl: options.ttl.unwrap_or(Duration::ZERO),
        name: &options.name,
        owner: None,
        takes_owner: false,
    };
    let message =
        super::refusal_in_flags(client, &asked, e).unwrap_or_else(|| options.connect.describe(e));
    eprintln!("distlockd run: {message}");
    EXIT_UNAVAILABLE
}

/// Takes the lock: over a connection of its own with `--session` (so
/// nothing else can close it and end the hold), else through the pool.
/// The lease records when its ACQUIRE was sent; `Ok(None)`: held by
/// another owner.
fn obtain(client: &Client, options: &Options) -> Result<Option<Held>, Error> {
    let lock = LockOptions::new().wait(options.wait);
    let acquired = match options.session {
        true => client.acquire_session(&options.name, &lock).map(Held::from),
        false => client.acquire_with(&options.name, &lock).map(Held::from),
    };
    match acquired {
        Ok(held) => Ok(Some(held)),
        Err(Error::AcquireTimeout { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Starts the client's renewal engine on `held`: every TTL/3, TTL/10 after
/// a failure, each renewal retrying a failed connection as the client's
/// requests do; each step is sent to the supervisor as an [`Event`]. A
/// grant after a wait came at some moment of it, so the engine renews it
/// once before it returns, to know its expiry.
fn renew(
    client: &Client,
    held: Held,
    options: &Options,
    events: Sender<Event>,
) -> Result<RenewingGuard, Error> {
    let renewal = Renewal::new()
        .renewals_per_ttl(RENEWALS_PER_TTL)
        .retry_after_failure(options.timing.ttl / RENEW_RETRIES_PER_TTL)
        .retries(client.retries())
        .on_event(move |event| {
            if let Some(event) = Event::from_renewal(event) {
                let _ = events.send(event);
            }
        });
    client.renew(held, renewal)
}

/// Starts the command and supervises it until it exits; the exit status.
/// `sent_at`: when the request that granted `lease` was sent. The renewal
/// engine sends its events on the channel `(events, inbox)`; the command's
/// exit goes on it too.
fn run_under_lease(
    lease: &Lease,
    sent_at: Instant,
    (events, inbox): (Sender<Event>, Receiver<Event>),
    options: &Options,
) -> u8 {
    let Timing { ttl, kill_grace } = options.timing;
    let clock = LeaseClock::new(sent_at, lease.ttl(), ttl, kill_grace);
    // Registered before the command starts, so a signal that arrives in
    // between is queued and forwarded once it runs, never lost.
    let signals = match Signals::new(FORWARDED_SIGNALS) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("distlockd run: cannot install signal handlers: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    let child = match spawn(lease, &options.command) {
        Ok(child) => child,
        Err(e) => {
            let program = options.command[0].to_string_lossy();
            eprintln!("distlockd run: cannot run {program:?}: {e}");
            return match e.kind() {
                io::ErrorKind::NotFound => EXIT_NOT_FOUND,
                _ => EXIT_CANNOT_EXECUTE,
            };
        }
    };
    let group = Pid::from_child(&child);
    let forwarder = Forwarder::start(signals, group);
    let waiter = thread::spawn(move || wait_for(child, &events));
    let mut supervisor = Supervisor::new(clock);
    let status = supervise(&mut supervisor, group, &inbox, &options.name, options.quiet);
    let _ = waiter.join();
    forwarder.stop();
    match (supervisor.phase, status) {
        (Phase::Holding, Ok(status)) => exit_code(status),
        (Phase::Holding, Err(e)) => {
            eprintln!("distlockd run: waiting for the command failed: {e}");
            EXIT_CANNOT_EXECUTE
        }
        (Phase::Terminating { .. } | Phase::Killed, _) => EXIT_LEASE_LOST,
    }
}

fn spawn(lease: &Lease, command: &[OsString]) -> io::Result<Child> {
    Command::new(&command[0])
        .args(&command[1..])
        .env(ENV_LOCK, lease.name())
        .env(ENV_TOKEN, lease.token().to_string())
        // Its own group, so a lost lease stops the command's children too
        // (a shell script's), not only the process we started.
        .process_group(0)
        .spawn()
}

/// The shell's convention: the exit code, or 128+N for death by signal N.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => (128 + signal).min(255) as u8,
        (None, None) => EXIT_CANNOT_EXECUTE,
    }
}

/// What the supervisor hears from the other threads.
#[derive(Debug)]
enum Event {
    Exited(io::Result<ExitStatus>),
    /// A renewal is being sent.
    Renewing {
        sent_at: Instant,
    },
    Renewed {
        sent_at: Instant,
        ttl: Duration,
    },
    RenewFailed(String),
    /// A renewal found the hold gone (answered NOT_HELD).
    Lost(NotHeldReason),
    /// The SESSION connection closed or failed: the server released the
    /// hold at the disconnect.
    SessionClosed(String),
}

impl Event {
    /// What the supervisor hears of a step of the renewal engine. Not the
    /// lease's end: the supervisor keeps its own clock, stops the command
    /// before the lease could end, and tells why no renewal was confirmed.
    fn from_renewal(event: &RenewalEvent) -> Option<Event> {
        Some(match event {
            RenewalEvent::Sending { sent_at } => Event::Renewing { sent_at: *sent_at },
            RenewalEvent::Renewed { sent_at, ttl } => Event::Renewed {
                sent_at: *sent_at,
                ttl: *ttl,
            },
            RenewalEvent::Failed(e) => Event::RenewFailed(e.to_string()),
            RenewalEvent::Lost(Lost::NotHeld(reason)) => Event::Lost(*reason),
            RenewalEvent::Lost(Lost::SessionClosed { error }) => {
                Event::SessionClosed(error.clone())
            }
            RenewalEvent::Lost(Lost::LeaseEnded { .. }) => return None,
            // Events and losses a later client may add: the supervisor's
            // own clock still ends the command in time.
            _ => return None,
        })
    }
}

fn wait_for(mut child: Child, events: &Sender<Event>) {
    let _ = events.send(Event::Exited(child.wait()));
}

/// Waits for the command to exit, signalling its group as the supervisor
/// decides. Returns its status.
fn supervise(
    supervisor: &mut Supervisor,
    group: Pid,
    inbox: &Receiver<Event>,
    name: &str,
    quiet: bool,
) -> io::Result<ExitStatus> {
    loop {
        let now = Instant::now();
        if let Some(action) = supervisor.poll(now) {
            act(action, group, name);
        }
        let event = match supervisor.wake_at() {
            Some(at) => match inbox.recv_timeout(at.saturating_duration_since(now)) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return Err(waiter_gone()),
            },
            None => inbox.recv().map_err(|_| waiter_gone())?,
        };
        match event {
            Event::Exited(status) => {
                finish_group(supervisor, group);
                return status;
            }
            Event::Renewing { sent_at } => supervisor.renewing(sent_at),
            Event::Renewed { sent_at, ttl } => supervisor.renewed(sent_at, ttl),
            Event::RenewFailed(e) => {
                if !quiet && matches!(supervisor.phase, Phase::Holding) {
                    let left = supervisor
                        .clock
                        .terminate_at()
                        .saturating_duration_since(Instant::now());
                    eprintln!(
                        "distlockd run: renewing lock {name:?} failed: {e}; retrying, the command is stopped in {}ms unless a renewal succeeds",
                        left.as_millis()
                    );
                }
                supervisor.renew_failed(e);
            }
            Event::Lost(reason) => {
                if matches!(supervisor.phase, Phase::Holding) {
                    eprintln!(
                        "distlockd run: lost lock {name:?}: a renewal found that this run no longer holds it: {}",
                        not_held_reason_text(reason)
                    );
                }
                supervisor.lost();
            }
            Event::SessionClosed(why) => {
                if matches!(supervisor.phase, Phase::Holding) {
                    eprintln!(
                        "distlockd run: lost lock {name:?}: the SESSION connection was lost ({why}); the server released the lock at the disconnect and may have granted it to another owner already"
                    );
                }
                supervisor.lost();
            }
        }
    }
}

/// The waiter thread ended without sending the command's status: only if
/// it panicked.
fn waiter_gone() -> io::Error {
    io::Error::other("the thread waiting for the command ended without its status")
}

/// After the command's first process exited during a termination: other
/// processes of its group may live on, and get SIGKILL at its time.
fn finish_group(supervisor: &mut Supervisor, group: Pid) {
    let Phase::Terminating { kill_at } = supervisor.phase else {
        return;
    };
    // Between the reap and here the group id could in principle be reused,
    // but pids are handed out in sequence, so not within a grace period.
    while test_kill_process_group(group).is_ok() {
        let now = Instant::now();
        if now >= kill_at {
            let _ = kill_process_group(group, Signal::KILL);
            break;
        }
        thread::sleep((kill_at - now).min(Duration::from_millis(20)));
    }
    supervisor.phase = Phase::Killed;
}

fn act(action: Action, group: Pid, name: &str) {
    match action {
        Action::Terminate {
            lapse,
            grace,
            lease_ended,
        } => {
            if let Some(lapse) = lapse {
                eprintln!(
                    "distlockd run: lost lock {name:?}: no renewal was confirmed before the lease could run out: {lapse}"
                );
            }
            if !grace.is_zero() {
                eprintln!(
                    "distlockd run: stopping the command: SIGTERM to its process group, SIGKILL within {}ms",
                    grace.as_millis()
                );
                let _ = kill_process_group(group, Signal::TERM);
                return;
            }
            // Woken after the SIGKILL deadline (this process was held up):
            // no grace period is left to give.
            eprintln!(
                "distlockd run: stopping the command: SIGTERM and SIGKILL at once to its process group, no grace period: {}",
                if lease_ended {
                    "the lease could have ended already"
                } else {
                    "the SIGKILL deadline (TTL/10 before the lease could end) has passed"
                }
            );
            let _ = kill_process_group(group, Signal::TERM);
            let _ = kill_process_group(group, Signal::KILL);
        }
        Action::Kill => {
            eprintln!(
                "distlockd run: the command is still running at the SIGKILL deadline: SIGKILL to its process group"
            );
            let _ = kill_process_group(group, Signal::KILL);
        }
    }
}

/// Stops the renewals and releases the lock, saying why if that failed.
fn release(guard: RenewingGuard, quiet: bool, lost: bool) {
    let name = guard.name().to_owned();
    match guard.unlock() {
        Ok(()) => {}
        // After a loss the hold is gone or someone else's: nothing to say.
        Err(Error::NotHeld { .. }) if lost => {}
        Err(e) => {
            if !quiet {
                eprintln!("distlockd run: releasing lock {name:?}: {e}");
            }
        }
    }
}

/// The signal-forwarding thread.
struct Forwarder {
    handle: Handle,
    thread: JoinHandle<()>,
}

impl Forwarder {
    fn start(mut signals: Signals, group: Pid) -> Forwarder {
        let handle = signals.handle();
        let thread = thread::spawn(move || {
            for signal in signals.forever() {
                if let Some(signal) = Signal::from_named_raw(signal) {
                    // ESRCH: the command is gone already.
                    let _ = kill_process_group(group, signal);
                }
            }
        });
        Forwarder { handle, thread }
    }

    fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}

/// What is known of the lease's expiry, and the termination times it
/// implies. See the module documentation.
#[derive(Clone, Copy, Debug)]
struct LeaseClock {
    /// The server cannot expire the hold before this.
    expiry_earliest: Instant,
    grace: Duration,
    margin: Duration,
}

impl LeaseClock {
    /// `sent_at`: just before the ACQUIRE or EXTEND that granted `granted`
    /// was sent; `ttl` is `--ttl`.
    fn new(sent_at: Instant, granted: Duration, ttl: Duration, grace: Duration) -> LeaseClock {
        LeaseClock {
            expiry_earliest: sent_at + granted,
            grace,
            margin: ttl / MARGIN_TTL_DIVISOR,
        }
    }

    fn renewed(&mut self, sent_at: Instant, granted: Duration) {
        self.expiry_earliest = self.expiry_earliest.max(sent_at + granted);
    }

    /// The group must be dead by then.
    fn kill_by(&self) -> Instant {
        self.expiry_earliest
            .checked_sub(self.margin)
            .unwrap_or(self.expiry_earliest)
    }

    /// SIGTERM then, unless renewed meanwhile.
    fn terminate_at(&self) -> Instant {
        let kill_by = self.kill_by();
        kill_by.checked_sub(self.grace).unwrap_or(kill_by)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Holding,
    /// SIGTERM sent; SIGKILL due at `kill_at`.
    Terminating {
        kill_at: Instant,
    },
    /// SIGKILL sent.
    Killed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    /// SIGTERM to the group, SIGKILL after `grace`; a zero `grace`: both
    /// at once.
    Terminate {
        /// Why no renewal was confirmed in time; `None`: a renewal found
        /// the hold gone, which was reported already.
        lapse: Option<Lapse>,
        grace: Duration,
        /// Past the earliest expiry: the lease could have ended already.
        lease_ended: bool,
    },
    /// SIGKILL to the group.
    Kill,
}

/// Why no renewal was confirmed before the termination deadline, as far as
/// this process can tell.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Lapse {
    /// The last renewal attempt failed, with this error.
    RenewalsFailed(String),
    /// A renewal sent before the deadline has had no answer for `waited`.
    Unanswered { waited: Duration },
    /// None was sent before the deadline: this process, or its renewal
    /// thread, did not run in time (stopped, or starved of CPU).
    NotSent,
}

impl std::fmt::Display for Lapse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lapse::RenewalsFailed(e) => write!(f, "renewals failed: {e}"),
            Lapse::Unanswered { waited } => write!(
                f,
                "the renewal sent {}ms ago is still unanswered (the server or the network is slow or down)",
                waited.as_millis()
            ),
            Lapse::NotSent => f.write_str(
                "no renewal was sent in time: this process (or its renewal thread) was held up (stopped, or starved of CPU) past the renewal deadline",
            ),
        }
    }
}

/// Decides when to stop the command; pure: time is passed in.
#[derive(Debug)]
struct Supervisor {
    clock: LeaseClock,
    phase: Phase,
    /// A renewal found the hold gone: terminate at the next poll.
    lost: bool,
    /// The error of the last renewal attempt, if it failed; cleared by a
    /// success.
    failure: Option<String>,
    /// When the renewal awaiting its answer was sent.
    in_flight: Option<Instant>,
}

impl Supervisor {
    fn new(clock: LeaseClock) -> Supervisor {
        Supervisor {
            clock,
            phase: Phase::Holding,
            lost: false,
            failure: None,
            in_flight: None,
        }
    }

    fn renewing(&mut self, sent_at: Instant) {
        self.in_flight = Some(sent_at);
    }

    fn renewed(&mut self, sent_at: Instant, granted: Duration) {
        self.clock.renewed(sent_at, granted);
        self.failure = None;
        self.in_flight = None;
    }

    fn renew_failed(&mut self, error: String) {
        self.failure = Some(error);
        self.in_flight = None;
    }

    /// Why no renewal was confirmed by the termination deadline.
    fn lapse(&self, now: Instant) -> Lapse {
        match (&self.failure, self.in_flight) {
            (Some(e), _) => Lapse::RenewalsFailed(e.clone()),
            (None, Some(sent_at)) if sent_at < self.clock.terminate_at() => Lapse::Unanswered {
                waited: now.saturating_duration_since(sent_at),
            },
            _ => Lapse::NotSent,
        }
    }

    fn lost(&mut self) {
        self.lost = true;
    }

    /// What to do to the group at `now`, if anything; advances the phase.
    fn poll(&mut self, now: Instant) -> Option<Action> {
        match self.phase {
            Phase::Holding if self.lost || now >= self.clock.terminate_at() => {
                // Late (a slow wake-up), the grace shrinks so that SIGKILL
                // still lands by kill_by; past kill_by, none is left.
                let kill_at = (now + self.clock.grace).min(self.clock.kill_by()).max(now);
                let grace = kill_at - now;
                self.phase = match grace.is_zero() {
                    true => Phase::Killed,
                    false => Phase::Terminating { kill_at },
                };
                Some(Action::Terminate {
                    lapse: (!self.lost).then(|| self.lapse(now)),
                    grace,
                    lease_ended: now >= self.clock.expiry_earliest,
                })
            }
            Phase::Terminating { kill_at } if now >= kill_at => {
                self.phase = Phase::Killed;
                Some(Action::Kill)
            }
            _ => None,
        }
    }

    /// When [`Supervisor::poll`] next has something to do, if ever without
    /// new events.
    fn wake_at(&self) -> Option<Instant> {
        match self.phase {
            Phase::Holding => Some(self.clock.terminate_at()),
            Phase::Terminating { kill_at } => Some(kill_at),
            Phase::Killed => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn parse_args(args: &[&str]) -> Result<Option<Options>, String> {
        let mut parser = lexopt::Parser::from_args(args.iter().copied());
        parse(&mut parser)
    }

    fn options(args: &[&str]) -> Options {
        parse_args(args).unwrap().unwrap()
    }

    #[test]
    fn command_starts_at_the_second_value_or_after_dashes() {
        let o = options(&["job", "--ttl", "2s", "--", "sh", "-c", "exit 7"]);
        assert_eq!(o.name, "job");
        assert_eq!(o.command, ["sh", "-c", "exit 7"]);
        assert_eq!(o.timing.ttl, Duration::from_secs(2));
        // The command's own options are not ours.
        let o = options(&["--wait", "1s", "job", "ls", "--ttl", "-q"]);
        assert_eq!(o.command, ["ls", "--ttl", "-q"]);
        assert_eq!(o.wait, Duration::from_secs(1));
        assert!(!o.quiet);
    }

    #[test]
    fn defaults() {
        let o = options(&["job", "true"]);
        assert_eq!(o.ttl, None);
        assert_eq!(o.timing.ttl, TTL_DEFAULT);
        assert_eq!(o.wait, Duration::ZERO);
        assert_eq!(o.conflict_exit_code, 1);
        assert_eq!(o.timing.kill_grace, KILL_GRACE_DEFAULT_MAX);
        assert_eq!(
            options(&["job", "--ttl", "1s", "true"]).timing.kill_grace,
            250 * MS
        );
        assert!(parse_args(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn bad_command_lines_name_the_problem() {
        let err = |args: &[&str]| parse_args(args).unwrap_err();
        assert!(err(&[]).contains("NAME is missing"));
        assert!(err(&["job"]).contains("COMMAND is missing"));
        assert!(err(&["job", "--ttl", "50ms", "true"]).contains("under the minimum"));
        assert!(
            err(&["job", "--ttl", "1s", "--kill-grace", "600ms", "true"]).contains("over half")
        );
        assert!(err(&["job", "--conflict-exit-code", "300", "true"]).contains("0-255"));
        assert!(err(&["job", "--bogus", "true"]).contains("--bogus"));
    }

    #[test]
    fn flock_short_forms_mean_what_they_mean_in_flock() {
        let o = options(&["-w", "2", "-E", "0", "job", "true"]);
        assert_eq!(o.wait, Duration::from_secs(2));
        assert_eq!(o.conflict_exit_code, 0);
        assert_eq!(options(&["job", "-n", "-n", "true"]).wait, Duration::ZERO);
        assert_eq!(options(&["-x", "job", "-e", "true"]).command, ["true"]);
        let o = options(&["job", "-c", "echo \"$0\" >out"]);
        assert_eq!(o.command, [SHELL, "-c", "echo \"$0\" >out"]);
        let o = options(&["--command", "true", "job"]);
        assert_eq!(o.command, [SHELL, "-c", "true"]);
        let err = |args: &[&str]| parse_args(args).unwrap_err();
        assert!(err(&["job", "-c", "true", "--", "ls"]).contains("-c and a COMMAND"));
        assert!(err(&["job", "-c", "true", "ls"]).contains("-c and a COMMAND"));
        let shared = err(&["-s", "job", "true"]);
        assert!(
            shared.contains("shared locks are not supported"),
            "{shared}"
        );
        assert!(err(&["job", "--shared", "true"]).contains("drop -s"));
    }

    #[test]
    fn after_dashes_nothing_is_the_name() {
        let err = |args: &[&str]| parse_args(args).unwrap_err();
        for args in [
            &["-w", "1s", "--", "sh", "-c", "echo hi"][..],
            &["--", "job", "true"],
            &["-c", "echo hi", "--", "job"],
        ] {
            assert!(err(args).contains("the lock NAME is missing"), "{args:?}");
        }
        assert!(err(&["-c", "echo hi"]).contains("the lock NAME is missing"));
        assert!(err(&["job", "--"]).contains("COMMAND is missing"));
        // `--` right after NAME, and a command that starts with `--`.
        assert_eq!(options(&["job", "--", "--", "x"]).command, ["--", "x"]);
        assert_eq!(options(&["-q", "job", "--", "true"]).command, ["true"]);
    }

    #[test]
    fn an_option_given_twice_is_refused() {
        let err = |args: &[&str]| parse_args(args).unwrap_err();
        let twice = [
            (
                &["job", "-E", "5", "-E", "6", "true"][..],
                "-E/--conflict-exit-code given twice (5, then 6)",
            ),
            (
                &["job", "-w", "5s", "--wait", "6s", "true"],
                "-w/--wait given twice (5s, then 6s)",
            ),
            (
                &["job", "--ttl", "5s", "--ttl", "6s", "true"],
                "--ttl given twice",
            ),
            (
                &["job", "-c", "a", "-c", "b"],
                "-c/--command given twice (\"a\", then \"b\")",
            ),
            (
                &["job", "--kill-grace", "1s", "--kill-grace", "2s", "true"],
                "--kill-grace given twice",
            ),
        ];
        for (args, message) in twice {
            let e = err(args);
            assert!(e.contains(message), "{args:?}: {e}");
        }
        for args in [
            &["job", "-n", "-w", "5s", "true"][..],
            &["job", "-w", "5s", "-n", "true"],
        ] {
            let e = err(args);
            assert!(
                e.contains("-n/--nonblock and -w/--wait 5s both given"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_default_ttl_is_capped_to_the_servers_longest_hold() {
        let capped = |grace, cap| timing(None, grace, Some(cap));
        let five = Duration::from_secs(5);
        assert_eq!(
            capped(None, five),
            Ok(Timing {
                ttl: five,
                kill_grace: 1250 * MS
            })
        );
        // A longer maximum, or a --ttl given, is not touched.
        assert_eq!(
            capped(None, Duration::from_secs(60)).unwrap().ttl,
            TTL_DEFAULT
        );
        assert_eq!(timing(Some(five), None, Some(MS)).unwrap().ttl, five);
        let e = capped(Some(Duration::from_secs(3)), five).unwrap_err();
        assert!(
            e.contains("--kill-grace 3s: over half of the TTL, 5s (run's default 30s capped")
                && e.contains("--ttl-max-ms 5000"),
            "{e}"
        );
        let e = capped(None, 50 * MS).unwrap_err();
        assert!(e.contains("under the minimum 100ms"), "{e}");
    }

    fn clock(t0: Instant) -> LeaseClock {
        // TTL 1 s, grace 200 ms: margin 100 ms, SIGTERM at 700 ms, dead by 900 ms.
        LeaseClock::new(t0, 1000 * MS, 1000 * MS, 200 * MS)
    }

    #[test]
    fn failing_renewals_terminate_so_that_kill_lands_before_expiry() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(clock(t0));
        assert_eq!(s.wake_at(), Some(t0 + 700 * MS));
        assert_eq!(s.poll(t0 + 699 * MS), None);
        assert_eq!(
            s.poll(t0 + 700 * MS),
            Some(Action::Terminate {
                lapse: Some(Lapse::NotSent),
                grace: 200 * MS,
                lease_ended: false,
            })
        );
        assert_eq!(s.wake_at(), Some(t0 + 900 * MS));
        assert_eq!(s.poll(t0 + 899 * MS), None);
        assert_eq!(s.poll(t0 + 900 * MS), Some(Action::Kill));
        assert_eq!(s.wake_at(), None);
        assert_eq!(s.poll(t0 + 5000 * MS), None);
    }

    #[test]
    fn a_late_wake_up_shortens_the_grace() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(clock(t0));
        assert!(s.poll(t0 + 850 * MS).is_some());
        assert_eq!(
            s.phase,
            Phase::Terminating {
                kill_at: t0 + 900 * MS
            }
        );
        // Past kill_by (paused): both signals at once, and no SIGKILL
        // "deadline" announced afterwards.
        let mut s = Supervisor::new(clock(t0));
        assert_eq!(
            s.poll(t0 + 950 * MS),
            Some(Action::Terminate {
                lapse: Some(Lapse::NotSent),
                grace: Duration::ZERO,
                lease_ended: false,
            })
        );
        assert_eq!(s.phase, Phase::Killed);
        assert_eq!(s.poll(t0 + 2000 * MS), None);
        let mut s = Supervisor::new(clock(t0));
        assert!(matches!(
            s.poll(t0 + 2000 * MS),
            Some(Action::Terminate {
                grace: Duration::ZERO,
                lease_ended: true,
                ..
            })
        ));
        assert_eq!(s.poll(t0 + 2000 * MS), None);
    }

    fn lapse_at_termination(s: &mut Supervisor, now: Instant) -> Lapse {
        match s.poll(now) {
            Some(Action::Terminate {
                lapse: Some(lapse), ..
            }) => lapse,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_lapse_says_whether_renewals_failed_hung_or_were_never_sent() {
        let t0 = Instant::now();
        // A failure, then a retry still in flight: the failure is the news.
        let mut s = Supervisor::new(clock(t0));
        s.renewing(t0 + 333 * MS);
        s.renew_failed("connection refused".into());
        s.renewing(t0 + 433 * MS);
        assert_eq!(
            lapse_at_termination(&mut s, t0 + 700 * MS),
            Lapse::RenewalsFailed("connection refused".into())
        );
        // Sent in time, never answered.
        let mut s = Supervisor::new(clock(t0));
        s.renewing(t0 + 333 * MS);
        assert_eq!(
            lapse_at_termination(&mut s, t0 + 700 * MS),
            Lapse::Unanswered { waited: 367 * MS }
        );
        // Sent only after the deadline (the process was stopped): not sent
        // in time.
        let mut s = Supervisor::new(clock(t0));
        s.renewing(t0 + 2000 * MS);
        assert_eq!(lapse_at_termination(&mut s, t0 + 2000 * MS), Lapse::NotSent);
        // A success forgets earlier failures.
        let mut s = Supervisor::new(clock(t0));
        s.renew_failed("timed out".into());
        s.renewed(t0 + 100 * MS, 1000 * MS);
        assert_eq!(lapse_at_termination(&mut s, t0 + 800 * MS), Lapse::NotSent);
    }

    #[test]
    fn renewals_push_the_deadline_and_stale_ones_do_not_pull_it() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(clock(t0));
        s.renewed(t0 + 333 * MS, 1000 * MS);
        assert_eq!(s.wake_at(), Some(t0 + 1033 * MS));
        assert_eq!(s.poll(t0 + 800 * MS), None);
        s.renewed(t0 + 100 * MS, 1000 * MS);
        assert_eq!(s.wake_at(), Some(t0 + 1033 * MS));
    }

    #[test]
    fn not_held_terminates_at_once() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(clock(t0));
        s.lost();
        assert_eq!(
            s.poll(t0 + 10 * MS),
            Some(Action::Terminate {
                lapse: None,
                grace: 200 * MS,
                lease_ended: false,
            })
        );
        assert_eq!(
            s.phase,
            Phase::Terminating {
                kill_at: t0 + 210 * MS
            }
        );
        // A renewal that succeeds later does not call it off.
        s.renewed(t0 + 20 * MS, 1000 * MS);
        assert_eq!(s.poll(t0 + 210 * MS), Some(Action::Kill));
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
