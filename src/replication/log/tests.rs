use std::fs;

use raft::{Config, RawNode, StateRole};

use super::*;
use crate::storage::TempDir;

fn open(dir: &Path) -> (DurableLog, Option<Vec<u8>>) {
    DurableLog::open(dir).unwrap_or_else(|e| panic!("{e}"))
}

fn entry(index: u64, term: u64, data: &str) -> Entry {
    Entry {
        index,
        term,
        data: data.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

fn log_of(log: &DurableLog) -> Vec<(u64, u64, String)> {
    let (first, last) = (DurableLog::first_index(log), DurableLog::last_index(log));
    Storage::entries(log, first, last + 1, None, GetEntriesContext::empty(false))
        .unwrap()
        .iter()
        .map(|e| {
            (
                e.index,
                e.term,
                String::from_utf8(e.data.to_vec()).unwrap(),
            )
        })
        .collect()
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn node(log: DurableLog, applied: u64) -> RawNode<DurableLog> {
    let config = Config {
        id: 1,
        election_tick: 10,
        heartbeat_tick: 3,
        check_quorum: true,
        pre_vote: true,
        applied,
        ..Default::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    RawNode::new(&config, log, &logger).unwrap()
}

/// Handles every Ready in the documented order; returns the data of the
/// committed normal entries, in order.
fn drive(node: &mut RawNode<DurableLog>) -> Vec<String> {
    let mut applied = Vec::new();
    let mut apply = |entries: Vec<Entry>| {
        for e in entries {
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                applied.push(String::from_utf8(e.data.to_vec()).unwrap());
            }
        }
    };
    while node.has_ready() {
        let mut rd = node.ready();
        assert!(rd.messages().is_empty(), "a single node sends nothing");
        if !rd.snapshot().is_empty() {
            node.mut_store().install_snapshot(rd.snapshot()).unwrap();
        }
        apply(rd.take_committed_entries());
        node.mut_store().append(rd.entries()).unwrap();
        if let Some(hs) = rd.hs() {
            node.mut_store().set_hard_state(hs).unwrap();
        }
        node.mut_store().sync().unwrap();
        let mut light = node.advance(rd);
        if let Some(commit) = light.commit_index() {
            node.mut_store().set_commit(commit).unwrap();
            node.mut_store().sync().unwrap();
        }
        apply(light.take_committed_entries());
        node.advance_apply();
    }
    applied
}

fn elect(node: &mut RawNode<DurableLog>) {
    node.campaign().unwrap();
    drive(node);
    assert_eq!(node.raft.state, StateRole::Leader);
}

#[test]
fn a_single_node_commits_what_it_proposes_and_recovers_it_after_a_restart() {
    let tmp = TempDir::new("log-single");
    let (mut log, data) = open(&tmp.0);
    assert!(data.is_none() && !log.is_initialized());
    log.bootstrap(&[1]).unwrap();
    let mut n = node(log, 0);
    elect(&mut n);
    for i in 0..10 {
        n.propose(vec![], format!("cmd-{i}").into_bytes()).unwrap();
    }
    let applied = drive(&mut n);
    assert_eq!(applied, (0..10).map(|i| format!("cmd-{i}")).collect::<Vec<_>>());
    let before = log_of(n.store());
    let hs = n.store().hard_state().clone();
    assert_eq!(hs.commit, 11, "the election's empty entry, then ten");
    drop(n);

    let (log, data) = open(&tmp.0);
    assert!(data.is_none() && log.is_initialized());
    assert_eq!(log_of(&log), before);
    assert_eq!(log.hard_state(), &hs);
    assert_eq!(log.conf_state().voters, vec![1]);
    // Restarted with everything applied: nothing comes again, new
    // proposals follow the old ones.
    let mut n = node(log, hs.commit);
    elect(&mut n);
    n.propose(vec![], b"after".to_vec()).unwrap();
    assert_eq!(drive(&mut n), vec!["after".to_string()]);
    let last = log_of(n.store()).last().cloned().unwrap();
    assert_eq!((last.0, last.1), (13, hs.term + 1));
}

#[test]
fn an_overwritten_tail_is_replaced_on_replay_as_it_was_in_memory() {
    let tmp = TempDir::new("log-overwrite");
    let (mut log, _) = open(&tmp.0);
    let old: Vec<Entry> = (1..=5).map(|i| entry(i, 1, "old")).collect();
    log.append(&old).unwrap();
    log.append(&[entry(3, 2, "new"), entry(4, 2, "new")]).unwrap();
    log.sync().unwrap();
    let expected = vec![
        (1, 1, "old".to_string()),
        (2, 1, "old".to_string()),
        (3, 2, "new".to_string()),
        (4, 2, "new".to_string()),
    ];
    assert_eq!(log_of(&log), expected);
    drop(log);
    let (log, _) = open(&tmp.0);
    assert_eq!(log_of(&log), expected);
}

#[test]
fn a_gap_in_appended_entries_is_refused() {
    let tmp = TempDir::new("log-gap");
    let (mut log, _) = open(&tmp.0);
    log.append(&[entry(1, 1, "a")]).unwrap();
    let error = log.append(&[entry(3, 1, "c")]).unwrap_err();
    assert!(
        matches!(
            error,
            LogError::Gap {
                last_index: 1,
                next_index: 3
            }
        ),
        "{error}"
    );
}

#[test]
fn compaction_keeps_the_state_in_a_snapshot_and_the_entries_after_it() {
    let tmp = TempDir::new("log-compact");
    let (mut log, _) = open(&tmp.0);
    log.bootstrap(&[1]).unwrap();
    let entries: Vec<Entry> = (1..=6).map(|i| entry(i, 1, &format!("e{i}"))).collect();
    log.append(&entries).unwrap();
    log.set_hard_state(&hard_state(1, 1, 4)).unwrap();
    log.sync().unwrap();
    let cs = log.conf_state().clone();
    log.compact(4, &cs, b"state at 4".to_vec()).unwrap();
    let after: Vec<(u64, u64, String)> = (5..=6).map(|i| (i, 1, format!("e{i}"))).collect();
    assert_eq!(log_of(&log), after);
    assert_eq!(Storage::first_index(&log).unwrap(), 5);
    assert_eq!(Storage::term(&log, 4).unwrap(), 1, "the snapshot's term");
    assert!(matches!(
        Storage::term(&log, 3),
        Err(raft::Error::Store(StorageError::Compacted))
    ));
    assert!(matches!(
        Storage::entries(&log, 4, 6, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(StorageError::Compacted))
    ));
    drop(log);

    let (log, data) = open(&tmp.0);
    assert_eq!(data.as_deref(), Some(&b"state at 4"[..]));
    assert_eq!(log_of(&log), after);
    assert_eq!(Storage::first_index(&log).unwrap(), 5);
    let snap = Storage::snapshot(&log, 4, 2).unwrap();
    assert_eq!(
        (snap.get_metadata().index, snap.get_metadata().term),
        (4, 1)
    );
    assert_eq!(&snap.data[..], b"state at 4");
    assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1]);
}

#[test]
fn a_snapshot_newer_than_the_last_is_asked_for_and_made() {
    let tmp = TempDir::new("log-wanted");
    let (mut log, _) = open(&tmp.0);
    log.bootstrap(&[1]).unwrap();
    log.append(&[entry(1, 1, "a"), entry(2, 1, "b")]).unwrap();
    log.set_hard_state(&hard_state(1, 1, 2)).unwrap();
    log.sync().unwrap();
    assert!(!log.snapshot_wanted());
    assert!(matches!(
        Storage::snapshot(&log, 2, 3),
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable
        ))
    ));
    assert!(log.snapshot_wanted());
    let cs = log.conf_state().clone();
    log.compact(2, &cs, b"s".to_vec()).unwrap();
    assert!(!log.snapshot_wanted());
    assert_eq!(Storage::snapshot(&log, 2, 3).unwrap().get_metadata().index, 2);
}

