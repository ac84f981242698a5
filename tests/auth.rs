//! Authentication: with a secret, only HELLO and AUTH are answered until a
//! connection authenticates; a wrong secret, any other request first, and
//! the original protocol (unless allowed) get an error and a close.

#![cfg(feature = "server")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use distlockd::auth::Auth;
use distlockd::client::{Client, Error};
use distlockd::limits::Limits;
use distlockd::protocol::blocking::Connection;
use distlockd::protocol::legacy::{self, Command};
use distlockd::protocol::{Acquire, ErrorCode, Reply, Request};
use distlockd::server::{Config, Server, ServerHandle};

const SECRET: &[u8] = b"correct horse battery staple";

fn start(auth: Option<Auth>) -> ServerHandle {
    start_with(auth, Limits::default())
}

fn start_with(auth: Option<Auth>, limits: Limits) -> ServerHandle {
    let mut server = Server::bind(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits,
        ..Config::default()
    })
    .unwrap();
    server.set_auth(auth);
    server.start().unwrap()
}

fn with_secret(allow_legacy: bool) -> ServerHandle {
    start(Some(Auth::new(SECRET.to_vec(), allow_legacy).unwrap()))
}

/// Sends one frame and returns the reply's kind and error code (if any),
/// and whether the server then closed the connection.
struct Wire(Connection);

impl Wire {
    fn connect(server: &ServerHandle) -> Wire {
        let stream = TcpStream::connect(server.local_addr()).unwrap();
        let mut conn = Connection::new(stream);
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Wire(conn)
    }

    fn send(&mut self, request: Request<'_>) -> String {
        match self.0.exchange(&request).expect("a reply") {
            Reply::Error { code, message } => {
                format!("ERROR {} {}", code.name(), String::from_utf8_lossy(message))
            }
            other => format!("{other:?}"),
        }
    }

    /// Whether the server closed the connection, sending nothing more.
    fn closed(&mut self) -> bool {
        self.0.read_to_close().is_ok() && self.0.buffered().is_empty()
    }
}

