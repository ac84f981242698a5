//! The timer wheel against an ordered map, with operations chosen by the
//! input. See `distlockd::check::wheel`.
#![no_main]

use distlockd::check::{ByteSource, wheel};
use libfuzzer_sys::fuzz_target;

/// Operations per input at most; the input usually runs out first.
const STEPS_MAX: usize = 5000;

fuzz_target!(|data: &[u8]| {
    wheel::run(&mut ByteSource::new(data), STEPS_MAX);
});
