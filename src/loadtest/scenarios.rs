//! What each benchmark does, as [`Workload`]s for the engine, and which
//! figures it reports.
//!
//! Two families:
//! - [`original`]: the three measurements of the Python project's
//!   `distlockd test distlockd|redis` (latency, throughput, concurrency
//!   success rate), with its semantics and defaults, driven by our engine.
//! - [`Scenario`]: the side-by-side scenarios of `distlockd test compare`.
//!
//! An "op" in every throughput figure is one lock cycle, acquire + release
//! (two requests), as the original counted it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Backend;
use super::driver::{Names, RunStats, Stop, Workload};

/// A run id for lock names, unique within the process and unlikely to
/// repeat across processes (it starts from the wall clock).
pub fn next_run_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let _ = NEXT.compare_exchange(
        0,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() % 1_000_000 * 1000 + 1),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Nanoseconds to milliseconds.
pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The original `test distlockd|redis` measurements.
pub mod original {
    use super::*;

    /// The original's throughput test runs 10 worker threads, each on its
    /// own lock.
    pub const THROUGHPUT_WORKERS: usize = 10;
    /// The original acquires with `timeout=0.5` s in the latency and
    /// throughput tests, and `timeout=5.0` s with a 100 ms hold in the
    /// concurrency test; locks live 10 s (its server's default TTL and
    /// redis-py's `timeout=10`).
    pub const ACQUIRE_WAIT_MS: u32 = 500;
    pub const CONCURRENCY_WAIT_MS: u32 = 5_000;
    pub const CONCURRENCY_HOLD: Duration = Duration::from_millis(100);
    pub const LOCK_TTL_MS: u32 = 10_000;
    /// Slack on top of the longest a counted run can legitimately take.
    const DEADLINE_SLACK: Duration = Duration::from_secs(30);

    #[derive(Clone, Debug)]
    pub struct Config {
        pub iterations: u64,
        pub num_clients: usize,
        pub num_locks: usize,
        pub throughput_seconds: f64,
        pub threads: usize,
    }

    /// One acquire (wait 0.5 s) on a fresh name per iteration, then release;
    /// the acquire's round trip is the latency.
    pub fn latency(cfg: &Config) -> Workload {
        Workload {
            label: "latency",
            run_id: next_run_id(),
            conns: 1,
            lanes_per_conn: 1,
            names: Names::Fresh,
            ttl_ms: LOCK_TTL_MS,
            wait_ms: ACQUIRE_WAIT_MS,
            hold: Duration::ZERO,
            release: true,
            stop: Stop::Count {
                acquisitions: cfg.iterations,
                per_lane_max: u64::MAX,
                deadline: Duration::from_millis(ACQUIRE_WAIT_MS as u64 * cfg.iterations)
                    + DEADLINE_SLACK,
            },
            threads: 1,
            load_cpus: None,
        }
    }

    /// Ten clients acquire and release their own lock for
    /// `throughput_seconds`.
    pub fn throughput(cfg: &Config) -> Workload {
        Workload {
            label: "throughput",
            run_id: next_run_id(),
            conns: THROUGHPUT_WORKERS,
            lanes_per_conn: 1,
            names: Names::PerLane,
            ttl_ms: LOCK_TTL_MS,
            wait_ms: ACQUIRE_WAIT_MS,
            hold: Duration::ZERO,
            release: true,
            stop: Stop::Timed {
                warmup: Duration::ZERO,
                measure: Duration::from_secs_f64(cfg.throughput_seconds),
            },
            threads: cfg.threads,
            load_cpus: None,
        }
    }

    /// `num_clients` clients, client i on lock `i % num_locks`, each
    /// acquiring once with a 5 s timeout and holding 100 ms.
    pub fn concurrency(cfg: &Config) -> Workload {
        let per_lock = cfg.num_clients.div_ceil(cfg.num_locks) as u32;
        Workload {
            label: "concurrency",
            run_id: next_run_id(),
            conns: cfg.num_clients,
            lanes_per_conn: 1,
            names: Names::Shared {
                locks: cfg.num_locks,
            },
            ttl_ms: LOCK_TTL_MS,
            wait_ms: CONCURRENCY_WAIT_MS,
            hold: CONCURRENCY_HOLD,
            release: true,
            stop: Stop::Count {
                acquisitions: cfg.num_clients as u64,
                per_lane_max: 1,
                deadline: Duration::from_millis(CONCURRENCY_WAIT_MS as u64)
                    + CONCURRENCY_HOLD * per_lock
                    + DEADLINE_SLACK,
            },
            threads: 1,
            load_cpus: None,
        }
    }

