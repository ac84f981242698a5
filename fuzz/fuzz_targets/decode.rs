//! Frames of both protocols, in arbitrary reads: decoding them split gives
//! what decoding them whole gives. See `distlockd::check::decode`.
#![no_main]

use distlockd::check::{ByteSource, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    decode::run(&mut ByteSource::new(data));
});
