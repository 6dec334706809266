//! The schema version and the migrations that bring an older store up to it.

use std::collections::BTreeMap;

use prost::Message;

use crate::backend::{Backend, Column, Op};
use crate::records::{self, Record};
use crate::{StoreError, check_ids};

/// The schema this build reads and writes. Bump it, and add a [`Migration`] from the previous
/// version, whenever the meaning of stored data changes (see the crate docs).
pub const SCHEMA_VERSION: u32 = 1;

/// Migration `from` turns a store at version `from` into one at version `from + 1`.
pub(crate) struct Migration {
    pub(crate) from: u32,
    pub(crate) migrate: fn(&mut MigrationContext<'_>) -> Result<(), StoreError>,
}

/// The migrations this build knows, in any order. Version 1 is the first schema: it is written
/// on creation and has nothing to migrate from.
pub(crate) static MIGRATIONS: &[Migration] = &[];

const VERSION_KEY: &[u8] = b"schema_version";

/// The value under `VERSION_KEY` in the default column family.
#[derive(Clone, PartialEq, Message)]
struct SchemaMeta {
    #[prost(uint32, tag = "1")]
    version: u32,
}

pub(crate) fn version_op(version: u32) -> Op {
    Op {
        column: Column::Meta,
        key: VERSION_KEY.to_vec(),
        value: Some(SchemaMeta { version }.encode_to_vec()),
    }
}

pub(crate) fn stored_version(backend: &dyn Backend) -> Result<Option<u32>, StoreError> {
    let Some(bytes) = backend.get(Column::Meta, VERSION_KEY)? else {
        return Ok(None);
    };
    let meta = SchemaMeta::decode(bytes.as_slice()).map_err(|source| StoreError::Corrupt {
        kind: "metadata",
        key: String::from_utf8_lossy(VERSION_KEY).into_owned(),
        source,
    })?;
    Ok(Some(meta.version))
}

/// Brings the store in `backend` to version `target`: stamps an empty store, migrates an older one
/// in a single atomic write, refuses a newer one.
pub(crate) fn prepare(
    backend: &dyn Backend,
    target: u32,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    let found = match stored_version(backend)? {
        Some(version) => version,
        None => {
            let mut empty = true;
            for column in Column::RECORDS {
                empty &= backend.scan(column)?.is_empty();
            }
            if empty {
                return backend.write(vec![version_op(target)]);
            }
            // Records without a version predate versioning; no released berthd wrote such a store,
            // so this finds no migration unless one is ever added for it.
            0
        }
    };
    if found > target {
        return Err(StoreError::SchemaTooNew {
            path: backend.location().to_path_buf(),
            found,
            supported: target,
        });
    }
    if found == target {
        return Ok(());
    }

    let mut context = MigrationContext {
        backend,
        pending: BTreeMap::new(),
    };
    for from in found..target {
        let migration =
            migrations
                .iter()
                .find(|m| m.from == from)
                .ok_or_else(|| StoreError::NoMigration {
                    path: backend.location().to_path_buf(),
                    from,
                })?;
        (migration.migrate)(&mut context).map_err(|source| StoreError::Migration {
            path: backend.location().to_path_buf(),
            from,
            source: Box::new(source),
        })?;
    }
    let mut ops: Vec<Op> = context
        .pending
        .into_iter()
        .map(|((column, key), value)| Op { column, key, value })
        .collect();
    ops.push(version_op(target));
    check_ids(&ops)?;
    backend.write(ops)
}

/// What a migration reads and writes. Reads see the writes of earlier migrations in the same run;
/// nothing reaches the backend until every migration succeeded, and then all of it does at once,
/// together with the new version.
pub struct MigrationContext<'a> {
    backend: &'a dyn Backend,
    pending: BTreeMap<(Column, Vec<u8>), Option<Vec<u8>>>,
}

