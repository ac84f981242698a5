//! A raw lock-protocol connection for wire-level tests: frames out, replies
//! in, nothing of the client's retries or pooling in between. Each test
//! file adds the reply type and helpers it needs in its own `impl Wire`.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use distlockd::protocol::{Reply, Request, decode_reply};

/// How long a read waits for the server before the test fails.
pub const REPLY_WAIT: Duration = Duration::from_secs(10);

pub struct Wire {
    pub stream: TcpStream,
    /// Bytes read but not yet decoded.
    pub pending: Vec<u8>,
}

impl Wire {
    pub fn connect(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect(addr).expect("connect to the server");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(REPLY_WAIT)).unwrap();
        Wire {
            stream,
            pending: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to the server");
    }

    pub fn send(&mut self, request: Request<'_>) {
        let mut frame = Vec::new();
        request.encode_to_vec(&mut frame);
        self.send_raw(&frame);
    }

    /// The next reply, as the test's type `T`; `None` if the server closed
    /// the connection first (end-of-file or reset). Panics if neither comes
    /// within [`REPLY_WAIT`].
    pub fn next_reply<T: for<'r> From<Reply<'r>>>(&mut self) -> Option<T> {
        loop {
            if let Some(got) = self.decoded() {
                return Some(got);
            }
            let mut buf = [0u8; 64 * 1024];
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("no reply and no close within {REPLY_WAIT:?}: {e}"),
            }
        }
    }

    /// A reply already read, if one is whole, as the test's type `T`.
    pub fn decoded<T: for<'r> From<Reply<'r>>>(&mut self) -> Option<T> {
        let (reply, used) = decode_reply(&self.pending).expect("a valid reply")?;
        let got = T::from(reply);
        self.pending.drain(..used);
        Some(got)
    }
}
