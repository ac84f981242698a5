//! What a durable server keeps on disk: the write-ahead log ([`wal`]),
//! snapshot files ([`snapshot`]) and the checksum both carry ([`crc32c`]).

pub mod crc32c;
pub mod snapshot;
pub mod wal;

/// A file name of two numbers in 16 hex digits and a suffix, as segments
/// (`<seq>-<first_index>.wal`) and snapshots (`<index>-<term>.snap`) are
/// named: sorted by name, sorted by number.
fn numbered_name(a: u64, b: u64, suffix: &str) -> String {
    format!("{a:016x}-{b:016x}{suffix}")
}

/// The two numbers of a [`numbered_name`] with this suffix; `None` for any
/// other file.
fn parse_numbered_name(name: &str, suffix: &str) -> Option<(u64, u64)> {
    let (a, b) = name.strip_suffix(suffix)?.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
}

/// A fresh directory under the system's temporary one, removed on drop;
/// for the tests of the modules that write files.
#[cfg(test)]
pub(crate) struct TempDir(pub std::path::PathBuf);

#[cfg(test)]
impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "distlockd-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
