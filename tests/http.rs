//! The HTTP endpoint: /health, /metrics in the Prometheus text format, and
//! the error answers, over real sockets.

#![cfg(feature = "server")]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use distlockd::client::Client;
use distlockd::limits::Limits;
use distlockd::server::{Config, Server, ServerHandle};

fn start(limits: Limits) -> (ServerHandle, SocketAddr) {
    let server = Server::bind(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits,
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    })
    .unwrap();
    let http = server.http_addr().expect("HTTP listener");
    (server.start().unwrap(), http)
}

/// Sends raw bytes, returns (status code, headers+body text) once the
/// server closes.
fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8(response).unwrap();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (code, text)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Parses the Prometheus text format strictly enough to catch mistakes:
/// every sample's metric family has HELP and TYPE lines before it, and
/// every value is a number.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut typed = HashMap::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(typed.contains_key(family), "no TYPE before {line}");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {line}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate {series}"
        );
    }
    samples
}

#[test]
fn health_answers_json_while_serving() {
    let (_server, http) = start(Limits::default());
    let (code, response) = get(http, "/health");
    assert_eq!(code, 200, "{response}");
    assert!(
        response.contains("Content-Type: application/json"),
        "{response}"
    );
    let json = body(&response);
    assert!(json.starts_with("{\"status\":\"ok\""), "{json}");
    assert!(json.contains("\"locks_held\":0"), "{json}");
    let (code, response) = exchange(http, b"HEAD /health HTTP/1.1\r\n\r\n");
    assert_eq!(code, 200);
    assert!(body(&response).is_empty(), "HEAD has no body: {response}");
}

#[test]
fn metrics_count_what_happened() {
    let (server, http) = start(Limits::default());
    let client = Client::new(server.local_addr()).unwrap();
    let leases: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| client.try_acquire(name).unwrap().expect("free"))
        .collect();
    let other = Client::new(server.local_addr()).unwrap();
    assert!(other.try_acquire("a").unwrap().is_none(), "busy");
    client.release_lease(&leases[0]).unwrap();
    client.release_lease(&leases[1]).unwrap();
    // A protocol error on another connection.
    let mut bad = TcpStream::connect(server.local_addr()).unwrap();
    bad.write_all(b"Z\x00\x00").unwrap();
    let _ = bad.read(&mut [0u8; 256]);

    let (code, response) = get(http, "/metrics");
    assert_eq!(code, 200, "{response}");
    assert!(response.contains("text/plain; version=0.0.4"), "{response}");
    let m = parse_metrics(body(&response));
    let value = |series: &str| *m.get(series).unwrap_or_else(|| panic!("no {series}"));
    assert_eq!(value("distlockd_grants_total"), 3.0);
    assert_eq!(value("distlockd_releases_total"), 2.0);
    assert_eq!(value("distlockd_locks_held"), 1.0);
    assert_eq!(value("distlockd_waiters"), 0.0);
    assert_eq!(value("distlockd_requests_total{command=\"acquire\"}"), 4.0);
    assert_eq!(value("distlockd_requests_total{command=\"release\"}"), 2.0);
    assert_eq!(value("distlockd_requests_total{command=\"hello\"}"), 2.0);
    assert_eq!(value("distlockd_protocol_errors_total"), 1.0);
    assert!(value("distlockd_connections_accepted_total") >= 3.0);
    assert!(value("distlockd_connections") >= 2.0);
    // The histogram: cumulative buckets ending in +Inf = count = requests.
    let count = value("distlockd_request_handling_seconds_count");
    assert_eq!(
        value("distlockd_request_handling_seconds_bucket{le=\"+Inf\"}"),
        count
    );
    let requests: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("distlockd_requests_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(count, requests);
    let mut buckets: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix("distlockd_request_handling_seconds_bucket{le=\"")?;
            let le = le.trim_end_matches("\"}");
            Some((
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                },
                *v,
            ))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert!(value("distlockd_request_handling_seconds_sum") > 0.0);
}

#[test]
fn bad_http_requests_get_their_status_and_the_lock_side_is_unharmed() {
    let (server, http) = start(Limits {
        frame_timeout_ms: 300,
        ..Limits::default()
    });
    let client = Client::new(server.local_addr()).unwrap();
    let lease = client.try_acquire("held").unwrap().expect("free");
    assert_eq!(exchange(http, b"\x00\x01\x02garbage\r\n\r\n").0, 400);
    assert_eq!(get(http, "/nope").0, 404);
    let (code, response) = exchange(http, b"POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(code, 405);
    assert!(response.contains("Allow: GET, HEAD"), "{response}");
    let huge = format!("GET /health HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(5000));
    assert_eq!(exchange(http, huge.as_bytes()).0, 431);
    // A request that never completes: 408 after frame_timeout_ms, closed.
    assert_eq!(exchange(http, b"GET /health HT").0, 408);
    client.extend(&lease, Duration::from_secs(5)).unwrap();
    client.release_lease(&lease).unwrap();
    let m = parse_metrics(body(&get(http, "/metrics").1));
    assert_eq!(m["distlockd_http_responses_total{code=\"404\"}"], 1.0);
    assert_eq!(m["distlockd_http_responses_total{code=\"408\"}"], 1.0);
}

/// With HTTP_CONNECTIONS_MAX idle connections open, /health still answers
/// 200: the new connection closes the oldest one that sent no whole
/// request, which gets 408. A burst of idle connections four times the
/// limit keeps no probe out either.
#[test]
fn health_answers_while_idle_connections_fill_the_http_side() {
    use distlockd::http::HTTP_CONNECTIONS_MAX;
    let (_server, http) = start(Limits {
        frame_timeout_ms: 60_000,
        ..Limits::default()
    });
    let mut idle: Vec<TcpStream> = (0..HTTP_CONNECTIONS_MAX)
        .map(|_| TcpStream::connect(http).unwrap())
        .collect();
    // Connections are accepted in the order they came: the probe's last.
    assert_eq!(get(http, "/health").0, 200);
    let mut oldest = String::new();
    idle[0]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    idle[0].read_to_string(&mut oldest).unwrap();
    assert!(oldest.starts_with("HTTP/1.1 408"), "{oldest}");
    let flood: Vec<TcpStream> = (0..4 * HTTP_CONNECTIONS_MAX)
        .map(|_| TcpStream::connect(http).unwrap())
        .collect();
    assert_eq!(get(http, "/health").0, 200);
    let m = parse_metrics(body(&get(http, "/metrics").1));
    let evicted = m["distlockd_http_responses_total{code=\"408\"}"];
    assert!(evicted >= flood.len() as f64, "{evicted} answered 408");
    drop((idle, flood));
}
