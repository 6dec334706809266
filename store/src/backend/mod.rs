//! The seam between the typed store and the bytes on disk.

use std::path::Path;

use crate::StoreError;
use crate::records::RecordKind;

pub(crate) mod memory;
pub(crate) mod rocks;

/// A column family. The default one holds store metadata (the schema version).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Column {
    Meta,
    Sandboxes,
    Containers,
    Images,
    Leases,
}

impl Column {
    pub(crate) const ALL: [Column; 5] = [
        Column::Meta,
        Column::Sandboxes,
        Column::Containers,
        Column::Images,
        Column::Leases,
    ];

    pub(crate) const RECORDS: [Column; 4] = [
        Column::Sandboxes,
        Column::Containers,
        Column::Images,
        Column::Leases,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Column::Meta => "default",
            Column::Sandboxes => "sandboxes",
            Column::Containers => "containers",
            Column::Images => "images",
            Column::Leases => "leases",
        }
    }

    pub(crate) fn of(kind: RecordKind) -> Column {
        match kind {
            RecordKind::Sandbox => Column::Sandboxes,
            RecordKind::Container => Column::Containers,
            RecordKind::Image => Column::Images,
            RecordKind::Lease => Column::Leases,
        }
    }

    pub(crate) fn kind(self) -> Option<RecordKind> {
        match self {
            Column::Meta => None,
            Column::Sandboxes => Some(RecordKind::Sandbox),
            Column::Containers => Some(RecordKind::Container),
            Column::Images => Some(RecordKind::Image),
            Column::Leases => Some(RecordKind::Lease),
        }
    }
}

/// One write in an atomic batch: `value: None` deletes the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Op {
    pub(crate) column: Column,
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<Vec<u8>>,
}

/// A key and its value.
pub(crate) type Row = (Vec<u8>, Vec<u8>);

/// Raw storage of bytes per column family.
pub(crate) trait Backend: Send + Sync {
    fn get(&self, column: Column, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Every pair in the column, ordered by key, read from one consistent point in time.
    fn scan(&self, column: Column) -> Result<Vec<Row>, StoreError>;

    /// Applies `ops` in order, all or nothing, and returns only once they are durable.
    fn write(&self, ops: Vec<Op>) -> Result<(), StoreError>;

    /// Where the data lives, for error messages.
    fn location(&self) -> &Path;
}
