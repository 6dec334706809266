//! Garbage collection of image data: blobs and layer snapshots that no image references.
//!
//! Mark and sweep. The roots are the image records (each one's repo digests lead to its index
//! or manifest, then to its config and layer blobs; its config's diff ids give its layers'
//! chain ids) and the leases of pulls in flight. A pull leases every digest and chain id
//! before it looks for or writes it, and gives the lease back only after its image record is
//! committed, so a sweep never takes what a pull is about to use. Snapshots that containers
//! use are kept by the snapshotter itself: a layer with a child cannot be removed.
//!
//! Order matters: the sweep lists blobs and layers first, then reads leases, then records.
//! Anything written after the listing is not swept; anything written before it was leased
//! first, and its lease is read before the record that replaces it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use berth_store::ImageRecord;

use super::pull::{ConfigDoc, parse_manifest};
use super::reference::ImageRef;
use super::{ImageError, Images, chain_ids};

/// The digests and chain ids each pull in flight has claimed.
#[derive(Default)]
pub(super) struct Leases {
    next: AtomicU64,
    held: Mutex<HashMap<u64, HashSet<String>>>,
}

impl Leases {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, HashSet<String>>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new, empty lease, held until dropped.
    pub(super) fn begin(&self) -> Lease<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, HashSet::new());
        Lease { leases: self, id }
    }
}

/// One pull's claim on blobs and layers.
pub(super) struct Lease<'a> {
    leases: &'a Leases,
    id: u64,
}

impl Lease<'_> {
    /// Claims `names` (digests or chain ids). Waits while a sweep runs, so whatever the sweep
    /// removes is gone before this returns: check for presence after claiming, never before.
    pub(super) fn add<'n>(&self, names: impl IntoIterator<Item = &'n String>) {
        if let Some(set) = self.leases.lock().get_mut(&self.id) {
            set.extend(names.into_iter().cloned());
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.leases.lock().remove(&self.id);
    }
}

/// What a collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub blobs: usize,
    pub bytes: u64,
    pub layers: usize,
}

impl Images {
    /// Removes every blob and layer that neither an image nor a pull in flight references.
    /// Blocking; run it off the async workers.
    pub fn collect_garbage(&self) -> Result<GcReport, ImageError> {
        let blobs = self.content.list()?;
        let layers = match &self.layers {
            Some(l) => l.committed()?,
            None => Vec::new(),
        };
        // Held to the end: pulls that claim something now wait until the sweep is over.
        let leases = self.leases.lock();
        let mut keep: HashSet<String> = leases.values().flatten().cloned().collect();
        for image in self.store.list::<ImageRecord>()? {
            self.mark(&image, &mut keep)?;
        }

        let mut report = GcReport::default();
        for digest in blobs.iter().filter(|d| !keep.contains(*d)) {
            report.bytes += self.content.delete(digest)?;
            report.blobs += 1;
        }
        if let Some(store) = &self.layers {
            // Children before parents, so that a chain no image uses goes in one pass.
            for chain_id in unreferenced_top_down(&layers, &keep) {
                if store.remove(&chain_id)? {
                    report.layers += 1;
                }
            }
        }
        drop(leases);
        if report != GcReport::default() {
            tracing::info!(
                blobs = report.blobs,
                bytes = report.bytes,
                layers = report.layers,
                "garbage collected image data"
            );
        }
        Ok(report)
    }

    /// Adds what `image` references to `keep`. An index or manifest that cannot be read or
    /// parsed fails the whole collection: sweeping without knowing an image's layers could
    /// take them.
    fn mark(&self, image: &ImageRecord, keep: &mut HashSet<String>) -> Result<(), ImageError> {
        keep.insert(image.id.clone());
        if let Ok(config) = serde_json::from_slice::<ConfigDoc>(&image.config) {
            keep.extend(chain_ids(&config.rootfs.diff_ids));
        }
        let mut pending: Vec<String> = image
            .repo_digests
            .iter()
            .filter_map(|d| ImageRef::parse(d).ok()?.digest)
            .collect();
        while let Some(digest) = pending.pop() {
            if !keep.insert(digest.clone()) || !self.content.contains(&digest) {
                continue;
            }
            let body = self.content.read(&digest)?;
            let doc = parse_manifest(&body, &digest).map_err(|e| {
                ImageError::Malformed(format!(
                    "garbage collection stopped: image {} references {e}",
                    image.id
                ))
            })?;
            // An index: the manifests of other platforms were never fetched; the ones here
            // (this node's) are followed.
            pending.extend(doc.manifests.iter().flatten().map(|m| m.digest.clone()));
            keep.extend(doc.config.iter().map(|c| c.digest.clone()));
            keep.extend(doc.layers.iter().flatten().map(|l| l.digest.clone()));
        }
        Ok(())
    }
}

