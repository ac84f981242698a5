//! Operations from a few connections, as real frames through the server's
//! per-frame path and lock table, against the reference model. See
//! `distlockd::check::connection`.
#![no_main]

use distlockd::check::{ByteSource, connection};
use libfuzzer_sys::fuzz_target;

/// Operations per input at most; the input usually runs out first.
const OPS_MAX: usize = 2000;

fuzz_target!(|data: &[u8]| {
    connection::run(&mut ByteSource::new(data), OPS_MAX);
});