#[test]
fn an_installed_snapshot_that_disagrees_replaces_the_whole_log_also_after_a_restart() {
    let tmp = TempDir::new("log-install");
    let (mut log, _) = open(&tmp.0);
    log.bootstrap(&[1, 2, 3]).unwrap();
    let entries: Vec<Entry> = (1..=8).map(|i| entry(i, 1, "stale")).collect();
    log.append(&entries).unwrap();
    log.set_hard_state(&hard_state(1, 0, 2)).unwrap();
    log.sync().unwrap();
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 5;
    snap.mut_metadata().term = 3;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    snap.data = b"leader state".to_vec().into();
    log.install_snapshot(&snap).unwrap();
    assert_eq!(log_of(&log), vec![], "entries 6-8 of term 1 disagree");
    assert_eq!(Storage::last_index(&log).unwrap(), 5);
    assert_eq!((log.hard_state().commit, log.hard_state().term), (5, 3));
    drop(log);
    let (log, data) = open(&tmp.0);
    assert_eq!(data.as_deref(), Some(&b"leader state"[..]));
    assert_eq!(log_of(&log), vec![]);
    assert_eq!(Storage::last_index(&log).unwrap(), 5);
    assert_eq!((log.hard_state().commit, log.hard_state().term), (5, 3));
}

