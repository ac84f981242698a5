use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::storage::TempDir;

fn open(dir: &Path) -> (Wal, Recovered) {
    Wal::open(dir, 1).unwrap_or_else(|e| panic!("{e}"))
}

fn kinds_and_payloads(recovered: &Recovered) -> Vec<(u8, Vec<u8>)> {
    recovered
        .records
        .iter()
        .map(|r| (r.kind, r.payload.clone()))
        .collect()
}

fn payload(i: u8) -> Vec<u8> {
    vec![i; 10 + i as usize]
}

fn only_segment(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}

#[test]
fn records_synced_are_read_back_in_order_after_reopening() {
    let tmp = TempDir::new("wal-reopen");
    let (mut wal, recovered) = open(&tmp.0);
    assert!(recovered.records.is_empty() && recovered.torn.is_none());
    for i in 1..=5 {
        wal.append(i, &payload(i)).unwrap();
    }
    assert!(wal.has_pending());
    wal.sync().unwrap();
    assert!(!wal.has_pending());
    wal.append(6, b"").unwrap();
    wal.sync().unwrap();
    drop(wal);

    let (mut wal, recovered) = open(&tmp.0);
    let mut expected: Vec<(u8, Vec<u8>)> = (1..=5).map(|i| (i, payload(i))).collect();
    expected.push((6, Vec::new()));
    assert_eq!(kinds_and_payloads(&recovered), expected);
    assert_eq!(recovered.torn, None);
    // Appending resumes after them.
    wal.append(7, b"seven").unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = open(&tmp.0);
    expected.push((7, b"seven".to_vec()));
    assert_eq!(kinds_and_payloads(&recovered), expected);
}

#[test]
fn records_never_synced_are_not_on_disk() {
    let tmp = TempDir::new("wal-unsynced");
    let (mut wal, _) = open(&tmp.0);
    wal.append(1, b"kept").unwrap();
    wal.sync().unwrap();
    wal.append(2, b"lost").unwrap();
    drop(wal);
    let (_, recovered) = open(&tmp.0);
    assert_eq!(kinds_and_payloads(&recovered), vec![(1, b"kept".to_vec())]);
}

#[test]
fn a_torn_tail_is_cut_off_and_appending_follows_the_valid_records() {
    let tmp = TempDir::new("wal-torn");
    let (mut wal, _) = open(&tmp.0);
    for i in 1..=3 {
        wal.append(i, &payload(i)).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let path = only_segment(&tmp.0);
    let full = fs::read(&path).unwrap();
    // The last record (8 + 1 + 13 bytes) loses its last 5 bytes.
    fs::write(&path, &full[..full.len() - 5]).unwrap();

    let (mut wal, recovered) = open(&tmp.0);
    assert_eq!(
        kinds_and_payloads(&recovered),
        vec![(1, payload(1)), (2, payload(2))]
    );
    assert_eq!(recovered.torn, Some((22 - 5, Damage::Truncated)));
    assert_eq!(fs::read(&path).unwrap().len(), full.len() - 22, "tail cut");
    wal.append(9, b"after").unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, recovered) = open(&tmp.0);
    assert_eq!(
        kinds_and_payloads(&recovered),
        vec![(1, payload(1)), (2, payload(2)), (9, b"after".to_vec())]
    );
    assert_eq!(recovered.torn, None);
}

#[test]
fn zeros_after_the_records_end_the_log() {
    let tmp = TempDir::new("wal-zeros");
    let (mut wal, _) = open(&tmp.0);
    wal.append(1, b"one").unwrap();
    wal.sync().unwrap();
    drop(wal);
    let path = only_segment(&tmp.0);
    let mut bytes = fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0; 4096]);
    fs::write(&path, &bytes).unwrap();
    let (_, recovered) = open(&tmp.0);
    assert_eq!(kinds_and_payloads(&recovered), vec![(1, b"one".to_vec())]);
    assert_eq!(recovered.torn, Some((4096, Damage::BadLength(0))));
}

