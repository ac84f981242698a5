//! `distlockd test stress`: many client processes hammer a few names, with
//! random holds, expiries, dropped connections and kill -9s, and a checker
//! proves from their logs that the server never let two owners hold a name
//! at once and that fencing tokens only ever increased.
//!
//! One run:
//!
//! ```text
//!  parent ──spawns──▶ distlockd server --port 0        (unless --port)
//!    │
//!    ├──spawns──▶ worker 0 … worker W-1   (this executable, `test stress-worker`)
//!    │              each: clients/W threads, one connection each, a log file
//!    ├── every ~kill_every_ms: kill -9 a random worker, count what its log
//!    │   says it did, start a new one on the rest of its operation budget
//!    └── all budgets done: read every log, check, print the summary
//! ```
//!
//! Workers speak the wire protocol directly (no retries, so every request
//! in the log is exactly one request on the wire) and append one line per
//! event to their log, with the wall-clock time in microseconds
//! (`SystemTime`, one clock for every process on the machine; the run
//! assumes nobody steps it meanwhile). A line describing something the
//! worker is about to do (send a request, close a connection) is written
//! before doing it; a line describing a reply is written after reading it.
//! A process killed mid-line leaves a partial last line, which is ignored.
//!
//! # Why the checker is sound
//!
//! For every hold we derive, from the log alone, an upper bound on when the
//! server granted it and a lower bound on when it ended:
//!
//! - granted no later than the logged receipt of GRANTED (the line is
//!   written after the read), and no earlier than the logged send of the
//!   ACQUIRE (written before the write);
//! - ended no earlier than `end_lb`, the smallest of what could have ended
//!   it: a RELEASE it sent (unless that one was answered NOT_HELD; one
//!   answered RELEASED ended it exactly then, so then `end_lb` is its send
//!   time), its expiry (at least `acquire sent + ttl`, or `EXTEND sent +
//!   ttl` for an EXTEND answered EXTENDED; workers extend by the acquire's
//!   TTL, so an EXTEND never shortens a hold), and, for a SESSION hold, the
//!   close of its connection (no earlier than the worker's last line about
//!   that connection, since workers close a connection only after logging
//!   `D`, or by dying; if the connection broke under the worker, `C`, we
//!   only know it was after the ACQUIRE was sent).
//!
//! The server never expires a hold before its full TTL (its millisecond
//! clock adds the rounding millisecond), so expiry bounds need no slack;
//! `--clock-slack-us` (default 0) takes some off, for servers that round
//! differently.
//!
//! Then, with a correct server, per name and in token order (which is grant
//! order: one counter, increasing with time), each hold is granted after
//! the previous one ended, so `granted_by(B) >= end_lb(A)` for consecutive
//! A, B. A pair with `granted_by(B) < end_lb(A)` is proof of two holders at
//! once. Any overlap of two holds implies an overlap of two consecutive
//! ones, so checking neighbours suffices; holds whose GRANTED was never read
//! (the worker died first) are unknown to the checker, which only widens the
//! gap between the neighbours it does see, so it cannot raise a false alarm.
//! And across all names: if A's GRANTED was read before B's ACQUIRE was
//! sent, A was granted before B, so `token(A) < token(B)`.
//!
//! One assumption outside the log: the server closes a worker's connection
//! only when the worker does. Workers send only valid frames, read every
//! reply and never sit idle anywhere near the server's timeouts; a
//! connection that breaks anyway is counted (`broken connections`) and
//! fails the run.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lexopt::prelude::*;

use crate::protocol::blocking::Connection;
use crate::protocol::{Acquire, FLAG_SESSION, Reply, Request};

pub const STRESS_USAGE: &str = "\
Usage: distlockd test stress [options]

Starts a server (unless --port), then worker processes of this executable
running --clients client threads in all over --names lock names. Each client
loops: ACQUIRE a random name (half try-acquire, half waiting up to 2×TTL; one
in four with SESSION), hold it for a random time (mostly up to --hold-ms, one
hold in eight from TTL/2 to 2×TTL so it expires), sometimes EXTEND it (by the
same TTL), sometimes drop the connection mid-hold, then RELEASE. The parent
kill -9s a random worker about every --kill-every-ms and starts a new one.
Every event is logged; afterwards a checker proves, per name, that no two
holders overlapped and that tokens increased in grant order, and prints a
summary. Exit status 0 only with 0 violations.

A long run (about a million requests):
  distlockd test stress --ops 1000000 --seconds-max 3600

Options:
  --ops N             requests to send in all (default 100000)
  --clients N         client threads in all (default 64)
  --names N           lock names they share (default 8)
  --workers N         worker processes (default 4)
  --ttl-ms MS         TTL of every hold (default 200)
  --hold-ms MS        longest ordinary hold (default 10)
  --kill-every-ms MS  mean time between kill -9s of a worker; 0: none (default 250)
  --clock-slack-us US how much earlier than acquire+TTL an expiry may be seen
                      (default 0: the server never expires a hold early)
  --seconds-max S     stop starting work after this long, check what ran
                      (default 3600)
  --seed N            random seed (default: from the clock)
  --host HOST --port PORT
                      use a running server instead of starting one
  --log-dir DIR       where the logs go (default: a new temporary directory,
                      removed after a clean run)
  -h, --help          print this help";

