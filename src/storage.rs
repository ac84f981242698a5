//! What a durable server keeps on disk: the write-ahead log ([`wal`]),
//! snapshot files ([`snapshot`]) and the checksum both carry ([`crc32c`]).

pub mod crc32c;
pub mod snapshot;
pub mod wal;
