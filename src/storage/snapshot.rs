//! Snapshot files: the whole state at one log index, so that the log
//! before it can go.
//!
//! A snapshot is written to a temporary file, fsynced, renamed to its name
//! and the directory fsynced: a crash leaves either the old set of
//! snapshots or the new one, never a partial file under a snapshot's name
//! (a stray temporary file is removed at the next write). Its checksum
//! covers every byte, so a damaged file is skipped for the one before it.
//!
//! ```text
//! DIR/<index:016x>-<term:016x>.snap
//!   0  magic "DLKSNAP\n"      8 bytes
//!   8  version                u32 LE (1)
//!  12  index                  u64 LE
//!  20  term                   u64 LE
//!  28  meta length            u32 LE
//!  32  data length            u64 LE
//!  40  meta, data
//!  ..  CRC-32C of everything before it, u32 LE
//! ```
//!
//! What meta and data hold is the caller's (the Raft membership, the lock
//! table).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::crc32c;
use super::wal::{WalError, io_error, sync_dir};

const MAGIC: &[u8; 8] = b"DLKSNAP\n";
const VERSION: u32 = 1;
const HEADER_SIZE: usize = 40;
const SUFFIX: &str = ".snap";

/// Snapshots kept on disk: the newest, and the one before it in case the
/// newest turns out damaged.
pub const SNAPSHOTS_KEPT: usize = 2;

/// A snapshot, read or to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    pub index: u64,
    pub term: u64,
    pub meta: Vec<u8>,
    pub data: Vec<u8>,
}

/// Why a snapshot file was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotDamage {
    TooShort,
    BadMagic,
    UnknownVersion(u32),
    BadLength,
    BadChecksum,
    /// The header's index or term differs from the file's name.
    NameMismatch,
}

impl fmt::Display for SnapshotDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotDamage::TooShort => write!(f, "shorter than a snapshot header"),
            SnapshotDamage::BadMagic => write!(f, "not a distlockd snapshot (bad magic)"),
            SnapshotDamage::UnknownVersion(v) => {
                write!(f, "snapshot format version {v}, this build reads {VERSION}")
            }
            SnapshotDamage::BadLength => write!(f, "its lengths do not match its size"),
            SnapshotDamage::BadChecksum => write!(f, "its checksum does not match"),
            SnapshotDamage::NameMismatch => write!(f, "its header does not match its name"),
        }
    }
}

fn file_name(index: u64, term: u64) -> String {
    super::numbered_name(index, term, SUFFIX)
}

fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    super::parse_numbered_name(name, SUFFIX)
}

/// The bytes of a snapshot file.
pub fn encode(s: &SnapshotFile) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_SIZE + s.meta.len() + s.data.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&s.index.to_le_bytes());
    out.extend_from_slice(&s.term.to_le_bytes());
    out.extend_from_slice(&(s.meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&(s.data.len() as u64).to_le_bytes());
    out.extend_from_slice(&s.meta);
    out.extend_from_slice(&s.data);
    let crc = crc32c::checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A snapshot file's contents; any bytes give an answer, never a panic.
pub fn decode(bytes: &[u8]) -> Result<SnapshotFile, SnapshotDamage> {
    if bytes.len() < HEADER_SIZE + 4 {
        return Err(SnapshotDamage::TooShort);
    }
    if &bytes[0..8] != MAGIC {
        return Err(SnapshotDamage::BadMagic);
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let version = u32_at(8);
    if version != VERSION {
        return Err(SnapshotDamage::UnknownVersion(version));
    }
    let meta_len = u32_at(28) as u64;
    let data_len = u64_at(32);
    let body_end = (HEADER_SIZE as u64)
        .checked_add(meta_len)
        .and_then(|n| n.checked_add(data_len))
        .ok_or(SnapshotDamage::BadLength)?;
    if body_end.checked_add(4) != Some(bytes.len() as u64) {
        return Err(SnapshotDamage::BadLength);
    }
    let body_end = body_end as usize;
    if crc32c::checksum(&bytes[..body_end]) != u32_at(body_end) {
        return Err(SnapshotDamage::BadChecksum);
    }
    let meta_end = HEADER_SIZE + meta_len as usize;
    Ok(SnapshotFile {
        index: u64_at(12),
        term: u64_at(20),
        meta: bytes[HEADER_SIZE..meta_end].to_vec(),
        data: bytes[meta_end..body_end].to_vec(),
    })
}

/// Writes `s` durably in `dir` (created if missing), then removes all but
/// the newest [`SNAPSHOTS_KEPT`] snapshots and any stray temporary file.
pub fn write(dir: &Path, s: &SnapshotFile) -> Result<PathBuf, WalError> {
    super::wal::create_dir_durably(dir)?;
    let name = file_name(s.index, s.term);
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(&name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_error(&tmp, "create snapshot file"))?;
    file.write_all(&encode(s))
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp, "write and fsync snapshot file"))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_error(&path, "rename snapshot file to"))?;
    sync_dir(dir)?;
    let mut names = list(dir)?;
    names.sort_by_key(|&(index, term, _)| std::cmp::Reverse((index, term)));
    let mut removed = false;
    for (_, _, old) in names.iter().skip(SNAPSHOTS_KEPT) {
        fs::remove_file(old).map_err(io_error(old, "remove old snapshot"))?;
        removed = true;
    }
    for entry in fs::read_dir(dir).map_err(io_error(dir, "list the snapshot directory"))? {
        let entry = entry.map_err(io_error(dir, "list the snapshot directory"))?;
        let stray = entry.file_name().to_str().is_some_and(|n| n.ends_with(".tmp"));
        if stray {
            let p = entry.path();
            fs::remove_file(&p).map_err(io_error(&p, "remove stray temporary file"))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(path)
}

/// The snapshot files in `dir`: index, term and path.
fn list(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>, WalError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir, "list the snapshot directory"))? {
        let entry = entry.map_err(io_error(dir, "list the snapshot directory"))?;
        if let Some((index, term)) = entry.file_name().to_str().and_then(parse_file_name) {
            found.push((index, term, entry.path()));
        }
    }
    Ok(found)
}

