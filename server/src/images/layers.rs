//! The seam between pulls and the snapshotter: where unpacked layers go.
//!
//! A pull stages every layer it needs in parallel (each decompressed and applied while it
//! downloads), then imports them in chain order under their chain ids. [`OverlayLayers`] puts
//! them in the overlay snapshotter; tests use an in-memory fake.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use berth_snapshotter::apply::apply_layer;
use berth_snapshotter::overlay::{OverlaySnapshotter, Staging};
use berth_snapshotter::{Kind, SnapshotError, Snapshotter as _};

use super::ImageError;

/// Committed layers keyed by chain id.
pub trait LayerStore: Send + Sync {
    /// Whether the committed layer `chain_id` exists.
    fn exists(&self, chain_id: &str) -> bool;
    /// A new, empty staging directory for one layer.
    fn stage(&self) -> Result<Box<dyn StagedLayer>, ImageError>;
    /// Every committed layer: its chain id and its parent's.
    fn committed(&self) -> Result<Vec<(String, Option<String>)>, ImageError>;
    /// Removes the committed layer `chain_id`. `Ok(false)` when another snapshot (a layer
    /// above it, or a container's rootfs) still has it as parent, so it stays.
    fn remove(&self, chain_id: &str) -> Result<bool, ImageError>;
}

/// One layer being unpacked; dropped without import, it is discarded.
pub trait StagedLayer: Send {
    /// Applies an uncompressed layer tarball (whiteouts included) to the staging directory.
    fn apply(&mut self, tar: &mut dyn Read) -> Result<(), ImageError>;
    /// Commits the layer as `chain_id` on top of `parent`. A layer that already exists
    /// (another pull imported it first) is shared: Ok.
    fn import(
        self: Box<Self>,
        chain_id: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<(), ImageError>;
}

/// Imports the staged layers (`None`: already present) in chain order.
pub fn import_chain(
    chain_ids: &[String],
    diff_ids: &[String],
    staged: Vec<Option<Box<dyn StagedLayer>>>,
) -> Result<(), ImageError> {
    let mut parent: Option<&str> = None;
    for ((chain_id, diff_id), layer) in chain_ids.iter().zip(diff_ids).zip(staged) {
        if let Some(layer) = layer {
            let labels = BTreeMap::from([
                ("berth.io/diff-id".to_string(), diff_id.clone()),
                ("berth.io/chain-id".to_string(), chain_id.clone()),
            ]);
            layer.import(chain_id, parent, labels)?;
            tracing::info!(chain_id, parent, "imported layer");
        }
        parent = Some(chain_id);
    }
    Ok(())
}

/// The overlay snapshotter as the pull's layer store.
pub struct OverlayLayers(pub Arc<OverlaySnapshotter>);

impl LayerStore for OverlayLayers {
    fn exists(&self, chain_id: &str) -> bool {
        self.0
            .stat(chain_id)
            .is_ok_and(|info| info.kind == Kind::Committed)
    }

    fn stage(&self) -> Result<Box<dyn StagedLayer>, ImageError> {
        let staging = self
            .0
            .stage()
            .map_err(|e| ImageError::Io(format!("staging a layer: {e}")))?;
        Ok(Box::new(OverlayStaged {
            snapshotter: Arc::clone(&self.0),
            staging,
        }))
    }

    fn committed(&self) -> Result<Vec<(String, Option<String>)>, ImageError> {
        let mut out = Vec::new();
        self.0
            .walk(&mut |info| {
                if info.kind == Kind::Committed {
                    out.push((info.key.clone(), info.parent.clone()));
                }
                true
            })
            .map_err(|e| ImageError::Io(format!("listing snapshots: {e}")))?;
        Ok(out)
    }

    fn remove(&self, chain_id: &str) -> Result<bool, ImageError> {
        match self.0.remove(chain_id) {
            Ok(()) => Ok(true),
            Err(SnapshotError::FailedPrecondition { .. }) => Ok(false),
            Err(e) => Err(ImageError::Io(format!("removing layer {chain_id}: {e}"))),
        }
    }
}

struct OverlayStaged {
    snapshotter: Arc<OverlaySnapshotter>,
    staging: Staging,
}

impl StagedLayer for OverlayStaged {
    fn apply(&mut self, tar: &mut dyn Read) -> Result<(), ImageError> {
        apply_layer(tar, self.staging.path())
            .map(|_| ())
            .map_err(|e| ImageError::Malformed(e.to_string()))
    }