/// Bounds on the flags, each with its reason.
/// Each client is a thread and a connection.
const CLIENTS_MAX: usize = 10_000;
const WORKERS_MAX: usize = 256;
/// Names are `stress-{i}`; more would rarely contend.
const NAMES_MAX: usize = 100_000;
const OPS_MAX: u64 = 1_000_000_000;
/// Holds must fit the server's default TTL ceiling and expire within a run.
const TTL_MS_MAX: u32 = 60_000;
const SECONDS_MAX: u64 = 24 * 3600;

/// One hold in this many is long (TTL/2 to 2×TTL): expiries happen.
const LONG_HOLD_EVERY: u64 = 8;
/// One hold in this many is extended halfway.
const EXTEND_EVERY: u64 = 10;
/// One hold in this many loses its connection mid-hold.
const DISCONNECT_EVERY: u64 = 12;
/// One acquisition in this many is SESSION.
const SESSION_EVERY: u64 = 4;
/// After BUSY, a client sleeps up to this long before trying again.
const BUSY_BACKOFF_US_MAX: u64 = 2_000;
/// Socket timeout of a worker: far above any wait (2×TTL), so hitting it
/// means a lost reply.
const WORKER_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the parent waits for its server's start-up line.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// A respawn is pointless for fewer requests than this.
const RESPAWN_OPS_MIN: u64 = 16;

#[derive(Clone, Debug)]
pub struct StressConfig {
    pub ops: u64,
    pub clients: usize,
    pub names: usize,
    pub workers: usize,
    pub ttl_ms: u32,
    pub hold_ms: u32,
    pub kill_every_ms: u64,
    pub clock_slack_us: u64,
    pub seconds_max: u64,
    pub seed: u64,
    pub addr: Option<SocketAddr>,
    pub log_dir: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    addr: SocketAddr,
    log: PathBuf,
    /// Prefix of owners and connection ids: `{slot}.{incarnation}`.
    id: String,
    clients: usize,
    names: usize,
    ops: u64,
    ttl_ms: u32,
    hold_ms: u32,
    seed: u64,
}

#[derive(Debug)]
pub enum StressCommand {
    Help,
    Run(StressConfig),
    Worker(WorkerConfig),
}

/// Parses the arguments after `test stress` or `test stress-worker`.
pub fn parse(command: &str, parser: &mut lexopt::Parser) -> Result<StressCommand, String> {
    let mut cfg = StressConfig {
        ops: 100_000,
        clients: 64,
        names: 8,
        workers: 4,
        ttl_ms: 200,
        hold_ms: 10,
        kill_every_ms: 250,
        clock_slack_us: 0,
        seconds_max: 3600,
        seed: 0,
        addr: None,
        log_dir: None,
    };
    let (mut host, mut port, mut seed) = (None, None, None);
    let (mut log, mut id) = (None, None);
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("ops") => cfg.ops = bounded(parser, "--ops", 1, OPS_MAX)?,
            Long("clients") => cfg.clients = bounded(parser, "--clients", 1, CLIENTS_MAX)?,
            Long("names") => cfg.names = bounded(parser, "--names", 1, NAMES_MAX)?,
            Long("workers") => cfg.workers = bounded(parser, "--workers", 1, WORKERS_MAX)?,
            Long("ttl-ms") => cfg.ttl_ms = bounded(parser, "--ttl-ms", 2, TTL_MS_MAX)?,
            Long("hold-ms") => cfg.hold_ms = bounded(parser, "--hold-ms", 0, TTL_MS_MAX)?,
            Long("kill-every-ms") => {
                cfg.kill_every_ms = bounded(parser, "--kill-every-ms", 0, 3_600_000)?
            }
            Long("clock-slack-us") => {
                cfg.clock_slack_us = bounded(parser, "--clock-slack-us", 0, 1_000_000)?
            }
            Long("seconds-max") => {
                cfg.seconds_max = bounded(parser, "--seconds-max", 1, SECONDS_MAX)?
            }
            Long("seed") => seed = Some(bounded(parser, "--seed", 0, u64::MAX)?),
            Long("host") => host = Some(text(parser, "--host")?),
            Long("port") | Short('p') => port = Some(bounded(parser, "--port", 1, u16::MAX)?),
            Long("log-dir") => cfg.log_dir = Some(text(parser, "--log-dir")?.into()),
            // The worker's own flags; not in the help, as only the parent
            // starts workers.
            Long("log") => log = Some(PathBuf::from(text(parser, "--log")?)),
            Long("id") => id = Some(text(parser, "--id")?),
            Long("help") | Short('h') => return Ok(StressCommand::Help),
            other => {
                return Err(format!(
                    "test {command}: {}; run `distlockd test stress --help`",
                    other.unexpected()
                ));
            }
        }
    }
    cfg.seed = seed.unwrap_or_else(|| now_us() ^ u64::from(std::process::id()));
    if cfg.workers > cfg.clients {
        return Err(format!(
            "--workers {} is more than --clients {}; each worker runs at least one client",
            cfg.workers, cfg.clients
        ));
    }
    let addr = match (host, port) {
        (_, None) => None,
        (host, Some(port)) => {
            let host = host.unwrap_or_else(|| "127.0.0.1".into());
            let ip = host.parse().map_err(|_| {
                format!("--host {host}: not an IP address; use one such as 127.0.0.1")
            })?;
            Some(SocketAddr::new(ip, port))
        }
    };
    if command == "stress-worker" {
        let (Some(addr), Some(log), Some(id)) = (addr, log, id) else {
            return Err(
                "test stress-worker needs --port, --log and --id (the parent passes them)".into(),
            );
        };
        return Ok(StressCommand::Worker(WorkerConfig {
            addr,
            log,
            id,
            clients: cfg.clients,
            names: cfg.names,
            ops: cfg.ops,
            ttl_ms: cfg.ttl_ms,
            hold_ms: cfg.hold_ms,
            seed: cfg.seed,
        }));
    }
    cfg.addr = addr;
    Ok(StressCommand::Run(cfg))
}

