//! The Raft log on disk: raft-rs's [`Storage`] over the write-ahead log
//! ([`crate::storage::wal`]) and snapshot files
//! ([`crate::storage::snapshot`]).
//!
//! Entries since the last snapshot are kept in memory too (raft reads them
//! back to send to followers and to apply); every change to them, to the
//! hard state (term, vote, commit) and to the membership is a log record,
//! on disk at the next [`DurableLog::sync`], which the loop calls once per
//! turn before it sends what must follow persistence (votes, acks) and
//! before it answers a client.
//!
//! ```text
//! DATA_DIR/wal/   segments of records:
//!   ENTRY       index u64, term u64, type u8, data (u32 length), context (u32 length)
//!   HARD_STATE  term u64, vote u64, commit u64
//!   CONF_STATE  the membership (see `encode_conf_state`)
//!   SNAPSHOT    index u64, term u64, kept u8: entries up to it are in a
//!               snapshot file; those after it were kept (1) or dropped (0)
//! DATA_DIR/snap/  snapshot files; meta is the membership, data the caller's
//! ```
//!
//! Recovery reads the newest valid snapshot, then replays the records:
//! an entry at or below the last one replaces it and everything after it
//! (a follower's log overwritten by a new leader), exactly as it happened.
//! Entries the snapshot holds are then dropped; if the log disagrees with
//! the snapshot at its index (a leader's snapshot, installed just before a
//! crash that kept its mark from the disk), every entry is. A new segment
//! starts with the current hard state and membership, so deleting the
//! segments a snapshot covers never loses them.

use std::cell::Cell;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::storage::snapshot::{self, SnapshotFile};
use crate::storage::wal::{OwnedRecord, Wal, WalError};

const ENTRY: u8 = 1;
const HARD_STATE: u8 = 2;
const CONF_STATE: u8 = 3;
const SNAPSHOT: u8 = 4;

/// Why the log cannot be opened or written.
#[derive(Debug)]
pub enum LogError {
    Wal(WalError),
    /// A record that passed its checksum but cannot be what this build
    /// wrote: a bug, or a data directory from an incompatible version.
    BadRecord { kind: u8, what: &'static str },
    /// Entries that do not follow each other.
    Gap { last_index: u64, next_index: u64 },
    /// The log says a snapshot exists that no snapshot file holds.
    SnapshotMissing { index: u64 },
    /// Raft refused the log's state.
    Raft(String),
    /// A snapshot or entry whose contents the lock table cannot take.
    State(&'static str),
    /// Another process has the directory open.
    InUse { path: PathBuf },
    /// The hard state says entries were committed that neither a snapshot
    /// nor the log holds.
    CommitBeyondLog { commit: u64, last_index: u64 },
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Wal(e) => e.fmt(f),
            LogError::BadRecord { kind, what } => write!(
                f,
                "the write-ahead log holds a record of kind {kind} that this build cannot read ({what}); \
                 was the data directory written by another version?"
            ),
            LogError::Gap {
                last_index,
                next_index,
            } => write!(
                f,
                "the write-ahead log jumps from entry {last_index} to entry {next_index}; \
                 restore the data directory from a backup"
            ),
            LogError::Raft(e) => write!(f, "the replicated log is inconsistent: {e}"),
            LogError::CommitBeyondLog { commit, last_index } => write!(
                f,
                "entries up to {commit} were committed but the log and snapshots end at {last_index}: \
                 files in snap/ or wal/ are missing or damaged; restore the data directory from a backup"
            ),
            LogError::InUse { path } => write!(
                f,
                "another distlockd server holds {} (flock); one server per data directory: \
                 stop it, or give this one another --data-dir",
                path.display()
            ),
            LogError::State(what) => write!(
                f,
                "the data directory holds {what} that this build cannot read; \
                 was it written by another version?"
            ),
            LogError::SnapshotMissing { index } => write!(
                f,
                "the write-ahead log refers to a snapshot at index {index} that no file in snap/ holds; \
                 restore the data directory from a backup"
            ),
        }
    }
}

impl std::error::Error for LogError {}

impl From<WalError> for LogError {
    fn from(e: WalError) -> LogError {
        LogError::Wal(e)
    }
}

/// The Raft log of one node, durable.
pub struct DurableLog {
    /// `DATA_DIR/LOCK`, flocked while the log is open.
    _lock: File,
    wal: Wal,
    snap_dir: PathBuf,
    /// Entries after the snapshot, contiguous.
    entries: Vec<Entry>,
    /// The newest snapshot (its data too: it is what a lagging follower
    /// is sent).
    snapshot: Snapshot,
    hard_state: HardState,
    conf_state: ConfState,
    /// Raft asked for a snapshot newer than the one there is.
    snapshot_wanted: Cell<bool>,
}

