//! Images: references, registries, the content store, pulls and the image records.
//!
//! [`Images`] is the domain service the CRI ImageService calls. A pull resolves the reference to
//! a manifest for this node's platform, streams every blob into the [`content::ContentStore`]
//! (verified against its digest), checks each layer's uncompressed digest against the config's
//! `rootfs.diff_ids`, and writes the [`ImageRecord`] last, so that a crash mid-pull leaves no
//! record.
//!
//! Records: the key is the image id (the config digest); `repo_tags` are normalised
//! `name:tag`s, `repo_digests` `name@digest` with the digest of what the tag pointed to (the
//! index or the manifest); `size` is the config plus the compressed layers; `config` is the
//! image config JSON.

pub mod content;
#[doc(hidden)]
pub mod fuzzing;
mod gc;
pub mod layers;
mod limits;
mod oauth;
mod platform;
mod pull;
pub mod reference;
pub mod registry;
mod transport;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_store::{ImageRecord, Store};
use futures_util::future::{BoxFuture, Shared};

use crate::config::RegistryConfig;
use content::ContentStore;
pub use gc::GcReport;
use layers::LayerStore;
use reference::{ImageRef, as_image_id};
pub use registry::Credentials;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("image {reference} not found: {detail}")]
    NotFound { reference: String, detail: String },
    #[error("pulling {reference}: authentication to registry {registry} failed: {detail}")]
    AuthFailed {
        reference: String,
        registry: String,
        detail: String,
    },
    #[error("pulling {reference} from {registry}: {detail}")]
    Registry {
        reference: String,
        registry: String,
        detail: String,
    },
    #[error("pulling {reference}: no progress for {secs} s while fetching {what}")]
    Stalled {
        reference: String,
        what: String,
        secs: u64,
    },
    #[error("blob {blob} does not match its digest (content hashes to {actual})")]
    DigestMismatch { blob: String, actual: String },
    #[error("{0}")]
    Malformed(String),
    /// The registry sent more than berth reads: an oversized manifest or config, a blob
    /// longer than its descriptor, a decompression bomb, too many layers.
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("image storage: {0}")]
    Io(String),
    #[error("metadata store: {0}")]
    Store(String),
}

impl From<berth_store::StoreError> for ImageError {
    fn from(e: berth_store::StoreError) -> Self {
        ImageError::Store(e.to_string())
    }
}

type PullFuture = Shared<BoxFuture<'static, Result<String, ImageError>>>;

/// The image service: pulls, records, lookups and removal.
pub struct Images {
    root: PathBuf,
    store: Store,
    content: Arc<ContentStore>,
    /// Where layers are unpacked; `None` until the snapshotter is wired: pulls keep blobs only.
    layers: Option<Arc<dyn LayerStore>>,
    registry: RegistryConfig,
    progress_timeout: Duration,
    layer_limits: limits::LayerLimits,
    /// The registry client, built on first use: every request of a pull goes through it, its
    /// bodies read within the limits of [`limits`].
    http: Mutex<Option<reqwest::Client>>,
    /// Pulls in flight, by reference and credentials: a second pull of the same image waits for
    /// the first instead of downloading again.
    inflight: Mutex<HashMap<(String, Credentials), PullFuture>>,
    /// Whether registries on this machine speak https or plain HTTP.
    local_schemes: transport::LocalSchemes,
    /// Serialises read-modify-write of image records (tag moves, untagging).
    records: Mutex<()>,
    /// What pulls in flight use, kept from garbage collection.
    leases: gc::Leases,
    /// Images reported pinned, normalised (`name:tag` or `name@digest`).
    pinned: Vec<String>,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images").field("root", &self.root).finish()
    }
}

/// Bytes and inodes used by image data, and the mount point of the filesystem holding them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub bytes: u64,
    pub inodes: u64,
}

