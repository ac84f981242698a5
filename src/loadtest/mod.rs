//! `distlockd test`: the benchmark of the original Python project, and a
//! side-by-side comparison with Redis.
//!
//! - `distlockd test distlockd|redis` keeps the original's invocation and
//!   report (latency, throughput, concurrency success rate). Unlike the
//!   original, which measured mostly its own Python client (a new client
//!   and a PING per latency iteration, one OS thread per client), the
//!   clients here are non-blocking connections on persistent sockets, so
//!   latency is the acquire's round trip and throughput is the server's.
//! - `distlockd test compare` starts both servers itself and runs the
//!   scenarios of [`scenarios::Scenario`], interleaved and repeated, into
//!   one table with the ratio ours/Redis per row, beside a no-op reference
//!   server ([`noop`]) where it applies: the ceiling on this machine.
//!
//! Files, in the order a run goes through them:
//! [`cli`] (flags) → [`scenarios`] (what each test does, as a workload) →
//! [`driver`] (the non-blocking load engine, HDR histograms) with
//! [`resp`] (the Redis wire format) and the crate's native
//! [`crate::protocol`] → [`procstat`] (server CPU and RSS from /proc) →
//! [`report`] (Markdown and JSON). [`compare`] starts and stops the servers
//! of `test compare`; [`probe`] does the blocking one-off exchanges (PING,
//! SCRIPT LOAD).
//!
//! Redis is driven as its users lock with it (redis-py's `Lock`):
//! `SET name token NX PX ttl` with a 32-hex-digit random token, release by
//! the compare-and-delete Lua script via EVALSHA (loaded once with SCRIPT
//! LOAD), blocking acquire by retrying SET every `--redis-poll-ms` (redis-py
//! sleeps 0.1 s) until the deadline. distlockd is driven with its native
//! protocol: a blocking acquire is one ACQUIRE with `wait_ms`, queued FIFO
//! on the server; owners are `{client_id}:{counter}` per acquisition, like
//! the Rust client's.

pub mod affinity;
pub mod cli;
pub mod compare;
pub mod driver;
pub mod noop;
pub mod probe;
pub mod procstat;
pub mod report;
pub mod resp;
pub mod scenarios;
pub mod stress;

use std::process::ExitCode;

use cli::{SingleConfig, TestCommand};
use driver::{Proto, Target};
use scenarios::original;

/// The servers a benchmark can drive: ours, Redis, and the no-op
/// reference of `test compare` (see [`noop`]), which speaks our protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Distlockd,
    Redis,
    Noop,
}

impl Backend {
    pub const BOTH: [Backend; 2] = [Backend::Distlockd, Backend::Redis];
    pub const ALL: [Backend; 3] = [Backend::Distlockd, Backend::Redis, Backend::Noop];

    /// Display name, as in the report's columns.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Distlockd => "distlockd",
            Backend::Redis => "Redis",
            Backend::Noop => "no-op reference",
        }
    }

    /// Name on the command line and in JSON.
    pub fn key(self) -> &'static str {
        match self {
            Backend::Distlockd => "distlockd",
            Backend::Redis => "redis",
            Backend::Noop => "noop",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Backend::Distlockd => 0,
            Backend::Redis => 1,
            Backend::Noop => 2,
        }
    }
}