/// Entry point of `distlockd test stress` and its workers.
pub fn main(command: StressCommand) -> Result<ExitCode, String> {
    match command {
        StressCommand::Help => {
            println!("{STRESS_USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        StressCommand::Worker(cfg) => {
            run_worker(&cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        StressCommand::Run(cfg) => {
            let summary = run(&cfg)?;
            print!("{summary}");
            Ok(
                if summary.violations.is_empty() && summary.failures.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            )
        }
    }
}

// ---------------------------------------------------------------------------
// The parent.

/// A worker slot: one live process at a time, replaced when killed.
struct Slot {
    index: usize,
    clients: usize,
    ops_left: u64,
    incarnation: u32,
    process: Option<(Child, PathBuf)>,
}

/// A server child process, killed on drop.
struct ServerChild(Child);

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the whole stress test and checks it.
pub fn run(cfg: &StressConfig) -> Result<Summary, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this executable to start workers: {e}"))?;
    let (_server, addr) = match cfg.addr {
        Some(addr) => (None, addr),
        None => {
            let (server, addr) = start_server(&exe)?;
            (Some(server), addr)
        }
    };
    let (dir, temporary) = match &cfg.log_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "distlockd-stress-{}-{}",
                std::process::id(),
                now_us()
            )),
            true,
        ),
    };
    fs::create_dir_all(&dir).map_err(|e| format!("--log-dir {}: {e}", dir.display()))?;
    eprintln!(
        "stress: {} requests, {} clients in {} workers over {} names, TTL {} ms, server {addr}, logs in {}",
        cfg.ops,
        cfg.clients,
        cfg.workers,
        cfg.names,
        cfg.ttl_ms,
        dir.display()
    );
    let started = Instant::now();
    let mut rng = Rng::new(cfg.seed);
    let mut slots: Vec<Slot> = (0..cfg.workers)
        .map(|index| Slot {
            index,
            clients: cfg.clients / cfg.workers + usize::from(index < cfg.clients % cfg.workers),
            ops_left: cfg.ops / cfg.workers as u64
                + u64::from((index as u64) < cfg.ops % cfg.workers as u64),
            incarnation: 0,
            process: None,
        })
        .collect();
    let mut kills = 0u64;
    let mut failures = Vec::new();
    for slot in &mut slots {
        spawn_worker(&exe, cfg, addr, &dir, slot, &mut rng)?;
    }
    let deadline = started + Duration::from_secs(cfg.seconds_max);
    let mut next_kill = started + kill_interval(cfg, &mut rng);
    while slots.iter().any(|s| s.process.is_some()) {
        std::thread::sleep(Duration::from_millis(5));
        for slot in &mut slots {
            reap(slot, &mut failures);
        }
        let now = Instant::now();
        if now >= deadline {
            eprintln!(
                "stress: --seconds-max {} reached; stopping the workers",
                cfg.seconds_max
            );
            for slot in &mut slots {
                kill_slot(slot)?;
                slot.ops_left = 0;
            }
            break;
        }
        if cfg.kill_every_ms > 0 && now >= next_kill {
            next_kill = now + kill_interval(cfg, &mut rng);
            let live: Vec<usize> = (0..slots.len())
                .filter(|&i| slots[i].process.is_some())
                .collect();
            if !live.is_empty() {
                let slot = &mut slots[live[rng.below(live.len() as u64) as usize]];
                kill_slot(slot)?;
                kills += 1;
                if slot.ops_left >= RESPAWN_OPS_MIN {
                    spawn_worker(&exe, cfg, addr, &dir, slot, &mut rng)?;
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let logs = list_logs(&dir)?;
    let records = read_logs(&logs)?;
    let mut summary = check(&records, cfg.clock_slack_us);
    summary.kills = kills;
    summary.failures.extend(failures);
    summary.elapsed = elapsed;
    if summary.violations.is_empty() && summary.failures.is_empty() && temporary {
        let _ = fs::remove_dir_all(&dir);
    } else {
        summary.logs_kept = Some(dir);
    }
    Ok(summary)
}

fn kill_interval(cfg: &StressConfig, rng: &mut Rng) -> Duration {
    // Uniform over [0.5, 1.5] × the mean, so kills do not fall into step
    // with anything periodic in the workers.
    let ms = cfg.kill_every_ms / 2 + rng.below(cfg.kill_every_ms + 1);
    Duration::from_millis(ms)
}

fn start_server(exe: &Path) -> Result<(ServerChild, SocketAddr), String> {
    let mut child = Command::new(exe)
        .args(["server", "--host", "127.0.0.1", "--port", "0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `distlockd server`: {e}"))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let server = ServerChild(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining so the server never blocks on a full pipe.
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && let Some(rest) = line.split(" listening on ").nth(1) {
                let addr = rest.split(';').next().unwrap_or("").trim().to_owned();
                sent = tx.send(addr).is_ok();
            }
        }
    });
    let addr = rx
        .recv_timeout(SERVER_START_TIMEOUT)
        .map_err(|_| "the server logged no `listening on` line within 10 s".to_string())?;
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?} in the server's start-up log: {e}"))?;
    Ok((server, addr))
}

