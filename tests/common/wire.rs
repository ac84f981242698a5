//! A raw lock-protocol connection for wire-level tests: frames out, replies
//! in, nothing of the client's retries or pooling in between. Each test
//! file adds the reply type and helpers it needs in its own `impl Wire`.

#![allow(dead_code)]

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use distlockd::protocol::blocking::Connection;
use distlockd::protocol::{Reply, Request};

/// How long a read waits for the server before the test fails.
pub const REPLY_WAIT: Duration = Duration::from_secs(10);

pub struct Wire {
    pub conn: Connection,
}

impl Wire {
    pub fn connect(addr: SocketAddr) -> Wire {
        Wire::from_stream(TcpStream::connect(addr).expect("connect to the server"))
    }

    /// A connected socket as a `Wire`, reads waiting up to [`REPLY_WAIT`].
    pub fn from_stream(stream: TcpStream) -> Wire {
        stream.set_nodelay(true).unwrap();
        let mut conn = Connection::new(stream);
        conn.set_read_timeout(Some(REPLY_WAIT)).unwrap();
        Wire { conn }
    }

    /// The socket, for what the protocol does not do (shutdown, a writer
    /// thread on a clone, non-blocking writes).
    pub fn stream(&self) -> &TcpStream {
        self.conn.get_ref()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.conn.send_raw(bytes).expect("send to the server");
    }

    pub fn send(&mut self, request: Request<'_>) {
        self.conn.send(&request).expect("send to the server");
    }

    /// The next reply, as the test's type `T`; `None` if the server closed
    /// the connection first (end-of-file or reset). Panics if neither comes
    /// within [`REPLY_WAIT`].
    pub fn next_reply<T: for<'r> From<Reply<'r>>>(&mut self) -> Option<T> {
        match self.conn.read_reply() {
            Ok(reply) => Some(T::from(reply)),
            Err(e) if closed(&e) => None,
            Err(e) => panic!("no reply and no close within {REPLY_WAIT:?}: {e}"),
        }
    }

    /// A reply already read, if one is whole, as the test's type `T`.
    pub fn decoded<T: for<'r> From<Reply<'r>>>(&mut self) -> Option<T> {
        let reply = self.conn.buffered_reply().expect("a valid reply")?;
        Some(T::from(reply))
    }
}

/// Whether `e` means the server closed the connection.
fn closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
    )
}
