//! `distlockd test compare`: our server and a real `redis-server`, started
//! here on free loopback ports, driven through the same scenarios,
//! interleaved and repeated; beside them, for the scenarios it can serve
//! (uncontended and pipelined), the no-op reference server ([`super::noop`]).
//!
//! Our server runs as a child process (this executable's `server`
//! subcommand), and so does the no-op reference (`test noop-server`), so
//! /proc/PID/stat measures the server alone, not the load generator. Every
//! child is killed when the run ends, errors or panics ([`ServerProcess`]'s
//! `Drop`).
//!
//! Order: for each repetition, each timed scenario runs against every
//! server it applies to, back to back; the order reverses every
//! repetition, so drift (thermal, page cache, other load) is spread evenly.
//! Every run locks names of its own (`bench:{scenario}:{run id}:…`) and
//! drains its locks at the end, so one run cannot disturb the next. The
//! memory scenario runs last in each repetition on a freshly started pair
//! of servers, which are stopped after the measurement: its million held
//! locks never meet the other scenarios, and every repetition starts from
//! the same baseline.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Backend;
use super::affinity::Placement;
use super::driver::{self, Proto, RunStats, Target};
use super::probe;
use super::procstat::{self, SystemInfo};
use super::report::{self, Checks, CompareInfo, CompareResults, ScenarioRuns};
use super::scenarios::{self, CompareSettings, Scenario};

/// How long a started server may take to answer PING.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a memory fill before reading RSS: the servers close the
/// fill's connections and free their buffers.
const RSS_SETTLE: Duration = Duration::from_millis(300);

#[derive(Clone, Debug)]
pub struct CompareConfig {
    pub repeat: usize,
    pub measure: Duration,
    pub warmup: Duration,
    pub threads: usize,
    pub redis_poll: Duration,
    pub rss_locks: u64,
    pub quick: bool,
    pub redis_server: String,
    /// Scenario ids to run; `None` runs all.
    pub only: Option<Vec<String>>,
    pub json: Option<PathBuf>,
    pub verbose: bool,
    /// Pin servers and load threads to separate CPUs (`--pin`).
    pub pin: bool,
}

/// A server child process, killed on drop.
pub(super) struct ServerProcess {
    child: Child,
    pub(super) addr: SocketAddr,
}

