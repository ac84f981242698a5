//! Shared by the tests that run the daemon as a separate process.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The daemon process, killed when the test ends, whatever happens.
pub struct ServerProcess(pub Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `distlockd server --port PORT` and waits until it listens.
pub fn start_server(port: u16) -> ServerProcess {
    let child = Command::new(env!("CARGO_BIN_EXE_distlockd"))
        .args(["server", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start distlockd server");
    let server = ServerProcess(child);
    wait_until_listening(port);
    server
}

/// Waits up to 10 s for something to accept connections on the port.
pub fn wait_until_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "server did not listen on {port} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