#[test]
fn an_installed_snapshot_that_agrees_keeps_the_entries_after_it() {
    let tmp = TempDir::new("log-agree");
    let (mut log, _) = open(&tmp.0);
    log.bootstrap(&[1, 2, 3]).unwrap();
    let entries: Vec<Entry> = (1..=8).map(|i| entry(i, 2, &format!("e{i}"))).collect();
    log.append(&entries).unwrap();
    log.sync().unwrap();
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 5;
    snap.mut_metadata().term = 2;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    log.install_snapshot(&snap).unwrap();
    let after: Vec<(u64, u64, String)> = (6..=8).map(|i| (i, 2, format!("e{i}"))).collect();
    assert_eq!(log_of(&log), after);
    drop(log);
    assert_eq!(log_of(&open(&tmp.0).0), after);
}

#[test]
fn a_crash_between_a_leaders_snapshot_and_its_mark_still_drops_the_disagreeing_log() {
    let tmp = TempDir::new("log-crash-mark");
    let (mut log, _) = open(&tmp.0);
    log.bootstrap(&[1, 2, 3]).unwrap();
    let entries: Vec<Entry> = (1..=8).map(|i| entry(i, 1, "stale")).collect();
    log.append(&entries).unwrap();
    log.sync().unwrap();
    drop(log);
    // The snapshot file reached the disk; the record pointing to it did not.
    snapshot::write(
        &tmp.0.join("snap"),
        &SnapshotFile {
            index: 5,
            term: 3,
            meta: encode_conf_state(&ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            }),
            data: b"leader state".to_vec(),
        },
    )
    .unwrap();
    let (log, data) = open(&tmp.0);
    assert_eq!(data.as_deref(), Some(&b"leader state"[..]));
    assert_eq!(log_of(&log), vec![]);
    assert_eq!(Storage::last_index(&log).unwrap(), 5);
}