/// The layers not in `keep`, every layer before its parent.
fn unreferenced_top_down<'a>(
    layers: &'a [(String, Option<String>)],
    keep: &HashSet<String>,
) -> Vec<String> {
    let parents: BTreeMap<&'a str, Option<&'a str>> = layers
        .iter()
        .map(|(k, p)| (k.as_str(), p.as_deref()))
        .collect();
    let depth = |mut key: &'a str| {
        let mut d = 0usize;
        while let Some(Some(parent)) = parents.get(key) {
            d += 1;
            key = parent;
            if d > parents.len() {
                break; // a cycle cannot happen in a snapshotter; never loop on one anyway
            }
        }
        d
    };
    let mut out: Vec<(usize, &str)> = layers
        .iter()
        .filter(|(k, _)| !keep.contains(k))
        .map(|(k, _)| (depth(k), k.as_str()))
        .collect();
    out.sort_by(|a, b| b.cmp(a));
    out.into_iter().map(|(_, k)| k.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use berth_store::Store;

    use super::*;
    use crate::config::RegistryConfig;
    use crate::images::layers::LayerStore;
    use crate::images::layers::fake::MemoryLayers;

    fn sha(data: &[u8]) -> String {
        crate::images::content::sha256_digest(data)
    }

    struct World {
        _dir: tempfile::TempDir,
        images: Arc<Images>,
        layers: Arc<MemoryLayers>,
        store: Store,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_memory();
        let layers = Arc::new(MemoryLayers::default());
        let images = Images::open(
            dir.path(),
            store.clone(),
            RegistryConfig::default(),
            Some(layers.clone() as Arc<dyn LayerStore>),
        )
        .unwrap();
        World {
            _dir: dir,
            images,
            layers,
            store,
        }
    }

    /// Writes an image (manifest, config, one blob per layer, its layer chain) and returns
    /// (record, manifest digest, layer digests, chain ids).
    fn add_image(
        w: &World,
        name: &str,
        layers: &[&str],
        record: bool,
    ) -> (String, Vec<String>, Vec<String>) {
        let blobs: Vec<String> = layers
            .iter()
            .map(|l| {
                let data = format!("layer {l}").into_bytes();
                let d = sha(&data);
                w.images.content.write_all(&d, &data).unwrap();
                d
            })
            .collect();
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| sha(format!("diff {l}").as_bytes()))
            .collect();
        let config = serde_json::to_vec(
            &serde_json::json!({"rootfs": {"type": "layers", "diff_ids": diff_ids}}),
        )
        .unwrap();
        let config_digest = sha(&config);
        w.images.content.write_all(&config_digest, &config).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": blobs.iter().map(|d| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": 1})).collect::<Vec<_>>(),
        }))
        .unwrap();
        let manifest_digest = sha(&manifest);
        w.images
            .content
            .write_all(&manifest_digest, &manifest)
            .unwrap();
        let chain = chain_ids(&diff_ids);
        {
            let mut l = w.layers.layers.lock().unwrap();
            let mut parent = None;
            for c in &chain {
                l.insert(c.clone(), parent.clone());
                parent = Some(c.clone());
            }
        }
        if record {
            w.store
                .put(&ImageRecord {
                    id: config_digest.clone(),
                    repo_tags: vec![format!("example.com/{name}:1")],
                    repo_digests: vec![format!("example.com/{name}@{manifest_digest}")],
                    config,
                    ..Default::default()
                })
                .unwrap();
        }
        let mut all_blobs = blobs;
        all_blobs.extend([config_digest, manifest_digest]);
        (config_digest_of(&all_blobs), all_blobs, chain)
    }

    fn config_digest_of(blobs: &[String]) -> String {
        blobs[blobs.len() - 2].clone()
    }

    #[test]
    fn what_images_reference_stays_and_the_rest_goes() {
        let w = world();
        let (_, kept_blobs, kept_chain) = add_image(&w, "kept", &["a", "b"], true);
        let (gone_id, gone_blobs, gone_chain) = add_image(&w, "gone", &["a", "c", "d"], true);
        w.store.delete::<ImageRecord>(&gone_id).unwrap();

        let report = w.images.collect_garbage().unwrap();
        for d in &kept_blobs {
            assert!(w.images.content.contains(d), "kept blob {d} was removed");
        }
        let layers = w.layers.layers.lock().unwrap().clone();
        for c in &kept_chain {
            assert!(layers.contains_key(c), "kept layer {c} was removed");
        }
        // Layer "a" is shared (same blob and, at the bottom, the same chain id).
        let shared = &kept_blobs[0];
        let gone_only: Vec<&String> = gone_blobs.iter().filter(|d| *d != shared).collect();
        for d in &gone_only {
            assert!(
                !w.images.content.contains(d),
                "blob {d} of the removed image stayed"
            );
        }
        for c in gone_chain.iter().skip(1) {
            assert!(
                !layers.contains_key(c),
                "layer {c} of the removed image stayed"
            );
        }
        assert!(
            layers.contains_key(&gone_chain[0]),
            "the shared bottom layer went"
        );
        assert_eq!(report.blobs, gone_only.len());
        assert_eq!(report.layers, 2);
        // Nothing more to do the second time.
        assert_eq!(w.images.collect_garbage().unwrap(), GcReport::default());
    }

    #[test]
    fn removing_an_image_collects_its_data_and_untagging_does_not() {
        let w = world();
        let (id, blobs, chain) = add_image(&w, "tagged", &["t"], true);
        let mut record = w.store.get::<ImageRecord>(&id).unwrap().unwrap();
        record.repo_tags.push("example.com/tagged:2".into());
        w.store.put(&record).unwrap();
        w.images.remove("example.com/tagged:2").unwrap();
        assert!(blobs.iter().all(|d| w.images.content.contains(d)));
        w.images.remove("example.com/tagged:1").unwrap();
        assert!(blobs.iter().all(|d| !w.images.content.contains(d)));
        assert!(!w.layers.layers.lock().unwrap().contains_key(&chain[0]));
    }

    #[test]
    fn a_pull_in_flight_keeps_what_it_leased() {
        let w = world();
        let (_, blobs, chain) = add_image(&w, "pulling", &["x"], false);
        {
            let lease = w.images.leases.begin();
            lease.add(blobs.iter().chain(chain.iter()));
            let report = w.images.collect_garbage().unwrap();
            assert_eq!(report, GcReport::default());
        }
        let report = w.images.collect_garbage().unwrap();
        assert_eq!(report.blobs, blobs.len());
        assert_eq!(report.layers, 1);
    }

    #[test]
    fn a_layer_under_a_container_stays() {
        let w = world();
        let (id, _, chain) = add_image(&w, "used", &["p", "q"], true);
        // A container's rootfs snapshot on top of the image.
        w.layers
            .layers
            .lock()
            .unwrap()
            .insert("container-1".into(), Some(chain[1].clone()));
        w.images.remove(&id).unwrap();
        let report = w.images.collect_garbage().unwrap();
        let layers = w.layers.layers.lock().unwrap();
        assert!(layers.contains_key(&chain[1]) && layers.contains_key(&chain[0]));
        assert_eq!(report.layers, 0);
    }

    #[test]
    fn an_unreadable_manifest_stops_the_sweep() {
        let w = world();
        let (_, blobs, _) = add_image(&w, "broken", &["z"], true);
        let manifest = blobs.last().unwrap();
        std::fs::write(w.images.content.path(manifest).unwrap(), b"not json").unwrap();
        let err = w.images.collect_garbage().unwrap_err();
        assert!(
            err.to_string().contains("garbage collection stopped"),
            "{err}"
        );
        assert!(w.images.content.contains(&blobs[0]));
    }

    #[test]
    fn layers_go_top_down() {
        let layers = vec![
            ("c0".to_string(), None),
            ("c1".to_string(), Some("c0".to_string())),
            ("c2".to_string(), Some("c1".to_string())),
        ];
        let keep = HashSet::new();
        assert_eq!(unreferenced_top_down(&layers, &keep), ["c2", "c1", "c0"]);
    }
}
