//! The write-ahead log: every change is in it, on disk, before it is
//! answered.
//!
//! The log is a directory of segment files, written in order and never
//! rewritten. A record is appended to a buffer ([`Wal::append`]); the loop
//! writes every record of a turn and fsyncs once ([`Wal::sync`]: group
//! commit). What a record holds is the caller's (raft entries, hard state,
//! snapshot marks): here it is a kind byte and a payload.
//!
//! ```text
//! DIR/<seq:016x>-<first_index:016x>.wal
//!
//! segment header, 32 bytes:
//!   0  magic "DLKWAL\r\n"      8 bytes
//!   8  version                 u32 LE (1)
//!  12  seq                     u64 LE (the segment's number, from 1)
//!  20  first_index             u64 LE (the first log index it may hold)
//!  28  CRC-32C of bytes 0..28  u32 LE
//!
//! record, from offset 32 on:
//!   0  body length             u32 LE, 1..=WAL_RECORD_SIZE_MAX
//!   4  CRC-32C                 u32 LE, of the body, extended from the
//!                              previous record's CRC (the header's for
//!                              the first record)
//!   8  body: kind (u8, not 0), payload
//! ```
//!
//! Chaining the checksums means a record is valid only in its place: one
//! left over from elsewhere, or from an older segment, fails.
//!
//! **Recovery** ([`Wal::open`]) reads every segment in order and keeps the
//! longest valid prefix of the last one: a crash while writing leaves a
//! torn tail (a partial record, zeros, or pages of a write that reached the
//! disk out of order), and nothing in that tail was acknowledged, since
//! replies wait for the fsync. The tail is cut off the file before new
//! records follow. A bad record in any segment but the last is not a torn
//! write but damage: opening fails and names the file and offset.
//!
//! **Segments** are cut at about [`WAL_SEGMENT_SIZE_MAX`] bytes, so that a
//! snapshot lets whole files go ([`Wal::remove_before`]). The caller starts
//! each segment with what must outlive older ones (the current hard state).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::crc32c;

/// A segment is cut once it holds this many bytes: small enough that a
/// snapshot frees disk in steps, large enough that cuts (a file created and
/// its directory fsynced) are rare.
pub const WAL_SEGMENT_SIZE_MAX: u64 = 64 << 20;

/// The largest record body: a batch of one turn's requests with room to
/// spare (a turn proposes at most a few thousand requests of at most a few
/// hundred bytes each). A larger length field is read as a torn write.
pub const WAL_RECORD_SIZE_MAX: usize = 16 << 20;

const MAGIC: &[u8; 8] = b"DLKWAL\r\n";
const VERSION: u32 = 1;
const HEADER_SIZE: usize = 32;
const RECORD_HEADER_SIZE: usize = 8;
const SUFFIX: &str = ".wal";

/// A segment file's identity, from its name and header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentId {
    pub seq: u64,
    pub first_index: u64,
}

impl SegmentId {
    fn file_name(&self) -> String {
        super::numbered_name(self.seq, self.first_index, SUFFIX)
    }

    fn parse_file_name(name: &str) -> Option<SegmentId> {
        let (seq, first_index) = super::parse_numbered_name(name, SUFFIX)?;
        Some(SegmentId { seq, first_index })
    }

}

/// The header of segment `id`.
pub fn segment_header(id: SegmentId) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&id.seq.to_le_bytes());
    h[20..28].copy_from_slice(&id.first_index.to_le_bytes());
    let crc = crc32c::checksum(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// One record read back: its kind and payload, borrowed from the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: u8,
    pub payload: &'a [u8],
}

/// Why reading a segment stopped before its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Fewer bytes than a record header, or than the length it gives.
    Truncated,
    /// A length of 0 (zeros where a record should start) or above the limit.
    BadLength(u32),
    /// The checksum does not match the body.
    BadChecksum,
    /// A body whose kind byte is 0.
    BadKind,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Truncated => write!(f, "a record is cut short"),
            Damage::BadLength(0) => write!(f, "a record of length 0 (zeros)"),
            Damage::BadLength(n) => write!(
                f,
                "a record length of {n} bytes, over the {WAL_RECORD_SIZE_MAX}-byte maximum"
            ),
            Damage::BadChecksum => write!(f, "a record's checksum does not match"),
            Damage::BadKind => write!(f, "a record of kind 0"),
        }
    }
}

/// What [`scan`] found in a segment's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Scan<'a> {
    pub id: SegmentId,
    pub records: Vec<Record<'a>>,
    /// Bytes of valid header and records: where appending may resume.
    pub valid_len: usize,
    /// Why reading stopped before the end of the bytes, if it did.
    pub damage: Option<Damage>,
    /// The chained checksum after the last valid record.
    pub last_crc: u32,
}

