//! Flags of `distlockd test`, parsed with lexopt.
//!
//! The original's invocation is accepted as its page shows it:
//! `distlockd test distlockd|redis [--host H] [--port P] [--iterations N]
//! [--num_clients N] [--num_locks N] [--throughput_seconds S] [-v]`, with
//! the hyphenated spellings (`--num-clients`…) its argparse also took.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use lexopt::prelude::*;

use super::Backend;
use super::compare::CompareConfig;

pub const TEST_USAGE: &str = "\
Usage:
  distlockd test distlockd|redis [options]   the original's benchmark against a running server
  distlockd test compare [options]           start our server, redis-server and a no-op
                                             reference, compare side by side
  distlockd test stress [options]            many client processes, kill -9s, and a checker of
                                             exclusion and token order (`test stress --help`)

`test distlockd|redis` measures, like the original Python project's command:
  latency      one acquire (wait 0.5 s) on a fresh lock name per iteration, then a
               release; the acquire's round trip is the latency
  throughput   10 clients acquire and release their own lock for throughput_seconds
  concurrency  num_clients clients over num_locks names, each acquiring once
               (timeout 5 s) and holding 100 ms: the success rate
and prints System Info, Test Configuration and the Markdown table of Latency
Min/Max/Avg/95th/99th (ms), Throughput (ops/sec), Concurrency Success Rate (%).
Clients are non-blocking connections driven by --threads load threads (not one
OS thread per client), so the server, not the load generator, is measured.
distlockd is driven with its native protocol (server-side FIFO waits); Redis as
its users lock with it: SET name token NX PX ttl, release by a Lua
compare-and-delete (EVALSHA), blocking acquire by polling like redis-py.

Options for `test distlockd|redis`:
  --host HOST                 server address (default localhost = 127.0.0.1)
  -p, --port PORT             server port (default 9999 for distlockd, 6379 for redis)
  --iterations N              latency iterations (default 1000)
  --num_clients, --num-clients N
                              concurrency clients (default 100)
  --num_locks, --num-locks N  lock names the concurrency clients share (default 10)
  --throughput_seconds, --throughput-seconds S
                              throughput test length in seconds (default 10)

`test compare` starts `distlockd server` (this executable, as a child process)
and `redis-server` on free loopback ports, runs every scenario against both,
interleaved and repeated (--repeat, alternating who goes first), and prints one
table: the median per row, the ratio distlockd/Redis, which is better, and the
performance targets (✓/✗). Scenarios:
  single-connection latency   acquire p50/p99 on one connection, fresh names
  uncontended, 1/16/256 conns acquire+release on own locks: ops/s (target ≥ 1×),
                              p99, server CPU seconds per million ops
  contended, 16 clients       blocking on one lock: handoffs/s (target ≥ 10×),
                              p99 and max wait, FIFO grants %, grants/s,
                              mutual-exclusion violations
  pipelined depth 16          16 conns × 16 in flight: ops/s (target ≥ 2×), server
                              CPU s per M ops (target ≤ 0.25×)
  memory, 12- and 32-byte names
                              RSS per held lock with --rss-locks locks, on freshly
                              started servers (target ≤ 0.5×)
The uncontended and pipelined scenarios also run against a no-op reference
(`distlockd test noop-server`, a child like ours): one mio thread that decodes
the same frames and answers each with a fixed valid reply (GRANTED, RELEASED,
PONG, ...), no lock table, the ceiling on this machine. Its median and the ratio
distlockd/no-op are the last two columns (n/a where it cannot run: latency,
contended, memory).
Server CPU is utime+stime from /proc/PID/stat, RSS is VmRSS from /proc/PID/status.
Progress lines go to stderr.

Options for `test compare`:
  --repeat N                  repetitions, medians reported (default 3; --quick: 1)
  --quick                     short run for CI: 1 repetition, 0.5 s per scenario,
                              50,000 locks for memory; figures are printed, not asserted
  --scenario-seconds S        measured seconds per scenario run (default 3; --quick 0.5)
  --rss-locks N               held locks in the memory scenario (default 1000000)
  --redis-server PATH         redis-server binary (default: redis-server in PATH;
                              Debian package `redis-server`)
  --only ID[,ID…]             run only these scenarios: latency, uncontended_1,
                              uncontended_16, uncontended_256, contended_16,
                              pipelined_16, memory_12b_names, memory_32b_names
                              (default: all)
  --pin                       run the servers on CPU 0 and the load threads on the
                              other CPUs (taskset). Off by default: on a quiet
                              2-vCPU VM both placements measured alike, and pinned
                              runs suffered most (2-4× slower) when another
                              process loaded one CPU, as the kernel could not
                              move the server or the load away from it