fn spawn_worker(
    exe: &Path,
    cfg: &StressConfig,
    addr: SocketAddr,
    dir: &Path,
    slot: &mut Slot,
    rng: &mut Rng,
) -> Result<(), String> {
    let id = format!("{}.{}", slot.index, slot.incarnation);
    slot.incarnation += 1;
    let log = dir.join(format!("worker-{id}.log"));
    let child = Command::new(exe)
        .args(["test", "stress-worker"])
        .args([
            "--host",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args(["--log".as_ref(), log.as_os_str()])
        .args(["--id", &id])
        .args(["--clients", &slot.clients.to_string()])
        .args(["--names", &cfg.names.to_string()])
        .args(["--ops", &slot.ops_left.to_string()])
        .args(["--ttl-ms", &cfg.ttl_ms.to_string()])
        .args(["--hold-ms", &cfg.hold_ms.to_string()])
        .args(["--seed", &rng.next().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start a worker: {e}"))?;
    slot.process = Some((child, log));
    Ok(())
}

/// Collects a worker that exited by itself.
fn reap(slot: &mut Slot, failures: &mut Vec<String>) {
    let Some((child, log)) = &mut slot.process else {
        return;
    };
    match child.try_wait() {
        Ok(None) => {}
        Ok(Some(status)) => {
            if !status.success() {
                failures.push(format!("worker {} exited with {status}", log.display()));
            }
            slot.ops_left = 0;
            slot.process = None;
        }
        Err(e) => {
            failures.push(format!("worker {}: {e}", log.display()));
            slot.process = None;
        }
    }
}

/// kill -9, then charge the slot with the requests its log shows.
fn kill_slot(slot: &mut Slot) -> Result<(), String> {
    let Some((mut child, log)) = slot.process.take() else {
        return Ok(());
    };
    let _ = child.kill();
    let _ = child.wait();
    let records = read_logs(&[log])?;
    let sent = records.iter().filter(|r| r.event.is_request()).count() as u64;
    slot.ops_left = slot.ops_left.saturating_sub(sent);
    Ok(())
}

fn list_logs(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut logs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_some_and(|x| x == "log") {
            logs.push(path);
        }
    }
    logs.sort();
    Ok(logs)
}

// ---------------------------------------------------------------------------
// The worker.

/// One log file per worker process, one `write` per line so a kill leaves
/// at most the last line partial.
struct Log(Mutex<File>);

impl Log {
    fn write(&self, line: std::fmt::Arguments<'_>) -> Result<(), String> {
        let text = format!("{} {line}\n", now_us());
        let mut file = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        file.write_all(text.as_bytes())
            .map_err(|e| format!("cannot write the stress log: {e}"))
    }
}

fn run_worker(cfg: &WorkerConfig) -> Result<(), String> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.log)
        .map_err(|e| format!("--log {}: {e}", cfg.log.display()))?;
    let log = Log(Mutex::new(file));
    let sent = AtomicU64::new(0);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..cfg.clients)
            .map(|client| {
                let (log, sent) = (&log, &sent);
                s.spawn(move || {
                    let mut c = StressClient::new(cfg, client, log, sent)?;
                    c.run()
                })
            })
            .collect();
        threads.into_iter().try_for_each(|t| {
            t.join()
                .unwrap_or_else(|_| Err("a client thread panicked".into()))
        })
    })
}

/// One client thread: one connection at a time, a fresh owner per ACQUIRE.
struct StressClient<'a> {
    cfg: &'a WorkerConfig,
    log: &'a Log,
    sent: &'a AtomicU64,
    client: usize,
    rng: Rng,
    wire: Connection,
    /// `{worker id}.{client}.{n}`: the connection, in the log.
    conn: String,
    conns: u64,
    acquisitions: u64,
}