/// Entry point of `distlockd test …` (the arguments after `test`).
pub fn main(parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    match cli::parse(parser)? {
        TestCommand::Help => {
            println!("{}", cli::TEST_USAGE);
        }
        TestCommand::Single(cfg) => {
            let report = run_single(&cfg)?;
            print!("{report}");
        }
        TestCommand::Compare(cfg) => {
            let report = compare::run(&cfg)?;
            print!("{report}");
        }
        TestCommand::Stress(command) => return stress::main(command),
        TestCommand::NoopServer(addr) => noop::serve(addr)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `test distlockd|redis`: the original's three measurements and report.
pub fn run_single(cfg: &SingleConfig) -> Result<String, String> {
    let name = cfg.backend.name();
    let hint = match cfg.backend {
        Backend::Distlockd | Backend::Noop => format!(
            "start one with `distlockd server --port {}` or pass --host/--port",
            cfg.addr.port()
        ),
        Backend::Redis => format!(
            "start one with `redis-server --port {}` (Debian package redis-server) or pass --host/--port",
            cfg.addr.port()
        ),
    };
    let unreachable = |e: String| format!("cannot reach {name} at {}: {e}; {hint}", cfg.addr);
    let (version, proto) = match cfg.backend {
        Backend::Distlockd | Backend::Noop => (
            probe::distlockd_version(cfg.addr).map_err(unreachable)?,
            Proto::Native,
        ),
        Backend::Redis => {
            let version = probe::redis_version(cfg.addr).map_err(unreachable)?;
            let sha = probe::redis_load_script(cfg.addr)?;
            (
                version,
                Proto::Redis {
                    sha,
                    poll: cfg.redis_poll,
                },
            )
        }
    };
    let target = Target {
        addr: cfg.addr,
        proto,
    };
    let ocfg = original::Config {
        iterations: cfg.iterations,
        num_clients: cfg.num_clients,
        num_locks: cfg.num_locks,
        throughput_seconds: cfg.throughput_seconds,
        threads: cfg.threads,
    };
    eprintln!("Running {name} benchmark on {}", cfg.addr);
    let latency = driver::run(&target, &original::latency(&ocfg), None)
        .map_err(|e| format!("latency test: {e}"))?;
    if latency.grants == 0 {
        return Err(format!(
            "latency test: no acquisition succeeded in {} iterations; is {} busy with other clients' locks?",
            cfg.iterations, cfg.addr
        ));
    }
    eprintln!(
        "Latency test completed: {} acquisitions, p99 {:.3} ms",
        latency.grants,
        scenarios::ms(latency.acquire_ns.value_at_quantile(0.99))
    );
    let throughput = driver::run(&target, &original::throughput(&ocfg), None)
        .map_err(|e| format!("throughput test: {e}"))?;
    eprintln!(
        "Throughput test completed: {:.0} ops/s",
        throughput.per_second(throughput.cycles)
    );
    let concurrency = driver::run(&target, &original::concurrency(&ocfg), None)
        .map_err(|e| format!("concurrency test: {e}"))?;
    eprintln!(
        "Concurrency test completed: {} of {} clients got their lock",
        concurrency.grants, cfg.num_clients
    );
    if cfg.verbose {
        for (what, s) in [
            ("latency", &latency),
            ("throughput", &throughput),
            ("concurrency", &concurrency),
        ] {
            eprintln!(
                "  {what}: {} grants, {} not granted, {} cycles, {} violations, {} lost releases, {:.2} s",
                s.grants,
                s.not_granted,
                s.cycles,
                s.violations,
                s.lost_releases,
                s.window.as_secs_f64()
            );
        }
    }
    let figures =
        original::Figures::from_runs(&latency, &throughput, &concurrency, cfg.num_clients);
    let sys = procstat::SystemInfo::collect();
    let date = report::utc_now();
    let info = report::SingleInfo {
        backend: cfg.backend,
        addr: cfg.addr.to_string(),
        server_version: &version,
        iterations: cfg.iterations,
        num_clients: cfg.num_clients,
        num_locks: cfg.num_locks,
        throughput_seconds: cfg.throughput_seconds,
        threads: cfg.threads,
        redis_poll_ms: cfg.redis_poll.as_millis() as u64,
    };
    if let Some(path) = &cfg.json {
        std::fs::write(
            path,
            report::single_json(&date, &sys, &info, &figures) + "\n",
        )
        .map_err(|e| format!("--json {}: cannot write: {e}", path.display()))?;
    }
    Ok(report::single_report(&date, &sys, &info, &figures))
}