Options for both:
  --threads N                 load-generator threads (default 1; 2 cores here:
                              one for the server, one for the load). Runs on a
                              shared lock (contended, concurrency) use one thread,
                              so that grant order is seen in one place
  --redis-poll-ms MS          Redis blocking-acquire poll interval (default 100,
                              redis-py's sleep=0.1)
  --json FILE                 also write the figures as JSON (compare: every
                              median and every repetition's raw figures)
  -v, --verbose               per-run details on stderr
  -h, --help                  print this help";

/// Default ports, as the original.
pub const DISTLOCKD_PORT_DEFAULT: u16 = 9999;
pub const REDIS_PORT_DEFAULT: u16 = 6379;

/// Bounds on the flags, each with its reason.
const ITERATIONS_MAX: u64 = 100_000_000;
/// Each concurrency client is a socket in this process and in the server.
const NUM_CLIENTS_MAX: usize = 100_000;
const SECONDS_MAX: f64 = 3600.0;
const THREADS_MAX: usize = 64;
const POLL_MS_MAX: u64 = 60_000;
const REPEAT_MAX: usize = 100;
const RSS_LOCKS_MAX: u64 = 50_000_000;

/// Quick mode's settings (CI): short, one repetition.
const QUICK_SCENARIO_SECONDS: f64 = 0.5;
const QUICK_RSS_LOCKS: u64 = 50_000;
const SCENARIO_SECONDS_DEFAULT: f64 = 3.0;
const REPEAT_DEFAULT: usize = 3;
const RSS_LOCKS_DEFAULT: u64 = 1_000_000;

/// What to run.
#[derive(Debug)]
pub enum TestCommand {
    Help,
    Single(SingleConfig),
    Compare(CompareConfig),
    Stress(super::stress::StressCommand),
    /// `test noop-server` (hidden): the no-op reference `test compare`
    /// starts as a child, listening on this address.
    NoopServer(SocketAddr),
}

#[derive(Clone, Debug)]
pub struct SingleConfig {
    pub backend: Backend,
    pub addr: SocketAddr,
    pub iterations: u64,
    pub num_clients: usize,
    pub num_locks: usize,
    pub throughput_seconds: f64,
    pub threads: usize,
    pub redis_poll: Duration,
    pub json: Option<PathBuf>,
    pub verbose: bool,
}

#[derive(Default)]
struct Flags {
    target: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    iterations: Option<u64>,
    num_clients: Option<usize>,
    num_locks: Option<usize>,
    throughput_seconds: Option<f64>,
    threads: Option<usize>,
    redis_poll_ms: Option<u64>,
    json: Option<PathBuf>,
    verbose: bool,
    repeat: Option<usize>,
    quick: bool,
    scenario_seconds: Option<f64>,
    rss_locks: Option<u64>,
    redis_server: Option<String>,
    only: Option<Vec<String>>,
    pin: bool,
}

/// Parses the arguments after `test`.
pub fn parse(parser: &mut lexopt::Parser) -> Result<TestCommand, String> {
    let mut f = Flags::default();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Value(v) if f.target.is_none() => {
                let target = os_string(v, "test")?;
                // `stress` has flags of its own (see stress.rs).
                if target == "stress" || target == "stress-worker" {
                    return super::stress::parse(&target, parser).map(TestCommand::Stress);
                }
                f.target = Some(target);
            }
            Value(v) => {
                return Err(format!(
                    "test: unexpected argument {:?}; run `distlockd test --help`",
                    v.to_string_lossy()
                ));
            }
            Long("host") => f.host = Some(text(parser, "--host")?),
            Long("port") | Short('p') => {
                f.port = Some(bounded(parser, "--port", 1u16, u16::MAX, "a port number")?)
            }
            Long("iterations") => {
                f.iterations = Some(bounded(
                    parser,
                    "--iterations",
                    1,
                    ITERATIONS_MAX,
                    "a count",
                )?)
            }
            Long("num_clients" | "num-clients") => {
                f.num_clients = Some(bounded(
                    parser,
                    "--num_clients",
                    1,
                    NUM_CLIENTS_MAX,
                    "a count",
                )?)
            }
            Long("num_locks" | "num-locks") => {
                f.num_locks = Some(bounded(
                    parser,
                    "--num_locks",
                    1,
                    NUM_CLIENTS_MAX,
                    "a count",
                )?)
            }
            Long("throughput_seconds" | "throughput-seconds") => {
                f.throughput_seconds = Some(seconds(parser, "--throughput_seconds")?)
            }
            Long("threads") => {
                f.threads = Some(bounded(parser, "--threads", 1, THREADS_MAX, "a count")?)
            }
            Long("redis-poll-ms" | "redis_poll_ms") => {
                f.redis_poll_ms = Some(bounded(
                    parser,
                    "--redis-poll-ms",
                    1,
                    POLL_MS_MAX,
                    "milliseconds",
                )?)
            }
            Long("json") => f.json = Some(PathBuf::from(text(parser, "--json")?)),
            Long("verbose") | Short('v') => f.verbose = true,
            Long("repeat") => {
                f.repeat = Some(bounded(parser, "--repeat", 1, REPEAT_MAX, "a count")?)
            }
            Long("quick") => f.quick = true,
            Long("scenario-seconds" | "scenario_seconds") => {
                f.scenario_seconds = Some(seconds(parser, "--scenario-seconds")?)
            }
            Long("rss-locks" | "rss_locks") => {
                f.rss_locks = Some(bounded(parser, "--rss-locks", 1, RSS_LOCKS_MAX, "a count")?)
            }
            Long("redis-server" | "redis_server") => {
                f.redis_server = Some(text(parser, "--redis-server")?)
            }
            Long("only") => {
                f.only = Some(
                    text(parser, "--only")?
                        .split(',')
                        .map(|id| id.trim().to_string())
                        .filter(|id| !id.is_empty())
                        .collect(),
                )
            }
            Long("pin") => f.pin = true,
            Long("help") | Short('h') => return Ok(TestCommand::Help),
            other => {
                return Err(format!(
                    "test: {}; run `distlockd test --help`",
                    other.unexpected()
                ));
            }
        }
    }
    match f.target.as_deref() {
        None => Err(
            "test: which server? use `distlockd test distlockd`, `distlockd test redis` or `distlockd test compare`"
                .into(),
        ),
        Some("distlockd") => single(f, Backend::Distlockd),
        Some("redis") => single(f, Backend::Redis),
        Some("compare") => compare(f),
        Some("noop-server") => {
            let Some(port) = f.port else {
                return Err("test noop-server needs --port (test compare passes it)".into());
            };
            Ok(TestCommand::NoopServer(resolve(
                f.host.as_deref().unwrap_or("127.0.0.1"),
                port,
            )?))
        }
        Some(other) => Err(format!(
            "test {other}: unknown target; use distlockd, redis or compare"
        )),
    }
}

