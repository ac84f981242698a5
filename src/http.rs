//! The HTTP side (`--http-port`): `GET /health` and `GET /metrics`, served
//! by the same event loop as the lock protocol.
//!
//! One request per connection: the server parses the request head with
//! `httparse` from a fixed buffer, answers, and closes (`Connection: close`).
//! Health checkers and Prometheus scrapers open a connection per request
//! anyway, and it keeps the state per connection to one buffer and one
//! response. Bounds: [`HTTP_REQUEST_SIZE_MAX`] for the request head (431
//! past it), [`HTTP_CONNECTIONS_MAX`] connections (past it the oldest
//! without a whole request makes room, answered 408), and the lock
//! protocol's `frame_timeout_ms` for the request to arrive (408 then).

/// Longest request head accepted; a longer one is answered 431.
pub const HTTP_REQUEST_SIZE_MAX: usize = 4096;

/// HTTP connections open at once; one more closes the oldest that has not
/// sent a whole request, so that idle peers cannot keep out a liveness
/// probe. Monitoring needs a handful; the bound keeps a flood of them cheap.
pub const HTTP_CONNECTIONS_MAX: usize = 64;

/// Headers parsed per request; more is a 431.
const HTTP_HEADERS_MAX: usize = 32;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
}

/// The outcome of parsing the bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The request head is not complete yet.
    NeedMore,
    /// A request for `route`; `head_only` for HEAD.
    Request { route: Route, head_only: bool },
    /// Answer with this status and message, then close.
    Error { code: u16, message: &'static str },
}

/// Parses the request head at the front of `input`. `full`: the buffer can
/// take no more bytes, so an incomplete head will never complete.
pub fn parse(input: &[u8], full: bool) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; HTTP_HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(input) {
        Ok(httparse::Status::Partial) if full => Parsed::Error {
            code: 431,
            message: "request head over 4096 bytes",
        },
        Ok(httparse::Status::Partial) => Parsed::NeedMore,
        Ok(httparse::Status::Complete(_)) => route(&request),
        Err(httparse::Error::TooManyHeaders) => Parsed::Error {
            code: 431,
            message: "more than 32 headers",
        },
        Err(_) => Parsed::Error {
            code: 400,
            message: "malformed HTTP request",
        },
    }
}

fn route(request: &httparse::Request<'_, '_>) -> Parsed {
    let path = request.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let route = match path {
        "/health" => Route::Health,
        "/metrics" => Route::Metrics,
        _ => {
            return Parsed::Error {
                code: 404,
                message: "not found; try /health or /metrics",
            };
        }
    };
    match request.method {
        Some("GET") => Parsed::Request {
            route,
            head_only: false,
        },
        Some("HEAD") => Parsed::Request {
            route,
            head_only: true,
        },
        _ => Parsed::Error {
            code: 405,
            message: "method not allowed; use GET or HEAD",
        },
    }
}

pub fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Appends a whole response that closes the connection.
pub fn write_response(
    out: &mut Vec<u8>,
    code: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(code),
        body.len()
    );
    if code == 405 {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
}

/// An error response with a one-line JSON body naming the problem.
pub fn write_error(out: &mut Vec<u8>, code: u16, message: &str) {
    let body = format!("{{\"error\":\"{message}\"}}\n");
    write_response(out, code, "application/json", body.as_bytes(), false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_errors() {
        let get = |path: &str| {
            parse(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                false,
            )
        };
        assert_eq!(
            get("/health"),
            Parsed::Request {
                route: Route::Health,
                head_only: false
            }
        );
        assert_eq!(
            get("/metrics?x=1"),
            Parsed::Request {
                route: Route::Metrics,
                head_only: false
            }
        );
        assert!(matches!(get("/nope"), Parsed::Error { code: 404, .. }));
        assert!(matches!(
            parse(b"POST /health HTTP/1.1\r\n\r\n", false),
            Parsed::Error { code: 405, .. }
        ));
        assert_eq!(
            parse(b"HEAD /health HTTP/1.1\r\n\r\n", false),
            Parsed::Request {
                route: Route::Health,
                head_only: true
            }
        );
        assert_eq!(
            parse(b"GET /health HTTP/1.1\r\nHo", false),
            Parsed::NeedMore
        );
        assert!(matches!(
            parse(b"GET /health HTTP/1.1\r\nHo", true),
            Parsed::Error { code: 431, .. }
        ));
        assert!(matches!(
            parse(b"\x00\x01garbage\r\n\r\n", false),
            Parsed::Error { code: 400, .. }
        ));
        let many = format!("GET /health HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(40));
        assert!(matches!(
            parse(many.as_bytes(), false),
            Parsed::Error { code: 431, .. }
        ));
    }

    #[test]
    fn responses_carry_length_and_close() {
        let mut out = Vec::new();
        write_response(&mut out, 200, "text/plain", b"hello", false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 5\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");
        let mut out = Vec::new();
        write_response(&mut out, 405, "text/plain", b"no", true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Allow: GET, HEAD\r\n") && text.ends_with("\r\n\r\n"));
    }
}
