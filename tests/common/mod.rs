//! Shared by the tests that run the daemon as a separate process.

pub mod wire;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

/// The daemon process, killed when the test ends, whatever happens.
pub struct ServerProcess(pub Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `distlockd server --port 0` (the kernel picks a free port, so
/// parallel tests never race for one) and returns it with its address.
#[allow(dead_code)]
pub fn start_server() -> (ServerProcess, SocketAddr) {
    start_server_cmd(Command::new(env!("CARGO_BIN_EXE_distlockd")).args(["server", "--port", "0"]))
}

/// Starts a command that runs the daemon, reads its start-up log line from
/// standard error for the address it bound, and keeps draining standard
/// error so the daemon never blocks on a full pipe.
pub fn start_server_cmd(cmd: &mut Command) -> (ServerProcess, SocketAddr) {
    let (server, addr, _) = spawn_server(cmd);
    (server, addr)
}

/// Starts `distlockd server --port 0 --http-port 0` with `extra` flags and
/// returns it with its lock-protocol and HTTP addresses.
#[allow(dead_code)]
pub fn start_server_with_http(extra: &[&str]) -> (ServerProcess, SocketAddr, SocketAddr) {
    let (server, addr, http) = spawn_server(
        Command::new(env!("CARGO_BIN_EXE_distlockd"))
            .args(["server", "--port", "0", "--http-port", "0"])
            .args(extra),
    );
    let http = http.expect("the daemon logged no HTTP address before `listening on`");
    (server, addr, http)
}

/// Spawns the daemon, waits for its listener, and returns it with its
/// lock-protocol address and its HTTP address, if it logged one.
fn spawn_server(cmd: &mut Command) -> (ServerProcess, SocketAddr, Option<SocketAddr>) {
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start distlockd server");
    let stderr = child.stderr.take().expect("piped stderr");
    let server = ServerProcess(child);
    let (addr, http) = read_listen_addresses(stderr);
    wait_until_listening(addr.port());
    (server, addr, http)
}

/// The lock-protocol address from the start-up log's `listening on` line,
/// and the HTTP address logged before it, if any.
fn read_listen_addresses(stderr: ChildStderr) -> (SocketAddr, Option<SocketAddr>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr);
        let mut line = String::new();
        let mut sent = false;
        let mut http = None;
        while lines.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(rest) = line.split(" metrics on http://").nth(1) {
                http = rest.split('/').next().map(str::to_owned);
            }
            if !sent && let Some(rest) = line.split(" listening on ").nth(1) {
                let addr = rest.split(';').next().unwrap_or("").trim().to_owned();
                sent = tx.send((addr, http.take())).is_ok();
            }
            line.clear();
        }
    });
    let (addr, http) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the daemon logged no `listening on` line within 10 s (did it fail to bind?)");
    let parse = |addr: &str| -> SocketAddr {
        addr.parse()
            .unwrap_or_else(|e| panic!("bad address {addr:?} in the start-up log: {e}"))
    };
    (parse(&addr), http.as_deref().map(parse))
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

/// Sends `signal` (a name such as `STOP`, `CONT` or `KILL`) to a process
/// with kill(1), as an operator would.
#[allow(dead_code)]
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// Starts `distlockd server --port PORT` with `extra` flags: a restart on the
/// port an earlier server bound (its listener sets SO_REUSEADDR, so sockets
/// the killed server left in TIME_WAIT do not block the bind).
#[allow(dead_code)]
pub fn start_server_on(port: u16, extra: &[&str]) -> (ServerProcess, SocketAddr) {
    start_server_cmd(
        Command::new(env!("CARGO_BIN_EXE_distlockd"))
            .args(["server", "--port", &port.to_string()])
            .args(extra),
    )
}

/// Starts `distlockd server --port 0` with `extra` flags.
#[allow(dead_code)]
pub fn start_server_with(extra: &[&str]) -> (ServerProcess, SocketAddr) {
    start_server_on(0, extra)
}