impl<'a> StressClient<'a> {
    fn new(
        cfg: &'a WorkerConfig,
        client: usize,
        log: &'a Log,
        sent: &'a AtomicU64,
    ) -> Result<Self, String> {
        let wire = connect(cfg.addr)?;
        Ok(StressClient {
            cfg,
            log,
            sent,
            client,
            rng: Rng::new(cfg.seed ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            wire,
            conn: format!("{}.{client}.0", cfg.id),
            conns: 1,
            acquisitions: 0,
        })
    }

    fn run(&mut self) -> Result<(), String> {
        while self.sent.load(Ordering::Relaxed) < self.cfg.ops {
            self.cycle()?;
        }
        Ok(())
    }

    /// One acquisition attempt and, if granted, the hold and its end.
    fn cycle(&mut self) -> Result<(), String> {
        let ttl_ms = self.cfg.ttl_ms;
        let name = format!("stress-{}", self.rng.below(self.cfg.names as u64));
        let owner = format!("{}.{}.{}", self.cfg.id, self.client, self.acquisitions);
        self.acquisitions += 1;
        let flags = if self.rng.below(SESSION_EVERY) == 0 {
            FLAG_SESSION
        } else {
            0
        };
        let wait_ms = match self.rng.below(2) {
            0 => 0,
            _ => 1 + self.rng.below(2 * ttl_ms as u64) as u32,
        };
        let token = match self.acquire(&name, &owner, ttl_ms, wait_ms, flags)? {
            Some(token) => token,
            None => {
                let pause = self.rng.below(BUSY_BACKOFF_US_MAX);
                std::thread::sleep(Duration::from_micros(pause));
                return Ok(());
            }
        };
        let hold_ms = if self.rng.below(LONG_HOLD_EVERY) == 0 {
            ttl_ms as u64 / 2 + self.rng.below(3 * ttl_ms as u64 / 2 + 1)
        } else {
            self.rng.below(self.cfg.hold_ms as u64 + 1)
        };
        if self.rng.below(EXTEND_EVERY) == 0 {
            std::thread::sleep(Duration::from_millis(hold_ms / 2));
            self.extend(&name, &owner, token)?;
            std::thread::sleep(Duration::from_millis(hold_ms - hold_ms / 2));
        } else {
            std::thread::sleep(Duration::from_millis(hold_ms));
        }
        if self.rng.below(DISCONNECT_EVERY) == 0 {
            self.reconnect()?;
            // A SESSION hold ended with its connection; release the others
            // from the new connection half the time, else let them expire.
            if flags & FLAG_SESSION != 0 || self.rng.below(2) == 0 {
                return Ok(());
            }
        }
        self.release(&name, &owner, token)
    }

    fn acquire(
        &mut self,
        name: &str,
        owner: &str,
        ttl_ms: u32,
        wait_ms: u32,
        flags: u8,
    ) -> Result<Option<u64>, String> {
        self.log.write(format_args!(
            "A {} {owner} {name} {ttl_ms} {wait_ms} {flags}",
            self.conn
        ))?;
        let request = Request::Acquire(Acquire {
            name: name.as_bytes(),
            owner: owner.as_bytes(),
            ttl_ms,
            wait_ms,
            flags,
        });
        match self.exchange(&request)? {
            Reply::Granted { token, .. } => {
                self.log
                    .write(format_args!("G {} {owner} {token}", self.conn))?;
                Ok(Some(token))
            }
            Reply::Busy { .. } => {
                self.log.write(format_args!("B {} {owner}", self.conn))?;
                Ok(None)
            }
            Reply::Timeout { .. } => {
                self.log.write(format_args!("T {} {owner}", self.conn))?;
                Ok(None)
            }
            other => {
                let other = format!("{other:?}");
                Err(format!("ACQUIRE of {} answered {other}", self.conn))
            }
        }
    }

    fn extend(&mut self, name: &str, owner: &str, token: u64) -> Result<(), String> {
        self.log
            .write(format_args!("E {} {owner} {token}", self.conn))?;
        let request = Request::Extend {
            name: name.as_bytes(),
            owner: owner.as_bytes(),
            token,
            ttl_ms: self.cfg.ttl_ms,
        };
        match self.exchange(&request)? {
            Reply::Extended { .. } => self.log.write(format_args!("x {} {owner}", self.conn)),
            Reply::NotHeld { reason } => self
                .log
                .write(format_args!("n {} {owner} E {}", self.conn, reason as u8)),
            other => {
                let other = format!("{other:?}");
                Err(format!("EXTEND of {} answered {other}", self.conn))
            }
        }
    }

    fn release(&mut self, name: &str, owner: &str, token: u64) -> Result<(), String> {
        self.log
            .write(format_args!("R {} {owner} {token}", self.conn))?;
        let request = Request::Release {
            name: name.as_bytes(),
            owner: owner.as_bytes(),
            token,
        };
        match self.exchange(&request)? {
            Reply::Released => self.log.write(format_args!("r {} {owner}", self.conn)),
            Reply::NotHeld { reason } => self
                .log
                .write(format_args!("n {} {owner} R {}", self.conn, reason as u8)),
            other => {
                let other = format!("{other:?}");
                Err(format!("RELEASE of {} answered {other}", self.conn))
            }
        }
    }

    /// Closes the connection (logged first) and opens a new one.
    fn reconnect(&mut self) -> Result<(), String> {
        self.log.write(format_args!("D {}", self.conn))?;
        self.wire = connect(self.cfg.addr)?;
        self.conn = format!("{}.{}.{}", self.cfg.id, self.client, self.conns);
        self.conns += 1;
        Ok(())
    }

    /// One request, one reply (borrowing the connection's buffer). A broken
    /// connection is logged (`C`) and is fatal for the worker: the run fails.
    fn exchange(&mut self, request: &Request<'_>) -> Result<Reply<'_>, String> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        match self.wire.exchange(request) {
            Ok(reply) => Ok(reply),
            Err(e) => {
                self.log.write(format_args!("C {}", self.conn))?;
                Err(format!("connection {} broke: {e}", self.conn))
            }
        }
    }
}

fn connect(addr: SocketAddr) -> Result<Connection, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_write_timeout(Some(WORKER_IO_TIMEOUT)))
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut wire = Connection::new(stream);
    wire.set_read_timeout(Some(WORKER_IO_TIMEOUT))
        .map_err(|e| format!("{addr}: {e}"))?;
    Ok(wire)
}

// ---------------------------------------------------------------------------
// The log and the checker.

/// One log line: `{t_us} {kind} {conn} [owner …]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub t_us: u64,
    pub conn: String,
    pub event: Event,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// About to send an ACQUIRE.
    Acquire {
        owner: String,
        name: String,
        ttl_ms: u32,
        wait_ms: u32,
        flags: u8,
    },
    Granted {
        owner: String,
        token: u64,
    },
    Busy {
        owner: String,
    },
    Timeout {
        owner: String,
    },
    /// About to send an EXTEND (by the acquire's TTL).
    Extend {
        owner: String,
    },
    Extended {
        owner: String,
    },
    /// About to send a RELEASE.
    Release {
        owner: String,
    },
    Released {
        owner: String,
    },
    /// NOT_HELD to an EXTEND (`of_release` false) or a RELEASE.
    NotHeld {
        owner: String,
        of_release: bool,
    },
    /// About to close the connection.
    Disconnect,
    /// The connection broke under the worker.
    Broken,
}