    /// The report's seven figures.
    #[derive(Clone, Debug)]
    pub struct Figures {
        pub latency_min_ms: f64,
        pub latency_max_ms: f64,
        pub latency_avg_ms: f64,
        pub latency_p95_ms: f64,
        pub latency_p99_ms: f64,
        pub throughput_ops: f64,
        pub concurrency_success_pct: f64,
        /// Sanity checks summed over the three runs.
        pub violations: u64,
        pub lost_releases: u64,
        pub failed_acquisitions: u64,
    }

    impl Figures {
        pub fn from_runs(
            latency: &RunStats,
            throughput: &RunStats,
            concurrency: &RunStats,
            num_clients: usize,
        ) -> Figures {
            let h = &latency.acquire_ns;
            Figures {
                latency_min_ms: ms(h.min()),
                latency_max_ms: ms(h.max()),
                latency_avg_ms: h.mean() / 1e6,
                latency_p95_ms: ms(h.value_at_quantile(0.95)),
                latency_p99_ms: ms(h.value_at_quantile(0.99)),
                throughput_ops: throughput.per_second(throughput.cycles),
                concurrency_success_pct: 100.0 * concurrency.grants as f64 / num_clients as f64,
                violations: latency.violations + throughput.violations + concurrency.violations,
                lost_releases: latency.lost_releases
                    + throughput.lost_releases
                    + concurrency.lost_releases,
                failed_acquisitions: latency.not_granted + throughput.not_granted,
            }
        }

        /// The rows of the original's table, in its order.
        pub fn rows(&self) -> [(&'static str, f64); 7] {
            [
                ("Latency Min (ms)", self.latency_min_ms),
                ("Latency Max (ms)", self.latency_max_ms),
                ("Latency Avg (ms)", self.latency_avg_ms),
                ("95th Percentile (ms)", self.latency_p95_ms),
                ("99th Percentile (ms)", self.latency_p99_ms),
                ("Throughput (ops/sec)", self.throughput_ops),
                ("Concurrency Success Rate (%)", self.concurrency_success_pct),
            ]
        }
    }
}

/// Settings shared by the compare scenarios.
#[derive(Clone, Debug)]
pub struct CompareSettings {
    pub measure: Duration,
    pub warmup: Duration,
    pub threads: usize,
    pub rss_locks: u64,
    /// Load-thread CPUs when pinned (see `affinity`).
    pub load_cpus: Option<String>,
}

/// Uncontended scenarios' connection counts (1, 16 and 256).
pub const UNCONTENDED_CONNS: [usize; 3] = [1, 16, 256];
/// Clients blocking on the one lock of the contended scenario.
pub const CONTENDED_CLIENTS: usize = 16;
/// Requests in flight per connection when pipelining, and its connections.
pub const PIPELINE_DEPTH: usize = 16;
pub const PIPELINE_CONNS: usize = 16;
/// Lock TTL in throughput scenarios: far above any hold, so nothing expires.
const BENCH_TTL_MS: u32 = 10_000;
/// Contended waits and holds: longer than any run, so waits end by grant.
const CONTENDED_WAIT_MS: u32 = 600_000;
const CONTENDED_TTL_MS: u32 = 60_000;
/// Held locks of the memory scenario live 10 minutes; their servers are
/// stopped right after the measurement anyway.
pub const RSS_TTL_MS: u32 = 600_000;
/// Connections × depth used to fill the memory scenario's locks.
const RSS_FILL_CONNS: usize = 16;
const RSS_FILL_DEPTH: usize = 16;
const RSS_FILL_DEADLINE: Duration = Duration::from_secs(600);
/// Name lengths of the memory scenarios: 12 bytes (`m0.000000001`, like
/// `job:nightly` or `user:123456`) fits distlockd's 15-byte inline names;
/// 32 bytes (like `tenant-42:invoice:2024-000123:pdf`) does not. Redis
/// stores both as keys; the two rows show what name length costs each.
pub const RSS_NAME_LENS: [usize; 2] = [12, 32];

/// The compare scenarios, in the order they run (the memory scenario last:
/// it runs on freshly started servers, see `compare`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Latency,
    Uncontended { conns: usize },
    Contended { clients: usize },
    Pipelined { conns: usize, depth: usize },
    Rss { locks: u64, name_len: usize },
}