#[test]
fn a_flipped_bit_ends_the_last_segment_at_the_record_before_it() {
    let tmp = TempDir::new("wal-flip");
    let (mut wal, _) = open(&tmp.0);
    for i in 1..=3 {
        wal.append(i, &payload(i)).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let path = only_segment(&tmp.0);
    let mut bytes = fs::read(&path).unwrap();
    // In the second record's payload: header 32, first record 8 + 1 + 11.
    bytes[32 + 20 + 8 + 3] ^= 0x10;
    fs::write(&path, &bytes).unwrap();
    let (_, recovered) = open(&tmp.0);
    assert_eq!(kinds_and_payloads(&recovered), vec![(1, payload(1))]);
    assert_eq!(recovered.torn.map(|t| t.1), Some(Damage::BadChecksum));
}

#[test]
fn a_record_repeated_in_place_of_the_next_fails_its_chained_checksum() {
    let tmp = TempDir::new("wal-repeat");
    let (mut wal, _) = open(&tmp.0);
    wal.append(1, b"same").unwrap();
    wal.append(1, b"same").unwrap();
    wal.sync().unwrap();
    drop(wal);
    let path = only_segment(&tmp.0);
    let bytes = fs::read(&path).unwrap();
    let record = &bytes[32..32 + 13];
    // The second record's bytes differ from the first's (the checksum is
    // chained), so a copy of the first in its place fails.
    assert_ne!(&bytes[32 + 13..], record);
    let mut copied = bytes[..32 + 13].to_vec();
    copied.extend_from_slice(record);
    fs::write(&path, &copied).unwrap();
    let (_, recovered) = open(&tmp.0);
    assert_eq!(recovered.records.len(), 1);
    assert_eq!(recovered.torn.map(|t| t.1), Some(Damage::BadChecksum));
}

#[test]
fn segments_are_cut_and_removed_once_a_snapshot_covers_them() {
    let tmp = TempDir::new("wal-segments");
    let (mut wal, _) = open(&tmp.0);
    // Segment 1 holds indexes 1..=10, segment 2 11..=20, segment 3 21...
    wal.append(1, b"entries 1-10").unwrap();
    wal.cut(11).unwrap();
    wal.append(1, b"entries 11-20").unwrap();
    wal.cut(21).unwrap();
    wal.append(1, b"entries 21-").unwrap();
    wal.sync().unwrap();
    let firsts = |wal: &Wal| wal.segments().iter().map(|s| s.first_index).collect::<Vec<_>>();
    assert_eq!(firsts(&wal), vec![1, 11, 21]);
    assert_eq!(wal.remove_before(9).unwrap(), 0, "index 10 still needed");
    assert_eq!(wal.remove_before(10).unwrap(), 1);
    assert_eq!(firsts(&wal), vec![11, 21]);
    assert_eq!(wal.remove_before(1000).unwrap(), 1, "never the last");
    assert_eq!(firsts(&wal), vec![21]);
    drop(wal);
    let (wal, recovered) = open(&tmp.0);
    assert_eq!(firsts(&wal), vec![21]);
    assert_eq!(
        kinds_and_payloads(&recovered),
        vec![(1, b"entries 21-".to_vec())]
    );
}

#[test]
fn damage_before_the_last_segment_refuses_to_open_and_says_where() {
    let tmp = TempDir::new("wal-corrupt");
    let (mut wal, _) = open(&tmp.0);
    wal.append(1, b"first segment").unwrap();
    wal.cut(2).unwrap();
    wal.append(1, b"second segment").unwrap();
    wal.sync().unwrap();
    let first = tmp.0.join(wal.segments()[0].file_name());
    drop(wal);
    let mut bytes = fs::read(&first).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&first, &bytes).unwrap();
    let error = Wal::open(&tmp.0, 1).err().expect("damage refused");
    let message = error.to_string();
    assert!(
        matches!(error, WalError::Corrupt { offset: 32, .. }),
        "{message}"
    );
    assert!(message.contains("0000000000000001-0000000000000001.wal"), "{message}");
    assert!(message.contains("checksum"), "{message}");
    assert!(message.contains("backup"), "{message}");
}

#[test]
fn a_missing_segment_refuses_to_open() {
    let tmp = TempDir::new("wal-gap");
    let (mut wal, _) = open(&tmp.0);
    wal.cut(5).unwrap();
    wal.cut(9).unwrap();
    let middle = tmp.0.join(wal.segments()[1].file_name());
    drop(wal);
    fs::remove_file(middle).unwrap();
    let error = Wal::open(&tmp.0, 1).err().expect("gap refused");
    assert!(
        matches!(error, WalError::Gap { expected_seq: 2, .. }),
        "{error}"
    );
}

#[test]
fn a_header_that_is_not_ours_refuses_to_open() {
    let tmp = TempDir::new("wal-header");
    fs::create_dir_all(&tmp.0).unwrap();
    let path = tmp.0.join("0000000000000001-0000000000000001.wal");
    fs::write(&path, b"not a log segment at all, but long enough").unwrap();
    let error = Wal::open(&tmp.0, 1).err().expect("refused");
    assert!(error.to_string().contains("bad magic"), "{error}");
}

#[test]
fn a_record_over_the_maximum_is_refused_before_it_is_written() {
    let tmp = TempDir::new("wal-large");
    let (mut wal, _) = open(&tmp.0);
    let big = vec![0u8; WAL_RECORD_SIZE_MAX];
    let error = wal.append(1, &big).expect_err("refused");
    assert!(matches!(error, WalError::RecordTooLarge { len } if len == WAL_RECORD_SIZE_MAX + 1));
    assert!(!wal.has_pending());
    wal.append(1, &big[1..]).unwrap();
}

#[test]
fn file_names_round_trip_and_others_are_ignored() {
    let id = SegmentId {
        seq: 0x12,
        first_index: 0xabc,
    };
    assert_eq!(id.file_name(), "0000000000000012-0000000000000abc.wal");
    assert_eq!(SegmentId::parse_file_name(&id.file_name()), Some(id));
    for other in ["x.wal", "12-abc.wal", "0000000000000012-0000000000000abc.tmp", "LOCK"] {
        assert_eq!(SegmentId::parse_file_name(other), None, "{other}");
    }
}

#[test]
fn a_temporary_file_left_by_a_crash_while_creating_a_segment_is_removed() {
    let tmp = TempDir::new("wal-stray");
    let (mut wal, _) = open(&tmp.0);
    wal.append(1, b"kept").unwrap();
    wal.sync().unwrap();
    drop(wal);
    // A crash before the rename: a header-less temporary file.
    let stray = tmp.0.join(".0000000000000002-0000000000000009.wal.tmp");
    fs::write(&stray, b"").unwrap();
    let (mut wal, recovered) = open(&tmp.0);
    assert!(!stray.exists());
    assert_eq!(kinds_and_payloads(&recovered), vec![(1, b"kept".to_vec())]);
    // And the segment it was to be is created as usual.
    wal.cut(9).unwrap();
    assert_eq!(wal.segments().len(), 2);
}