/// Why a segment's header cannot be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    TooShort,
    BadMagic,
    UnknownVersion(u32),
    BadChecksum,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::TooShort => write!(f, "shorter than its {HEADER_SIZE}-byte header"),
            HeaderError::BadMagic => write!(f, "not a distlockd log segment (bad magic)"),
            HeaderError::UnknownVersion(v) => {
                write!(f, "log format version {v}, this build reads {VERSION}")
            }
            HeaderError::BadChecksum => write!(f, "its header's checksum does not match"),
        }
    }
}

/// Reads a segment's header and its longest valid prefix of records. Pure:
/// any bytes at all give an answer, never a panic.
pub fn scan(bytes: &[u8]) -> Result<Scan<'_>, HeaderError> {
    let header = bytes.get(..HEADER_SIZE).ok_or(HeaderError::TooShort)?;
    if &header[0..8] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(HeaderError::UnknownVersion(version));
    }
    let crc = u32::from_le_bytes(header[28..32].try_into().expect("4 bytes"));
    if crc32c::checksum(&header[0..28]) != crc {
        return Err(HeaderError::BadChecksum);
    }
    let id = SegmentId {
        seq: u64::from_le_bytes(header[12..20].try_into().expect("8 bytes")),
        first_index: u64::from_le_bytes(header[20..28].try_into().expect("8 bytes")),
    };
    let mut scan = Scan {
        id,
        records: Vec::new(),
        valid_len: HEADER_SIZE,
        damage: None,
        last_crc: crc,
    };
    let mut rest = &bytes[HEADER_SIZE..];
    while !rest.is_empty() {
        match read_record(rest, scan.last_crc) {
            Ok((record, crc, used)) => {
                scan.records.push(record);
                scan.last_crc = crc;
                scan.valid_len += used;
                rest = &rest[used..];
            }
            Err(damage) => {
                scan.damage = Some(damage);
                break;
            }
        }
    }
    Ok(scan)
}

/// The record at the front of `bytes`, its chained checksum, and its size.
fn read_record(bytes: &[u8], prev_crc: u32) -> Result<(Record<'_>, u32, usize), Damage> {
    let head = bytes.get(..RECORD_HEADER_SIZE).ok_or(Damage::Truncated)?;
    let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
    if len == 0 || len as usize > WAL_RECORD_SIZE_MAX {
        return Err(Damage::BadLength(len));
    }
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    let end = RECORD_HEADER_SIZE + len as usize;
    let body = bytes.get(RECORD_HEADER_SIZE..end).ok_or(Damage::Truncated)?;
    if crc32c::extend(prev_crc, body) != crc {
        return Err(Damage::BadChecksum);
    }
    if body[0] == 0 {
        return Err(Damage::BadKind);
    }
    let record = Record {
        kind: body[0],
        payload: &body[1..],
    };
    Ok((record, crc, end))
}

/// Why the log cannot be opened or written.
#[derive(Debug)]
pub enum WalError {
    Io {
        path: PathBuf,
        action: &'static str,
        error: io::Error,
    },
    /// A segment other than the last is damaged, or a header is unreadable.
    Corrupt {
        path: PathBuf,
        offset: usize,
        what: String,
    },
    /// Segment numbers skip one: a file was deleted by hand.
    Gap { path: PathBuf, expected_seq: u64 },
    /// A record too large to append (a caller's bug or a limit too high).
    RecordTooLarge { len: usize },
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io {
                path,
                action,
                error,
            } => write!(f, "cannot {action} {}: {error}", path.display()),
            WalError::Corrupt { path, offset, what } => write!(
                f,
                "write-ahead log segment {} is damaged at byte {offset}: {what}; \
                 restore the data directory from a backup, or (in a cluster) \
                 remove this member and add it back empty",
                path.display()
            ),
            WalError::Gap { path, expected_seq } => write!(
                f,
                "write-ahead log segment {expected_seq:016x} is missing before {}; \
                 segments must not be deleted by hand: restore the data directory \
                 from a backup",
                path.display()
            ),
            WalError::RecordTooLarge { len } => write!(
                f,
                "a write-ahead log record of {len} bytes is over the \
                 {WAL_RECORD_SIZE_MAX}-byte maximum"
            ),
        }
    }
}

impl std::error::Error for WalError {}

pub(super) fn io_error<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |error| WalError::Io {
        path: path.to_path_buf(),
        action,
        error,
    }
}

