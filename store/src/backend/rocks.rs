//! The RocksDB backend: the only file that knows about RocksDB.

use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamily, DB, ErrorKind, IteratorMode, Options, WriteBatch, WriteOptions};

use super::{Backend, Column, Op, Row};
use crate::StoreError;

pub(crate) struct RocksBackend {
    db: DB,
    path: PathBuf,
}

impl RocksBackend {
    /// Opens (creating if needed) the database in `dir` and takes its lock.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;

        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // RocksDB keeps 1000 info logs by default, one more per open.
        options.set_keep_log_file_num(10);

        // RocksDB refuses to open a database without naming all its column families. Open the ones
        // a newer berthd may have added too, so that the schema check reports the version mismatch
        // instead. Listing fails on a new database; the open below reports any real error.
        let mut names = DB::list_cf(&options, dir).unwrap_or_default();
        for column in Column::ALL {
            if !names.iter().any(|name| name == column.name()) {
                names.push(column.name().to_owned());
            }
        }

        let db = DB::open_cf(&options, dir, &names).map_err(|e| {
            let message = e.to_string();
            // The LOCK file is held by another process ("While lock file") or by another open
            // store in this process ("lock hold by current process").
            if e.kind() == ErrorKind::IOError
                && (message.contains("While lock file") || message.contains("lock hold by"))
            {
                StoreError::Locked {
                    path: dir.to_path_buf(),
                }
            } else {
                StoreError::Backend {
                    path: dir.to_path_buf(),
                    message,
                }
            }
        })?;
        Ok(Self {
            db,
            path: dir.to_path_buf(),
        })
    }

    fn handle(&self, column: Column) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(column.name())
            .ok_or_else(|| self.error(format!("column family {} is missing", column.name())))
    }

    fn error(&self, message: impl Into<String>) -> StoreError {
        StoreError::Backend {
            path: self.path.clone(),
            message: message.into(),
        }
    }
}

impl Backend for RocksBackend {
    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.handle(column)?, key)
            .map_err(|e| self.error(e.into_string()))
    }

    fn scan(&self, column: Column) -> Result<Vec<Row>, StoreError> {
        // An iterator reads from the implicit snapshot taken when it is created.
        self.db
            .iterator_cf(self.handle(column)?, IteratorMode::Start)
            .map(|item| {
                item.map(|(k, v)| (k.into_vec(), v.into_vec()))
                    .map_err(|e| self.error(e.into_string()))
            })
            .collect()
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for op in ops {
            let handle = self.handle(op.column)?;
            match op.value {
                Some(value) => batch.put_cf(handle, op.key, value),
                None => batch.delete_cf(handle, op.key),
            }
        }
        // A WriteBatch is one WAL record: recovery replays all of it or none of it. Syncing the
        // WAL before returning is what lets callers treat `Ok` as "survives power loss".
        let mut options = WriteOptions::default();
        options.set_sync(true);
        options.disable_wal(false);
        self.db
            .write_opt(batch, &options)
            .map_err(|e| self.error(e.into_string()))
    }

    fn location(&self) -> &Path {
        &self.path
    }
}