impl Event {
    fn is_request(&self) -> bool {
        matches!(
            self,
            Event::Acquire { .. } | Event::Extend { .. } | Event::Release { .. }
        )
    }
}

/// Parses one line; `None` for a partial or foreign line.
pub fn parse_record(line: &str) -> Option<Record> {
    let mut f = line.split(' ');
    let t_us = f.next()?.parse().ok()?;
    let kind = f.next()?;
    let conn = f.next()?.to_owned();
    let mut owner = || f.next().map(str::to_owned);
    let event = match kind {
        "A" => {
            let owner = owner()?;
            let name = owner_field(&mut f)?;
            Event::Acquire {
                owner,
                name,
                ttl_ms: f.next()?.parse().ok()?,
                wait_ms: f.next()?.parse().ok()?,
                flags: f.next()?.parse().ok()?,
            }
        }
        "G" => Event::Granted {
            owner: owner()?,
            token: f.next()?.parse().ok()?,
        },
        "B" => Event::Busy { owner: owner()? },
        "T" => Event::Timeout { owner: owner()? },
        "E" => Event::Extend { owner: owner()? },
        "x" => Event::Extended { owner: owner()? },
        "R" => Event::Release { owner: owner()? },
        "r" => Event::Released { owner: owner()? },
        "n" => {
            let owner = owner()?;
            Event::NotHeld {
                owner,
                of_release: f.next()? == "R",
            }
        }
        "D" => Event::Disconnect,
        "C" => Event::Broken,
        _ => return None,
    };
    Some(Record { t_us, conn, event })
}

fn owner_field<'a>(f: &mut impl Iterator<Item = &'a str>) -> Option<String> {
    f.next().map(str::to_owned)
}

/// Every complete line of every log.
fn read_logs(paths: &[PathBuf]) -> Result<Vec<Record>, String> {
    let mut records = Vec::new();
    for path in paths {
        let mut text = String::new();
        File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // A line without its newline was cut by a kill: drop it.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        records.extend(complete.lines().filter_map(parse_record));
    }
    Ok(records)
}

/// What the checker found, and the run's figures.
#[derive(Debug, Default)]
pub struct Summary {
    pub requests: u64,
    pub grants: u64,
    pub busy: u64,
    pub timeouts: u64,
    pub releases: u64,
    /// RELEASEs answered NOT_HELD: the hold had expired (or its session
    /// connection closed) first.
    pub releases_too_late: u64,
    pub extends: u64,
    pub disconnects: u64,
    pub broken: u64,
    pub kills: u64,
    pub names: usize,
    pub violations: Vec<String>,
    pub failures: Vec<String>,
    pub elapsed: Duration,
    pub logs_kept: Option<PathBuf>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "distlockd test stress: {:.1} s",
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "  requests             {}", self.requests)?;
        writeln!(f, "  grants               {}", self.grants)?;
        writeln!(
            f,
            "  busy / timed out     {} / {}",
            self.busy, self.timeouts
        )?;
        writeln!(f, "  releases             {}", self.releases)?;
        writeln!(f, "  releases after expiry {}", self.releases_too_late)?;
        writeln!(f, "  extends              {}", self.extends)?;
        writeln!(f, "  dropped connections  {}", self.disconnects)?;
        writeln!(f, "  kill -9 of workers   {}", self.kills)?;
        writeln!(f, "  broken connections   {}", self.broken)?;
        writeln!(f, "  names checked        {}", self.names)?;
        writeln!(f, "  violations           {}", self.violations.len())?;
        for v in self.violations.iter().take(20) {
            writeln!(f, "    {v}")?;
        }
        for failure in &self.failures {
            writeln!(f, "  failure: {failure}")?;
        }
        if let Some(dir) = &self.logs_kept {
            writeln!(f, "  logs kept in {}", dir.display())?;
        }
        Ok(())
    }
}

/// One hold as the logs show it.
#[derive(Clone, Debug, Default)]
struct Hold {
    name: String,
    owner: String,
    conn: String,
    session: bool,
    ttl_us: u64,
    acquire_sent: u64,
    token: Option<u64>,
    granted_by: u64,
    /// The last EXTEND answered EXTENDED was sent at (0: none).
    extended_at: u64,
    /// The RELEASE answered RELEASED was sent at.
    released_at: Option<u64>,
    /// Earliest RELEASE that may have executed (not answered NOT_HELD).
    release_maybe_at: Option<u64>,
    pending_extend: Option<u64>,
    pending_release: Option<u64>,
}

