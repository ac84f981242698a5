//! The lock CLI: `distlockd acquire|release|extend|status|ping`.

use std::process::ExitCode;

/// Runs one lock command; `command` is its name.
pub fn main(command: &str, _parser: &mut lexopt::Parser) -> Result<ExitCode, String> {
    Err(format!("{command}: not available in this build"))
}
