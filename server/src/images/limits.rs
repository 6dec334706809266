//! What a registry can make berthd do: every body berthd reads from a registry has a size
//! bound, enforced while it streams, and every layer a bound on what it decompresses to.
//!
//! Every request of a pull (the `/v2/` challenge, the token, manifests, the config, layers)
//! goes through berth's own HTTP client, each wait for headers or for the next chunk bounded by
//! the progress timeout, each body by a size.
//!
//! An image is untrusted input. Manifests, indexes and configs are read into memory, so they
//! are refused past [`MAX_MANIFEST_BYTES`] and [`MAX_CONFIG_BYTES`] (containerd reads at most
//! 4 MiB of a manifest; containers/image, CRI-O's library, 4 MiB of a manifest or a config and
//! 1 MiB of a token or an error body). A blob may not run past the size its descriptor gives,
//! and a layer may not decompress past [`LayerLimits::budget`]: the configured ratio to its
//! compressed size (past a floor, since tiny layers compress extremely well) and an absolute
//! cap. Bytes are counted as they stream, so a bomb is stopped after at most its budget, never
//! written out in full.

use std::time::Duration;

use super::ImageError;
use crate::config::RegistryConfig;

/// The largest manifest or index berthd reads, as containerd and CRI-O.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The largest image config berthd reads, as CRI-O (containerd has none; real configs are a
/// few KiB, the largest with long histories a few hundred).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// The largest token-server answer or error body berthd reads, as CRI-O; an error body past it
/// is reported without its text.
pub const MAX_SMALL_BODY_BYTES: u64 = 1 << 20;
/// The most layers an image may have. overlayfs stacks at most 500 lower layers
/// (`OVL_MAX_STACK`), so a container could never run on an image with more; Docker builds at
/// most 127.
pub const MAX_LAYERS: usize = 500;
/// Below this many uncompressed bytes no layer is refused for its expansion ratio: a layer of
/// a few KiB holding a MiB of zeros or text is ordinary.
pub const RATIO_FLOOR_BYTES: u64 = 16 << 20;

/// How far a layer may decompress, from the registry config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerLimits {
    /// Uncompressed bytes per compressed byte; 0: no ratio limit.
    pub ratio: u64,
    /// Uncompressed bytes of any one layer.
    pub max_bytes: u64,
}

impl LayerLimits {
    pub fn from_config(c: &RegistryConfig) -> LayerLimits {
        LayerLimits {
            ratio: c.max_layer_expansion_ratio,
            max_bytes: c.max_layer_uncompressed_bytes,
        }
    }

    /// The budget of a layer whose blob is `compressed` bytes long.
    pub fn budget(&self, compressed: u64) -> Budget {
        let by_ratio = (self.ratio > 0)
            .then(|| self.ratio.saturating_mul(compressed).max(RATIO_FLOOR_BYTES))
            .filter(|b| *b < self.max_bytes);
        match by_ratio {
            Some(max) => Budget {
                max,
                why: format!(
                    "{} times its compressed size of {compressed} bytes, \
                     registry.max_layer_expansion_ratio",
                    self.ratio
                ),
            },
            None => Budget {
                max: self.max_bytes,
                why: "registry.max_layer_uncompressed_bytes".to_string(),
            },
        }
    }
}

/// The uncompressed bytes one layer may produce, and the setting that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub max: u64,
    pub why: String,
}

impl Budget {
    pub fn exceeded(&self, layer: &str) -> ImageError {
        ImageError::Limit(format!(
            "layer {layer} decompresses to more than {} bytes ({}); refused as a decompression \
             bomb",
            self.max, self.why
        ))
    }
}

/// Why a bounded read of an HTTP body failed.
#[derive(Debug)]
pub enum BodyError {
    /// The body runs past the limit (or its Content-Length says it will).
    TooLarge,
    /// No byte arrived for the progress timeout.
    Stalled,
    Http(reqwest::Error),
}

/// Reads `resp`'s body, at most `limit` bytes, each chunk within `timeout`.
pub async fn read_body(
    mut resp: reqwest::Response,
    limit: u64,
    timeout: Duration,
) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout(timeout, resp.chunk())
            .await
            .map_err(|_| BodyError::Stalled)?
            .map_err(BodyError::Http)?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
}

/// Counts what is read through it and fails once more than `max` bytes came.
pub struct CountingReader<R> {
    inner: R,
    count: u64,
    max: u64,
}

impl<R> CountingReader<R> {
    pub fn new(inner: R, max: u64) -> Self {
        CountingReader {
            inner,
            count: 0,
            max,
        }
    }

    /// Whether the reader refused to go past `max`.
    pub fn exceeded(&self) -> bool {
        self.count > self.max
    }
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.exceeded() {
            return Err(std::io::Error::other("layer size limit exceeded"));
        }
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.exceeded() {
            return Err(std::io::Error::other("layer size limit exceeded"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_ratio_applies_past_the_floor_and_under_the_cap() {
        let limits = LayerLimits {
            ratio: 100,
            max_bytes: 64 * GIB,
        };
        // Tiny layers get the floor.
        assert_eq!(limits.budget(1000).max, RATIO_FLOOR_BYTES);
        assert_eq!(limits.budget(0).max, RATIO_FLOOR_BYTES);
        let b = limits.budget(10 << 20);
        assert_eq!(b.max, 1000 << 20);
        assert!(b.why.contains("max_layer_expansion_ratio"), "{}", b.why);
        // Large layers get the cap.
        let b = limits.budget(GIB);
        assert_eq!(b.max, 64 * GIB);
        assert!(b.why.contains("max_layer_uncompressed_bytes"), "{}", b.why);
        assert_eq!(limits.budget(u64::MAX).max, 64 * GIB);
    }

    #[test]
    fn ratio_zero_leaves_only_the_cap() {
        let limits = LayerLimits {
            ratio: 0,
            max_bytes: 5 * GIB,
        };
        assert_eq!(limits.budget(1).max, 5 * GIB);
    }

    #[test]
    fn the_budget_error_names_the_layer_and_the_setting() {
        let limits = LayerLimits {
            ratio: 100,
            max_bytes: GIB,
        };
        let err = limits.budget(1000).exceeded("sha256:abc").to_string();
        assert!(
            err.contains("sha256:abc")
                && err.contains(&RATIO_FLOOR_BYTES.to_string())
                && err.contains("max_layer_expansion_ratio"),
            "{err}"
        );
    }

    #[test]
    fn the_counting_reader_stops_past_its_maximum() {
        let data = vec![0u8; 1000];
        let mut r = CountingReader::new(data.as_slice(), 1000);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert!(!r.exceeded());
        let mut r = CountingReader::new(data.as_slice(), 999);
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        assert!(r.exceeded());
    }
}
