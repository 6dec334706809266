//! The snapshotter seam: how berth gets container root filesystems, in containerd's model.
//!
//! A snapshot is a directory tree identified by a key. Committed snapshots are immutable layers
//! (keyed by chain ID for image layers); an active snapshot is a writable layer on top of a
//! committed parent; a view is a read-only one. Callers get [`Mount`]s to apply, never paths
//! to write into. [`OverlaySnapshotter`] implements the trait with overlayfs; [`apply_layer`]
//! unpacks an OCI layer tar into a snapshot's directory.

use std::collections::BTreeMap;

pub mod apply;
pub mod overlay;

pub use apply::{ApplyError, ApplyStats, apply_layer};
pub use overlay::{OverlaySnapshotter, Staging};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    View,
    Active,
    Committed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub key: String,
    pub parent: Option<String>,
    pub kind: Kind,
    pub labels: BTreeMap<String, String>,
    /// Unix time in nanoseconds.
    pub created_at_ns: i64,
    pub updated_at_ns: i64,
}

/// One mount to perform, in the form of mount(2) arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub fs_type: String,
    pub source: String,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0} not found")]
    NotFound(String),
    #[error("snapshot {0} already exists")]
    AlreadyExists(String),
    #[error("snapshot {key}: {message}")]
    FailedPrecondition { key: String, message: String },
    #[error("snapshot {key}: {source}")]
    Io { key: String, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, SnapshotError>;

pub trait Snapshotter: Send + Sync {
    fn stat(&self, key: &str) -> Result<Info>;
    /// Disk use of the snapshot's own layer, not its parents'.
    fn usage(&self, key: &str) -> Result<Usage>;
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;
    /// Creates an active (writable) snapshot on top of `parent`.
    fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>>;
    /// Creates a read-only view of `parent`.
    fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>>;
    /// Turns the active snapshot `key` into the committed snapshot `name`.
    fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()>;
    /// Removes a snapshot that no other snapshot has as parent; removing a missing one is Ok.
    fn remove(&self, key: &str) -> Result<()>;
    /// Visits every snapshot until `visit` returns false.
    fn walk(&self, visit: &mut dyn FnMut(&Info) -> bool) -> Result<()>;
}
