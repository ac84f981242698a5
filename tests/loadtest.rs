//! `distlockd test`: the benchmark command end to end, on loopback only.
//!
//! - `test distlockd` against an in-process server: the original's report
//!   with all seven rows and a 100.00 concurrency success rate;
//! - `test redis` against a redis-server started here;
//! - `test compare --quick` end to end, its JSON parsed and checked for
//!   every scenario and both servers.
//!
//! Tests that need `redis-server` fail when it is not installed
//! (`bash scripts/test` installs Debian's `redis-server` package first).

#![cfg(feature = "server")]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use distlockd::Limits;
use distlockd::server::{Config, Server};

const BIN: &str = env!("CARGO_BIN_EXE_distlockd");

/// Every test run is bounded: a child still running after this is killed.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

fn run_bin(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn distlockd");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > CHILD_TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "distlockd {args:?} ran over {CHILD_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn redis_installed() -> bool {
    let found = Command::new("which")
        .arg("redis-server")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "redis-server is not installed: run `apt-get install redis-server`, or run the suite with `bash scripts/test`, which installs it"
    );
    found
}

/// A redis-server on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    addr: SocketAddr,
}

impl Redis {
    /// Picks a free port and starts redis-server on it; if another process
    /// took the port in between (redis exits on a failed bind), tries again.
    fn start() -> Redis {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            let mut redis = Redis {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            let started = Instant::now();
            while TcpStream::connect(redis.addr).is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "redis-server did not listen"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            // Something listens; make sure it is our redis and not a
            // process that won the port race.
            std::thread::sleep(Duration::from_millis(50));
            if redis.child.try_wait().unwrap().is_none() {
                return redis;
            }
        }
        panic!("redis-server failed to start on 5 free ports in a row");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ORIGINAL_ROWS: [&str; 7] = [
    "| Latency Min (ms) |",
    "| Latency Max (ms) |",
    "| Latency Avg (ms) |",
    "| 95th Percentile (ms) |",
    "| 99th Percentile (ms) |",
    "| Throughput (ops/sec) |",
    "| Concurrency Success Rate (%) |",
];

fn check_original_report(report: &str, column: &str) {
    assert!(report.contains("System Info:"), "{report}");
    assert!(report.contains("- CPU Count: "), "{report}");
    assert!(report.contains("- RAM (GB): "), "{report}");
    assert!(report.contains("Test Configuration:"), "{report}");
    assert!(report.contains("- num_clients: 12"), "{report}");
    assert!(
        report.contains(&format!("| Metric | {column} |")),
        "{report}"
    );
    for row in ORIGINAL_ROWS {
        let line = report
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row} in:\n{report}"));
        let value: f64 = line[row.len()..]
            .trim()
            .trim_end_matches('|')
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
        assert!(value.is_finite() && value >= 0.0, "{line}");
    }
    assert!(
        report.contains("| Concurrency Success Rate (%) | 100.00 |"),
        "{report}"
    );
    assert!(
        report.contains("Checks: 0 mutual-exclusion violations, 0 lost releases, 0 failed"),
        "{report}"
    );
    let throughput = report
        .lines()
        .find(|l| l.starts_with("| Throughput (ops/sec) |"))
        .unwrap();
    assert!(
        !throughput.contains("| 0.00 |"),
        "no cycle completed: {throughput}"
    );
}

const SMALL_RUN: [&str; 8] = [
    "--iterations",
    "50",
    "--num_clients",
    "12",
    "--num-locks",
    "3",
    "--throughput_seconds",
    "0.3",
];

#[test]
fn test_distlockd_prints_the_original_report() {
    let server = Server::spawn(Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        limits: Limits::default(),
        token_seed: Some(1),
        ..Config::default()
    })
    .unwrap();
    let port = server.local_addr().port().to_string();
    let mut args = vec!["test", "distlockd", "--host", "localhost", "--port", &port];
    args.extend(SMALL_RUN);
    let out = run_bin(&args);
    let report = text(&out.stdout);
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    check_original_report(&report, "distlockd");
    assert!(text(&out.stderr).contains("Concurrency test completed"));
    server.stop().unwrap();
}

#[test]
fn test_redis_prints_the_original_report() {
    if !redis_installed() {
        return;
    }
    let redis = Redis::start();
    let port = redis.addr.port().to_string();
    let mut args = vec!["test", "redis", "--port", &port, "--redis-poll-ms", "20"];
    args.extend(SMALL_RUN);
    let out = run_bin(&args);
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    check_original_report(&text(&out.stdout), "Redis");
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let out = run_bin(&["test", "distlockd", "--port", &port]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot reach distlockd at 127.0.0.1:"),
        "{err}"
    );
    assert!(err.contains("distlockd server --port"), "{err}");
    let out = run_bin(&["test", "distlockd", "--num_clients", "0"]);
    assert!(text(&out.stderr).contains("--num_clients 0"));
}

