//! A cron job that runs on every worker but at most one at a time: each
//! takes lock "nightly-report" without waiting, and only the one that gets it
//! works, under a lock renewed in the background however long the work
//! takes, stopping if the lock is lost.
//!
//! ```text
//! cargo run --example cron_job -- --addr 127.0.0.1:9999
//! ```
//!
//! "At most one at a time" is what the lock gives. "Once per night" also
//! needs the job to record that it ran (e.g. the report's date), written
//! with the fencing token so that a worker that lost the lock cannot
//! overwrite a newer run.

use std::thread;
use std::time::Duration;

use distlockd::client::{Client, Error, Lost, RenewingGuard};

const LOCK_NAME: &str = "nightly-report";
const STEPS: usize = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let addr = addr_from_args()?;
    // A short TTL is safe for a long job: the guard renews it every TTL/3.
    let client = Client::builder(&addr)
        .ttl(Duration::from_secs(10))
        .build()?;
    let outcome = run_job(&client, LOCK_NAME, STEPS, |guard, step| {
        println!("step {}/{STEPS} under token {}", step + 1, guard.token());
        thread::sleep(Duration::from_secs(1));
    })?;
    match outcome {
        Outcome::Done { token } => println!("report done under token {token}"),
        Outcome::Skipped => println!("another worker is running {LOCK_NAME}; nothing to do"),
        Outcome::Abandoned { step, lost } => {
            eprintln!("stopped before step {}: lock lost: {lost}", step + 1);
            std::process::exit(1);
        }
    }
    Ok(())
}

#[derive(Debug)]
pub enum Outcome {
    /// Every step ran and the lock was released.
    Done { token: u64 },
    /// Someone else held the lock.
    Skipped,
    /// The lock was lost before `step`, which did not run.
    Abandoned { step: usize, lost: Lost },
}

/// Takes `name` if free and runs `work` for each of `steps` steps while the
/// lock is held, checking before each step that it still is.
pub fn run_job(
    client: &Client,
    name: &str,
    steps: usize,
    mut work: impl FnMut(&RenewingGuard, usize),
) -> Result<Outcome, Error> {
    let guard = match client.lock_renewing(name, Duration::ZERO) {
        Ok(guard) => guard,
        Err(Error::AcquireTimeout { .. }) => return Ok(Outcome::Skipped),
        Err(e) => return Err(e),
    };
    for step in 0..steps {
        if let Some(lost) = guard.lost() {
            return Ok(Outcome::Abandoned { step, lost });
        }
        work(&guard, step);
    }
    let token = guard.token();
    guard.unlock()?;
    Ok(Outcome::Done { token })
}

/// `--addr HOST:PORT`, default 127.0.0.1:9999.
fn addr_from_args() -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = "127.0.0.1:9999".to_owned();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().ok_or("--addr needs HOST:PORT")?,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: cron_job [--addr HOST:PORT]"
                ));
            }
        }
    }
    Ok(addr)
}