/// A record read back at open, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRecord {
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// What [`Wal::open`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every valid record, oldest first.
    pub records: Vec<OwnedRecord>,
    /// Bytes cut off the last segment's torn tail, and why reading stopped.
    pub torn: Option<(u64, Damage)>,
}

/// The open log, appending to its last segment.
pub struct Wal {
    dir: PathBuf,
    segments: Vec<SegmentId>,
    file: File,
    /// Bytes in the last segment, written or not.
    len: u64,
    /// Encoded records not yet written.
    pending: Vec<u8>,
    /// The chained checksum after the last record appended.
    last_crc: u32,
    /// [`WAL_SEGMENT_SIZE_MAX`], smaller in tests.
    segment_size_max: u64,
}

impl Wal {
    /// Opens the log in `dir`, creating `dir` and a first segment (whose
    /// first index is `first_index`) if there is none; returns every valid
    /// record. A torn tail of the last segment is cut off the file.
    pub fn open(dir: &Path, first_index: u64) -> Result<(Wal, Recovered), WalError> {
        create_dir_durably(dir)?;
        remove_stray_temporaries(dir)?;
        let segments = list_segments(dir)?;
        if segments.is_empty() {
            let id = SegmentId {
                seq: 1,
                first_index,
            };
            let (file, crc) = create_segment(dir, id)?;
            let wal = Wal {
                dir: dir.to_path_buf(),
                segments: vec![id],
                file,
                len: HEADER_SIZE as u64,
                pending: Vec::new(),
                last_crc: crc,
                segment_size_max: WAL_SEGMENT_SIZE_MAX,
            };
            return Ok((wal, Recovered::default()));
        }
        let mut recovered = Recovered::default();
        let mut last = None;
        for (i, id) in segments.iter().enumerate() {
            let path = dir.join(id.file_name());
            let bytes = fs::read(&path).map_err(io_error(&path, "read log segment"))?;
            let corrupt = |offset, what: String| WalError::Corrupt {
                path: path.clone(),
                offset,
                what,
            };
            let scan = scan(&bytes).map_err(|e| corrupt(0, e.to_string()))?;
            if scan.id != *id {
                return Err(corrupt(0, format!("its header says {:?}", scan.id)));
            }
            let is_last = i + 1 == segments.len();
            if let Some(damage) = scan.damage
                && !is_last
            {
                return Err(corrupt(scan.valid_len, damage.to_string()));
            }
            recovered
                .records
                .extend(scan.records.iter().map(|r| OwnedRecord {
                    kind: r.kind,
                    payload: r.payload.to_vec(),
                }));
            if is_last {
                let cut = (bytes.len() - scan.valid_len) as u64;
                if let Some(damage) = scan.damage {
                    recovered.torn = Some((cut, damage));
                }
                last = Some((path, scan.valid_len as u64, scan.last_crc, cut));
            }
        }
        let (path, valid_len, last_crc, cut) = last.expect("at least one segment");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path, "open log segment"))?;
        if cut > 0 {
            file.set_len(valid_len)
                .and_then(|()| file.sync_all())
                .map_err(io_error(&path, "cut the torn tail off"))?;
        }
        file.seek(SeekFrom::Start(valid_len))
            .map_err(io_error(&path, "seek in log segment"))?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            segments,
            file,
            len: valid_len,
            pending: Vec::new(),
            last_crc,
            segment_size_max: WAL_SEGMENT_SIZE_MAX,
        };
        Ok((wal, recovered))
    }

    /// Appends a record to the pending buffer; on disk at the next
    /// [`Wal::sync`]. `kind` must not be 0.
    pub fn append(&mut self, kind: u8, payload: &[u8]) -> Result<(), WalError> {
        assert_ne!(kind, 0, "record kind 0 marks damage");
        let len = 1 + payload.len();
        if len > WAL_RECORD_SIZE_MAX {
            return Err(WalError::RecordTooLarge { len });
        }
        let crc = crc32c::extend(crc32c::extend(self.last_crc, &[kind]), payload);
        self.pending.extend_from_slice(&(len as u32).to_le_bytes());
        self.pending.extend_from_slice(&crc.to_le_bytes());
        self.pending.push(kind);
        self.pending.extend_from_slice(payload);
        self.last_crc = crc;
        Ok(())
    }

    /// Whether records wait to be written.
    #[cfg(test)]
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the pending records and waits until they are on disk
    /// (fdatasync). After an error the log must not be written again: the
    /// kernel may have dropped the unwritten pages (a retried fsync would
    /// report success for data that is gone), so the process stops.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.current_path();
        self.file
            .write_all(&self.pending)
            .and_then(|()| self.file.sync_data())
            .map_err(io_error(&path, "write and fsync log segment"))?;
        self.len += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Whether the last segment is full: the caller should [`Wal::cut`].
    pub fn is_segment_full(&self) -> bool {
        self.len >= self.segment_size_max
    }

    /// Cuts segments at `bytes` instead, so tests fill several quickly.
    #[cfg(test)]
    pub fn set_segment_size_max(&mut self, bytes: u64) {
        self.segment_size_max = bytes;
    }

    /// Syncs, then starts a new segment whose first log index is
    /// `first_index`: later records go there.
    pub fn cut(&mut self, first_index: u64) -> Result<(), WalError> {
        self.sync()?;
        let last = *self.segments.last().expect("a segment");
        let id = SegmentId {
            seq: last.seq + 1,
            first_index,
        };
        let (file, crc) = create_segment(&self.dir, id)?;
        self.file = file;
        self.segments.push(id);
        self.len = HEADER_SIZE as u64;
        self.last_crc = crc;
        Ok(())
    }

    /// Deletes every segment all of whose entries are at or below `index`
    /// (the next segment starts at or below `index + 1`); never the last.
    /// Returns how many went.
    pub fn remove_before(&mut self, index: u64) -> Result<usize, WalError> {
        let keep_from = self
            .segments
            .windows(2)
            .take_while(|w| w[1].first_index <= index.saturating_add(1))
            .count();
        for id in self.segments.drain(..keep_from) {
            let path = self.dir.join(id.file_name());
            fs::remove_file(&path).map_err(io_error(&path, "remove log segment"))?;
        }
        if keep_from > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(keep_from)
    }

    /// The segments, oldest first.
    #[cfg(test)]
    pub fn segments(&self) -> &[SegmentId] {
        &self.segments
    }

    fn current_path(&self) -> PathBuf {
        self.dir
            .join(self.segments.last().expect("a segment").file_name())
    }
}