fn acquire(name: &'static [u8]) -> Request<'static> {
    Request::Acquire(Acquire {
        name,
        owner: b"owner",
        ttl_ms: 0,
        wait_ms: 0,
        flags: 0,
    })
}

#[test]
fn requests_before_auth_are_refused_and_closed() {
    let server = with_secret(false);
    for request in [Request::Ping, acquire(b"job")] {
        let mut wire = Wire::connect(&server);
        let reply = wire.send(request);
        assert!(
            reply.starts_with("ERROR AUTH authentication required"),
            "{reply}"
        );
        assert!(wire.closed(), "left open after {reply}");
    }
}

#[test]
fn hello_then_auth_then_requests() {
    let server = with_secret(false);
    let mut wire = Wire::connect(&server);
    let hello = wire.send(Request::Hello {
        version: 1,
        client_name: b"t",
    });
    assert!(hello.starts_with("Hello("), "{hello}");
    assert_eq!(wire.send(Request::Auth { secret: SECRET }), "Authed");
    assert!(wire.send(acquire(b"job")).starts_with("Granted"));
    assert!(wire.send(Request::Ping).starts_with("Pong"));
}

#[test]
fn a_wrong_secret_is_refused_and_closed() {
    let server = with_secret(false);
    let almost = [&SECRET[..SECRET.len() - 1], b"X"].concat();
    for wrong in [&b"x"[..], &almost, &[SECRET, b"!"].concat()] {
        let mut wire = Wire::connect(&server);
        let reply = wire.send(Request::Auth { secret: wrong });
        assert!(reply.starts_with("ERROR AUTH wrong auth secret"), "{reply}");
        assert!(wire.closed());
    }
    // Authenticated, then a wrong AUTH: refused and closed too.
    let mut wire = Wire::connect(&server);
    assert_eq!(wire.send(Request::Auth { secret: SECRET }), "Authed");
    let reply = wire.send(Request::Auth { secret: b"guess" });
    assert!(reply.starts_with("ERROR AUTH"), "{reply}");
    assert!(wire.closed());
}

#[test]
fn the_original_protocol_is_refused_unless_allowed() {
    let legacy_acquire = |server: &ServerHandle| {
        let mut stream = TcpStream::connect(server.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut frame = Vec::new();
        legacy::encode_request(Command::Acquire, b"job", b"py", &mut frame);
        stream.write_all(&frame).unwrap();
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        let (status, message, _) = legacy::decode_reply(&reply).expect("a reply");
        (status, String::from_utf8_lossy(message).into_owned())
    };
    let strict = with_secret(false);
    let (status, message) = legacy_acquire(&strict);
    assert_eq!(status, legacy::STATUS_ERROR);
    assert!(message.contains("--auth-allow-legacy"), "{message}");

    let lenient = with_secret(true);
    let mut stream = TcpStream::connect(lenient.local_addr()).unwrap();
    let mut frame = Vec::new();
    legacy::encode_request(Command::Acquire, b"job", b"py", &mut frame);
    stream.write_all(&frame).unwrap();
    let mut reply = [0u8; 64];
    let n = stream.read(&mut reply).unwrap();
    assert_eq!(
        legacy::decode_reply(&reply[..n]).map(|r| r.0),
        Some(legacy::STATUS_OK)
    );
}

#[test]
fn auth_on_a_server_without_a_secret_is_accepted() {
    let server = start(None);
    let mut wire = Wire::connect(&server);
    assert_eq!(
        wire.send(Request::Auth {
            secret: b"anything"
        }),
        "Authed"
    );
    assert!(wire.send(acquire(b"job")).starts_with("Granted"));
}

#[test]
fn the_client_authenticates_with_its_secret() {
    let server = with_secret(false);
    let addr = server.local_addr().to_string();
    let client = Client::builder(&addr).auth_secret(SECRET).build().unwrap();
    let lease = client.try_acquire("job").unwrap().expect("free");
    client.release_lease(&lease).unwrap();

    let anonymous = Client::builder(&addr).retries(0).build().unwrap();
    match anonymous.try_acquire("job") {
        Err(Error::Server {
            code: ErrorCode::Auth,
            message,
        }) => assert!(message.contains("authentication required"), "{message}"),
        other => panic!("expected an AUTH error, got {other:?}"),
    }
    let wrong = Client::builder(&addr)
        .auth_secret(&b"not the secret at all"[..])
        .build()
        .unwrap();
    assert!(matches!(
        wrong.try_acquire("job"),
        Err(Error::Server {
            code: ErrorCode::Auth,
            ..
        })
    ));
}

#[test]
fn ping_tells_a_client_without_the_secret_that_it_is_not_served() {
    let server = with_secret(false);
    let addr = server.local_addr().to_string();
    let anonymous = Client::builder(&addr).retries(0).build().unwrap();
    // HELLO is answered before AUTH, so server_info alone cannot tell.
    assert!(anonymous.server_info().is_ok());
    match anonymous.ping() {
        Err(Error::Server {
            code: ErrorCode::Auth,
            message,
        }) => assert!(message.contains("authentication required"), "{message}"),
        other => panic!("expected an AUTH error, got {other:?}"),
    }
    let client = Client::builder(&addr).auth_secret(SECRET).build().unwrap();
    client.ping().unwrap();
}

/// A connection that does not authenticate in time is closed, so peers
/// without the secret cannot sit on connection slots; one that did stays.
#[test]
fn connections_that_never_authenticate_are_closed() {
    let server = start_with(
        Some(Auth::new(SECRET.to_vec(), false).unwrap()),
        Limits {
            auth_timeout_ms: 300,
            ..Limits::default()
        },
    );
    let mut silent = Wire::connect(&server);
    let mut hello_only = Wire::connect(&server);
    let mut authed = Wire::connect(&server);
    assert!(
        hello_only
            .send(Request::Hello {
                version: 1,
                client_name: b"t",
            })
            .starts_with("Hello(")
    );
    assert_eq!(authed.send(Request::Auth { secret: SECRET }), "Authed");
    match silent.0.read_reply().unwrap() {
        Reply::Error { code, message } => {
            assert_eq!(code, ErrorCode::Auth);
            let message = String::from_utf8_lossy(message);
            assert!(message.contains("auth_timeout_ms 300"), "{message}");
        }
        other => panic!("expected ERROR AUTH, got {other:?}"),
    }
    assert!(silent.closed());
    assert!(matches!(
        hello_only.0.read_reply(),
        Ok(Reply::Error {
            code: ErrorCode::Auth,
            ..
        })
    ));
    assert!(authed.send(Request::Ping).starts_with("Pong"));
}