impl DurableLog {
    /// Opens the log in `dir` (created if missing). Returns the newest
    /// snapshot's data, from which the state machine is restored before
    /// the entries after it are applied again.
    pub fn open(dir: &Path) -> Result<(DurableLog, Option<Vec<u8>>), LogError> {
        let lock = lock_dir(dir)?;
        let snap_dir = dir.join("snap");
        let (file, skipped) = snapshot::read_latest(&snap_dir)?;
        for (path, damage) in skipped {
            log::warn!(
                "snapshot {} skipped: {damage}; using the one before it",
                path.display()
            );
        }
        let mut snap = Snapshot::default();
        let mut data = None;
        let mut conf_state = ConfState::default();
        if let Some(file) = file {
            conf_state =
                decode_conf_state(&file.meta).ok_or(LogError::State("a snapshot's membership"))?;
            let meta = snap.mut_metadata();
            meta.index = file.index;
            meta.term = file.term;
            meta.set_conf_state(conf_state.clone());
            snap.data = file.data.clone().into();
            data = Some(file.data);
        }
        let snap_index = snap.get_metadata().index;
        let (wal, recovered) = Wal::open(&dir.join("wal"), snap_index + 1)?;
        let mut log = DurableLog {
            _lock: lock,
            wal,
            snap_dir,
            entries: Vec::new(),
            snapshot: snap,
            hard_state: HardState::default(),
            conf_state,
            snapshot_wanted: Cell::new(false),
        };
        let mut marked = 0;
        for record in &recovered.records {
            marked = marked.max(log.replay(record)?);
        }
        log.settle_on_snapshot(marked)?;
        Ok((log, data))
    }

    /// Replays one record into the log as it was when it was written; the
    /// entries may start anywhere (older segments were deleted). Returns
    /// the index of a snapshot mark, else 0.
    fn replay(&mut self, record: &OwnedRecord) -> Result<u64, LogError> {
        let bad = |what| LogError::BadRecord {
            kind: record.kind,
            what,
        };
        let mut r = Reader(&record.payload);
        match record.kind {
            ENTRY => {
                let entry = decode_entry(&mut r).ok_or(bad("an entry"))?;
                let first = self.entries.first().map(|e| e.index);
                match first {
                    Some(first) if entry.index < first => {
                        // Below a snapshot mark replayed before: already in
                        // that snapshot.
                    }
                    Some(first) => {
                        let last = first + self.entries.len() as u64 - 1;
                        if entry.index > last + 1 {
                            return Err(LogError::Gap {
                                last_index: last,
                                next_index: entry.index,
                            });
                        }
                        self.entries.truncate((entry.index - first) as usize);
                        self.entries.push(entry);
                    }
                    None => self.entries.push(entry),
                }
            }
            HARD_STATE => {
                self.hard_state = HardState {
                    term: r.u64().ok_or(bad("a hard state"))?,
                    vote: r.u64().ok_or(bad("a hard state"))?,
                    commit: r.u64().ok_or(bad("a hard state"))?,
                    ..Default::default()
                };
            }
            CONF_STATE => {
                self.conf_state = decode_conf_state(&record.payload).ok_or(bad("a membership"))?;
            }
            SNAPSHOT => {
                let index = r.u64().ok_or(bad("a snapshot mark"))?;
                let _term = r.u64().ok_or(bad("a snapshot mark"))?;
                let kept = r.u8().ok_or(bad("a snapshot mark"))?;
                if kept == 0 {
                    self.entries.clear();
                } else {
                    self.drop_through(index);
                }
                return Ok(index);
            }
            _ => return Err(bad("an unknown kind")),
        }
        Ok(0)
    }

    /// After replay: entries the snapshot holds go, and so do all of them
    /// if they disagree with it (a snapshot from a leader, installed just
    /// before a crash, replaces a log that diverged); then the hard state
    /// is brought up to it.
    fn settle_on_snapshot(&mut self, marked: u64) -> Result<(), LogError> {
        let meta = self.snapshot.get_metadata().clone();
        if marked > meta.index {
            return Err(LogError::SnapshotMissing { index: marked });
        }
        if let Some(first) = self.entries.first().map(|e| e.index) {
            if first > meta.index + 1 {
                return Err(LogError::Gap {
                    last_index: meta.index,
                    next_index: first,
                });
            }
            let at_snapshot = meta
                .index
                .checked_sub(first)
                .and_then(|i| self.entries.get(i as usize))
                .map(|e| e.term);
            match at_snapshot {
                Some(term) if term == meta.term => self.drop_through(meta.index),
                // The entry at the snapshot was in a deleted segment.
                None if first == meta.index + 1 => {}
                _ => self.entries.clear(),
            }
        }
        if self.hard_state.commit < meta.index {
            self.hard_state.commit = meta.index;
        }
        if self.hard_state.term < meta.term {
            self.hard_state.term = meta.term;
        }
        if self.hard_state.commit > self.last_index() {
            return Err(LogError::CommitBeyondLog {
                commit: self.hard_state.commit,
                last_index: self.last_index(),
            });
        }
        Ok(())
    }

