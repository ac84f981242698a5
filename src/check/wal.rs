//! The write-ahead log's reader against damage: a segment of random
//! records, then a torn write (cut anywhere), flipped bits, zeros or
//! garbage at any offset. [`crate::storage::wal::scan`] must never panic,
//! must return every record that lies wholly before the first damaged byte,
//! each as written, and must report where valid bytes end.

use super::Source;
use crate::storage::wal::{Record, WAL_RECORD_SIZE_MAX, scan};
use crate::storage::{crc32c, wal};

/// Records per segment at most.
const RECORDS_MAX: u64 = 40;

/// A record as written: kind, payload, and the offset where it ends.
pub type Written = (u8, Vec<u8>, usize);

/// One check: a segment built from `src`'s choices, damaged, scanned.
pub fn run(src: &mut impl Source) {
    let (bytes, records) = random_segment(src);
    let mut damaged = bytes.clone();
    let first_damage = damage(src, &mut damaged);
    check(&damaged, &records, first_damage);
}

/// Scans `bytes` and checks the result against `records` (what was
/// written, with the offset where each ends) when the first `first_damage`
/// bytes are as written.
pub fn check(bytes: &[u8], records: &[Written], first_damage: usize) {
    let Ok(found) = scan(bytes) else {
        assert!(first_damage < 32, "a header left intact must read");
        return;
    };
    assert!(found.valid_len <= bytes.len(), "valid length past the end");
    let intact = records.iter().take_while(|r| r.2 <= first_damage).count();
    assert!(
        found.records.len() >= intact,
        "{} records before the damage at byte {first_damage}, {} read",
        intact,
        found.records.len()
    );
    for (i, (kind, payload, _)) in records.iter().take(intact).enumerate() {
        let expected = Record {
            kind: *kind,
            payload,
        };
        assert_eq!(found.records[i], expected, "record {i}");
    }
    if first_damage >= bytes.len() && bytes.len() == records.last().map_or(32, |r| r.2) {
        assert_eq!(found.damage, None, "undamaged segment");
        assert_eq!(found.records.len(), records.len());
        assert_eq!(found.valid_len, bytes.len());
    }
    if found.damage.is_none() {
        assert_eq!(found.valid_len, bytes.len(), "stopped early without damage");
    }
}

/// A valid segment of random records; each record's kind, payload and end.
pub fn random_segment(src: &mut impl Source) -> (Vec<u8>, Vec<Written>) {
    let id = wal::SegmentId {
        seq: 1 + src.below(1000),
        first_index: src.next_u64() >> 1,
    };
    let mut bytes = wal::segment_header(id).to_vec();
    let mut crc = u32::from_le_bytes(bytes[28..32].try_into().expect("4 bytes"));
    let mut records = Vec::new();
    for _ in 0..src.below(RECORDS_MAX) {
        if src.is_exhausted() {
            break;
        }
        let kind = 1 + src.below(255) as u8;
        let len = src.log_uniform(12) as usize;
        let payload: Vec<u8> = (0..len).map(|_| src.byte()).collect();
        let body_len = 1 + payload.len();
        assert!(body_len <= WAL_RECORD_SIZE_MAX);
        crc = crc32c::extend(crc32c::extend(crc, &[kind]), &payload);
        bytes.extend_from_slice(&(body_len as u32).to_le_bytes());
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.push(kind);
        bytes.extend_from_slice(&payload);
        records.push((kind, payload, bytes.len()));
    }
    (bytes, records)
}

/// Damages `bytes` in place as `src` chooses; returns the offset of the
/// first byte that may differ from what was written (the length if none).
fn damage(src: &mut impl Source, bytes: &mut Vec<u8>) -> usize {
    let mut first = bytes.len();
    for _ in 0..src.below(4) {
        let at = src.below(bytes.len() as u64 + 1) as usize;
        match src.below(4) {
            // A torn write: the end never reached the disk.
            0 => bytes.truncate(at),
            // Bits flipped (a flip of 0 changes nothing; the offset still
            // counts as damaged).
            1 if at < bytes.len() => bytes[at] ^= src.byte(),
            // Zeros or garbage where records should go on: a preallocated
            // tail, or pages of a later write that landed first.
            2 => {
                bytes.truncate(at);
                let n = src.log_uniform(10) as usize;
                let zeros = src.one_in(2);
                bytes.extend((0..n).map(|_| if zeros { 0 } else { src.byte() }));
            }
            _ => continue,
        }
        first = first.min(at);
    }
    first
}