#[test]
fn segments_the_snapshot_covers_are_deleted_and_state_survives_them() {
    let tmp = TempDir::new("log-segments");
    let (mut log, _) = open(&tmp.0);
    log.bootstrap(&[1]).unwrap();
    // Entries big enough that three fill a segment.
    log.wal.set_segment_size_max(3000);
    let big = "x".repeat(1000);
    for i in 1..=7 {
        log.append(&[entry(i, 1, &big)]).unwrap();
        log.sync().unwrap();
    }
    log.set_hard_state(&hard_state(1, 1, 7)).unwrap();
    log.sync().unwrap();
    assert!(log.segment_count() >= 3, "{} segments", log.segment_count());
    let cs = log.conf_state().clone();
    log.compact(6, &cs, b"six".to_vec()).unwrap();
    assert!(log.segment_count() <= 2, "{} segments", log.segment_count());
    drop(log);
    let (log, data) = open(&tmp.0);
    assert_eq!(data.as_deref(), Some(&b"six"[..]));
    assert_eq!(log.conf_state().voters, vec![1], "membership kept");
    assert_eq!(log.hard_state(), &hard_state(1, 1, 7), "hard state kept");
    assert_eq!(log.entry_count(), 1);
    assert_eq!(Storage::last_index(&log).unwrap(), 7);
}

#[test]
fn records_round_trip_and_truncated_ones_are_refused() {
    let mut e = entry(9, 4, "data");
    e.context = b"ctx".to_vec().into();
    e.set_entry_type(EntryType::EntryConfChangeV2);
    let bytes = encode_entry(&e);
    assert_eq!(decode_entry(&mut Reader(&bytes)), Some(e));
    for len in 0..bytes.len() {
        assert_eq!(decode_entry(&mut Reader(&bytes[..len])), None, "{len}");
    }
    let cs = ConfState {
        voters: vec![1, 2],
        learners: vec![4],
        voters_outgoing: vec![1, 2, 3],
        auto_leave: true,
        ..Default::default()
    };
    let bytes = encode_conf_state(&cs);
    assert_eq!(decode_conf_state(&bytes), Some(cs));
    for len in 0..bytes.len() {
        assert_eq!(decode_conf_state(&bytes[..len]), None, "{len}");
    }
}

#[test]
fn a_commit_index_beyond_the_log_is_refused_not_handed_to_raft() {
    let tmp = TempDir::new("log-beyond");
    let (mut log, _) = open(&tmp.0);
    log.bootstrap(&[1]).unwrap();
    log.append(&[entry(1, 1, "a"), entry(2, 1, "b")]).unwrap();
    log.set_hard_state(&hard_state(1, 1, 5)).unwrap();
    log.sync().unwrap();
    drop(log);
    let error = DurableLog::open(&tmp.0).err().expect("refused");
    assert!(
        matches!(
            error,
            LogError::CommitBeyondLog {
                commit: 5,
                last_index: 2
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("backup"), "{error}");
}

/// Compaction at the last index, with a segment cut right after: the
/// newest snapshot's mark is repeated in the new segment, so that when that
/// snapshot is damaged, opening says so instead of starting from an older
/// state.
#[test]
fn a_damaged_newest_snapshot_is_refused_after_the_segments_before_it_went() {
    let tmp = TempDir::new("log-damaged-snap");
    let (mut log, _) = open(&tmp.0);
    log.bootstrap(&[1]).unwrap();
    log.wal.set_segment_size_max(3000);
    let big = "x".repeat(1000);
    for i in 1..=6 {
        log.append(&[entry(i, 1, &big)]).unwrap();
        log.sync().unwrap();
    }
    log.set_hard_state(&hard_state(1, 1, 6)).unwrap();
    log.sync().unwrap();
    let cs = log.conf_state().clone();
    log.compact(6, &cs, b"six".to_vec()).unwrap();
    drop(log);
    let snap = fs::read_dir(tmp.0.join("snap"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .unwrap();
    let mut bytes = fs::read(&snap).unwrap();
    bytes[45] ^= 1;
    fs::write(&snap, &bytes).unwrap();
    let error = DurableLog::open(&tmp.0).err().expect("refused");
    assert!(
        matches!(
            error,
            LogError::SnapshotMissing { index: 6 } | LogError::CommitBeyondLog { .. }
        ),
        "{error}"
    );
}
