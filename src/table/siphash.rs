//! SipHash-1-3 of one byte slice under a random 128-bit key: the keyed
//! hash of lock names (the index) and owners (their digests).
//!
//! The same function as std's `RandomState` hashers, which the table used
//! before: the same keys-are-secret guarantee (a client that never learns the
//! key can neither choose names that collide in the index nor an owner whose
//! digest matches another's, short of 2^64 tries). std's hasher takes its
//! input as a stream of writes, buffering partial words between them; the
//! table always hashes one slice at once, so here the words are read
//! straight from the slice and the last partial word with at most three
//! loads. That halves the instructions per hash on the request path, where
//! every request hashes its name and its owner.
//!
//! `sip::<2, 4>` is SipHash-2-4, which std still offers as
//! `std::hash::SipHasher`: the tests check this code against it, rounds and
//! all; 1-3 differs only in the number of rounds.

use std::hash::{BuildHasher, RandomState};

/// A SipHash-1-3 key.
#[derive(Clone, Copy)]
pub struct SipKey {
    k0: u64,
    k1: u64,
}

impl SipKey {
    /// A key drawn from std's randomly keyed hasher (its keys come from the
    /// operating system's random source), different for every call.
    pub fn random() -> SipKey {
        let state = RandomState::new();
        SipKey {
            k0: state.hash_one(0u64),
            k1: state.hash_one(1u64),
        }
    }

    /// The key as two words, to give it to another table.
    pub fn to_words(self) -> [u64; 2] {
        [self.k0, self.k1]
    }

    pub fn from_words([k0, k1]: [u64; 2]) -> SipKey {
        SipKey { k0, k1 }
    }

    #[inline]
    pub fn hash(&self, bytes: &[u8]) -> u64 {
        sip::<1, 3>(self.k0, self.k1, bytes)
    }

    /// `(self.hash(a), b_key.hash(b))`, computed side by side: SipHash is
    /// one long chain of dependent operations, and two independent chains
    /// interleaved keep the processor's units busy that one leaves idle.
    /// Every request that names a lock hashes its name and its owner.
    #[inline]
    pub fn hash_pair(&self, a: &[u8], b_key: &SipKey, b: &[u8]) -> (u64, u64) {
        sip_pair::<1, 3>(self, a, b_key, b)
    }
}

struct State {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
}

impl State {
    #[inline(always)]
    fn new(k0: u64, k1: u64) -> State {
        State {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13) ^ self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16) ^ self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21) ^ self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17) ^ self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    #[inline(always)]
    fn compress<const C: usize>(&mut self, m: u64) {
        self.v3 ^= m;
        for _ in 0..C {
            self.round();
        }
        self.v0 ^= m;
    }

    /// The D finalization rounds and the digest, after the last word.
    #[inline(always)]
    fn finish<const D: usize>(mut self) -> u64 {
        self.v2 ^= 0xff;
        for _ in 0..D {
            self.round();
        }
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

/// SipHash-C-D of `bytes` under the key (k0, k1).
#[inline(always)]
fn sip<const C: usize, const D: usize>(k0: u64, k1: u64, bytes: &[u8]) -> u64 {
    let mut s = State::new(k0, k1);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        s.compress::<C>(word_at(word));
    }
    s.compress::<C>(final_word(bytes));
    s.finish::<D>()
}

/// SipHash-C-D of `a` under `ka` and of `b` under `kb`, interleaved: while
/// both have words left, each step compresses one word of each.
#[inline(always)]
fn sip_pair<const C: usize, const D: usize>(
    ka: &SipKey,
    a: &[u8],
    kb: &SipKey,
    b: &[u8],
) -> (u64, u64) {
    let (mut sa, mut sb) = (State::new(ka.k0, ka.k1), State::new(kb.k0, kb.k1));
    let (mut wa, mut wb) = (a.chunks_exact(8), b.chunks_exact(8));
    loop {
        match (wa.next(), wb.next()) {
            (Some(x), Some(y)) => {
                sa.compress::<C>(word_at(x));
                sb.compress::<C>(word_at(y));
            }
            (Some(x), None) => {
                sa.compress::<C>(word_at(x));
                wa.by_ref().for_each(|x| sa.compress::<C>(word_at(x)));
                break;
            }
            (None, Some(y)) => {
                sb.compress::<C>(word_at(y));
                wb.by_ref().for_each(|y| sb.compress::<C>(word_at(y)));
                break;
            }
            (None, None) => break,
        }
    }
    sa.compress::<C>(final_word(a));
    sb.compress::<C>(final_word(b));
    (sa.finish::<D>(), sb.finish::<D>())
}

