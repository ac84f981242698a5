//! The daemon as a process, under operating-system limits.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
    let port = free_port();
    let script = format!(
        "ulimit -n 40 && exec '{}' server --port {port}",
        env!("CARGO_BIN_EXE_distlockd")
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = ServerProcess(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut clients: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
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