/// Checks the logs (see the module docs for why each check is sound).
pub fn check(records: &[Record], clock_slack_us: u64) -> Summary {
    let mut s = Summary::default();
    let mut holds: HashMap<&str, Hold> = HashMap::new();
    // Per connection: (last line's time, how it ended: D, C or neither).
    let mut conns: HashMap<&str, (u64, Option<bool>)> = HashMap::new();
    for r in records {
        let entry = conns.entry(r.conn.as_str()).or_insert((0, None));
        entry.0 = entry.0.max(r.t_us);
        match &r.event {
            Event::Disconnect => {
                s.disconnects += 1;
                entry.1 = Some(true);
            }
            Event::Broken => {
                s.broken += 1;
                entry.1 = Some(false);
                s.failures.push(format!("connection {} broke", r.conn));
            }
            _ => {}
        }
        s.requests += u64::from(r.event.is_request());
        apply(&mut holds, r, &mut s);
    }
    let mut granted: Vec<&Hold> = holds.values().filter(|h| h.token.is_some()).collect();
    s.grants = granted.len() as u64;
    check_tokens(&granted, &mut s.violations);
    granted.sort_by_key(|h| (&h.name, h.token));
    let mut names = 0;
    for pair in granted.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.name != b.name {
            continue;
        }
        let end_lb = end_lower_bound(a, &conns, clock_slack_us);
        if b.granted_by < end_lb {
            s.violations.push(format!(
                "{}: token {} ({}) was granted by t={} us, but token {} ({}) cannot have ended before t={} us: two holders at once",
                a.name,
                b.token.unwrap(),
                b.owner,
                b.granted_by,
                a.token.unwrap(),
                a.owner,
                end_lb
            ));
        }
    }
    granted.dedup_by_key(|h| &h.name);
    names += granted.len();
    s.names = names;
    s
}

/// Folds one record into its hold.
fn apply<'a>(holds: &mut HashMap<&'a str, Hold>, r: &'a Record, s: &mut Summary) {
    let t = r.t_us;
    match &r.event {
        Event::Acquire {
            owner,
            name,
            ttl_ms,
            flags,
            ..
        } => {
            holds.insert(
                owner,
                Hold {
                    name: name.clone(),
                    owner: owner.clone(),
                    conn: r.conn.clone(),
                    session: flags & FLAG_SESSION != 0,
                    ttl_us: u64::from(*ttl_ms) * 1000,
                    acquire_sent: t,
                    ..Hold::default()
                },
            );
        }
        Event::Granted { owner, token } => {
            if let Some(h) = holds.get_mut(owner.as_str()) {
                h.token = Some(*token);
                h.granted_by = t;
            }
        }
        Event::Busy { .. } => s.busy += 1,
        Event::Timeout { .. } => s.timeouts += 1,
        Event::Extend { owner } => {
            if let Some(h) = holds.get_mut(owner.as_str()) {
                h.pending_extend = Some(t);
            }
        }
        Event::Extended { owner } => {
            s.extends += 1;
            if let Some(h) = holds.get_mut(owner.as_str()) {
                h.extended_at = h.pending_extend.take().unwrap_or(h.extended_at);
            }
        }
        Event::Release { owner } => {
            if let Some(h) = holds.get_mut(owner.as_str()) {
                h.pending_release = Some(t);
                h.release_maybe_at = Some(h.release_maybe_at.map_or(t, |m| m.min(t)));
            }
        }
        Event::Released { owner } => {
            s.releases += 1;
            if let Some(h) = holds.get_mut(owner.as_str()) {
                h.released_at = h.pending_release.take();
            }
        }
        Event::NotHeld { owner, of_release } => {
            if let Some(h) = holds.get_mut(owner.as_str()) {
                if *of_release {
                    s.releases_too_late += 1;
                    // This RELEASE did not end the hold.
                    if h.pending_release.take() == h.release_maybe_at {
                        h.release_maybe_at = None;
                    }
                } else {
                    h.pending_extend = None;
                }
            }
        }
        Event::Disconnect | Event::Broken => {}
    }
}

/// The earliest time hold `h` may have ended.
fn end_lower_bound(h: &Hold, conns: &HashMap<&str, (u64, Option<bool>)>, slack_us: u64) -> u64 {
    if let Some(at) = h.released_at {
        return at;
    }
    let expiry = (h.acquire_sent.max(h.extended_at) + h.ttl_us).saturating_sub(slack_us);
    let mut end = expiry;
    if let Some(at) = h.release_maybe_at {
        end = end.min(at);
    }
    if h.session {
        let closed = match conns.get(h.conn.as_str()) {
            // A broken connection may have closed right after the ACQUIRE.
            Some(&(_, Some(false))) | None => h.acquire_sent,
            Some(&(last, _)) => last,
        };
        end = end.min(closed);
    }
    end
}

