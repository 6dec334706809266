//! berthd's metadata store: typed records in one RocksDB, every write durable and atomic.
//!
//! # Layout
//!
//! One RocksDB under the directory berthd passes (`<root>/meta`):
//!
//! ```text
//! <dir>/                         RocksDB files; LOCK keeps a second berthd out
//!   column family "default"      store metadata
//!     "schema_version"           -> SchemaMeta { uint32 version = 1; }    (schema.rs)
//!   column family "sandboxes"    <sandbox id>          -> SandboxRecord    (records.rs)
//!   column family "containers"   <container id>        -> ContainerRecord
//!   column family "images"       <image config digest> -> ImageRecord
//!   column family "leases"       <lease id>            -> LeaseRecord
//! ```
//!
//! Keys are the record's id as UTF-8 bytes, never empty; each kind has its own column family, so ids
//! of different kinds never collide and a listing is a scan of one column family in key (byte)
//! order. Values are the protobuf encoding (prost) of the record; `records.rs` documents the tags.
//!
//! # Versions and migrations
//!
//! The schema version is [`SCHEMA_VERSION`]. An empty store is stamped with it; an older store is
//! migrated in one atomic write (all migrations plus the new version, or nothing); a newer store is
//! refused ([`StoreError::SchemaTooNew`]), since this build cannot know what changed.
//!
//! **Every change to a record's meaning bumps `SCHEMA_VERSION` and adds a migration; adding an
//! optional field does not.** A change of meaning is anything an older reader or a newer reader
//! would misread: a field's type, unit or interpretation, a renamed or removed tag (tags are never
//! reused), a new enum value, a new key format or column family. Adding a field with a new tag whose
//! zero value means "absent" needs neither: prost skips unknown tags and defaults missing ones.
//!
//! # Durability
//!
//! Every write, single or batched, is one RocksDB `WriteBatch`, written to the WAL and synced before
//! it returns: what was acknowledged survives a crash or power loss, and recovery never exposes part
//! of a batch.

mod backend;
mod records;
pub mod schema;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backend::memory::MemoryBackend;
use backend::rocks::RocksBackend;
use backend::{Backend, Column, Op};
pub use records::{
    ContainerRecord, ContainerState, ImageRecord, LeaseRecord, LeaseResource, Record, RecordKind,
    SandboxRecord, SandboxState,
};
pub use schema::SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("create metadata directory {}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("metadata store {} is locked by another process (is another berthd running?)", .path.display())]
    Locked { path: PathBuf },

    #[error(
        "metadata schema version {found} in {} is newer than this berthd supports ({supported}); upgrade berthd",
        .path.display()
    )]
    SchemaTooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error("metadata store {} is at schema version {from} and no migration from it exists", .path.display())]
    NoMigration { path: PathBuf, from: u32 },

    #[error("migrate metadata store {} from schema version {from}", .path.display())]
    Migration {
        path: PathBuf,
        from: u32,
        #[source]
        source: Box<StoreError>,
    },

    #[error("corrupt {kind} record {key:?}")]
    Corrupt {
        kind: &'static str,
        key: String,
        #[source]
        source: prost::DecodeError,
    },

    #[error("{kind} record with an empty id")]
    EmptyId { kind: RecordKind },

    #[error("metadata store {}: {message}", .path.display())]
    Backend { path: PathBuf, message: String },
}

/// A handle on the store. Cloning is cheap and clones share the same database.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    /// Opens the store in `dir`, creating the directory and the database if needed, and migrating
    /// it to [`SCHEMA_VERSION`]. Holds the directory's lock until the last clone is dropped.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let backend = RocksBackend::open(dir)?;
        schema::prepare(&backend, SCHEMA_VERSION, schema::MIGRATIONS)?;
        Ok(Store {
            backend: Arc::new(backend),
        })
    }

    /// An empty store in memory, for tests of code that uses the store.
    #[must_use]
    pub fn in_memory() -> Store {
        let backend = MemoryBackend::default();
        backend.apply(vec![schema::version_op(SCHEMA_VERSION)]);
        Store {
            backend: Arc::new(backend),
        }
    }

    pub fn get<R: Record>(&self, id: &str) -> Result<Option<R>, StoreError> {
        self.backend
            .get(Column::of(R::KIND), id.as_bytes())?
            .map(|value| records::decode(id.as_bytes(), &value))
            .transpose()
    }

    /// Every record of kind `R`, ordered by id.
    pub fn list<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        self.backend
            .scan(Column::of(R::KIND))?
            .iter()
            .map(|(key, value)| records::decode(key, value))
            .collect()
    }

    /// Inserts or replaces the record with `record.key()`.
    pub fn put<R: Record>(&self, record: &R) -> Result<(), StoreError> {
        let mut batch = self.batch();
        batch.put(record);
        self.write(batch)
    }

    /// Deletes the record if it exists; deleting a missing record succeeds.
    pub fn delete<R: Record>(&self, id: &str) -> Result<(), StoreError> {
        let mut batch = self.batch();
        batch.delete::<R>(id);
        self.write(batch)
    }

    #[must_use]
    pub fn batch(&self) -> Batch {
        Batch::default()
    }

    /// Applies every operation of `batch`, in order, atomically: readers and a crash see all of it
    /// or none of it. Returns once it is durable.
    pub fn write(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        check_ids(&batch.ops)?;
        self.backend.write(batch.ops)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.backend.location())
            .finish()
    }
}

/// Writes collected for [`Store::write`].
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn put<R: Record>(&mut self, record: &R) -> &mut Batch {
        self.ops.push(Op {
            column: Column::of(R::KIND),
            key: record.key().as_bytes().to_vec(),
            value: Some(record.encode_to_vec()),
        });
        self
    }

    pub fn delete<R: Record>(&mut self, id: &str) -> &mut Batch {
        self.ops.push(Op {
            column: Column::of(R::KIND),
            key: id.as_bytes().to_vec(),
            value: None,
        });
        self
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.ops.len())
            .finish()
    }
}

/// An empty id is a caller's bug (an unset field); refuse the whole batch rather than store it.
pub(crate) fn check_ids(ops: &[Op]) -> Result<(), StoreError> {
    for op in ops {
        if let Some(kind) = op.column.kind()
            && op.key.is_empty()
        {
            return Err(StoreError::EmptyId { kind });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_shareable<T: Send + Sync + Clone + 'static>() {}

    #[test]
    fn store_is_send_sync_and_cheap_to_clone() {
        assert_shareable::<Store>();
    }

    #[test]
    fn undecodable_record_is_reported_with_kind_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let rocks: Arc<dyn Backend> = Arc::new(RocksBackend::open(dir.path()).unwrap());
        let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        for backend in [memory, rocks] {
            backend
                .write(vec![Op {
                    column: Column::Sandboxes,
                    key: b"bad".to_vec(),
                    // Field 1 claims 5 bytes of string but the value ends.
                    value: Some(vec![0x0a, 0x05, b'x']),
                }])
                .unwrap();
            let store = Store { backend };

            let err = store.get::<SandboxRecord>("bad").unwrap_err();
            assert!(
                matches!(&err, StoreError::Corrupt { kind: "sandbox", key, .. } if key == "bad"),
                "{err:?}"
            );
            assert_eq!(err.to_string(), "corrupt sandbox record \"bad\"");
            let err = store.list::<SandboxRecord>().unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
            // Other kinds are unaffected.
            assert_eq!(store.list::<ContainerRecord>().unwrap(), vec![]);
        }
    }
}