impl Images {
    /// Opens the content store under `<root>/content` (removing partial downloads).
    pub fn open(
        root: &Path,
        store: Store,
        registry: RegistryConfig,
        layers: Option<Arc<dyn LayerStore>>,
    ) -> Result<Arc<Images>, ImageError> {
        let content = ContentStore::open(&root.join("content"))?;
        let pinned = registry
            .pinned_images
            .iter()
            .filter_map(|i| ImageRef::parse(i).ok())
            .flat_map(|r| {
                let by_digest = r.digest.as_ref().map(|d| r.with_digest(d));
                r.tagged().into_iter().chain(by_digest)
            })
            .collect();
        let snapshots = root.join("snapshots");
        std::fs::create_dir_all(&snapshots)
            .map_err(|e| ImageError::Io(format!("{}: {e}", snapshots.display())))?;
        Ok(Arc::new(Images {
            root: root.to_path_buf(),
            store,
            content: Arc::new(content),
            layers,
            progress_timeout: Duration::from_secs(registry.pull_progress_timeout_secs.max(1)),
            layer_limits: limits::LayerLimits::from_config(&registry),
            http: Mutex::new(None),
            registry,
            inflight: Mutex::new(HashMap::new()),
            records: Mutex::new(()),
            local_schemes: transport::LocalSchemes::default(),
            leases: gc::Leases::default(),
            pinned,
        }))
    }

    /// Pulls `reference` and returns the image id. Concurrent pulls of the same reference with
    /// the same credentials share one pull, which runs to its end even if the caller goes away.
    pub async fn pull(
        self: &Arc<Self>,
        reference: &str,
        credentials: Credentials,
    ) -> Result<String, ImageError> {
        let r = ImageRef::parse(reference)?;
        let key = (r.to_string(), credentials.clone());
        let shared = {
            let mut inflight = self
                .inflight
                .lock()
                .map_err(|_| ImageError::Io("pull table poisoned".into()))?;
            match inflight.get(&key) {
                Some(f) => {
                    tracing::info!(image = %r, "joining a pull already in progress");
                    f.clone()
                }
                None => {
                    let this = Arc::clone(self);
                    let task_key = key.clone();
                    let handle = tokio::spawn(async move {
                        let result = this.pull_uncached(r, credentials).await;
                        // What a hostile or broken image left (its manifest and config, the
                        // layers that did arrive) is not kept for a retry that cannot succeed;
                        // other failures keep their blobs, so a retry resumes.
                        if let Err(ImageError::Limit(_) | ImageError::Malformed(_)) = &result {
                            let sweeping = Arc::clone(&this);
                            let swept =
                                tokio::task::spawn_blocking(move || sweeping.collect_garbage())
                                    .await;
                            if let Ok(Err(e)) = swept {
                                tracing::warn!(error = %e, "collecting garbage after a refused pull");
                            }
                        }
                        if let Ok(mut inflight) = this.inflight.lock() {
                            inflight.remove(&task_key);
                        }
                        result
                    });
                    let fut: BoxFuture<'static, Result<String, ImageError>> =
                        Box::pin(async move {
                            handle
                                .await
                                .map_err(|e| ImageError::Io(format!("pull task failed: {e}")))?
                        });
                    let shared = futures_util::FutureExt::shared(fut);
                    inflight.insert(key, shared.clone());
                    shared
                }
            }
        };
        shared.await
    }

    /// Every image, ordered by id; with `filter`, only the image it resolves to.
    pub fn list(&self, filter: Option<&str>) -> Result<Vec<ImageRecord>, ImageError> {
        match filter {
            Some(f) if !f.is_empty() => Ok(self.resolve(f)?.into_iter().collect()),
            _ => Ok(self
                .store
                .list::<ImageRecord>()?
                .into_iter()
                .map(|r| self.mark_pinned(r))
                .collect()),
        }
    }

    /// Sets `pinned` when one of the image's names is in the configured list.
    fn mark_pinned(&self, mut image: ImageRecord) -> ImageRecord {
        image.pinned = image
            .repo_tags
            .iter()
            .chain(&image.repo_digests)
            .any(|name| self.pinned.contains(name));
        image
    }

    /// The image `reference` names, as containerd resolves it: a full image id (with or
    /// without `sha256:`), a unique prefix of one (as `crictl images` prints them), a
    /// `name:tag` or a `name@digest` (normalised first).
    pub fn resolve(&self, reference: &str) -> Result<Option<ImageRecord>, ImageError> {
        Ok(self.find(reference)?.map(|r| self.mark_pinned(r)))
    }