impl MigrationContext<'_> {
    pub fn get<R: Record>(&self, id: &str) -> Result<Option<R>, StoreError> {
        let column = Column::of(R::KIND);
        let value = match self.pending.get(&(column, id.as_bytes().to_vec())) {
            Some(pending) => pending.clone(),
            None => self.backend.get(column, id.as_bytes())?,
        };
        value
            .map(|v| records::decode(id.as_bytes(), &v))
            .transpose()
    }

    pub fn list<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        let column = Column::of(R::KIND);
        let mut rows: BTreeMap<Vec<u8>, Vec<u8>> = self.backend.scan(column)?.into_iter().collect();
        let pending = self
            .pending
            .range((column, Vec::new())..)
            .take_while(|((c, _), _)| *c == column);
        for ((_, key), value) in pending {
            match value {
                Some(value) => rows.insert(key.clone(), value.clone()),
                None => rows.remove(key),
            };
        }
        rows.iter().map(|(k, v)| records::decode(k, v)).collect()
    }

    pub fn put<R: Record>(&mut self, record: &R) {
        self.pending.insert(
            (Column::of(R::KIND), record.key().as_bytes().to_vec()),
            Some(record.encode_to_vec()),
        );
    }

    pub fn delete<R: Record>(&mut self, id: &str) {
        self.pending
            .insert((Column::of(R::KIND), id.as_bytes().to_vec()), None);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::backend::rocks::RocksBackend;
    use crate::records::{ImageRecord, LeaseRecord, SandboxRecord};

    /// Runs `test` against each backend. `test` gets a function that (re)opens the same store; it
    /// must drop the previous handle before reopening, as berthd would.
    fn with_each_backend(test: impl Fn(&dyn Fn() -> Arc<dyn Backend>)) {
        let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::default());
        test(&|| memory.clone());

        let dir = tempfile::tempdir().unwrap();
        test(&|| -> Arc<dyn Backend> { Arc::new(RocksBackend::open(dir.path()).unwrap()) });
    }

    fn sandbox(id: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            namespace: "default".into(),
            ..Default::default()
        }
    }

    fn put(backend: &dyn Backend, records: &[SandboxRecord]) {
        let ops = records
            .iter()
            .map(|r| Op {
                column: Column::Sandboxes,
                key: r.id.as_bytes().to_vec(),
                value: Some(r.encode_to_vec()),
            })
            .collect();
        backend.write(ops).unwrap();
    }

    /// Counts its runs in the store itself, so running twice is visible after the fact.
    fn count_run(ctx: &mut MigrationContext<'_>) -> Result<(), StoreError> {
        let mut runs = ctx.get::<LeaseRecord>("runs")?.unwrap_or_default();
        runs.id = "runs".into();
        runs.created_at_ns += 1;
        ctx.put(&runs);
        Ok(())
    }

    fn rename_namespaces(ctx: &mut MigrationContext<'_>) -> Result<(), StoreError> {
        count_run(ctx)?;
        for mut sandbox in ctx.list::<SandboxRecord>()? {
            sandbox.namespace = format!("v2-{}", sandbox.namespace);
            ctx.put(&sandbox);
        }
        Ok(())
    }

    /// Depends on `rename_namespaces` having run before it in the same pass.
    fn copy_namespaces_to_images(ctx: &mut MigrationContext<'_>) -> Result<(), StoreError> {
        for sandbox in ctx.list::<SandboxRecord>()? {
            ctx.put(&ImageRecord {
                id: sandbox.namespace,
                ..Default::default()
            });
        }
        ctx.delete::<SandboxRecord>("b");
        Ok(())
    }

    fn fail(_: &mut MigrationContext<'_>) -> Result<(), StoreError> {
        Err(StoreError::EmptyId {
            kind: crate::RecordKind::Image,
        })
    }

    static ONE_TO_TWO: &[Migration] = &[Migration {
        from: 1,
        migrate: rename_namespaces,
    }];

    fn runs(backend: &dyn Backend) -> i64 {
        let bytes = backend.get(Column::Leases, b"runs").unwrap().unwrap();
        LeaseRecord::decode(bytes.as_slice()).unwrap().created_at_ns
    }

    #[test]
    #[allow(
        clippy::reversed_empty_ranges,
        reason = "empty while SCHEMA_VERSION is 1, which is the point"
    )]
    fn exactly_one_migration_per_version_below_current() {
        let mut froms: Vec<u32> = MIGRATIONS.iter().map(|m| m.from).collect();
        froms.sort_unstable();
        assert_eq!(froms, (1..SCHEMA_VERSION).collect::<Vec<_>>());
    }

    #[test]
    fn empty_store_is_stamped_with_current_version_without_migrating() {
        with_each_backend(|open| {
            let backend = open();
            assert_eq!(stored_version(&*backend).unwrap(), None);
            prepare(&*backend, SCHEMA_VERSION, MIGRATIONS).unwrap();
            assert_eq!(stored_version(&*backend).unwrap(), Some(1));
        });
        // A fresh store is created at the target version: no migration runs.
        with_each_backend(|open| {
            let backend = open();
            prepare(&*backend, 2, ONE_TO_TWO).unwrap();
            assert_eq!(stored_version(&*backend).unwrap(), Some(2));
            assert_eq!(backend.get(Column::Leases, b"runs").unwrap(), None);
        });
    }

    #[test]
    fn newer_version_is_refused_with_schema_too_new() {
        with_each_backend(|open| {
            let backend = open();
            backend.write(vec![version_op(3)]).unwrap();
            let err = prepare(&*backend, SCHEMA_VERSION, MIGRATIONS).unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::SchemaTooNew {
                        found: 3,
                        supported: 1,
                        ..
                    }
                ),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(
                message.contains("metadata schema version 3")
                    && message.contains("newer than this berthd supports (1); upgrade berthd")
                    && message.contains(&backend.location().display().to_string()),
                "{message}"
            );
            // Refusing must not touch the store.
            assert_eq!(stored_version(&*backend).unwrap(), Some(3));
        });
    }

    #[test]
    fn public_open_refuses_a_newer_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let backend = RocksBackend::open(dir.path()).unwrap();
            backend.write(vec![version_op(3)]).unwrap();
        }
        let err = crate::Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 3, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn migration_from_1_to_2_runs_exactly_once() {
        with_each_backend(|open| {
            let backend = open();
            prepare(&*backend, 1, &[]).unwrap();
            put(&*backend, &[sandbox("a"), sandbox("b")]);
            drop(backend);

            let backend = open();
            prepare(&*backend, 2, ONE_TO_TWO).unwrap();
            assert_eq!(stored_version(&*backend).unwrap(), Some(2));
            assert_eq!(runs(&*backend), 1);
            drop(backend);

            let backend = open();
            prepare(&*backend, 2, ONE_TO_TWO).unwrap();
            assert_eq!(runs(&*backend), 1);
            let bytes = backend.get(Column::Sandboxes, b"a").unwrap().unwrap();
            let a = SandboxRecord::decode(bytes.as_slice()).unwrap();
            assert_eq!(a.namespace, "v2-default");
        });
    }

    #[test]
    fn migrations_run_in_order_and_see_earlier_writes() {
        static CHAIN: &[Migration] = &[
            // Listed out of order on purpose: `from` decides the order, not the position.
            Migration {
                from: 2,
                migrate: copy_namespaces_to_images,
            },
            Migration {
                from: 1,
                migrate: rename_namespaces,
            },
        ];
        with_each_backend(|open| {
            let backend = open();
            prepare(&*backend, 1, &[]).unwrap();
            put(&*backend, &[sandbox("a"), sandbox("b")]);
            prepare(&*backend, 3, CHAIN).unwrap();

            assert_eq!(stored_version(&*backend).unwrap(), Some(3));
            let images = backend.scan(Column::Images).unwrap();
            assert_eq!(images.len(), 1);
            assert_eq!(images[0].0, b"v2-default");
            let sandboxes = backend.scan(Column::Sandboxes).unwrap();
            assert_eq!(sandboxes.len(), 1, "the second migration deleted b");
            assert_eq!(sandboxes[0].0, b"a");
        });
    }

    #[test]
    fn failed_migration_leaves_store_untouched() {
        static FAILING: &[Migration] = &[
            Migration {
                from: 1,
                migrate: rename_namespaces,
            },
            Migration {
                from: 2,
                migrate: fail,
            },
        ];
        with_each_backend(|open| {
            let backend = open();
            prepare(&*backend, 1, &[]).unwrap();
            put(&*backend, &[sandbox("a")]);
            let err = prepare(&*backend, 3, FAILING).unwrap_err();
            assert!(
                matches!(
                    &err,
                    StoreError::Migration { from: 2, source, .. }
                        if matches!(**source, StoreError::EmptyId { .. })
                ),
                "{err:?}"
            );

            assert_eq!(stored_version(&*backend).unwrap(), Some(1));
            assert_eq!(backend.get(Column::Leases, b"runs").unwrap(), None);
            let bytes = backend.get(Column::Sandboxes, b"a").unwrap().unwrap();
            let a = SandboxRecord::decode(bytes.as_slice()).unwrap();
            assert_eq!(a.namespace, "default");
        });
    }

    #[test]
    fn missing_migration_is_reported_and_store_untouched() {
        with_each_backend(|open| {
            let backend = open();
            prepare(&*backend, 1, &[]).unwrap();
            let err = prepare(&*backend, 2, &[]).unwrap_err();
            assert!(
                matches!(err, StoreError::NoMigration { from: 1, .. }),
                "{err:?}"
            );
            assert_eq!(stored_version(&*backend).unwrap(), Some(1));
        });
    }

    #[test]
    fn records_without_a_version_are_not_stamped_as_current() {
        with_each_backend(|open| {
            let backend = open();
            put(&*backend, &[sandbox("a")]);
            let err = prepare(&*backend, SCHEMA_VERSION, MIGRATIONS).unwrap_err();
            assert!(
                matches!(err, StoreError::NoMigration { from: 0, .. }),
                "{err:?}"
            );
            assert_eq!(stored_version(&*backend).unwrap(), None);
        });
    }

    #[test]
    fn corrupt_version_is_reported() {
        with_each_backend(|open| {
            let backend = open();
            backend
                .write(vec![Op {
                    column: Column::Meta,
                    key: VERSION_KEY.to_vec(),
                    value: Some(vec![0xff]),
                }])
                .unwrap();
            let err = prepare(&*backend, SCHEMA_VERSION, MIGRATIONS).unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::Corrupt {
                        kind: "metadata",
                        ..
                    }
                ),
                "{err:?}"
            );
        });
    }
}