/// If A's GRANTED was read before B's ACQUIRE was sent, token(A) < token(B).
/// Sweeps grants by receipt while visiting acquisitions by send time.
fn check_tokens(granted: &[&Hold], violations: &mut Vec<String>) {
    let mut by_receipt: Vec<&Hold> = granted.to_vec();
    by_receipt.sort_by_key(|h| h.granted_by);
    let mut by_send: Vec<&Hold> = granted.to_vec();
    by_send.sort_by_key(|h| h.acquire_sent);
    let mut seen = 0;
    let mut max_before: Option<&Hold> = None;
    for b in by_send {
        while seen < by_receipt.len() && by_receipt[seen].granted_by < b.acquire_sent {
            let a = by_receipt[seen];
            if max_before.is_none_or(|m| a.token > m.token) {
                max_before = Some(a);
            }
            seen += 1;
        }
        if let Some(a) = max_before
            && a.token >= b.token
        {
            violations.push(format!(
                "token {} ({} on {}) was received at t={} us, before {} sent its ACQUIRE of {} at t={} us, yet got token {}",
                a.token.unwrap(),
                a.owner,
                a.name,
                a.granted_by,
                b.owner,
                b.name,
                b.acquire_sent,
                b.token.unwrap()
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers.

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// xorshift64*: reproducible per seed, good enough to pick delays.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn text(parser: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    parser
        .value()
        .map_err(|_| format!("{flag}: missing value"))?
        .into_string()
        .map_err(|v| format!("{flag} {}: not valid UTF-8", v.to_string_lossy()))
}

fn bounded<T>(parser: &mut lexopt::Parser, flag: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let v = text(parser, flag)?;
    match v.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!(
            "{flag} {v}: not a whole number from {min} to {max}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds records from compact lines `t kind conn rest…`.
    fn log(lines: &[&str]) -> Vec<Record> {
        lines
            .iter()
            .map(|l| parse_record(l).unwrap_or_else(|| panic!("{l}")))
            .collect()
    }

    /// Two plain holds of `job`, TTL 100 ms: A released at 50 ms, B's
    /// ACQUIRE sent at 20 ms (it waited) and GRANTED read at `b_granted`.
    fn released_then_granted(b_granted: u64) -> Vec<Record> {
        log(&[
            "0 A c1 a job 100 0 0",
            "10 G c1 a 5",
            "20 A c2 b job 100 200 0",
            "50000 R c1 a 5",
            "50100 r c1 a",
            &format!("{b_granted} G c2 b 6"),
        ])
    }

    #[test]
    fn a_clean_handover_passes() {
        let s = check(&released_then_granted(50_200), 1000);
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        assert_eq!((s.grants, s.releases, s.requests), (2, 1, 3));
    }

    #[test]
    fn a_grant_before_the_release_was_sent_is_caught() {
        let s = check(&released_then_granted(49_000), 1000);
        assert_eq!(s.violations.len(), 1, "{:?}", s.violations);
        assert!(s.violations[0].contains("two holders at once"));
    }

    #[test]
    fn a_grant_before_the_ttl_of_an_abandoned_hold_is_caught() {
        let records = |b_granted: u64| {
            log(&[
                "1000 A c1 a job 100 0 0",
                "1100 G c1 a 5",
                "1200 D c1",
                "2000 A c2 b job 100 500 0",
                &format!("{b_granted} G c2 b 6"),
            ])
        };
        // Not SESSION: the disconnect does not free it; the TTL does.
        assert_eq!(check(&records(60_000), 1000).violations.len(), 1);
        assert!(check(&records(101_000), 1000).violations.is_empty());
        // The slack for the server's tick, and not a microsecond more.
        assert!(check(&records(100_000), 1000).violations.is_empty());
        assert_eq!(check(&records(99_999), 1000).violations.len(), 1);
    }

    #[test]
    fn a_session_hold_ends_no_earlier_than_its_connection() {
        let records = |b_granted: u64| {
            log(&[
                "1000 A c1 a job 100000 0 1",
                "1100 G c1 a 5",
                "3000 D c1",
                "2000 A c2 b job 100 500 0",
                &format!("{b_granted} G c2 b 6"),
            ])
        };
        assert!(check(&records(3001), 0).violations.is_empty());
        assert_eq!(check(&records(2999), 0).violations.len(), 1);
    }

    #[test]
    fn an_extended_hold_ends_no_earlier_than_the_extension() {
        let records = log(&[
            "0 A c1 a job 100 0 0",
            "10 G c1 a 5",
            "90000 E c1 a 5",
            "90100 x c1 a",
            "2000 A c2 b job 100 500 0",
            "150000 G c2 b 6",
        ]);
        // Past the first TTL, before the extended one.
        assert_eq!(check(&records, 1000).violations.len(), 1);
    }

    #[test]
    fn a_release_answered_not_held_does_not_end_the_hold() {
        let records = log(&[
            "0 A c1 a job 100 0 0",
            "10 G c1 a 5",
            "20000 R c1 a 5",
            "20100 n c1 a R 1",
            "2000 A c2 b job 100 500 0",
            "30000 G c2 b 6",
        ]);
        assert_eq!(check(&records, 1000).violations.len(), 1);
        // An unanswered RELEASE may have executed: no alarm.
        let unanswered = log(&[
            "0 A c1 a job 100 0 0",
            "10 G c1 a 5",
            "20000 R c1 a 5",
            "2000 A c2 b job 100 500 0",
            "30000 G c2 b 6",
        ]);
        assert!(check(&unanswered, 1000).violations.is_empty());
    }

    #[test]
    fn tokens_going_backwards_are_caught() {
        let records = log(&[
            "0 A c1 a one 100 0 0",
            "10 G c1 a 7",
            "20 A c2 b two 100 0 0",
            "30 G c2 b 6",
        ]);
        let s = check(&records, 1000);
        assert_eq!(s.violations.len(), 1, "{:?}", s.violations);
        assert!(s.violations[0].contains("yet got token 6"));
        // Overlapping in time, either order is fine.
        let concurrent = log(&[
            "0 A c1 a one 100 0 0",
            "5 A c2 b two 100 0 0",
            "10 G c1 a 7",
            "30 G c2 b 6",
        ]);
        assert!(check(&concurrent, 1000).violations.is_empty());
    }

    #[test]
    fn partial_lines_are_ignored() {
        assert_eq!(parse_record("12 G c1 a"), None);
        assert_eq!(parse_record("12 A c1 a job 100"), None);
        assert!(parse_record("12 D c1").is_some());
    }
}