/// Which direction is better for a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// A target on the ratio ours/Redis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    pub fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtLeast(r) => ratio >= r,
            Goal::AtMost(r) => ratio <= r,
        }
    }
    pub fn describe(self) -> String {
        match self {
            Goal::AtLeast(r) => format!("≥ {}×", trim(r)),
            Goal::AtMost(r) => format!("≤ {}×", trim(r)),
        }
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One reported figure of a scenario.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub id: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub better: Better,
    pub goal: Option<Goal>,
    pub decimals: usize,
}

const fn metric(
    id: &'static str,
    label: &'static str,
    unit: &'static str,
    better: Better,
    goal: Option<Goal>,
    decimals: usize,
) -> Metric {
    Metric {
        id,
        label,
        unit,
        better,
        goal,
        decimals,
    }
}

const P50_US: Metric = metric(
    "acquire_p50_us",
    "acquire p50 (µs)",
    "µs",
    Better::Lower,
    None,
    1,
);
const P99_US: Metric = metric(
    "acquire_p99_us",
    "acquire p99 (µs)",
    "µs",
    Better::Lower,
    None,
    1,
);
const CPU_PER_MOPS: Metric = metric(
    "server_cpu_s_per_mops",
    "server CPU (s per M ops)",
    "s/Mops",
    Better::Lower,
    None,
    2,
);

impl Scenario {
    /// Every scenario of a compare run.
    pub fn all(settings: &CompareSettings) -> Vec<Scenario> {
        let mut list = vec![Scenario::Latency];
        list.extend(
            UNCONTENDED_CONNS
                .iter()
                .map(|&conns| Scenario::Uncontended { conns }),
        );
        list.push(Scenario::Contended {
            clients: CONTENDED_CLIENTS,
        });
        list.push(Scenario::Pipelined {
            conns: PIPELINE_CONNS,
            depth: PIPELINE_DEPTH,
        });
        list.extend(RSS_NAME_LENS.iter().map(|&name_len| Scenario::Rss {
            locks: settings.rss_locks,
            name_len,
        }));
        list
    }

    /// Whether the no-op reference server runs it: it answers every
    /// request at once, so it cannot make a client wait (contended) or
    /// hold anything (memory); a single connection's latency shows in its
    /// "uncontended, 1 conn" rows.
    pub fn has_noop_reference(&self) -> bool {
        matches!(
            self,
            Scenario::Uncontended { .. } | Scenario::Pipelined { .. }
        )
    }

    /// Whether the scenario runs against server `b`.
    pub fn runs_on(&self, b: Backend) -> bool {
        b != Backend::Noop || self.has_noop_reference()
    }

    pub fn id(&self) -> String {
        match *self {
            Scenario::Latency => "latency".into(),
            Scenario::Uncontended { conns } => format!("uncontended_{conns}"),
            Scenario::Contended { clients } => format!("contended_{clients}"),
            Scenario::Pipelined { depth, .. } => format!("pipelined_{depth}"),
            Scenario::Rss { name_len, .. } => format!("memory_{name_len}b_names"),
        }
    }

    pub fn title(&self) -> String {
        match *self {
            Scenario::Latency => "single-connection latency".into(),
            Scenario::Uncontended { conns } => format!(
                "uncontended, {conns} conn{}",
                if conns == 1 { "" } else { "s" }
            ),
            Scenario::Contended { clients } => format!("contended, {clients} clients on 1 lock"),
            Scenario::Pipelined { conns, depth } => {
                format!("pipelined depth {depth}, {conns} conns")
            }
            Scenario::Rss { locks, name_len } => format!(
                "memory, {} held locks, {name_len}-byte names",
                thousands(locks)
            ),
        }
    }