/// The newest valid snapshot in `dir` (none if `dir` does not exist), and
/// every newer file that was skipped as damaged, with why.
#[allow(clippy::type_complexity)]
pub fn read_latest(
    dir: &Path,
) -> Result<(Option<SnapshotFile>, Vec<(PathBuf, SnapshotDamage)>), WalError> {
    if !dir.exists() {
        return Ok((None, Vec::new()));
    }
    let mut names = list(dir)?;
    names.sort_by_key(|&(index, term, _)| std::cmp::Reverse((index, term)));
    let mut skipped = Vec::new();
    for (index, term, path) in names {
        let bytes = fs::read(&path).map_err(io_error(&path, "read snapshot file"))?;
        match decode(&bytes) {
            Ok(s) if (s.index, s.term) == (index, term) => return Ok((Some(s), skipped)),
            Ok(_) => skipped.push((path, SnapshotDamage::NameMismatch)),
            Err(damage) => skipped.push((path, damage)),
        }
    }
    Ok((None, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(index: u64, term: u64, fill: u8) -> SnapshotFile {
        SnapshotFile {
            index,
            term,
            meta: vec![fill; 3],
            data: vec![fill; 100 + index as usize],
        }
    }

    #[test]
    fn encode_decode_round_trip_and_every_damage_is_caught() {
        let s = snapshot(7, 2, 0xab);
        let bytes = encode(&s);
        assert_eq!(decode(&bytes), Ok(s));
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            assert!(decode(&bad).is_err(), "flip at {at} undetected");
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "cut at {len} undetected");
        }
    }

    #[test]
    fn the_newest_valid_snapshot_is_read_and_old_ones_go() {
        let tmp = crate::storage::TempDir::new("snap-latest");
        let dir = tmp.0.clone();
        assert_eq!(read_latest(&dir).unwrap(), (None, Vec::new()));
        for (i, index) in [10, 20, 30].into_iter().enumerate() {
            write(&dir, &snapshot(index, 1, i as u8)).unwrap();
        }
        let (latest, skipped) = read_latest(&dir).unwrap();
        assert_eq!(latest, Some(snapshot(30, 1, 2)));
        assert!(skipped.is_empty());
        assert_eq!(list(&dir).unwrap().len(), SNAPSHOTS_KEPT, "oldest removed");

        // Damage the newest: the one before it is read, and the damage named.
        let newest = dir.join(file_name(30, 1));
        let mut bytes = fs::read(&newest).unwrap();
        bytes[50] ^= 0xff;
        fs::write(&newest, &bytes).unwrap();
        let (latest, skipped) = read_latest(&dir).unwrap();
        assert_eq!(latest, Some(snapshot(20, 1, 1)));
        assert_eq!(skipped, vec![(newest, SnapshotDamage::BadChecksum)]);
    }

    #[test]
    fn a_stray_temporary_file_is_never_read_and_is_removed() {
        let tmp = crate::storage::TempDir::new("snap-stray");
        let dir = tmp.0.clone();
        fs::create_dir_all(&dir).unwrap();
        let stray = dir.join(format!(".{}.tmp", file_name(99, 9)));
        fs::write(&stray, encode(&snapshot(99, 9, 1))).unwrap();
        assert_eq!(read_latest(&dir).unwrap().0, None);
        write(&dir, &snapshot(5, 1, 1)).unwrap();
        assert!(!stray.exists());
        assert_eq!(read_latest(&dir).unwrap().0, Some(snapshot(5, 1, 1)));
    }
}