fn single(f: Flags, backend: Backend) -> Result<TestCommand, String> {
    let compare_only = [
        ("--repeat", f.repeat.is_some()),
        ("--quick", f.quick),
        ("--scenario-seconds", f.scenario_seconds.is_some()),
        ("--rss-locks", f.rss_locks.is_some()),
        ("--redis-server", f.redis_server.is_some()),
        ("--only", f.only.is_some()),
        ("--pin", f.pin),
    ];
    if let Some((flag, _)) = compare_only.iter().find(|(_, set)| *set) {
        return Err(format!(
            "{flag} applies to `distlockd test compare`, not to `test {}`",
            backend.key()
        ));
    }
    let port = f.port.unwrap_or(match backend {
        Backend::Distlockd | Backend::Noop => DISTLOCKD_PORT_DEFAULT,
        Backend::Redis => REDIS_PORT_DEFAULT,
    });
    let addr = resolve(f.host.as_deref().unwrap_or("localhost"), port)?;
    Ok(TestCommand::Single(SingleConfig {
        backend,
        addr,
        iterations: f.iterations.unwrap_or(1000),
        num_clients: f.num_clients.unwrap_or(100),
        num_locks: f.num_locks.unwrap_or(10),
        throughput_seconds: f.throughput_seconds.unwrap_or(10.0),
        threads: f.threads.unwrap_or(1),
        redis_poll: Duration::from_millis(f.redis_poll_ms.unwrap_or(100)),
        json: f.json,
        verbose: f.verbose,
    }))
}