#[test]
fn help_documents_every_flag() {
    let out = run_bin(&["test", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for flag in [
        "--host",
        "--port",
        "--iterations",
        "--num_clients",
        "--num-clients",
        "--num_locks",
        "--throughput_seconds",
        "-v, --verbose",
        "--threads",
        "--redis-poll-ms",
        "--json",
        "--repeat",
        "--quick",
        "--scenario-seconds",
        "--rss-locks",
        "--redis-server",
        "--only",
        "--pin",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
}

const SCENARIOS: [&str; 8] = [
    "latency",
    "uncontended_1",
    "uncontended_16",
    "uncontended_256",
    "contended_16",
    "pipelined_16",
    "memory_12b_names",
    "memory_32b_names",
];

#[test]
fn compare_quick_runs_end_to_end() {
    if !redis_installed() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("distlockd-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("compare.json");
    let out = run_bin(&[
        "test",
        "compare",
        "--quick",
        "--scenario-seconds",
        "0.3",
        "--rss-locks",
        "20000",
        "--redis-poll-ms",
        "20",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "stderr:\n{stderr}");
    let report = text(&out.stdout);
    assert!(
        report.contains(
            "| Scenario | Metric | distlockd | Redis | distlockd/Redis | Better | Target | no-op reference | distlockd/no-op |"
        ),
        "{report}"
    );
    for row in [
        "| single-connection latency | acquire p50 (µs) |",
        "| uncontended, 256 conns | throughput (lock ops/s) |",
        "| contended, 16 clients on 1 lock | handoffs/s (to a waiting client) |",
        "| contended, 16 clients on 1 lock | FIFO grants (%) |",
        "| pipelined depth 16, 16 conns | server CPU (s per M ops) |",
        "| memory, 20,000 held locks, 12-byte names | RSS per held lock (bytes) |",
        "| memory, 20,000 held locks, 32-byte names | RSS per held lock (bytes) |",
    ] {
        assert!(report.contains(row), "no row {row} in:\n{report}");
    }
    assert!(report.contains("Targets met: "), "{report}");
    // 8 scenarios on two servers, 4 of them on the no-op reference too.
    assert!(
        stderr.contains("[20/20] memory"),
        "progress lines: {stderr}"
    );
    // The no-op reference has figures where it runs, n/a elsewhere.
    for (row, has_noop) in [
        (
            "| pipelined depth 16, 16 conns | throughput (lock ops/s) |",
            true,
        ),
        ("| uncontended, 1 conn | server CPU (s per M ops) |", true),
        ("| contended, 16 clients on 1 lock | handoffs/s", false),
        ("| memory, 20,000 held locks, 12-byte names |", false),
    ] {
        let line = report.lines().find(|l| l.starts_with(row)).unwrap();
        assert_eq!(
            !line.ends_with("| n/a | n/a |"),
            has_noop,
            "no-op columns of {line}"
        );
    }
    // Correctness is asserted; speed is only printed.
    for server in ["distlockd", "Redis", "no-op reference"] {
        assert!(
            report.contains(&format!(
                "Checks, {server}: 0 mutual-exclusion violations, 0 lost releases, 0 failed acquisitions"
            )),
            "{report}"
        );
    }

    let json = json::parse(&std::fs::read_to_string(&json_path).unwrap()).expect("valid JSON");
    std::fs::remove_dir_all(&dir).ok();
    let scenarios = json.get("scenarios").unwrap().array().unwrap();
    let ids: Vec<&str> = scenarios
        .iter()
        .map(|s| s.get("id").unwrap().str().unwrap())
        .collect();
    assert_eq!(ids, SCENARIOS);
    for scenario in scenarios {
        let metrics = scenario.get("metrics").unwrap().array().unwrap();
        assert!(!metrics.is_empty());
        for metric in metrics {
            for server in ["distlockd", "redis"] {
                let figures = metric.get(server).unwrap_or_else(|| panic!("no {server}"));
                let runs = figures.get("runs").unwrap().array().unwrap();
                assert_eq!(runs.len(), 1, "one repetition in --quick");
                assert!(figures.get("median").is_some());
            }
            let id = scenario.get("id").unwrap().str().unwrap();
            let noop_runs = metric.get("noop").unwrap().get("runs").unwrap();
            let expected =
                usize::from(id.starts_with("uncontended") || id.starts_with("pipelined"));
            assert_eq!(
                noop_runs.array().unwrap().len(),
                expected,
                "no-op runs of {id}"
            );
            assert!(metric.get("ratio_noop").is_some());
        }
    }
    // The contended scenario's grants were FIFO on our side.
    let contended = &scenarios[4];
    let fifo = contended
        .get("metrics")
        .unwrap()
        .array()
        .unwrap()
        .iter()
        .find(|m| m.get("id").unwrap().str() == Some("fifo_grants_pct"))
        .unwrap();
    let ours = fifo.get("distlockd").unwrap().get("median").unwrap().num();
    assert_eq!(ours, Some(100.0), "distlockd grants in FIFO order");
    let config = json.get("config").unwrap();
    assert_eq!(config.get("quick").unwrap().bool(), Some(true));
    assert_eq!(config.get("repeat").unwrap().num(), Some(1.0));
    assert!(json.get("system").unwrap().get("cpu_count").is_some());
    let checks = json.get("checks").unwrap();
    for server in ["distlockd", "redis"] {
        let c = checks.get(server).unwrap();
        assert_eq!(c.get("violations").unwrap().num(), Some(0.0));
        assert_eq!(c.get("lost_releases").unwrap().num(), Some(0.0));
    }
}

/// A small JSON parser for checking `--json` output (no serde dependency).
mod json {
    #[derive(Debug)]
    pub enum Json {
        Null,
        Bool(bool),
        Num(f64),
        Str(String),
        Arr(Vec<Json>),
        Obj(Vec<(String, Json)>),
    }

    impl Json {
        pub fn get(&self, key: &str) -> Option<&Json> {
            match self {
                Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }
        pub fn array(&self) -> Option<&[Json]> {
            match self {
                Json::Arr(items) => Some(items),
                _ => None,
            }
        }
        pub fn str(&self) -> Option<&str> {
            match self {
                Json::Str(s) => Some(s),
                _ => None,
            }
        }
        pub fn bool(&self) -> Option<bool> {
            match self {
                Json::Bool(b) => Some(*b),
                _ => None,
            }
        }
        pub fn num(&self) -> Option<f64> {
            match self {
                Json::Num(n) => Some(*n),
                _ => None,
            }
        }
    }

    pub fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing bytes at {}", p.i));
        }
        Ok(v)
    }

    struct Parser<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
        }
        fn eat(&mut self, b: u8) -> Result<(), String> {
            self.ws();
            if self.s.get(self.i) == Some(&b) {
                self.i += 1;
                Ok(())
            } else {
                Err(format!("expected {:?} at {}", b as char, self.i))
            }
        }
        fn value(&mut self) -> Result<Json, String> {
            self.ws();
            match self.s.get(self.i) {
                Some(b'{') => {
                    self.i += 1;
                    let mut fields = Vec::new();
                    self.ws();
                    if self.s.get(self.i) == Some(&b'}') {
                        self.i += 1;
                        return Ok(Json::Obj(fields));
                    }
                    loop {
                        self.ws();
                        let Json::Str(key) = self.string()? else {
                            unreachable!()
                        };
                        self.eat(b':')?;
                        fields.push((key, self.value()?));
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                return Ok(Json::Obj(fields));
                            }
                            _ => return Err(format!("bad object at {}", self.i)),
                        }
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    let mut items = Vec::new();
                    self.ws();
                    if self.s.get(self.i) == Some(&b']') {
                        self.i += 1;
                        return Ok(Json::Arr(items));
                    }
                    loop {
                        items.push(self.value()?);
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                return Ok(Json::Arr(items));
                            }
                            _ => return Err(format!("bad array at {}", self.i)),
                        }
                    }
                }
                Some(b'"') => self.string(),
                Some(b't') => self.word("true", Json::Bool(true)),
                Some(b'f') => self.word("false", Json::Bool(false)),
                Some(b'n') => self.word("null", Json::Null),
                Some(_) => {
                    let start = self.i;
                    while self.i < self.s.len()
                        && matches!(
                            self.s[self.i],
                            b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                        )
                    {
                        self.i += 1;
                    }
                    std::str::from_utf8(&self.s[start..self.i])
                        .unwrap()
                        .parse()
                        .map(Json::Num)
                        .map_err(|_| format!("bad number at {start}"))
                }
                None => Err("unexpected end".into()),
            }
        }
        fn word(&mut self, w: &str, v: Json) -> Result<Json, String> {
            if self.s[self.i..].starts_with(w.as_bytes()) {
                self.i += w.len();
                Ok(v)
            } else {
                Err(format!("bad literal at {}", self.i))
            }
        }
        fn string(&mut self) -> Result<Json, String> {
            self.eat(b'"')?;
            let mut out = String::new();
            loop {
                let rest = std::str::from_utf8(&self.s[self.i..]).map_err(|e| e.to_string())?;
                let mut chars = rest.char_indices();
                let (_, c) = chars.next().ok_or("unterminated string")?;
                self.i += c.len_utf8();
                match c {
                    '"' => return Ok(Json::Str(out)),
                    '\\' => {
                        let e = self.s[self.i];
                        self.i += 1;
                        match e {
                            b'"' => out.push('"'),
                            b'\\' => out.push('\\'),
                            b'/' => out.push('/'),
                            b'n' => out.push('\n'),
                            b'r' => out.push('\r'),
                            b't' => out.push('\t'),
                            b'u' => {
                                let hex = std::str::from_utf8(&self.s[self.i..self.i + 4]).unwrap();
                                let code =
                                    u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                                out.push(char::from_u32(code).ok_or("bad \\u escape")?);
                                self.i += 4;
                            }
                            _ => return Err(format!("bad escape at {}", self.i)),
                        }
                    }
                    c if (c as u32) < 0x20 => return Err("control character in string".into()),
                    c => out.push(c),
                }
            }
        }
    }
}
