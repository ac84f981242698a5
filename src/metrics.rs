//! Counters the reactor keeps, and their rendering in the Prometheus text
//! format (`GET /metrics` on `--http-port`).
//!
//! Everything here is a fixed-size array or a plain integer: counting never
//! allocates, so the request path stays allocation-free. Lock counts
//! (grants, releases, expiries, wait timeouts, locks held, waiters) come from
//! the lock table itself.

use std::fmt::Write as _;

use crate::protocol::legacy;
use crate::protocol::kind;
use crate::table::Stats;

/// Requests counted per command, in this order in [`COMMAND_NAMES`].
pub const COMMAND_NAMES: [&str; 10] = [
    "hello",
    "ping",
    "acquire",
    "release",
    "extend",
    "auth",
    "status",
    "legacy_acquire",
    "legacy_release",
    "legacy_health",
];

/// Upper bounds (ns) of the request handling-time histogram's buckets;
/// a last, unbounded bucket follows.
pub const HANDLING_BUCKETS_NS: [u64; 12] = [
    500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    10_000_000,
];

/// HTTP status codes counted, in this order.
pub const HTTP_CODES: [u16; 7] = [200, 400, 404, 405, 431, 503, 408];

/// Why the server closed a connection, counted per reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed, or the socket failed.
    Peer,
    ProtocolError,
    AuthFailed,
    FrameTimeout,
    WriteTimeout,
    IdleTimeout,
    Shutdown,
}

const CLOSE_REASON_NAMES: [&str; 7] = [
    "peer",
    "protocol_error",
    "auth_failed",
    "frame_timeout",
    "write_timeout",
    "idle_timeout",
    "shutdown",
];

/// The reactor's counters.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    closed: [u64; CLOSE_REASON_NAMES.len()],
    commands: [u64; COMMAND_NAMES.len()],
    handling_buckets: [u64; HANDLING_BUCKETS_NS.len() + 1],
    handling_sum_ns: u64,
    handling_count: u64,
    http: [u64; HTTP_CODES.len()],
}

/// What the renderer needs besides the counters.
pub struct Snapshot {
    pub version: &'static str,
    pub uptime_ms: u64,
    pub connections: usize,
    pub connections_max: usize,
    pub http_connections: usize,
    pub locks_held: usize,
    pub locks_max: usize,
    pub waiters: usize,
    pub table: Stats,
    /// The buffer pools, in [`BUFFER_SIDES`] order: input, then output.
    pub buffers: [PoolFigures; 2],
}

/// The `side` label of each pool in [`Snapshot::buffers`].
pub const BUFFER_SIDES: [&str; 2] = ["input", "output"];

/// One buffer pool's figures for `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolFigures {
    /// Buffers attached to a connection now: bytes in flight.
    pub lent: usize,
    /// Buffers allocated, lent or kept free for reuse.
    pub allocated: usize,
    pub buffer_size: usize,
}

impl Metrics {
    /// Counts one executed request by the first byte of its frame.
    pub fn count_command(&mut self, first_byte: u8) {
        let index = match first_byte {
            kind::HELLO => 0,
            kind::PING => 1,
            kind::ACQUIRE => 2,
            kind::RELEASE => 3,
            kind::EXTEND => 4,
            kind::AUTH => 5,
            kind::STATUS => 6,
            legacy::CMD_ACQUIRE => 7,
            legacy::CMD_RELEASE => 8,
            legacy::CMD_HEALTH => 9,
            _ => return,
        };
        self.commands[index] += 1;
    }

