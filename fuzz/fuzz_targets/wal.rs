//! Write-ahead log segments, torn, bit-flipped and overwritten: the reader
//! keeps every record before the damage and never panics. See
//! `distlockd::check::wal`.
#![no_main]

use distlockd::check::{ByteSource, wal};
use distlockd::storage::wal::scan;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The input as a segment itself, then as choices for a damaged one.
    let _ = scan(data);
    wal::run(&mut ByteSource::new(data));
});