    /// Puts one entry at its index, replacing it and everything after it.
    fn put_entry(&mut self, entry: Entry) -> Result<(), LogError> {
        let first = self.first_index();
        let last = self.last_index();
        if entry.index < first || entry.index > last + 1 {
            return Err(LogError::Gap {
                last_index: last,
                next_index: entry.index,
            });
        }
        self.entries.truncate((entry.index - first) as usize);
        self.entries.push(entry);
        Ok(())
    }

    /// Forgets the entries at or below `index` (a snapshot holds them).
    fn drop_through(&mut self, index: u64) {
        let keep = self.entries.iter().position(|e| e.index > index);
        self.entries.drain(..keep.unwrap_or(self.entries.len()));
    }

    fn first_index(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot.get_metadata().index, |e| e.index)
    }

    /// Makes a new log's first membership: the voters a cluster starts
    /// with (on every member alike), or this node alone.
    pub fn bootstrap(&mut self, voters: &[u64]) -> Result<(), LogError> {
        let cs = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        self.set_conf_state(cs)?;
        self.sync()
    }

    /// Whether the log has ever been given a membership.
    pub fn is_initialized(&self) -> bool {
        !self.conf_state.voters.is_empty() || !self.conf_state.learners.is_empty()
    }

    /// Appends entries from a Ready (replacing any at their indexes and
    /// after): in memory now, on disk at the next [`DurableLog::sync`].
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        for entry in entries {
            self.put_entry(entry.clone())?;
            self.wal.append(ENTRY, &encode_entry(entry))?;
        }
        Ok(())
    }

    /// Records a new hard state, if it changed.
    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<(), LogError> {
        if *hs == self.hard_state {
            return Ok(());
        }
        self.hard_state = hs.clone();
        self.wal.append(HARD_STATE, &encode_hard_state(hs))?;
        Ok(())
    }

    /// Records a new commit index (a LightReady's).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), LogError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Records a new membership (after a configuration change is applied).
    pub fn set_conf_state(&mut self, cs: ConfState) -> Result<(), LogError> {
        self.wal.append(CONF_STATE, &encode_conf_state(&cs))?;
        self.conf_state = cs;
        Ok(())
    }

    /// Writes and fsyncs everything recorded since the last call; starts a
    /// new segment (with the hard state and membership) when one is full.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.wal.sync()?;
        if self.wal.is_segment_full() {
            self.wal.cut(self.last_index() + 1)?;
            self.wal
                .append(HARD_STATE, &encode_hard_state(&self.hard_state))?;
            self.wal
                .append(CONF_STATE, &encode_conf_state(&self.conf_state))?;
            // The newest snapshot's mark too: the segment holding it may be
            // deleted once a later snapshot covers it.
            let meta = self.snapshot.get_metadata();
            if meta.index > 0 {
                let mark = encode_mark(meta.index, meta.term, true);
                self.wal.append(SNAPSHOT, &mark)?;
            }
            self.wal.sync()?;
        }
        Ok(())
    }

    // A follower's: a lone voter never receives one (cluster mode calls it).
    #[allow(dead_code)]
    /// Takes a snapshot a leader sent: written durably, and the log
    /// replaced by it (entries after it are kept if they agree with it).
    pub fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), LogError> {
        let meta = snap.get_metadata();
        let agrees = self.term_at(meta.index) == Some(meta.term);
        self.save_snapshot(meta, snap.data.to_vec(), agrees)?;
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.set_hard_state(&hs)?;
        self.set_conf_state(meta.get_conf_state().clone())?;
        self.sync()
    }

    /// Compacts the log up to `index` (applied, at or below the commit
    /// index), whose state is `data`: a snapshot file is written, the
    /// entries through `index` forgotten and the segments they filled
    /// deleted. `conf_state` is the membership as of `index`.
    pub fn compact(
        &mut self,
        index: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> Result<(), LogError> {
        assert!(
            index <= self.hard_state.commit,
            "snapshot at {index} beyond the commit index {}",
            self.hard_state.commit
        );
        let term = self.term_at(index).expect("a compaction index in the log");
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(conf_state.clone());
        self.save_snapshot(&meta, data, true)?;
        self.sync()?;
        self.wal.remove_before(index)?;
        self.snapshot_wanted.set(false);
        Ok(())
    }

    /// Writes the snapshot file, then the record that points to it, and
    /// forgets the entries it holds (all of them unless `keep_after`).
    fn save_snapshot(
        &mut self,
        meta: &SnapshotMetadata,
        data: Vec<u8>,
        keep_after: bool,
    ) -> Result<(), LogError> {
        snapshot::write(
            &self.snap_dir,
            &SnapshotFile {
                index: meta.index,
                term: meta.term,
                meta: encode_conf_state(meta.get_conf_state()),
                data: data.clone(),
            },
        )?;
        let mark = encode_mark(meta.index, meta.term, keep_after);
        self.wal.append(SNAPSHOT, &mark)?;
        if keep_after {
            self.drop_through(meta.index);
        } else {
            self.entries.clear();
        }
        let mut snap = Snapshot::default();
        snap.set_metadata(meta.clone());
        snap.data = data.into();
        self.snapshot = snap;
        Ok(())
    }

    fn term_at(&self, index: u64) -> Option<u64> {
        let meta = self.snapshot.get_metadata();
        if index == meta.index {
            return Some(meta.term);
        }
        let first = self.first_index();
        if index < first || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - first) as usize].term)
    }

    /// The index the newest snapshot holds the state at (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    // A leader's with followers to catch up (cluster mode calls it).
    #[allow(dead_code)]
    /// Whether raft asked for a snapshot newer than the one there is: the
    /// loop should [`DurableLog::compact`] at its applied index.
    pub fn snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.get()
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Entries in memory, since the snapshot.
    #[cfg(test)]
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// The log's segment files, for tests.
    #[cfg(test)]
    fn segment_count(&self) -> usize {
        self.wal.segments().len()
    }
}