    pub fn count_close(&mut self, reason: CloseReason) {
        self.closed[reason as usize] += 1;
    }

    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize]
    }

    /// Records the handling time of `requests` requests that took
    /// `elapsed_ns` together, as that many observations of their mean.
    pub fn observe_handling(&mut self, elapsed_ns: u64, requests: u64) {
        if requests == 0 {
            return;
        }
        let each = elapsed_ns / requests;
        let bucket = HANDLING_BUCKETS_NS
            .iter()
            .position(|&bound| each <= bound)
            .unwrap_or(HANDLING_BUCKETS_NS.len());
        self.handling_buckets[bucket] += requests;
        self.handling_sum_ns += elapsed_ns;
        self.handling_count += requests;
    }

    pub fn count_http(&mut self, code: u16) {
        if let Some(i) = HTTP_CODES.iter().position(|&c| c == code) {
            self.http[i] += 1;
        }
    }

    /// Appends every metric in the Prometheus text exposition format 0.0.4.
    pub fn render(&self, s: &Snapshot, out: &mut String) {
        let mut m = Writer { out };
        m.head("distlockd_build_info", "gauge", "Server version.");
        m.line(
            "distlockd_build_info",
            &format!("version=\"{}\"", s.version),
            1,
        );
        m.single(
            "distlockd_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            s.uptime_ms as f64 / 1000.0,
        );
        m.single(
            "distlockd_connections",
            "gauge",
            "Open lock-protocol connections.",
            s.connections,
        );
        m.single(
            "distlockd_connections_max",
            "gauge",
            "The connections_max limit.",
            s.connections_max,
        );
        m.single(
            "distlockd_connections_accepted_total",
            "counter",
            "Lock-protocol connections accepted.",
            self.connections_accepted,
        );
        m.single(
            "distlockd_connections_refused_total",
            "counter",
            "Connections refused at connections_max.",
            self.connections_refused,
        );
        m.head(
            "distlockd_connections_closed_total",
            "counter",
            "Connections closed, by reason.",
        );
        for (name, count) in CLOSE_REASON_NAMES.iter().zip(self.closed) {
            m.line(
                "distlockd_connections_closed_total",
                &format!("reason=\"{name}\""),
                count,
            );
        }
        m.single(
            "distlockd_protocol_errors_total",
            "counter",
            "Connections closed for undecodable input.",
            self.closed(CloseReason::ProtocolError),
        );
        m.head(
            "distlockd_connection_buffers_lent",
            "gauge",
            "Connection buffers holding bytes in flight now, by side (an idle connection holds none).",
        );
        for (side, pool) in BUFFER_SIDES.iter().zip(s.buffers) {
            m.line(
                "distlockd_connection_buffers_lent",
                &format!("side=\"{side}\""),
                pool.lent,
            );
        }
        m.head(
            "distlockd_connection_buffer_bytes",
            "gauge",
            "Bytes of connection buffers allocated, lent or kept free, by side.",
        );
        for (side, pool) in BUFFER_SIDES.iter().zip(s.buffers) {
            m.line(
                "distlockd_connection_buffer_bytes",
                &format!("side=\"{side}\""),
                pool.allocated * pool.buffer_size,
            );
        }
        m.single(
            "distlockd_locks_held",
            "gauge",
            "Locks held now.",
            s.locks_held,
        );
        m.single(
            "distlockd_locks_max",
            "gauge",
            "The locks_max limit.",
            s.locks_max,
        );
        m.single(
            "distlockd_waiters",
            "gauge",
            "ACQUIREs queued now.",
            s.waiters,
        );
        m.single(
            "distlockd_grants_total",
            "counter",
            "Locks granted, including same-owner re-grants.",
            s.table.grants,
        );
        m.single(
            "distlockd_releases_total",
            "counter",
            "Holds ended by RELEASE or by their SESSION connection closing.",
            s.table.releases,
        );
        m.single(
            "distlockd_expiries_total",
            "counter",
            "Holds ended by their TTL.",
            s.table.expiries,
        );
        m.single(
            "distlockd_wait_timeouts_total",
            "counter",
            "Queued ACQUIREs answered TIMEOUT.",
            s.table.wait_timeouts,
        );
        m.head(
            "distlockd_requests_total",
            "counter",
            "Requests executed, by command.",
        );
        for (name, count) in COMMAND_NAMES.iter().zip(self.commands) {
            m.line(
                "distlockd_requests_total",
                &format!("command=\"{name}\""),
                count,
            );
        }
        self.render_handling(&mut m);
        m.single(
            "distlockd_http_connections",
            "gauge",
            "Open HTTP connections.",
            s.http_connections,
        );
        m.head(
            "distlockd_http_responses_total",
            "counter",
            "HTTP responses, by status code.",
        );
        for (code, count) in HTTP_CODES.iter().zip(self.http) {
            m.line(
                "distlockd_http_responses_total",
                &format!("code=\"{code}\""),
                count,
            );
        }
    }

    fn render_handling(&self, m: &mut Writer<'_>) {
        const NAME: &str = "distlockd_request_handling_seconds";
        m.head(
            NAME,
            "histogram",
            "Server time to decode, execute and encode a request (mean over each read batch).",
        );
        let mut cumulative = 0;
        for (i, count) in self.handling_buckets.iter().enumerate() {
            cumulative += count;
            let le = match HANDLING_BUCKETS_NS.get(i) {
                Some(&ns) => format!("{}", ns as f64 / 1e9),
                None => "+Inf".to_owned(),
            };
            m.line(
                &format!("{NAME}_bucket"),
                &format!("le=\"{le}\""),
                cumulative,
            );
        }
        m.line(
            &format!("{NAME}_sum"),
            "",
            self.handling_sum_ns as f64 / 1e9,
        );
        m.line(&format!("{NAME}_count"), "", self.handling_count);
    }
}

