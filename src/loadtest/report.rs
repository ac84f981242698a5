//! Reports: the original's Markdown report for `test distlockd|redis`, the
//! side-by-side table of `test compare`, and their JSON.
//!
//! The header follows the original project's page ("Benchmark Comparison
//! Report": Date, System Info with Python `platform` fields, Test
//! Configuration), then a Markdown table. JSON is written by hand (a few
//! objects; no serde dependency for one output file).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Backend;
use super::procstat::SystemInfo;
use super::scenarios::{Better, Scenario, format_value, original::Figures};
use crate::json::string;

/// `YYYY-MM-DD HH:MM:SS UTC`, from the system clock.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn format_utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The "Date" and "System Info" lines of every report.
pub fn system_section(out: &mut String, date: &str, sys: &SystemInfo) {
    let _ = writeln!(out, "Date: {date}");
    let _ = writeln!(out, "System Info:");
    let _ = writeln!(out, "- Platform: {}", sys.system);
    let _ = writeln!(out, "- Platform-Release: {}", sys.release);
    let _ = writeln!(out, "- Platform-Version: {}", sys.version);
    let _ = writeln!(out, "- Machine: {}", sys.machine);
    let _ = writeln!(out, "- Processor: {}", sys.machine);
    let _ = writeln!(out, "- CPU Count: {}", sys.cpu_count);
    let _ = writeln!(out, "- RAM (GB): {:.2}", sys.ram_gb);
    let _ = writeln!(out, "- Uname:");
    let _ = writeln!(out, "  - system: {}", sys.system);
    let _ = writeln!(out, "  - release: {}", sys.release);
    let _ = writeln!(out, "  - version: {}", sys.version);
    let _ = writeln!(out, "  - machine: {}", sys.machine);
    let _ = writeln!(out, "  - processor: {}", sys.machine);
}

/// What `test distlockd|redis` ran with.
pub struct SingleInfo<'a> {
    pub backend: Backend,
    pub addr: String,
    pub server_version: &'a str,
    pub iterations: u64,
    pub num_clients: usize,
    pub num_locks: usize,
    pub throughput_seconds: f64,
    pub threads: usize,
    pub redis_poll_ms: u64,
}

