//! A backend without a disk, so that other crates can test their logic against a real `Store`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Backend, Column, Op, Row};
use crate::StoreError;

type Table = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub(crate) struct MemoryBackend {
    // One lock over every column: a batch spanning columns becomes visible at once.
    columns: Mutex<[Table; Column::ALL.len()]>,
}

impl MemoryBackend {
    /// `write` without the `Result`: nothing here can fail.
    pub(crate) fn apply(&self, ops: Vec<Op>) {
        let mut columns = self.lock();
        for op in ops {
            let table = &mut columns[op.column as usize];
            match op.value {
                Some(value) => table.insert(op.key, value),
                None => table.remove(&op.key),
            };
        }
    }

    fn lock(&self) -> MutexGuard<'_, [Table; Column::ALL.len()]> {
        // A panic while holding the lock cannot leave half a batch: `apply` does not panic between
        // its first and last insert (short of running out of memory, which aborts).
        self.columns.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Backend for MemoryBackend {
    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()[column as usize].get(key).cloned())
    }

    fn scan(&self, column: Column) -> Result<Vec<Row>, StoreError> {
        Ok(self.lock()[column as usize]
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.apply(ops);
        Ok(())
    }

    fn location(&self) -> &Path {
        Path::new("<memory>")
    }
}
