//! A loopback TCP proxy that tests can cut or stall, to break a client's
//! connections to an in-process server without stopping the server.

#![allow(dead_code)] // each test crate uses a part of it

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    /// Bytes read are dropped instead of forwarded, both ways.
    stalled: AtomicBool,
    closing: AtomicBool,
    /// Both ends of every proxied connection, for `cut`.
    streams: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            stalled: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = thread::spawn(move || accept_loop(listener, accepting));
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection made so far, both ways, as a crash or a
    /// network failure would; later connections are forwarded as before.
    pub fn cut(&self) {
        let streams = std::mem::take(&mut *self.shared.streams.lock().unwrap());
        for stream in streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// From now on nothing gets through, in either direction, on old or new
    /// connections, but no connection is closed: requests go unanswered.
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the acceptor
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.cut();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(shared.upstream) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        {
            let mut streams = shared.streams.lock().unwrap();
            streams.push(client.try_clone().unwrap());
            streams.push(server.try_clone().unwrap());
        }
        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let (up, down) = (Arc::clone(&shared), Arc::clone(&shared));
        thread::spawn(move || pump(client, server, up));
        thread::spawn(move || pump(s2, c2, down));
    }
}

/// Copies `from` to `to` until either closes; each thread ends with its
/// connection, which `cut` or the peer closes.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if shared.stalled.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
