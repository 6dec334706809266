//! Entry points for the fuzz targets in `fuzz/` into parsers private to this module; not an
//! API.

use super::platform::Platform;
use super::pull::{ConfigDoc, parse_manifest};

/// Reads `body` the ways a pull does: as a manifest or an index, picking this node's entries
/// from an index by platform, and as an image config.
pub fn manifest_and_config(body: &[u8]) {
    if let Ok(doc) = parse_manifest(body, "sha256:fuzz")
        && doc.manifests.is_some()
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(entries) = value.get("manifests").and_then(|m| m.as_array())
    {
        let here = Platform::current();
        for entry in entries {
            if let Some(platform) = entry.get("platform")
                && let Ok(platform) = serde_json::from_value::<Platform>(platform.clone())
            {
                let _ = here.accepts(&platform);
                let _ = platform.to_string();
            }
        }
    }
    let _ = serde_json::from_slice::<ConfigDoc>(body);
}