    fn find(&self, reference: &str) -> Result<Option<ImageRecord>, ImageError> {
        if let Some(id) = as_image_id(reference) {
            return Ok(self.store.get::<ImageRecord>(&id)?);
        }
        let images = self.store.list::<ImageRecord>()?;
        if let Some(prefix) = as_id_prefix(reference) {
            let mut matching = images.iter().filter(|i| i.id.starts_with(&prefix));
            if let (Some(one), None) = (matching.next(), matching.next()) {
                return Ok(Some(one.clone()));
            }
        }
        let r = ImageRef::parse(reference)?;
        Ok(find_by_ref(&images, &r).cloned())
    }

    /// Removes what `reference` names: a tag is removed from its image (the image goes with
    /// its last tag); an id or a digest removes the whole image. Missing is success.
    pub fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let guard = self
            .records
            .lock()
            .map_err(|_| ImageError::Io("record lock poisoned".into()))?;
        let Some(mut image) = self.resolve(reference)? else {
            return Ok(());
        };
        // A tag of the image (not an id, a short id or a digest) removes only that tag.
        let tag = (as_image_id(reference).is_none())
            .then(|| ImageRef::parse(reference).ok())
            .flatten()
            .filter(|r| r.digest.is_none())
            .and_then(|r| r.tagged())
            .filter(|t| image.repo_tags.contains(t));
        if let Some(tag) = tag.filter(|_| image.repo_tags.len() > 1) {
            image.repo_tags.retain(|t| t != &tag);
            self.store.put(&image)?;
            tracing::info!(image = %image.id, tag, "untagged image");
        } else {
            self.store.delete::<ImageRecord>(&image.id)?;
            tracing::info!(image = %image.id, tags = ?image.repo_tags, "removed image");
            drop(guard);
            // The image is gone either way; what the sweep leaves, the next one takes.
            if let Err(e) = self.collect_garbage() {
                tracing::warn!(image = %image.id, error = %e, "collecting garbage after removal");
            }
        }
        Ok(())
    }

    /// Bytes and inodes under `<root>/content` and `<root>/snapshots`.
    pub fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        let mut usage = FsUsage {
            mountpoint: mountpoint_of(&self.root),
            ..FsUsage::default()
        };
        for dir in [self.root.join("content"), self.root.join("snapshots")] {
            walk_usage(&dir, &mut usage)
                .map_err(|e| ImageError::Io(format!("{}: {e}", dir.display())))?;
        }
        Ok(usage)
    }
}

/// `sha256:<hex>` for a short hex id (at least 3 digits, as containerd's truncated index
/// asks); a name that happens to be hex too is tried as a name when no id matches.
fn as_id_prefix(s: &str) -> Option<String> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    (hex.len() >= 3
        && hex.len() < 64
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    .then(|| format!("sha256:{hex}"))
}

/// The chain ids of layers with these diff ids, per the OCI image spec:
/// `chain(L0) = diff(L0)`, `chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => content::sha256_digest(format!("{parent} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn find_by_ref<'a>(images: &'a [ImageRecord], r: &ImageRef) -> Option<&'a ImageRecord> {
    match &r.digest {
        Some(d) => {
            let wanted = r.with_digest(d);
            images.iter().find(|i| i.repo_digests.contains(&wanted))
        }
        None => {
            let wanted = r.tagged().unwrap_or_default();
            images.iter().find(|i| i.repo_tags.contains(&wanted))
        }
    }
}

/// Apportions blocks actually allocated (like `du`), counting every inode once per link.
fn walk_usage(dir: &Path, usage: &mut FsUsage) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(dir.to_path_buf(), meta)];
    while let Some((path, meta)) = stack.pop() {
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        usage.inodes += 1;
        usage.bytes += meta.blocks() * 512;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                let m = entry.metadata()?;
                stack.push((entry.path(), m));
            }
        }
    }
    Ok(())
}

