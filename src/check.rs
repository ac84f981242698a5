//! Checks shared by the fuzz targets (`fuzz/`) and the randomized tests
//! (`tests.rs` here): both run exactly this code, the fuzzer with choices
//! read from its input bytes, the tests with choices from a seeded PRNG.
//!
//! - [`decode`]: frames of both protocols split into arbitrary reads decode
//!   as the whole stream does, and limits are enforced from the header.
//! - [`connection`]: sequences of real frames from a few connections,
//!   through [`crate::execute::step`] and the lock table, against a simple
//!   reference model of the lock semantics ([`model`]).
//! - [`wheel`]: the timer wheel against an ordered map.
//! - [`wal`]: the write-ahead log's reader on damaged segments.
//!
//! Every check panics on the first disagreement, naming what differed.
//! Not part of the daemon's interface.

pub mod connection;
pub mod decode;
pub mod model;
pub mod wal;
pub mod wheel;

#[cfg(test)]
mod tests;

/// Where a check takes its choices from.
pub trait Source {
    /// The next 64 random bits (zero once a finite source is used up).
    fn next_u64(&mut self) -> u64;

    /// Whether a finite source is used up: checks stop there.
    fn is_exhausted(&self) -> bool {
        false
    }

    /// A value below `bound` (0 when `bound` is 0).
    fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// Below `2^bits` for a random `bits < bits_max`: tiny and huge alike.
    fn log_uniform(&mut self, bits_max: u64) -> u64 {
        let bits = self.below(bits_max);
        self.below(1 << bits)
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// True with probability about `1 / n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// Deterministic PRNG (splitmix64): reproducible runs from a seed, no
/// dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl Source for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Choices read from a fuzzer's input, a few bytes per choice: a small
/// change to the input makes a small change to the run, which is what lets a
/// coverage-guided fuzzer climb. Reads past the end give zeros.
pub struct ByteSource<'a> {
    bytes: &'a [u8],
}

impl<'a> ByteSource<'a> {
    pub fn new(bytes: &'a [u8]) -> ByteSource<'a> {
        ByteSource { bytes }
    }

    /// The unread bytes, taken whole (for raw payloads).
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// Up to `n` unread bytes, taken.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = tail;
        head
    }
}

impl Source for ByteSource<'_> {
    fn next_u64(&mut self) -> u64 {
        let mut value = [0u8; 8];
        let head = self.take(8);
        value[..head.len()].copy_from_slice(head);
        u64::from_le_bytes(value)
    }

    fn is_exhausted(&self) -> bool {
        self.bytes.is_empty()
    }

    /// One byte for small bounds, so that the fuzzer's byte-level mutations
    /// map onto single decisions.
    fn below(&mut self, bound: u64) -> u64 {
        let bound = bound.max(1);
        let value = match bound {
            0..=0x100 => self.take(1).first().copied().unwrap_or(0) as u64,
            0x101..=0x1_0000 => {
                let mut two = [0u8; 2];
                let head = self.take(2);
                two[..head.len()].copy_from_slice(head);
                u16::from_le_bytes(two) as u64
            }
            _ => self.next_u64(),
        };
        value % bound
    }

    fn byte(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
}

/// Wraps a source and records every choice as the bytes that make a
/// [`ByteSource`] give the same choice: a run from a PRNG, saved as a fuzz
/// input that replays it (how the seed corpora in `fuzz/corpus/` are made).
pub struct Recorder<S> {
    pub inner: S,
    pub bytes: Vec<u8>,
}

impl<S: Source> Source for Recorder<S> {
    fn next_u64(&mut self) -> u64 {
        let value = self.inner.next_u64();
        self.bytes.extend_from_slice(&value.to_le_bytes());
        value
    }

    fn below(&mut self, bound: u64) -> u64 {
        let value = self.inner.below(bound);
        match bound.max(1) {
            0..=0x100 => self.bytes.push(value as u8),
            0x101..=0x1_0000 => self.bytes.extend_from_slice(&(value as u16).to_le_bytes()),
            _ => self.bytes.extend_from_slice(&value.to_le_bytes()),
        }
        value
    }

    fn byte(&mut self) -> u8 {
        let value = self.inner.byte();
        self.bytes.push(value);
        value
    }
}

/// Prints the seed of a randomized check if it panics (see
/// `check::tests`): create one per seed and keep it alive during the run.
pub struct SeedReport {
    pub name: &'static str,
    pub seed: u64,
}

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} failed with seed {}: rerun it with DISTLOCKD_CHECK_SEED={}",
                self.name, self.seed, self.seed
            );
        }
    }
}