struct Writer<'a> {
    out: &'a mut String,
}

impl Writer<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn line(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.head(name, kind, help);
        self.line(name, "", value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handling_times_land_in_cumulative_buckets() {
        let mut metrics = Metrics::default();
        metrics.observe_handling(300, 1); // 300 ns
        metrics.observe_handling(30_000, 2); // 2 × 15 µs
        metrics.observe_handling(50_000_000, 1); // 50 ms: the +Inf bucket
        let mut out = String::new();
        metrics.render(
            &Snapshot {
                version: "t",
                uptime_ms: 1500,
                connections: 3,
                connections_max: 10,
                http_connections: 1,
                locks_held: 2,
                locks_max: 100,
                waiters: 1,
                table: Stats::default(),
                buffers: [
                    PoolFigures {
                        lent: 1,
                        allocated: 3,
                        buffer_size: 1024,
                    },
                    PoolFigures {
                        lent: 0,
                        allocated: 2,
                        buffer_size: 16384,
                    },
                ],
            },
            &mut out,
        );
        for expected in [
            "distlockd_request_handling_seconds_bucket{le=\"0.0000005\"} 1\n",
            "distlockd_request_handling_seconds_bucket{le=\"0.00002\"} 3\n",
            "distlockd_request_handling_seconds_bucket{le=\"0.01\"} 3\n",
            "distlockd_request_handling_seconds_bucket{le=\"+Inf\"} 4\n",
            "distlockd_request_handling_seconds_count 4\n",
            "distlockd_uptime_seconds 1.5\n",
            "distlockd_locks_held 2\n",
            "distlockd_connection_buffers_lent{side=\"input\"} 1\n",
            "distlockd_connection_buffers_lent{side=\"output\"} 0\n",
            "distlockd_connection_buffer_bytes{side=\"input\"} 3072\n",
            "distlockd_connection_buffer_bytes{side=\"output\"} 32768\n",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in\n{out}");
        }
    }

    #[test]
    fn commands_are_counted_by_first_byte() {
        let mut metrics = Metrics::default();
        for byte in [b'A', b'A', b'R', 0x01, b'?'] {
            metrics.count_command(byte);
        }
        assert_eq!(metrics.commands[2], 2);
        assert_eq!(metrics.commands[3], 1);
        assert_eq!(metrics.commands[7], 1);
        assert_eq!(metrics.commands.iter().sum::<u64>(), 4);
    }
}