impl ServerProcess {
    pub(super) fn start(
        backend: Backend,
        redis_server: &str,
        placement: Option<&Placement>,
    ) -> Result<ServerProcess, String> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let program = match backend {
            Backend::Distlockd | Backend::Noop => std::env::current_exe()
                .map_err(|e| format!("cannot find this executable to start the server: {e}"))?
                .into_os_string(),
            Backend::Redis => redis_server.into(),
        };
        let port = port.to_string();
        // Redis runs without maxmemory, so ours runs without its default
        // cap on held locks (the memory scenario may hold more).
        let locks_max = crate::server::LOCKS_CEILING.to_string();
        let args: &[&str] = match backend {
            Backend::Distlockd => &[
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--locks-max",
                &locks_max,
            ],
            Backend::Noop => &[
                "test",
                "noop-server",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
            ],
            Backend::Redis => &[
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        };
        // taskset execs the server: the child's pid is the server's.
        let mut command = match placement {
            Some(p) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &p.server]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        command.args(args);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match (backend, e.kind()) {
                (Backend::Redis, std::io::ErrorKind::NotFound) => format!(
                    "cannot run {redis_server}: not found; install Debian's package `redis-server` \
                     (apt-get install redis-server) or pass --redis-server PATH"
                ),
                _ => format!("cannot start {}: {e}", backend.name()),
            })?;
        let mut server = ServerProcess { child, addr };
        server.wait_ready(backend)?;
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self, backend: Backend) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let probe = match backend {
                Backend::Distlockd | Backend::Noop => probe::distlockd_version(self.addr).map(drop),
                Backend::Redis => probe::redis_version(self.addr).map(drop),
            };
            let last_error = match probe {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited at start ({status}); run it by hand on port {} to see why",
                    backend.name(),
                    self.addr.port()
                ));
            }
            if started.elapsed() > SERVER_START_TIMEOUT {
                return Err(format!(
                    "{} did not answer PING within {} s: {last_error}",
                    backend.name(),
                    SERVER_START_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Our server and Redis, and the no-op reference when asked for.
struct Pair {
    servers: Vec<(Backend, ServerProcess, Target)>,
}

impl Pair {
    fn start(
        cfg: &CompareConfig,
        placement: Option<&Placement>,
        with_noop: bool,
    ) -> Result<Pair, String> {
        let ours = ServerProcess::start(Backend::Distlockd, &cfg.redis_server, placement)?;
        let redis = ServerProcess::start(Backend::Redis, &cfg.redis_server, placement)?;
        let sha = probe::redis_load_script(redis.addr)?;
        let native = |server: &ServerProcess| Target {
            addr: server.addr,
            proto: Proto::Native,
        };
        let redis_target = Target {
            addr: redis.addr,
            proto: Proto::Redis {
                sha,
                poll: cfg.redis_poll,
            },
        };
        let ours_target = native(&ours);
        let mut servers = vec![
            (Backend::Distlockd, ours, ours_target),
            (Backend::Redis, redis, redis_target),
        ];
        if with_noop {
            let noop = ServerProcess::start(Backend::Noop, &cfg.redis_server, placement)?;
            let noop_target = native(&noop);
            servers.push((Backend::Noop, noop, noop_target));
        }
        Ok(Pair { servers })
    }

    /// A started server; `run` asks only for those it started.
    fn get(&self, b: Backend) -> (&ServerProcess, &Target) {
        self.servers
            .iter()
            .find(|(backend, ..)| *backend == b)
            .map(|(_, server, target)| (server, target))
            .expect("a scenario runs only on the servers started for it")
    }

    fn target(&self, b: Backend) -> &Target {
        self.get(b).1
    }

    fn pid(&self, b: Backend) -> u32 {
        self.get(b).0.pid()
    }
}

/// Runs the comparison; returns the report (and writes JSON if asked).
pub fn run(cfg: &CompareConfig) -> Result<String, String> {
    let sys = SystemInfo::collect();
    let date = report::utc_now();
    check_redis_server(&cfg.redis_server)?;
    let placement = if cfg.pin { Placement::detect() } else { None };
    let settings = CompareSettings {
        measure: cfg.measure,
        warmup: cfg.warmup,
        threads: cfg.threads,
        rss_locks: cfg.rss_locks,
        load_cpus: placement.as_ref().map(|p| p.load.clone()),
    };
    let scenarios = select(Scenario::all(&settings), cfg.only.as_deref())?;
    let with_noop = scenarios.iter().any(Scenario::has_noop_reference);
    let pair = Pair::start(cfg, placement.as_ref(), with_noop)?;
    let distlockd_version = probe::distlockd_version(pair.target(Backend::Distlockd).addr)?;
    let redis_version = probe::redis_version(pair.target(Backend::Redis).addr)?;
    let mut results = CompareResults {
        scenarios: scenarios
            .iter()
            .map(|&scenario| ScenarioRuns {
                scenario,
                runs: [Vec::new(), Vec::new(), Vec::new()],
            })
            .collect(),
        checks: Default::default(),
    };
    let total_runs = cfg.repeat
        * scenarios
            .iter()
            .map(|s| Backend::ALL.iter().filter(|&&b| s.runs_on(b)).count())
            .sum::<usize>();
    let mut done = 0;
    for rep in 0..cfg.repeat {
        let mut order = Backend::ALL;
        if rep % 2 == 1 {
            order.reverse();
        }
        for (si, scenario) in scenarios.iter().enumerate() {
            let order = order.into_iter().filter(|&b| scenario.runs_on(b));
            if let Scenario::Rss { locks, name_len } = *scenario {
                let rss_pair = Pair::start(cfg, placement.as_ref(), false)?;
                for b in order {
                    done += 1;
                    let figures = rss_run(
                        &rss_pair,
                        b,
                        (locks, name_len),
                        &settings,
                        cfg,
                        &mut results.checks,
                    )?;
                    progress(done, total_runs, scenario, b, &figures);
                    results.scenarios[si].runs[b.index()].push(figures);
                }
                continue;
            }
            for b in order {
                done += 1;
                let wl = scenario.workload(&settings);
                let stats = driver::run(pair.target(b), &wl, Some(pair.pid(b)))
                    .map_err(|e| format!("{}, {}: {e}", scenario.title(), b.name()))?;
                record_checks(&mut results.checks[b.index()], scenario, &stats);
                let figures = scenario.figures(&stats);
                progress(done, total_runs, scenario, b, &figures);
                if cfg.verbose {
                    verbose_line(&stats);
                }
                results.scenarios[si].runs[b.index()].push(figures);
            }
        }
    }
    drop(pair);
    let info = CompareInfo {
        date,
        repeat: cfg.repeat,
        measure_seconds: cfg.measure.as_secs_f64(),
        warmup_seconds: cfg.warmup.as_secs_f64(),
        threads: cfg.threads,
        redis_poll_ms: cfg.redis_poll.as_millis() as u64,
        rss_locks: cfg.rss_locks,
        quick: cfg.quick,
        redis_server: resolve_in_path(&cfg.redis_server),
        redis_version,
        distlockd_version,
        clock_ticks_per_second: procstat::clock_ticks_per_second(),
        placement: match &placement {
            Some(p) => format!(
                "servers pinned to CPU {}, load threads to CPU {} (taskset)",
                p.server, p.load
            ),
            None if cfg.pin => "unpinned (one CPU, or taskset not available)".into(),
            None => "not pinned (the kernel places servers and load threads)".into(),
        },
    };
    if let Some(path) = &cfg.json {
        let json = report::compare_json(&info, &sys, &results);
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("--json {}: cannot write: {e}", path.display()))?;
    }
    Ok(report::compare_report(&info, &sys, &results))
}

/// The scenarios named by `--only`, in their usual order.
fn select(all: Vec<Scenario>, only: Option<&[String]>) -> Result<Vec<Scenario>, String> {
    let Some(only) = only else {
        return Ok(all);
    };
    let ids: Vec<String> = all.iter().map(|s| s.id()).collect();
    if let Some(unknown) = only.iter().find(|id| !ids.contains(id)) {
        return Err(format!(
            "--only {unknown}: no such scenario; use one of {}",
            ids.join(", ")
        ));
    }
    Ok(all.into_iter().filter(|s| only.contains(&s.id())).collect())
}

/// Fills `locks` held locks on one server of a fresh pair; RSS figures.
fn rss_run(
    pair: &Pair,
    b: Backend,
    (locks, name_len): (u64, usize),
    settings: &CompareSettings,
    cfg: &CompareConfig,
    checks: &mut [Checks; 3],
) -> Result<Vec<f64>, String> {
    let pid = pair.pid(b);
    let before = procstat::rss_bytes(pid)?;
    let wl = scenarios::rss_fill(locks, name_len, settings);
    let stats = driver::run(pair.target(b), &wl, None)
        .map_err(|e| format!("memory fill, {}: {e}", b.name()))?;
    checks[b.index()].failed_acquisitions += locks.saturating_sub(stats.grants);
    std::thread::sleep(RSS_SETTLE);
    let after = procstat::rss_bytes(pid)?;
    if cfg.verbose {
        eprintln!(
            "      RSS {:.1} MiB → {:.1} MiB, {} grants in {:.2} s",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            stats.grants,
            stats.window.as_secs_f64()
        );
    }
    Ok(scenarios::rss_figures(before, after, locks))
}

fn record_checks(c: &mut Checks, scenario: &Scenario, stats: &RunStats) {
    c.violations += stats.violations;
    c.lost_releases += stats.lost_releases;
    c.drains_incomplete += u64::from(stats.drain_incomplete);
    if !matches!(scenario, Scenario::Contended { .. }) {
        c.failed_acquisitions += stats.not_granted;
    }
}

fn progress(done: usize, total: usize, scenario: &Scenario, b: Backend, figures: &[f64]) {
    eprintln!(
        "[{done}/{total}] {}, {}: {}",
        scenario.title(),
        b.name(),
        scenario.headline(figures)
    );
}

fn verbose_line(stats: &RunStats) {
    eprintln!(
        "      {} cycles, {} grants, {} not granted, {} handoffs, {} changed hands, FIFO {}/{}, {} violations, {} lost releases, window {:.2} s, server CPU {}, load CPU {}",
        stats.cycles,
        stats.grants,
        stats.not_granted,
        stats.handoffs,
        stats.changed_hands,
        stats.fifo_ok,
        stats.fifo_checked,
        stats.violations,
        stats.lost_releases,
        stats.window.as_secs_f64(),
        stats
            .server_cpu_seconds
            .map_or("n/a".to_string(), |c| format!("{c:.3} s")),
        stats
            .load_cpu_seconds
            .map_or("n/a".to_string(), |c| format!("{c:.3} s"))
    );
}

/// A loopback port nobody listens on right now (bind to port 0, read the
/// port, close). Another process could take it before the server binds;
/// the server's start then fails with a clear error.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| format!("cannot find a free loopback port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

/// Fails early, with the fix, when redis-server cannot be found: under
/// taskset a missing program would only show as an early exit.
fn check_redis_server(program: &str) -> Result<(), String> {
    let found = if program.contains('/') {
        std::path::Path::new(program).is_file()
    } else {
        resolve_in_path(program) != program
    };
    if found {
        Ok(())
    } else {
        Err(format!(
            "cannot run {program}: not found; install Debian's package `redis-server` \
             (apt-get install redis-server) or pass --redis-server PATH"
        ))
    }
}

/// The program's full path, for the report (as given when not in PATH).
fn resolve_in_path(program: &str) -> String {
    if program.contains('/') {
        return program.to_string();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .map_or_else(|| program.to_string(), |p| p.display().to_string())
}