/// Removes what a crash in [`create_segment`] may have left.
fn remove_stray_temporaries(dir: &Path) -> Result<(), WalError> {
    let entries = fs::read_dir(dir).map_err(io_error(dir, "list the log directory"))?;
    for entry in entries {
        let entry = entry.map_err(io_error(dir, "list the log directory"))?;
        let name = entry.file_name();
        let stray = name.to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"));
        if stray {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_error(&path, "remove stray temporary file"))?;
        }
    }
    Ok(())
}

/// The segments in `dir`, in order; an error if their numbers skip.
fn list_segments(dir: &Path) -> Result<Vec<SegmentId>, WalError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(io_error(dir, "list the log directory"))?;
    for entry in entries {
        let entry = entry.map_err(io_error(dir, "list the log directory"))?;
        let name = entry.file_name();
        if let Some(id) = name.to_str().and_then(SegmentId::parse_file_name) {
            segments.push(id);
        }
    }
    segments.sort_by_key(|s| s.seq);
    for w in segments.windows(2) {
        if w[1].seq != w[0].seq + 1 {
            return Err(WalError::Gap {
                path: dir.join(w[1].file_name()),
                expected_seq: w[0].seq + 1,
            });
        }
    }
    Ok(segments)
}

/// Creates a segment with its header, durably (the file and its name).
///
/// The header is written to a temporary file, fsynced, and the file renamed
/// to the segment's name: a crash never leaves a segment without a whole
/// header (which recovery would take for damage), only a stray temporary
/// file, which the next [`Wal::open`] removes.
fn create_segment(dir: &Path, id: SegmentId) -> Result<(File, u32), WalError> {
    let path = dir.join(id.file_name());
    let tmp = dir.join(format!(".{}.tmp", id.file_name()));
    let header = segment_header(id);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_error(&tmp, "create log segment"))?;
    file.write_all(&header)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp, "write log segment header"))?;
    if path.exists() {
        return Err(WalError::Io {
            path,
            action: "create log segment",
            error: io::Error::from(io::ErrorKind::AlreadyExists),
        });
    }
    fs::rename(&tmp, &path).map_err(io_error(&path, "rename log segment to"))?;
    sync_dir(dir)?;
    let crc = u32::from_le_bytes(header[28..32].try_into().expect("4 bytes"));
    Ok((file, crc))
}

/// Creates `dir` (and its parents) if missing, and makes its entry in its
/// parent durable, so that a power loss right after cannot undo it.
pub fn create_dir_durably(dir: &Path) -> Result<(), WalError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_error(dir, "create directory"))?;
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Makes a directory's entries (files created, renamed, removed) durable.
pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir, "fsync directory"))
}

#[cfg(test)]
mod tests;