impl Storage for DurableLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.first_index();
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last_index() + 1,
            "entries up to {high} asked of a log ending at {}",
            self.last_index()
        );
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        for entry in &self.entries[(low - first) as usize..(high - first) as usize] {
            size += (entry.data.len() + entry.context.len() + 32) as u64;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.snapshot.get_metadata().index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_at(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(DurableLog::first_index(self))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(DurableLog::last_index(self))
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.get_metadata().index < request_index {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

/// Creates `dir` if missing and takes an exclusive flock on `dir/LOCK`,
/// released when the file is closed (also by a crash).
fn lock_dir(dir: &Path) -> Result<File, LogError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |error| LogError::Wal(WalError::Io { path, action, error })
    };
    crate::storage::wal::create_dir_durably(dir)?;
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("open", &path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(LogError::InUse { path }),
        Err(e) => Err(io("lock", &path)(e.into())),
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Option<&[u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn ids(&mut self) -> Option<Vec<u64>> {
        let n = self.u32()? as usize;
        if n > self.0.len() / 8 {
            return None;
        }
        (0..n).map(|_| self.u64()).collect()
    }
}

fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(25 + e.data.len() + e.context.len());
    out.extend_from_slice(&e.index.to_le_bytes());
    out.extend_from_slice(&e.term.to_le_bytes());
    out.push(e.get_entry_type() as u8);
    out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.data);
    out.extend_from_slice(&(e.context.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.context);
    out
}

fn decode_entry(r: &mut Reader<'_>) -> Option<Entry> {
    let mut e = Entry {
        index: r.u64()?,
        term: r.u64()?,
        ..Default::default()
    };
    e.set_entry_type(match r.u8()? {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => return None,
    });
    e.data = r.bytes()?.to_vec().into();
    e.context = r.bytes()?.to_vec().into();
    r.0.is_empty().then_some(e)
}

fn encode_mark(index: u64, term: u64, keep_after: bool) -> Vec<u8> {
    let mut mark = Vec::with_capacity(17);
    mark.extend_from_slice(&index.to_le_bytes());
    mark.extend_from_slice(&term.to_le_bytes());
    mark.push(keep_after as u8);
    mark
}

fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    for v in [hs.term, hs.vote, hs.commit] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// voters, learners, outgoing voters, next learners (each a u32 count and
/// u64 ids), then auto_leave (u8).
fn encode_conf_state(cs: &ConfState) -> Vec<u8> {
    let mut out = Vec::new();
    for ids in [
        &cs.voters,
        &cs.learners,
        &cs.voters_outgoing,
        &cs.learners_next,
    ] {
        out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for id in ids {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    out.push(cs.auto_leave as u8);
    out
}

fn decode_conf_state(bytes: &[u8]) -> Option<ConfState> {
    let mut r = Reader(bytes);
    let cs = ConfState {
        voters: r.ids()?,
        learners: r.ids()?,
        voters_outgoing: r.ids()?,
        learners_next: r.ids()?,
        auto_leave: match r.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        },
        ..Default::default()
    };
    r.0.is_empty().then_some(cs)
}

#[cfg(test)]
mod tests;
