//! Leader election: run this in several terminals; one leads, the others
//! wait in line and take over when it resigns, dies or loses its lease.
//!
//! ```text
//! cargo run --example leader_election -- --addr 127.0.0.1:9999 --lead-for 30
//! ```
//!
//! The leader leads until Ctrl-C, `--lead-for` seconds, or the loss of its
//! lease, then resigns. Everything it does as leader carries its term's
//! token, so that whatever it writes to can refuse an older term.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use distlockd::client::{Client, Election, Error, Leadership, Lost};

const ELECTION: &str = "leader";
/// How often a waiting candidate or a leader looks at the stop flag.
const TICK: Duration = Duration::from_millis(500);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let (addr, lead_for) = args()?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let client = Client::builder(&addr).ttl(Duration::from_secs(5)).build()?;
    let election = Election::new(&client, ELECTION)?;
    if let Some(term) = election.leader()? {
        println!(
            "term {} leads; {} candidate(s) wait",
            term.token, term.waiters
        );
    }
    let Some(leadership) = campaign(&election, &stop)? else {
        return Ok(());
    };
    println!("leading, term {}", leadership.token());
    match lead(&leadership, lead_for, &stop, |token| {
        println!("leader work, term {token}")
    }) {
        Ending::Lost(lost) => {
            eprintln!("lost leadership: {lost}");
            std::process::exit(1);
        }
        Ending::Stopped | Ending::TimeUp => {
            leadership.resign()?;
            println!("resigned");
        }
    }
    Ok(())
}

/// Campaigns until elected (`Some`) or `stop` is set (`None`).
pub fn campaign(election: &Election, stop: &AtomicBool) -> Result<Option<Leadership>, Error> {
    while !stop.load(Ordering::Relaxed) {
        match election.campaign(TICK) {
            Ok(leadership) => return Ok(Some(leadership)),
            Err(Error::AcquireTimeout { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[derive(Debug)]
pub enum Ending {
    Lost(Lost),
    Stopped,
    TimeUp,
}

/// Does `work(token)` every tick while leading, until the lease is lost,
/// `stop` is set or `lead_for` has passed.
pub fn lead(
    leadership: &Leadership,
    lead_for: Duration,
    stop: &AtomicBool,
    mut work: impl FnMut(u64),
) -> Ending {
    let until = Instant::now() + lead_for;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ending::Stopped;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ending::TimeUp;
        }
        work(leadership.token());
        if let Some(lost) = leadership.wait_lost(left.min(TICK)) {
            return Ending::Lost(lost);
        }
    }
}

/// `--addr HOST:PORT` (default 127.0.0.1:9999), `--lead-for SECONDS`
/// (default 30).
fn args() -> Result<(String, Duration), String> {
    let usage = "usage: leader_election [--addr HOST:PORT] [--lead-for SECONDS]";
    let mut args = std::env::args().skip(1);
    let (mut addr, mut lead_for) = ("127.0.0.1:9999".to_owned(), Duration::from_secs(30));
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value; {usage}"))?;
        match arg.as_str() {
            "--addr" => addr = value,
            "--lead-for" => {
                let secs: u64 = value
                    .parse()
                    .map_err(|_| format!("--lead-for {value:?}: not a whole number of seconds"))?;
                lead_for = Duration::from_secs(secs);
            }
            other => return Err(format!("unknown argument {other:?}; {usage}")),
        }
    }
    Ok((addr, lead_for))
}