/// The mount point of the filesystem holding `path`: the longest mount point in
/// `/proc/self/mountinfo` that is a prefix of it.
fn mountpoint_of(path: &Path) -> PathBuf {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return PathBuf::from("/");
    };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|mp| path.starts_with(mp))
        .max_by_key(|mp| mp.as_os_str().len())
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, tags: &[&str], digests: &[&str]) -> ImageRecord {
        ImageRecord {
            id: id.to_string(),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: digests.iter().map(|s| s.to_string()).collect(),
            size: 1,
            pinned: false,
            config: b"{}".to_vec(),
        }
    }

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const D: &str = "sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";

    fn images_with(records: &[ImageRecord]) -> (tempfile::TempDir, Arc<Images>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_memory();
        for r in records {
            store.put(r).unwrap();
        }
        let images = Images::open(dir.path(), store, RegistryConfig::default(), None).unwrap();
        (dir, images)
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let ids = chain_ids(&[d('a'), d('b')]);
        assert_eq!(ids[0], d('a'));
        assert_eq!(
            ids[1],
            content::sha256_digest(format!("{} {}", d('a'), d('b')).as_bytes())
        );
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn resolve_by_id_tag_and_digest() {
        let (_d, images) = images_with(&[record(
            A,
            &["docker.io/library/busybox:latest"],
            &[&format!("docker.io/library/busybox@{D}")],
        )]);
        for name in [
            A,
            &A[7..],
            "busybox",
            "docker.io/library/busybox:latest",
            &format!("busybox@{D}"),
        ] {
            assert_eq!(
                images.resolve(name).unwrap().map(|r| r.id),
                Some(A.to_string()),
                "{name}"
            );
        }
        assert!(images.resolve("busybox:other").unwrap().is_none());
        assert!(images.resolve("Bad").is_err());
        // A short id, as `crictl images` prints it (13 characters), with or without sha256:.
        for short in [&A[7..20], &A[..20]] {
            assert_eq!(
                images.resolve(short).unwrap().map(|r| r.id),
                Some(A.to_string()),
                "{short}"
            );
        }
        // Hex that is no id prefix is a name.
        assert!(images.resolve("abcdef").unwrap().is_none());
        assert_eq!(images.list(Some("busybox")).unwrap().len(), 1);
        assert_eq!(images.list(Some("nope")).unwrap().len(), 0);
        assert_eq!(images.list(None).unwrap().len(), 1);
    }

    #[test]
    fn removing_one_tag_keeps_the_others_and_missing_is_ok() {
        let (_d, images) = images_with(&[record(
            A,
            &["docker.io/library/a:1", "docker.io/library/a:2"],
            &[],
        )]);
        images.remove("a:1").unwrap();
        let left = images.resolve(A).unwrap().unwrap();
        assert_eq!(left.repo_tags, vec!["docker.io/library/a:2".to_string()]);
        images.remove("a:1").unwrap();
        images.remove("a:2").unwrap();
        assert!(images.resolve(A).unwrap().is_none());
        images.remove(A).unwrap();
    }

    #[test]
    fn configured_images_are_reported_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_memory();
        for r in [
            record(A, &["registry.k8s.io/pause:3.10"], &[]),
            record(D, &["docker.io/library/busybox:1"], &[]),
        ] {
            store.put(&r).unwrap();
        }
        let images = Images::open(dir.path(), store, RegistryConfig::default(), None).unwrap();
        let pinned: Vec<(String, bool)> = images
            .list(None)
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.pinned))
            .collect();
        assert_eq!(pinned, [(A.to_string(), true), (D.to_string(), false)]);
        assert!(
            images
                .resolve("registry.k8s.io/pause:3.10")
                .unwrap()
                .unwrap()
                .pinned
        );
        assert!(!images.resolve("busybox:1").unwrap().unwrap().pinned);
    }

    #[test]
    fn removing_by_short_id_removes_every_tag() {
        let (_d, images) = images_with(&[record(
            A,
            &["docker.io/library/a:1", "docker.io/library/a:2"],
            &[],
        )]);
        images.remove(&A[7..20]).unwrap();
        assert!(images.resolve(A).unwrap().is_none());
    }

    #[test]
    fn fs_usage_counts_content_and_names_a_mountpoint() {
        let (dir, images) = images_with(&[]);
        std::fs::write(dir.path().join("content/blobs/sha256/x"), vec![1u8; 10000]).unwrap();
        let usage = images.fs_usage().unwrap();
        assert!(usage.bytes >= 10000, "{usage:?}");
        assert!(usage.inodes >= 5, "{usage:?}");
        assert!(dir.path().starts_with(&usage.mountpoint), "{usage:?}");
    }
}
