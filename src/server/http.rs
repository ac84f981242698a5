//! HTTP connections: `GET /health` and `GET /metrics` (parsed by
//! [`crate::http`]), one request per connection.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use log::debug;
use mio::Interest;
use mio::net::TcpStream;

use super::accept::ACCEPTS_PER_TURN_MAX;
use super::connection::close_gently;
use super::timeouts::Deadline;
use super::{SERVER_VERSION, Server, Source};
use crate::buffer::ConnBuffer;
use crate::http::{self, HTTP_CONNECTIONS_MAX, HTTP_REQUEST_SIZE_MAX, Parsed, Route};
use crate::metrics::Snapshot;
use crate::wheel::TimerHandle;

/// An HTTP connection: one request, one response, then closed.
pub(super) struct HttpConn {
    stream: TcpStream,
    input: ConnBuffer,
    /// The whole response, once the request is parsed.
    output: Vec<u8>,
    written: usize,
    answered: bool,
    deadline: Option<TimerHandle>,
    /// Accept order: the lowest is the oldest.
    seq: u64,
}

impl Server {
    /// The address `GET /health` and `GET /metrics` are served on, if any.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub(super) fn accept_http(&mut self, now: u64) {
        for _ in 0..ACCEPTS_PER_TURN_MAX {
            let Some(listener) = self.http_listener.as_ref() else {
                return;
            };
            let mut stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // As for the lock port: retry every ACCEPT_RETRY_MS.
                    debug!("HTTP accept failed: {e}");
                    self.accept_retry = true;
                    return;
                }
            };
            self.make_http_room(now);
            let entry = self.http_conns.vacant_entry();
            let key = entry.key();
            if self
                .poll
                .registry()
                .register(&mut stream, Source::Http(key).token(), Interest::READABLE)
                .is_err()
            {
                continue;
            }
            let deadline = now + self.table.limits().frame_timeout_ms as u64;
            entry.insert(HttpConn {
                stream,
                input: ConnBuffer::with_capacity(HTTP_REQUEST_SIZE_MAX),
                output: Vec::new(),
                written: 0,
                answered: false,
                deadline: Some(self.deadlines.insert(deadline, Deadline::Http(key))),
                seq: self.http_accepted,
            });
            self.http_accepted += 1;
            // Its request is often here already (always, once accepts lag
            // behind a flood): answered now, it never waits for a slot.
            self.service_http(key, now);
        }
        // More may be waiting; the listener is edge-triggered, so come back.
        self.accept_more = true;
    }

    /// Makes room for one more HTTP connection when HTTP_CONNECTIONS_MAX
    /// are open: closes the oldest that has not sent a whole request (408),
    /// or if every one has, the oldest whose response is not taken yet.
    /// Before closing one, it reads its socket: a request that has arrived
    /// is answered instead. So idle peers cannot keep a probe out: a probe
    /// is lost only if enough newer connections (HTTP_CONNECTIONS_MAX when
    /// all wait for a request) arrive between its connect and its request.
    fn make_http_room(&mut self, now: u64) {
        while self.http_conns.len() >= HTTP_CONNECTIONS_MAX {
            let oldest = |answered: bool| {
                self.http_conns
                    .iter()
                    .filter(|(_, c)| c.answered == answered)
                    .min_by_key(|(_, c)| c.seq)
                    .map(|(key, _)| key)
            };
            let Some(key) = oldest(false).or_else(|| oldest(true)) else {
                return;
            };
            if !self.http_conns[key].answered {
                self.service_http(key, now);
                match self.http_conns.get(key) {
                    // Answered: closed if the response went out, else it is
                    // an answered one now, and the next candidate is looked at.
                    None => continue,
                    Some(conn) if conn.answered => continue,
                    Some(conn) => {
                        let mut out = Vec::new();
                        let message = format!(
                            "no whole request while all {HTTP_CONNECTIONS_MAX} HTTP connections were taken; send the request as soon as you connect"
                        );
                        http::write_error(&mut out, 408, &message);
                        let _ = (&conn.stream).write(&out);
                        self.metrics.count_http(408);
                    }
                }
            }
            debug!("HTTP connection {key}: closed to make room for a new one");
            self.close_http(key);
        }
    }

    /// Reads the request, answers it, writes the answer, closes.
    pub(super) fn service_http(&mut self, key: usize, now: u64) {
        let Some(conn) = self.http_conns.get_mut(key) else {
            return;
        };
        if !conn.answered {
            let eof = match read_http(conn) {
                Ok(eof) => eof,
                Err(()) => return self.close_http(key),
            };
            let parsed = http::parse(conn.input.unread(), conn.input.is_full());
            let (code, body, content_type, head_only) = match parsed {
                Parsed::NeedMore if eof => return self.close_http(key),
                Parsed::NeedMore => return,
                Parsed::Error { code, message } => (
                    code,
                    format!("{{\"error\":\"{message}\"}}\n"),
                    "application/json",
                    false,
                ),
                Parsed::Request { route, head_only } => {
                    let (code, body, content_type) = self.http_body(route);
                    (code, body, content_type, head_only)
                }
            };
            self.metrics.count_http(code);
            let conn = &mut self.http_conns[key];
            http::write_response(
                &mut conn.output,
                code,
                content_type,
                body.as_bytes(),
                head_only,
            );
            conn.answered = true;
            if let Some(handle) = conn.deadline.take() {
                self.deadlines.cancel(handle);
            }
            let deadline = now + self.table.limits().write_timeout_ms as u64;
            conn.deadline = Some(self.deadlines.insert(deadline, Deadline::Http(key)));
        }
        let conn = &mut self.http_conns[key];
        loop {
            match conn.stream.write(&conn.output[conn.written..]) {
                Ok(0) => return self.close_http(key),
                Ok(n) => {
                    conn.written += n;
                    if conn.written == conn.output.len() {
                        return self.close_http(key);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close_http(key),
            }
        }
        let token = Source::Http(key).token();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self
            .poll
            .registry()
            .reregister(&mut conn.stream, token, interest)
            .is_err()
        {
            self.close_http(key);
        }
    }

    /// The response to a parsed request: status, body, content type.
    fn http_body(&self, route: Route) -> (u16, String, &'static str) {
        let uptime_ms = self.started.elapsed().as_millis() as u64;
        match route {
            Route::Health => {
                let limits = self.table.limits();
                let (code, status) = if self.shutting_down {
                    (503, "shutting_down")
                } else {
                    (200, "ok")
                };
                let body = format!(
                    "{{\"status\":\"{status}\",\"version\":\"{SERVER_VERSION}\",\"uptime_ms\":{uptime_ms},\"connections\":{},\"connections_full\":{},\"locks_held\":{},\"waiters\":{}}}\n",
                    self.conns.len(),
                    self.conns.len() >= limits.connections_max,
                    self.table.len(),
                    self.table.waiter_count()
                );
                (code, body, "application/json")
            }
            Route::Metrics => {
                let mut body = String::with_capacity(8 * 1024);
                self.metrics.render(
                    &Snapshot {
                        version: SERVER_VERSION,
                        uptime_ms,
                        connections: self.conns.len(),
                        connections_max: self.table.limits().connections_max,
                        http_connections: self.http_conns.len(),
                        locks_held: self.table.len(),
                        locks_max: self.table.limits().locks_max,
                        waiters: self.table.waiter_count(),
                        table: self.table.stats(),
                        buffers: [self.input_pool.figures(), self.output_pool.figures()],
                    },
                    &mut body,
                );
                (200, body, "text/plain; version=0.0.4; charset=utf-8")
            }
        }
    }

    /// The request did not arrive in time (408), or the response was not
    /// taken in time. Judged, as for the lock protocol, after a last look
    /// at the socket: a request that arrived is answered, and a response
    /// that moved restarts the write deadline.
    pub(super) fn expire_http(&mut self, key: usize) {
        let Some(conn) = self.http_conns.get_mut(key) else {
            return;
        };
        conn.deadline = None;
        let before = (conn.answered, conn.written);
        let now = self.tick();
        self.service_http(key, now);
        let Some(conn) = self.http_conns.get_mut(key) else {
            return; // answered and written
        };
        if (conn.answered, conn.written) != before {
            if conn.deadline.is_none() {
                let deadline = now + self.table.limits().write_timeout_ms as u64;
                conn.deadline = Some(self.deadlines.insert(deadline, Deadline::Http(key)));
            }
            return;
        }
        if !conn.answered {
            let mut out = Vec::new();
            let message = format!(
                "request incomplete after {} ms (frame_timeout_ms); send the whole request as soon as you connect",
                self.table.limits().frame_timeout_ms
            );
            http::write_error(&mut out, 408, &message);
            let _ = conn.stream.write(&out);
            self.metrics.count_http(408);
        }
        debug!("HTTP connection {key}: timed out at {now} ms");
        self.close_http(key);
    }

    fn close_http(&mut self, key: usize) {
        let Some(mut conn) = self.http_conns.try_remove(key) else {
            return;
        };
        if let Some(handle) = conn.deadline {
            self.deadlines.cancel(handle);
        }
        let _ = self.poll.registry().deregister(&mut conn.stream);
        close_gently(&mut conn.stream);
    }
}

/// Reads an HTTP request until WouldBlock or a full buffer. Ok(true): the
/// peer closed its side. Err: the socket failed.
fn read_http(conn: &mut HttpConn) -> Result<bool, ()> {
    loop {
        let spare = conn.input.spare_mut();
        if spare.is_empty() {
            return Ok(false);
        }
        match conn.stream.read(spare) {
            Ok(0) => return Ok(true),
            Ok(n) => conn.input.commit(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
}
