//! The daemon as a process, under operating-system limits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{start_server, start_server_cmd};

fn pong(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut reply = [0u8; 64];
    stream.write_all(b"P\x00\x00").is_ok()
        && matches!(stream.read(&mut reply), Ok(n) if n > 0 && reply[0] == b'p')
}

/// Out of file descriptors, connections wait in the kernel's queue; once
/// descriptors free up they are all served, without a new arrival to wake
/// the listener.
#[test]
fn queued_connections_are_served_after_running_out_of_file_descriptors() {
    let script = format!(
        "ulimit -n 40 && exec '{}' server --port 0",
        env!("CARGO_BIN_EXE_distlockd")
    );
    let (_server, addr) = start_server_cmd(Command::new("sh").args(["-c", &script]));
    let mut clients: Vec<TcpStream> = (0..60).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let served_first = clients.iter_mut().map(pong).filter(|&ok| ok).count();
    assert!(
        served_first < 60,
        "the descriptor limit did not bite ({served_first} served)"
    );
    clients.drain(..30);
    std::thread::sleep(Duration::from_millis(200));
    let served_after = clients.iter_mut().map(pong).filter(|&ok| ok).count();
    assert_eq!(
        served_after, 30,
        "queued connections left unserved after descriptors freed"
    );
}

/// SIGTERM: the queued ACQUIRE is answered SHUTTING_DOWN, the port closes,
/// and the process exits 0.
#[test]
fn sigterm_answers_waiters_and_exits_cleanly() {
    use distlockd::protocol::{Acquire, ErrorCode, Reply, Request, decode_reply};
    let (mut server, addr) = start_server();
    let frame = |owner: &'static [u8], wait_ms: u32| {
        let mut out = Vec::new();
        Request::Acquire(Acquire {
            name: b"job",
            owner,
            ttl_ms: 60_000,
            wait_ms,
            flags: 0,
        })
        .encode_to_vec(&mut out);
        out
    };
    let mut holder = TcpStream::connect(addr).unwrap();
    holder.write_all(&frame(b"holder", 0)).unwrap();
    let mut reply = [0u8; 512];
    let n = holder.read(&mut reply).unwrap();
    assert!(matches!(
        decode_reply(&reply[..n]),
        Ok(Some((Reply::Granted { .. }, _)))
    ));
    let mut waiter = TcpStream::connect(addr).unwrap();
    waiter.write_all(&frame(b"waiter", 30_000)).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    waiter
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = waiter.read(&mut reply).unwrap();
    let Ok(Some((Reply::Error { code, message }, _))) = decode_reply(&reply[..n]) else {
        panic!("no error frame for the waiter: {:?}", &reply[..n]);
    };
    assert_eq!(
        code,
        ErrorCode::ShuttingDown,
        "{}",
        String::from_utf8_lossy(message)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "server still running 5 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
}