/// The original's report for one backend.
pub fn single_report(date: &str, sys: &SystemInfo, info: &SingleInfo<'_>, f: &Figures) -> String {
    let mut out = String::new();
    let name = info.backend.name();
    let _ = writeln!(out, "# Benchmark Report: {name}\n");
    system_section(&mut out, date, sys);
    let _ = writeln!(out, "Test Configuration:");
    let _ = writeln!(
        out,
        "- server: {name} {} at {}",
        info.server_version, info.addr
    );
    let _ = writeln!(out, "- iterations: {}", info.iterations);
    let _ = writeln!(out, "- num_clients: {}", info.num_clients);
    let _ = writeln!(out, "- num_locks: {}", info.num_locks);
    let _ = writeln!(out, "- throughput_seconds: {}", info.throughput_seconds);
    let _ = writeln!(out, "- load threads: {}", info.threads);
    if info.backend == Backend::Redis {
        let _ = writeln!(
            out,
            "- redis blocking-acquire poll: {} ms (redis-py's default sleep is 100 ms)",
            info.redis_poll_ms
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| Metric | {name} |");
    let _ = writeln!(out, "|--------|{}|", "-".repeat(name.len() + 2));
    for (label, value) in f.rows() {
        let _ = writeln!(out, "| {label} | {value:.2} |");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Checks: {} mutual-exclusion violations, {} lost releases, {} failed acquisitions in the latency and throughput tests.",
        f.violations, f.lost_releases, f.failed_acquisitions
    );
    out
}

/// JSON of a single-backend run.
pub fn single_json(date: &str, sys: &SystemInfo, info: &SingleInfo<'_>, f: &Figures) -> String {
    let mut o = JsonObject::new();
    o.str("tool", "distlockd test");
    o.str("backend", info.backend.key());
    o.str("date", date);
    o.raw("system", &system_json(sys));
    let mut cfg = JsonObject::new();
    cfg.str("server", &info.addr);
    cfg.str("server_version", info.server_version);
    cfg.num("iterations", info.iterations as f64);
    cfg.num("num_clients", info.num_clients as f64);
    cfg.num("num_locks", info.num_locks as f64);
    cfg.num("throughput_seconds", info.throughput_seconds);
    cfg.num("threads", info.threads as f64);
    cfg.num("redis_poll_ms", info.redis_poll_ms as f64);
    o.raw("config", &cfg.finish());
    let mut m = JsonObject::new();
    m.num("latency_min_ms", f.latency_min_ms);
    m.num("latency_max_ms", f.latency_max_ms);
    m.num("latency_avg_ms", f.latency_avg_ms);
    m.num("latency_p95_ms", f.latency_p95_ms);
    m.num("latency_p99_ms", f.latency_p99_ms);
    m.num("throughput_ops_per_sec", f.throughput_ops);
    m.num("concurrency_success_pct", f.concurrency_success_pct);
    m.num("violations", f.violations as f64);
    m.num("lost_releases", f.lost_releases as f64);
    m.num("failed_acquisitions", f.failed_acquisitions as f64);
    o.raw("metrics", &m.finish());
    o.finish()
}

/// Sanity checks of a compare run, per server.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    pub violations: u64,
    pub lost_releases: u64,
    /// Failed acquisitions where none may fail (uncontended, pipelined,
    /// latency, memory fill).
    pub failed_acquisitions: u64,
    pub drains_incomplete: u64,
}

/// Every figure of a compare run.
pub struct CompareResults {
    pub scenarios: Vec<ScenarioRuns>,
    /// Indexed by [`Backend::index`].
    pub checks: [Checks; 3],
}

impl CompareResults {
    /// Whether the no-op reference ran any scenario.
    fn has_noop(&self) -> bool {
        self.scenarios
            .iter()
            .any(|s| !s.runs[Backend::Noop.index()].is_empty())
    }
}

/// One scenario's figures: `runs[backend][repetition][metric]`; no
/// repetitions for a server the scenario does not run on.
pub struct ScenarioRuns {
    pub scenario: Scenario,
    pub runs: [Vec<Vec<f64>>; 3],
}

impl ScenarioRuns {
    /// NaN when the scenario did not run on `backend`.
    pub fn median(&self, backend: Backend, metric: usize) -> f64 {
        median(self.runs[backend.index()].iter().map(|r| r[metric]))
    }

    /// distlockd / `theirs` for `metric`: the median of the repetitions'
    /// own ratios. The servers of one repetition run back to back, so a
    /// slow stretch of the machine weighs on both sides of its ratio; the
    /// ratio of the medians could pair one server's quiet repetition with
    /// the other's noisy one. NaN when `theirs` did not run.
    pub fn ratio_to(&self, theirs: Backend, metric: usize) -> f64 {
        let ours = &self.runs[Backend::Distlockd.index()];
        let theirs = &self.runs[theirs.index()];
        median(
            ours.iter()
                .zip(theirs)
                .map(|(o, t)| ratio(o[metric], t[metric])),
        )
    }
}

/// What `test compare` ran with.
pub struct CompareInfo {
    pub date: String,
    pub repeat: usize,
    pub measure_seconds: f64,
    pub warmup_seconds: f64,
    pub threads: usize,
    pub redis_poll_ms: u64,
    pub rss_locks: u64,
    pub quick: bool,
    pub redis_server: String,
    pub redis_version: String,
    pub distlockd_version: String,
    pub clock_ticks_per_second: u64,
    /// Where servers and load ran (pinning), as a sentence.
    pub placement: String,
}

/// Median of the values that are not NaN (a missing figure); NaN when there
/// are none. An infinite ratio (the other side scored 0) is a value.
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// ours / theirs (Redis or the no-op reference); NaN when undefined (0/0,
/// or a figure missing), infinite when theirs is 0.
pub fn ratio(ours: f64, theirs: f64) -> f64 {
    if ours == 0.0 && theirs == 0.0 {
        return f64::NAN;
    }
    ours / theirs
}

fn format_ratio(r: f64) -> String {
    if r.is_nan() {
        "n/a".into()
    } else if r.is_infinite() {
        "∞".into()
    } else if r >= 100.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

/// Which server did better on a row, given our figure and Redis's. The table
/// passes our ratio to Redis and 1, so the column agrees with the ratio.
fn better(b: Better, ours: f64, redis: f64) -> &'static str {
    if !ours.is_finite() || !redis.is_finite() || ours == redis {
        return "=";
    }
    let ours_better = match b {
        Better::Higher => ours > redis,
        Better::Lower => ours < redis,
    };
    if ours_better { "distlockd" } else { "Redis" }
}

/// How to read the compare table; printed under it.
const METHODOLOGY: [&str; 8] = [
    "Clients are non-blocking connections on persistent sockets, closed loop, driven by mio threads; latencies go into HDR histograms (3 significant digits).",
    "Acquire latency and wait run from the first request of an attempt to the grant (across Redis poll retries); waits still open when the window closes count at their age then.",
    "Contended: each of the 16 clients re-acquires as soon as it has released (hold 0). A handoff passes the lock to a client that was waiting (Redis: a SET of its attempt was refused; distlockd: its ACQUIRE was queued); a client that never waited taking the lock while others wait is barging, counted only in \"changed hands\". FIFO grants went to the client that had waited longest.",
    "Mutual exclusion is checked from the clients' side: a grant while another client holds the lock (release not yet sent) is a violation.",
    "Server CPU: utime+stime of the server process over the measured window, per million lock ops (acquire + release).",
    "Memory: VmRSS growth of a freshly started server while holding that many locks (fresh names of the stated length; owners of about 20 bytes for distlockd, 32-hex-digit tokens for Redis, as their clients make them; 10-minute TTL; filled pipelined), divided by the lock count.",
    "Ratios (distlockd/Redis, distlockd/no-op) are medians of the repetitions' own ratios: each repetition runs the servers back to back, so a slow stretch of the machine weighs on both sides of its ratio. \"Better\" and the targets read them in each row's direction.",
    "No-op reference: a single-threaded mio server in this executable that decodes the same frames and answers each at once with a fixed valid reply (GRANTED, RELEASED, ...), with no lock table: the ceiling a lock server reaches on this machine. It runs the uncontended and pipelined scenarios only (it cannot make a client wait or hold a lock: n/a elsewhere).",
];

/// The compare report: header, the side-by-side table, targets, checks.
pub fn compare_report(info: &CompareInfo, sys: &SystemInfo, results: &CompareResults) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmark Comparison Report: distlockd vs Redis\n");
    system_section(&mut out, &info.date, sys);
    let _ = writeln!(out, "Test Configuration:");
    let _ = writeln!(
        out,
        "- distlockd {} (native protocol, server-side FIFO waits)",
        info.distlockd_version
    );
    let _ = writeln!(
        out,
        "- Redis {} ({}; SET NX PX, EVALSHA compare-and-delete release, blocking acquire polls every {} ms like redis-py)",
        info.redis_version, info.redis_server, info.redis_poll_ms
    );
    let _ = writeln!(
        out,
        "- no-op reference (`distlockd test noop-server`): decodes our frames, answers each with a fixed reply, no lock table"
    );
    let _ = writeln!(
        out,
        "- all started by this command on loopback; runs interleaved, {} repetition{}, figures are medians",
        info.repeat,
        if info.repeat == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        out,
        "- per run: {:.1} s warm-up, {:.1} s measured; {} load thread{}{}",
        info.warmup_seconds,
        info.measure_seconds,
        info.threads,
        if info.threads == 1 { "" } else { "s" },
        if info.quick { "; --quick" } else { "" }
    );
    let _ = writeln!(out, "- CPUs: {}", info.placement);
    let _ = writeln!(
        out,
        "- an op is one lock cycle: acquire + release; server CPU from /proc/PID/stat (CLK_TCK {})",
        info.clock_ticks_per_second
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| Scenario | Metric | distlockd | Redis | distlockd/Redis | Better | Target | no-op reference | distlockd/no-op |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---|---|---:|---:|");
    let (mut met, mut total) = (0, 0);
    for s in &results.scenarios {
        for (i, m) in s.scenario.metrics().iter().enumerate() {
            let ours = s.median(Backend::Distlockd, i);
            let redis = s.median(Backend::Redis, i);
            let noop = s.median(Backend::Noop, i);
            let r = s.ratio_to(Backend::Redis, i);
            let target = match m.goal {
                None => String::new(),
                Some(goal) => {
                    total += 1;
                    let ok = goal.met(r);
                    met += usize::from(ok);
                    format!("{} {}", if ok { "✓" } else { "✗" }, goal.describe())
                }
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.scenario.title(),
                m.label,
                format_value(ours, m.decimals),
                format_value(redis, m.decimals),
                format_ratio(r),
                better(m.better, r, 1.0),
                target,
                format_value(noop, m.decimals),
                format_ratio(s.ratio_to(Backend::Noop, i)),
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Targets met: {met} of {total}.");
    let _ = writeln!(out);
    let _ = writeln!(out, "Methodology:");
    for line in METHODOLOGY {
        let _ = writeln!(out, "- {line}");
    }
    let _ = writeln!(out);
    let checked: &[Backend] = if results.has_noop() {
        &Backend::ALL
    } else {
        &Backend::BOTH
    };
    for &b in checked {
        let c = &results.checks[b.index()];
        let _ = writeln!(
            out,
            "Checks, {}: {} mutual-exclusion violations, {} lost releases, {} failed acquisitions where none may fail, {} drains cut short.",
            b.name(),
            c.violations,
            c.lost_releases,
            c.failed_acquisitions,
            c.drains_incomplete
        );
    }
    out
}

/// All medians and every repetition's raw figures.
pub fn compare_json(info: &CompareInfo, sys: &SystemInfo, results: &CompareResults) -> String {
    let mut o = JsonObject::new();
    o.str("tool", "distlockd test compare");
    o.str("date", &info.date);
    o.raw("system", &system_json(sys));
    let mut cfg = JsonObject::new();
    cfg.num("repeat", info.repeat as f64);
    cfg.num("measure_seconds", info.measure_seconds);
    cfg.num("warmup_seconds", info.warmup_seconds);
    cfg.num("threads", info.threads as f64);
    cfg.num("redis_poll_ms", info.redis_poll_ms as f64);
    cfg.num("rss_locks", info.rss_locks as f64);
    cfg.bool("quick", info.quick);
    cfg.str("redis_server", &info.redis_server);
    cfg.str("redis_version", &info.redis_version);
    cfg.str("distlockd_version", &info.distlockd_version);
    cfg.num("clock_ticks_per_second", info.clock_ticks_per_second as f64);
    cfg.str("placement", &info.placement);
    o.raw("config", &cfg.finish());
    let mut scenarios = Vec::new();
    let (mut met, mut total) = (0, 0);
    for s in &results.scenarios {
        let mut metrics = Vec::new();
        for (i, m) in s.scenario.metrics().iter().enumerate() {
            let mut mo = JsonObject::new();
            mo.str("id", m.id);
            mo.str("label", m.label);
            mo.str("unit", m.unit);
            mo.str(
                "better",
                match m.better {
                    Better::Higher => "higher",
                    Better::Lower => "lower",
                },
            );
            for b in Backend::ALL {
                let mut bo = JsonObject::new();
                bo.num("median", s.median(b, i));
                let runs: Vec<String> = s.runs[b.index()].iter().map(|r| num(r[i])).collect();
                bo.raw("runs", &format!("[{}]", runs.join(", ")));
                mo.raw(b.key(), &bo.finish());
            }
            let r = s.ratio_to(Backend::Redis, i);
            mo.num("ratio", r);
            mo.num("ratio_noop", s.ratio_to(Backend::Noop, i));
            match m.goal {
                None => mo.raw("target", "null"),
                Some(goal) => {
                    let mut t = JsonObject::new();
                    t.str("goal", &goal.describe());
                    let ok = goal.met(r);
                    t.bool("met", ok);
                    total += 1;
                    met += usize::from(ok);
                    mo.raw("target", &t.finish());
                }
            }
            metrics.push(mo.finish());
        }
        let mut so = JsonObject::new();
        so.str("id", &s.scenario.id());
        so.str("title", &s.scenario.title());
        so.raw("metrics", &format!("[{}]", metrics.join(", ")));
        scenarios.push(so.finish());
    }
    o.raw("scenarios", &format!("[{}]", scenarios.join(", ")));
    let mut checks = JsonObject::new();
    for b in Backend::ALL {
        let c = &results.checks[b.index()];
        let mut co = JsonObject::new();
        co.num("violations", c.violations as f64);
        co.num("lost_releases", c.lost_releases as f64);
        co.num("failed_acquisitions", c.failed_acquisitions as f64);
        co.num("drains_incomplete", c.drains_incomplete as f64);
        checks.raw(b.key(), &co.finish());
    }
    o.raw("checks", &checks.finish());
    o.num("targets_met", met as f64);
    o.num("targets_total", total as f64);
    o.finish()
}

fn system_json(sys: &SystemInfo) -> String {
    let mut o = JsonObject::new();
    o.str("platform", &sys.system);
    o.str("release", &sys.release);
    o.str("version", &sys.version);
    o.str("machine", &sys.machine);
    o.num("cpu_count", sys.cpu_count as f64);
    o.num("ram_gb", sys.ram_gb);
    o.finish()
}

/// Builds one JSON object, fields in insertion order.
struct JsonObject {
    out: String,
    first: bool,
}

impl JsonObject {
    fn new() -> JsonObject {
        JsonObject {
            out: String::from("{"),
            first: true,
        }
    }
    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push_str(", ");
        }
        self.first = false;
        self.out.push_str(&string(key));
        self.out.push_str(": ");
    }
    fn raw(&mut self, key: &str, json: &str) {
        self.key(key);
        self.out.push_str(json);
    }
    fn str(&mut self, key: &str, value: &str) {
        self.raw(key, &string(value));
    }
    fn num(&mut self, key: &str, value: f64) {
        self.raw(key, &num(value));
    }
    fn bool(&mut self, key: &str, value: bool) {
        self.raw(key, if value { "true" } else { "false" });
    }
    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// A JSON number; NaN and infinities (not JSON) become null.
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_748_430_651), "2025-05-28 11:10:51 UTC");
    }

    #[test]
    fn medians_skip_missing_values() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, f64::NAN, 2.0].into_iter()), 2.0);
        assert_eq!(median([1.0, 2.0, 3.0, 4.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }

    #[test]
    fn json_escapes_and_nulls() {
        assert_eq!(string("a\"b\\\n\u{1}"), "\"a\\\"b\\\\\\n\\u0001\"");
        assert_eq!(num(f64::NAN), "null");
        assert_eq!(num(f64::INFINITY), "null");
        assert_eq!(num(2.5), "2.5");
        let mut o = JsonObject::new();
        o.str("k", "v");
        o.num("n", 1.0);
        assert_eq!(o.finish(), "{\"k\": \"v\", \"n\": 1}");
    }

    #[test]
    fn ratios_pair_each_repetition_before_the_median() {
        // Repetition 2 ran on a slow stretch: both servers lost half.
        let runs = |figures: &[f64]| figures.iter().map(|&x| vec![x]).collect::<Vec<_>>();
        let s = ScenarioRuns {
            scenario: Scenario::Pipelined {
                conns: 16,
                depth: 16,
            },
            runs: [
                runs(&[100.0, 98.0, 50.0]),
                runs(&[]),
                runs(&[100.0, 120.0, 49.0]),
            ],
        };
        // Per repetition 1.0, 0.817, 1.020: the median is 1.0. The ratio of
        // the medians (98 / 100) would pair figures of different repetitions.
        assert_eq!(s.ratio_to(Backend::Noop, 0), 1.0);
        assert!(s.ratio_to(Backend::Redis, 0).is_nan(), "Redis did not run");
        // A repetition where the other side scored 0 counts as infinitely
        // better, not as missing.
        let zeros = ScenarioRuns {
            runs: [runs(&[5.0, 5.0, 5.0]), runs(&[0.0, 0.0, 10.0]), runs(&[])],
            ..s
        };
        assert!(zeros.ratio_to(Backend::Redis, 0).is_infinite());
    }

    #[test]
    fn ratios_and_winners() {
        assert!(ratio(0.0, 0.0).is_nan());
        assert!(ratio(1.0, 0.0).is_infinite());
        assert_eq!(better(Better::Higher, 2.0, 1.0), "distlockd");
        assert_eq!(better(Better::Lower, 2.0, 1.0), "Redis");
        assert_eq!(format_ratio(0.25), "0.25×");
        assert_eq!(format_ratio(250.0), "250×");
    }
}