    pub fn metrics(&self) -> Vec<Metric> {
        match self {
            Scenario::Latency => vec![P50_US, P99_US],
            Scenario::Uncontended { .. } => vec![
                metric(
                    "ops_per_sec",
                    "throughput (lock ops/s)",
                    "ops/s",
                    Better::Higher,
                    Some(Goal::AtLeast(1.0)),
                    0,
                ),
                P99_US,
                CPU_PER_MOPS,
            ],
            Scenario::Contended { .. } => vec![
                metric(
                    "handoffs_per_sec",
                    "handoffs/s (to a waiting client)",
                    "1/s",
                    Better::Higher,
                    Some(Goal::AtLeast(10.0)),
                    0,
                ),
                metric("wait_p99_ms", "wait p99 (ms)", "ms", Better::Lower, None, 2),
                metric("wait_max_ms", "wait max (ms)", "ms", Better::Lower, None, 2),
                metric(
                    "fifo_grants_pct",
                    "FIFO grants (%)",
                    "%",
                    Better::Higher,
                    None,
                    1,
                ),
                metric(
                    "changed_hands_per_sec",
                    "lock changed hands/s (barging included)",
                    "1/s",
                    Better::Higher,
                    None,
                    0,
                ),
                metric(
                    "grants_per_sec",
                    "grants/s, any client",
                    "1/s",
                    Better::Higher,
                    None,
                    0,
                ),
                metric(
                    "violations",
                    "mutual-exclusion violations",
                    "count",
                    Better::Lower,
                    None,
                    0,
                ),
            ],
            Scenario::Pipelined { .. } => vec![
                metric(
                    "ops_per_sec",
                    "throughput (lock ops/s)",
                    "ops/s",
                    Better::Higher,
                    Some(Goal::AtLeast(2.0)),
                    0,
                ),
                metric(
                    "server_cpu_s_per_mops",
                    "server CPU (s per M ops)",
                    "s/Mops",
                    Better::Lower,
                    Some(Goal::AtMost(0.25)),
                    2,
                ),
            ],
            Scenario::Rss { .. } => vec![
                metric(
                    "rss_bytes_per_lock",
                    "RSS per held lock (bytes)",
                    "B",
                    Better::Lower,
                    Some(Goal::AtMost(0.5)),
                    0,
                ),
                metric(
                    "rss_mib_total",
                    "RSS with the locks held (MiB)",
                    "MiB",
                    Better::Lower,
                    None,
                    1,
                ),
            ],
        }
    }

    /// The workload a timed scenario runs ([`Scenario::Rss`] uses
    /// [`rss_fill`]).
    pub fn workload(&self, s: &CompareSettings) -> Workload {
        let timed = Stop::Timed {
            warmup: s.warmup,
            measure: s.measure,
        };
        let base = Workload {
            label: "",
            run_id: next_run_id(),
            conns: 1,
            lanes_per_conn: 1,
            names: Names::PerLane,
            ttl_ms: BENCH_TTL_MS,
            wait_ms: original::ACQUIRE_WAIT_MS,
            hold: Duration::ZERO,
            release: true,
            stop: timed,
            threads: s.threads,
            load_cpus: s.load_cpus.clone(),
        };
        match *self {
            Scenario::Latency => Workload {
                label: "latency",
                names: Names::Fresh,
                ..base
            },
            Scenario::Uncontended { conns } => Workload {
                label: "uncontended",
                conns,
                ..base
            },
            Scenario::Contended { clients } => Workload {
                label: "contended",
                conns: clients,
                names: Names::Shared { locks: 1 },
                ttl_ms: CONTENDED_TTL_MS,
                wait_ms: CONTENDED_WAIT_MS,
                ..base
            },
            Scenario::Pipelined { conns, depth } => Workload {
                label: "pipelined",
                conns,
                lanes_per_conn: depth,
                ..base
            },
            Scenario::Rss { locks, name_len } => rss_fill(locks, name_len, s),
        }
    }

