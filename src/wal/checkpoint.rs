//! Consumer checkpoints: how far each sink has durably written, stored atomically.
//!
//! `{wal}/checkpoints/{consumer}.json` holds `{"lsn": N, "intent": [a, b] | null}`: every record
//! up to `lsn` is in the sink's store, and `intent`, when set, is a write of records `a..=b`
//! that started and may not have finished (the sink redoes exactly that write on start, so
//! a crash mid-write yields the same files again, never a second copy).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub lsn: u64,
    pub intent: Option<(u64, u64)>,
}

pub(crate) fn dir(wal_dir: &Path) -> PathBuf {
    wal_dir.join("checkpoints")
}

fn path(wal_dir: &Path, consumer: &str) -> PathBuf {
    dir(wal_dir).join(format!("{consumer}.json"))
}

/// Whether `consumer` has ever stored a checkpoint.
pub(crate) fn exists(wal_dir: &Path, consumer: &str) -> io::Result<bool> {
    path(wal_dir, consumer).try_exists()
}

/// The stored checkpoint of `consumer`, or the default (nothing consumed) if none.
pub(crate) fn load(wal_dir: &Path, consumer: &str) -> io::Result<Checkpoint> {
    match fs::read(path(wal_dir, consumer)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("checkpoint of {consumer} is unreadable: {e}"),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Checkpoint::default()),
        Err(e) => Err(e),
    }
}

/// Stores `checkpoint` for `consumer`: temp file, fsync, rename, fsync of the directory.
pub(crate) fn store(wal_dir: &Path, consumer: &str, checkpoint: Checkpoint) -> io::Result<()> {
    let dir = dir(wal_dir);
    fs::create_dir_all(&dir)?;
    let target = path(wal_dir, consumer);
    let tmp = dir.join(format!(".{consumer}.json.tmp"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(&checkpoint).map_err(io::Error::other)?)?;
    file.sync_all()?;
    fs::rename(&tmp, &target)?;
    fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            load(dir.path(), "parquet-x").unwrap(),
            Checkpoint::default()
        );
        let c = Checkpoint {
            lsn: 41,
            intent: Some((42, 50)),
        };
        store(dir.path(), "parquet-x", c).unwrap();
        assert_eq!(load(dir.path(), "parquet-x").unwrap(), c);
        store(
            dir.path(),
            "parquet-x",
            Checkpoint {
                lsn: 50,
                intent: None,
            },
        )
        .unwrap();
        assert_eq!(load(dir.path(), "parquet-x").unwrap().lsn, 50);
        fs::write(path(dir.path(), "broken"), b"{").unwrap();
        assert!(load(dir.path(), "broken").is_err());
    }
}