fn compare(f: Flags) -> Result<TestCommand, String> {
    let single_only = [
        ("--host", f.host.is_some()),
        ("--port", f.port.is_some()),
        ("--iterations", f.iterations.is_some()),
        ("--num_clients", f.num_clients.is_some()),
        ("--num_locks", f.num_locks.is_some()),
        ("--throughput_seconds", f.throughput_seconds.is_some()),
    ];
    if let Some((flag, _)) = single_only.iter().find(|(_, set)| *set) {
        return Err(format!(
            "{flag} applies to `distlockd test distlockd|redis`; `test compare` starts its own servers on free loopback ports"
        ));
    }
    let measure = f.scenario_seconds.unwrap_or(if f.quick {
        QUICK_SCENARIO_SECONDS
    } else {
        SCENARIO_SECONDS_DEFAULT
    });
    Ok(TestCommand::Compare(CompareConfig {
        repeat: f.repeat.unwrap_or(if f.quick { 1 } else { REPEAT_DEFAULT }),
        measure: Duration::from_secs_f64(measure),
        warmup: warmup_for(measure),
        threads: f.threads.unwrap_or(1),
        redis_poll: Duration::from_millis(f.redis_poll_ms.unwrap_or(100)),
        rss_locks: f.rss_locks.unwrap_or(if f.quick {
            QUICK_RSS_LOCKS
        } else {
            RSS_LOCKS_DEFAULT
        }),
        quick: f.quick,
        redis_server: f.redis_server.unwrap_or_else(|| "redis-server".into()),
        only: f.only,
        json: f.json,
        verbose: f.verbose,
        pin: f.pin,
    }))
}

/// Warm-up before each measured window: a sixth of it, 50 ms to 0.5 s
/// (connections are open before it starts; this lets caches, the server's
/// tables and TCP settle).
pub fn warmup_for(measure_seconds: f64) -> Duration {
    Duration::from_secs_f64((measure_seconds / 6.0).clamp(0.05, 0.5))
}

/// `localhost` is 127.0.0.1 (the original's default host); an IP is used
/// as is; other names are resolved.
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if host == "localhost" {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            format!("--host {host}: cannot resolve; use an IP address such as 127.0.0.1")
        })
}

fn os_string(v: std::ffi::OsString, what: &str) -> Result<String, String> {
    v.into_string()
        .map_err(|v| format!("{what} {}: not valid UTF-8", v.to_string_lossy()))
}

fn text(parser: &mut lexopt::Parser, flag: &str) -> Result<String, String> {
    let v = parser
        .value()
        .map_err(|_| format!("{flag}: missing value"))?;
    os_string(v, flag)
}

fn bounded<T>(
    parser: &mut lexopt::Parser,
    flag: &str,
    min: T,
    max: T,
    what: &str,
) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let v = text(parser, flag)?;
    match v.parse::<T>() {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!("{flag} {v}: not {what} from {min} to {max}")),
    }
}

/// Seconds as a decimal (the original took whole seconds; fractions are
/// handy for short runs).
fn seconds(parser: &mut lexopt::Parser, flag: &str) -> Result<f64, String> {
    let v = text(parser, flag)?;
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= SECONDS_MAX => Ok(s),
        _ => Err(format!(
            "{flag} {v}: not a number of seconds above 0 and at most {SECONDS_MAX}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<TestCommand, String> {
        let mut parser = lexopt::Parser::from_args(args.iter().copied());
        parse(&mut parser)
    }

    #[test]
    fn original_spellings_and_defaults() {
        let TestCommand::Single(c) = parse_args(&[
            "redis",
            "--num_clients",
            "1000",
            "--num-locks",
            "100",
            "--throughput_seconds",
            "10",
            "-v",
        ])
        .unwrap() else {
            panic!("not single")
        };
        assert_eq!(c.backend, Backend::Redis);
        assert_eq!(c.addr, SocketAddr::from(([127, 0, 0, 1], 6379)));
        assert_eq!(
            (c.num_clients, c.num_locks, c.iterations),
            (1000, 100, 1000)
        );
        assert!(c.verbose);
        let TestCommand::Single(c) =
            parse_args(&["--host", "localhost", "--port", "9001", "distlockd"]).unwrap()
        else {
            panic!("not single")
        };
        assert_eq!(c.addr.port(), 9001, "--port is honoured for every backend");
    }

    #[test]
    fn compare_quick_defaults() {
        let TestCommand::Compare(c) = parse_args(&["compare", "--quick"]).unwrap() else {
            panic!("not compare")
        };
        assert_eq!(c.repeat, 1);
        assert_eq!(c.rss_locks, QUICK_RSS_LOCKS);
        assert_eq!(c.measure, Duration::from_millis(500));
    }

    #[test]
    fn errors_name_the_flag_and_value() {
        let e = parse_args(&["distlockd", "--port", "99999"]).unwrap_err();
        assert!(e.contains("--port 99999"), "{e}");
        let e = parse_args(&["compare", "--port", "1"]).unwrap_err();
        assert!(e.contains("--port applies to"), "{e}");
        let e = parse_args(&["distlockd", "--quick"]).unwrap_err();
        assert!(e.contains("--quick applies to"), "{e}");
        let e = parse_args(&["memcached"]).unwrap_err();
        assert!(e.contains("unknown target"), "{e}");
        assert!(parse_args(&[]).is_err());
    }
}