    /// The scenario's figures from one run, in [`Scenario::metrics`] order.
    pub fn figures(&self, stats: &RunStats) -> Vec<f64> {
        let h = &stats.acquire_ns;
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        let cpu_per_mops = match stats.server_cpu_seconds {
            Some(cpu) if stats.cycles > 0 => cpu / (stats.cycles as f64 / 1e6),
            _ => f64::NAN,
        };
        match self {
            Scenario::Latency => vec![us(0.5), us(0.99)],
            Scenario::Uncontended { .. } => {
                vec![stats.per_second(stats.cycles), us(0.99), cpu_per_mops]
            }
            Scenario::Contended { .. } => vec![
                stats.per_second(stats.handoffs),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
                if stats.fifo_checked > 0 {
                    100.0 * stats.fifo_ok as f64 / stats.fifo_checked as f64
                } else {
                    f64::NAN
                },
                stats.per_second(stats.changed_hands),
                stats.per_second(stats.grants),
                stats.violations as f64,
            ],
            Scenario::Pipelined { .. } => vec![stats.per_second(stats.cycles), cpu_per_mops],
            Scenario::Rss { .. } => unreachable!("memory figures come from rss_figures"),
        }
    }

    /// The headline figure for progress lines.
    pub fn headline(&self, figures: &[f64]) -> String {
        let metrics = self.metrics();
        metrics
            .iter()
            .zip(figures)
            .take(2)
            .map(|(m, v)| format!("{} {}", format_value(*v, m.decimals), m.label))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Fills `locks` held locks on fresh names of `name_len` bytes, pipelined,
/// without releasing.
pub fn rss_fill(locks: u64, name_len: usize, s: &CompareSettings) -> Workload {
    Workload {
        label: "rss",
        run_id: next_run_id(),
        conns: RSS_FILL_CONNS,
        lanes_per_conn: RSS_FILL_DEPTH,
        names: Names::FreshSized { len: name_len },
        ttl_ms: RSS_TTL_MS,
        wait_ms: 0,
        hold: Duration::ZERO,
        release: false,
        stop: Stop::Count {
            acquisitions: locks,
            per_lane_max: u64::MAX,
            deadline: RSS_FILL_DEADLINE,
        },
        threads: s.threads,
        load_cpus: s.load_cpus.clone(),
    }
}

/// Memory figures from the server's RSS before and after the fill.
pub fn rss_figures(rss_before: u64, rss_after: u64, locks: u64) -> Vec<f64> {
    let grown = rss_after.saturating_sub(rss_before) as f64;
    vec![grown / locks as f64, rss_after as f64 / (1024.0 * 1024.0)]
}

/// A figure with fixed decimals and thousands separators; NaN as "n/a".
pub fn format_value(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = s.split_once('.').map_or((s.as_str(), ""), |(i, f)| (i, f));
    let mut out = String::new();
    if v < 0.0 && s.bytes().any(|b| b.is_ascii_digit() && b != b'0') {
        out.push('-');
    }
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

pub fn thousands(v: u64) -> String {
    format_value(v as f64, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_format_with_separators() {
        assert_eq!(format_value(1234567.891, 0), "1,234,568");
        assert_eq!(format_value(999.0, 1), "999.0");
        assert_eq!(format_value(0.123, 2), "0.12");
        assert_eq!(format_value(f64::NAN, 2), "n/a");
        assert_eq!(format_value(-1500.0, 0), "-1,500");
    }

    #[test]
    fn goals_read_as_the_performance_targets_state_them() {
        assert_eq!(Goal::AtLeast(10.0).describe(), "≥ 10×");
        assert_eq!(Goal::AtMost(0.25).describe(), "≤ 0.25×");
        assert!(Goal::AtMost(0.5).met(0.5));
        assert!(!Goal::AtLeast(2.0).met(1.99));
    }

    #[test]
    fn scenario_ids_are_unique() {
        let s = CompareSettings {
            measure: Duration::from_secs(1),
            warmup: Duration::ZERO,
            threads: 1,
            rss_locks: 10,
            load_cpus: None,
        };
        let ids: Vec<String> = Scenario::all(&s).iter().map(|s| s.id()).collect();
        let mut dedup = ids.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(ids.len(), dedup.len());
    }
}