    fn import(
        self: Box<Self>,
        chain_id: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<(), ImageError> {
        let OverlayStaged {
            snapshotter,
            staging,
        } = *self;
        match snapshotter.import(chain_id, parent, staging, labels) {
            Ok(()) | Err(SnapshotError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(ImageError::Io(format!("importing layer {chain_id}: {e}"))),
        }
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory layer store for tests: a layer is the list of its tar entry paths.

    use std::sync::Mutex;

    use super::*;

    /// Committed layers by chain id, with their parent.
    #[derive(Default)]
    pub struct MemoryLayers {
        pub layers: Mutex<BTreeMap<String, Option<String>>>,
    }

    /// Records the paths of the entries applied to it; imports into `store` when it has one.
    #[derive(Default)]
    pub struct Staged(pub Arc<Mutex<Vec<String>>>, pub Option<Arc<MemoryLayers>>);

    impl StagedLayer for Staged {
        fn apply(&mut self, tar: &mut dyn Read) -> Result<(), ImageError> {
            let mut archive = tar::Archive::new(tar);
            let entries = archive
                .entries()
                .map_err(|e| ImageError::Malformed(e.to_string()))?;
            for entry in entries {
                let entry = entry.map_err(|e| ImageError::Malformed(e.to_string()))?;
                let path = entry
                    .path()
                    .map_err(|e| ImageError::Malformed(e.to_string()))?;
                self.0
                    .lock()
                    .unwrap()
                    .push(path.to_string_lossy().into_owned());
            }
            Ok(())
        }

        fn import(
            self: Box<Self>,
            chain_id: &str,
            parent: Option<&str>,
            _labels: BTreeMap<String, String>,
        ) -> Result<(), ImageError> {
            let Some(store) = &self.1 else {
                return Ok(());
            };
            let mut layers = store.layers.lock().unwrap();
            if let Some(p) = parent {
                assert!(
                    layers.contains_key(p),
                    "parent {p} imported before {chain_id}"
                );
            }
            layers
                .entry(chain_id.to_string())
                .or_insert(parent.map(str::to_string));
            Ok(())
        }
    }

    impl LayerStore for MemoryLayers {
        fn exists(&self, chain_id: &str) -> bool {
            self.layers.lock().unwrap().contains_key(chain_id)
        }

        fn stage(&self) -> Result<Box<dyn StagedLayer>, ImageError> {
            Ok(Box::new(Staged::default()))
        }

        /// Layers are keyed by chain id (`sha256:`); other keys stand for containers' active
        /// snapshots, which are not committed.
        fn committed(&self) -> Result<Vec<(String, Option<String>)>, ImageError> {
            Ok(self
                .layers
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.starts_with("sha256:"))
                .map(|(k, p)| (k.clone(), p.clone()))
                .collect())
        }

        fn remove(&self, chain_id: &str) -> Result<bool, ImageError> {
            let mut layers = self.layers.lock().unwrap();
            if layers.values().any(|p| p.as_deref() == Some(chain_id)) {
                return Ok(false);
            }
            layers.remove(chain_id);
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn layers_are_imported_in_chain_order_skipping_present_ones() {
        let store = Arc::new(MemoryLayers::default());
        let staged_into = || {
            Some(Box::new(Staged(Default::default(), Some(store.clone()))) as Box<dyn StagedLayer>)
        };
        let chain = vec!["c0".to_string(), "c1".to_string(), "c2".to_string()];
        let diffs = vec!["d0".to_string(), "d1".to_string(), "d2".to_string()];
        store.layers.lock().unwrap().insert("c0".into(), None);
        let staged: Vec<Option<Box<dyn StagedLayer>>> = vec![None, staged_into(), staged_into()];
        import_chain(&chain, &diffs, staged).unwrap();
        let layers = store.layers.lock().unwrap();
        assert_eq!(layers["c1"].as_deref(), Some("c0"));
        assert_eq!(layers["c2"].as_deref(), Some("c1"));
    }
}
