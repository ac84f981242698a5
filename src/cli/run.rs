//! `distlockd run NAME [options] -- COMMAND ARGS...`: a command under a lock.

use std::process::ExitCode;

/// Runs `distlockd run`.
pub fn main(_parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    Err("run: not available in this build".to_owned())
}