#[inline(always)]
fn word_at(word: &[u8]) -> u64 {
    u64::from_le_bytes(word.try_into().expect("8 bytes"))
}

/// The last word SipHash compresses: the bytes after the last whole word,
/// and the length in the top byte.
#[inline(always)]
fn final_word(bytes: &[u8]) -> u64 {
    last_word(bytes, bytes.len() % 8) | (bytes.len() as u64) << 56
}

/// The last `tail` bytes of `bytes` (fewer than 8) as a little-endian word.
#[inline(always)]
fn last_word(bytes: &[u8], tail: usize) -> u64 {
    debug_assert!(tail < 8 && tail <= bytes.len());
    if tail == 0 {
        return 0;
    }
    let len = bytes.len();
    if len >= 8 {
        // The whole last word, less the bytes already compressed.
        let word = u64::from_le_bytes(bytes[len - 8..].try_into().expect("8 bytes"));
        return word >> (64 - 8 * tail);
    }
    let (mut word, mut at) = (0, 0);
    if tail >= 4 {
        word = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as u64;
        at = 4;
    }
    if tail - at >= 2 {
        let pair = u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"));
        word |= (pair as u64) << (8 * at);
        at += 2;
    }
    if at < tail {
        word |= (bytes[at] as u64) << (8 * at);
    }
    word
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)] // std's SipHash-2-4, the reference
    fn sip_2_4_matches_std_for_every_length_and_alignment() {
        use std::hash::{Hasher, SipHasher};
        let bytes: Vec<u8> = (0..80u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        let keys = [
            (0, 0),
            (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908),
            (u64::MAX, 7),
        ];
        for (k0, k1) in keys {
            for start in 0..8 {
                for len in 0..=64 {
                    let input = &bytes[start..start + len];
                    let mut reference = SipHasher::new_with_keys(k0, k1);
                    reference.write(input);
                    assert_eq!(sip::<2, 4>(k0, k1, input), reference.finish(), "{len}");
                }
            }
        }
    }

    #[test]
    fn the_published_sip_2_4_vector() {
        // SipHash paper, appendix A: key 00..0f, message 00..0e.
        let message: Vec<u8> = (0..15).collect();
        let (k0, k1) = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        assert_eq!(sip::<2, 4>(k0, k1, &message), 0xa129_ca61_49be_45e5);
    }

    #[test]
    fn pairs_hash_each_side_as_alone_for_every_pair_of_lengths() {
        let bytes: Vec<u8> = (0..80u8).map(|i| i.wrapping_mul(53) ^ 0xa5).collect();
        let (ka, kb) = (SipKey::random(), SipKey::random());
        for a_len in 0..=40 {
            for b_len in 0..=40 {
                let (a, b) = (&bytes[1..1 + a_len], &bytes[3..3 + b_len]);
                let (ha, hb) = ka.hash_pair(a, &kb, b);
                assert_eq!(ha, ka.hash(a), "{a_len} {b_len}");
                assert_eq!(hb, kb.hash(b), "{a_len} {b_len}");
            }
        }
    }

    #[test]
    fn keys_differ_and_change_the_hash() {
        let (a, b) = (SipKey::random(), SipKey::random());
        assert_ne!((a.k0, a.k1), (b.k0, b.k1));
        assert_ne!(a.hash(b"lock"), b.hash(b"lock"));
        assert_ne!(a.hash(b"lock"), a.hash(b"lock\0"), "the length counts");
    }
}
