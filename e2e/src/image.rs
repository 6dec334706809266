//! Builds OCI images in memory, without a container engine: layer tarballs, the image config,
//! the manifest, and multi-platform indexes.
//!
//! Everything is deterministic (fixed mtimes, sorted JSON keys, gzip without a timestamp), so
//! the same inputs give the same digests in every test process; a test can then compare what a
//! runtime reports against the digests computed here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// Media types this module produces.
pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
}

/// The mtime of every tar entry: 2024-01-01T00:00:00Z. Fixed so that layer digests do not
/// depend on when or where the test runs.
pub const DEFAULT_MTIME: u64 = 1_704_067_200;
/// `created` of every image config, the same instant as [`DEFAULT_MTIME`].
const CREATED: &str = "2024-01-01T00:00:00Z";

/// A content digest, always `sha256:<64 lowercase hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The sha256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Self {
        let hash = Sha256::digest(data);
        let mut s = String::with_capacity(7 + 64);
        s.push_str("sha256:");
        for byte in hash.iter() {
            s.push_str(&format!("{byte:02x}"));
        }
        Digest(s)
    }

    /// Parses `sha256:<hex>`; other algorithms are refused because nothing here produces them.
    pub fn parse(s: &str) -> Result<Self> {
        let Some(hex) = s.strip_prefix("sha256:") else {
            bail!("digest {s:?} is not sha256");
        };
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            bail!("digest {s:?} is not 64 lowercase hex digits");
        }
        Ok(Digest(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, without `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

/// Bytes with their media type and digest: a config, a layer, a manifest or an index.
#[derive(Clone, Debug)]
pub struct Blob {
    media_type: String,
    digest: Digest,
    // Shared so that a base layer used by many images is held (and pushed) once.
    data: Arc<[u8]>,
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Self {
        Blob {
            media_type: media_type.to_owned(),
            digest: Digest::sha256(&data),
            data: data.into(),
        }
    }

    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size(),
            platform: None,
        }
    }
}

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// An OCI platform (the subset this crate needs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux_amd64() -> Self {
        Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        }
    }

    pub fn linux_arm64() -> Self {
        Platform {
            architecture: "arm64".into(),
            os: "linux".into(),
            variant: Some("v8".into()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// How a layer tarball is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    None,
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => media_type::OCI_LAYER_TAR,
            Compression::Gzip => media_type::OCI_LAYER_GZIP,
            Compression::Zstd => media_type::OCI_LAYER_ZSTD,
        }
    }

    fn compress(self, tar: &[u8]) -> Result<Vec<u8>> {
        match self {
            Compression::None => Ok(tar.to_vec()),
            Compression::Gzip => {
                // GzBuilder writes mtime 0 unless told otherwise: the blob digest stays stable.
                let mut enc = flate2::GzBuilder::new().write(
                    Vec::with_capacity(tar.len() / 2),
                    flate2::Compression::default(),
                );
                enc.write_all(tar).context("gzip layer")?;
                enc.finish().context("gzip layer")
            }
            // zstd frames carry no timestamp: the same tar gives the same blob.
            Compression::Zstd => zstd::encode_all(tar, 3).context("zstd layer"),
        }
    }
}

/// Mode and ownership of a tar entry. `0o644.into()` gives a root-owned entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

impl Meta {
    pub fn mode(mode: u32) -> Self {
        Meta {
            mode,
            uid: 0,
            gid: 0,
        }
    }

    pub fn owner(self, uid: u64, gid: u64) -> Self {
        Meta { uid, gid, ..self }
    }
}

impl From<u32> for Meta {
    fn from(mode: u32) -> Self {
        Meta::mode(mode)
    }
}

#[derive(Clone, Debug)]
enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hardlink(String),
}

#[derive(Clone, Debug)]
struct Entry {
    path: String,
    meta: Meta,
    kind: EntryKind,
}

/// Collects the entries of one layer, written in insertion order (so parents should come before
/// their children, as in a tarball made by `tar`). Paths are relative to the image root; a
/// leading `/` is dropped.
#[derive(Clone, Debug)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
    mtime: u64,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        LayerBuilder {
            entries: Vec::new(),
            mtime: DEFAULT_MTIME,
        }
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the mtime of every entry (seconds since the epoch).
    pub fn with_mtime(mut self, mtime: u64) -> Self {
        self.mtime = mtime;
        self
    }

    pub fn dir(&mut self, path: &str, meta: impl Into<Meta>) -> &mut Self {
        self.push(path, meta.into(), EntryKind::Dir)
    }

    pub fn file(
        &mut self,
        path: &str,
        meta: impl Into<Meta>,
        contents: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.push(path, meta.into(), EntryKind::File(contents.into()))
    }

    /// A symbolic link; `target` is stored verbatim (absolute or relative).
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.push(
            path,
            Meta::mode(0o777),
            EntryKind::Symlink(target.to_owned()),
        )
    }

    /// A hard link to `target`, an earlier entry of this layer (a path from the image root).
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let target = normalize(target);
        // The link shares the target's inode, so it carries the target's metadata.
        let meta = self
            .entries
            .iter()
            .rev()
            .find(|e| e.path == target)
            .map_or(Meta::mode(0o644), |e| e.meta);
        self.push(path, meta, EntryKind::Hardlink(target))
    }

    /// Whether an entry with this path was added.
    pub fn contains(&self, path: &str) -> bool {
        let path = normalize(path);
        self.entries.iter().any(|e| e.path == path)
    }

    /// The paths added so far, in order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.path.as_str())
    }

    fn push(&mut self, path: &str, meta: Meta, kind: EntryKind) -> &mut Self {
        self.entries.push(Entry {
            path: normalize(path),
            meta,
            kind,
        });
        self
    }

    /// The uncompressed tarball.
    pub fn to_tar(&self) -> Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(entry.meta.mode);
            header.set_uid(entry.meta.uid);
            header.set_gid(entry.meta.gid);
            header.set_mtime(self.mtime);
            header.set_size(0);
            let path = &entry.path;
            let written = match &entry.kind {
                EntryKind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    tar.append_data(&mut header, format!("{path}/"), std::io::empty())
                }
                EntryKind::File(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(data.len() as u64);
                    tar.append_data(&mut header, path, data.as_slice())
                }
                EntryKind::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    tar.append_link(&mut header, path, target)
                }
                EntryKind::Hardlink(target) => {
                    header.set_entry_type(tar::EntryType::Link);
                    tar.append_link(&mut header, path, target)
                }
            };
            written.with_context(|| format!("add {path} to layer tarball"))?;
        }
        tar.into_inner().context("finish layer tarball")
    }

    /// The tarball, compressed, with its digests.
    pub fn build(&self, compression: Compression) -> Result<Layer> {
        Layer::from_tar(&self.to_tar()?, compression)
    }
}

fn normalize(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

/// A layer blob and the digest of its uncompressed tarball (the config's `diff_id`).
#[derive(Clone, Debug)]
pub struct Layer {
    pub blob: Blob,
    pub diff_id: Digest,
}

impl Layer {
    pub fn from_tar(tar: &[u8], compression: Compression) -> Result<Self> {
        Ok(Layer {
            blob: Blob::new(compression.media_type(), compression.compress(tar)?),
            diff_id: Digest::sha256(tar),
        })
    }
}

/// The runtime part of an image config (`config` in the OCI image config JSON).
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    pub user: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub volumes: BTreeSet<String>,
    /// `"80/tcp"` style keys.
    pub exposed_ports: BTreeSet<String>,
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    fn to_json(&self) -> serde_json::Value {
        let mut c = serde_json::Map::new();
        if let Some(user) = &self.user {
            c.insert("User".into(), json!(user));
        }
        if !self.env.is_empty() {
            c.insert("Env".into(), json!(self.env));
        }
        if !self.entrypoint.is_empty() {
            c.insert("Entrypoint".into(), json!(self.entrypoint));
        }
        if !self.cmd.is_empty() {
            c.insert("Cmd".into(), json!(self.cmd));
        }
        if let Some(dir) = &self.working_dir {
            c.insert("WorkingDir".into(), json!(dir));
        }
        if !self.labels.is_empty() {
            c.insert("Labels".into(), json!(self.labels));
        }
        // Docker's encoding of sets: an object whose values are empty objects.
        let set = |keys: &BTreeSet<String>| {
            serde_json::Value::Object(keys.iter().map(|k| (k.clone(), json!({}))).collect())
        };
        if !self.volumes.is_empty() {
            c.insert("Volumes".into(), set(&self.volumes));
        }
        if !self.exposed_ports.is_empty() {
            c.insert("ExposedPorts".into(), set(&self.exposed_ports));
        }
        if let Some(sig) = &self.stop_signal {
            c.insert("StopSignal".into(), json!(sig));
        }
        serde_json::Value::Object(c)
    }
}

/// A single-platform image: config blob, layers, manifest.
#[derive(Clone, Debug)]
pub struct Image {
    pub platform: Platform,
    pub config: Blob,
    pub layers: Vec<Layer>,
    pub manifest: Blob,
}

impl Image {
    pub fn build(platform: Platform, config: &ImageConfig, layers: Vec<Layer>) -> Result<Self> {
        let mut doc = json!({
            "created": CREATED,
            "architecture": platform.architecture,
            "os": platform.os,
            "config": config.to_json(),
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
            },
            "history": layers.iter().map(|_| json!({"created": CREATED, "created_by": "berth-e2e"})).collect::<Vec<_>>(),
        });
        if let (Some(variant), Some(obj)) = (&platform.variant, doc.as_object_mut()) {
            obj.insert("variant".into(), json!(variant));
        }
        let config = Blob::new(media_type::OCI_CONFIG, serde_json::to_vec(&doc)?);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(|l| l.blob.descriptor()).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(media_type::OCI_MANIFEST, serde_json::to_vec(&manifest)?);
        Ok(Image {
            platform,
            config,
            layers,
            manifest,
        })
    }

    /// The manifest digest: what a registry returns as `Docker-Content-Digest`.
    pub fn digest(&self) -> &Digest {
        self.manifest.digest()
    }

    /// The image ID runtimes report: the config digest.
    pub fn id(&self) -> &Digest {
        self.config.digest()
    }
}

/// A multi-platform image: an OCI index over single-platform images.
#[derive(Clone, Debug)]
pub struct ImageIndex {
    pub images: Vec<Image>,
    pub index: Blob,
}

impl ImageIndex {
    pub fn build(images: Vec<Image>) -> Result<Self> {
        if images.is_empty() {
            bail!("an image index needs at least one image");
        }
        let manifests: Vec<Descriptor> = images
            .iter()
            .map(|img| Descriptor {
                platform: Some(img.platform.clone()),
                ..img.manifest.descriptor()
            })
            .collect();
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_INDEX,
            "manifests": manifests,
        });
        let index = Blob::new(media_type::OCI_INDEX, serde_json::to_vec(&doc)?);
        Ok(ImageIndex { images, index })
    }

    pub fn digest(&self) -> &Digest {
        self.index.digest()
    }

    /// The image for `platform`, if the index has one.
    pub fn image_for(&self, platform: &Platform) -> Option<&Image> {
        self.images.iter().find(|img| &img.platform == platform)
    }
}

/// What gets pushed under a tag: one image or an index.
#[derive(Clone, Debug)]
pub enum Artifact {
    Image(Image),
    Index(ImageIndex),
}

impl Artifact {
    /// The digest the tag resolves to.
    pub fn digest(&self) -> &Digest {
        match self {
            Artifact::Image(img) => img.digest(),
            Artifact::Index(idx) => idx.digest(),
        }
    }

    /// The image a runtime on `platform` would run.
    pub fn image_for(&self, platform: &Platform) -> Option<&Image> {
        match self {
            Artifact::Image(img) => (&img.platform == platform).then_some(img),
            Artifact::Index(idx) => idx.image_for(platform),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    struct ReadEntry {
        path: String,
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        link: Option<String>,
        data: Vec<u8>,
    }

    fn entries(tar: &[u8]) -> Vec<ReadEntry> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned());
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                ReadEntry {
                    path: e.path().unwrap().to_string_lossy().into_owned(),
                    kind: h.entry_type(),
                    mode: h.mode().unwrap(),
                    uid: h.uid().unwrap(),
                    gid: h.gid().unwrap(),
                    mtime: h.mtime().unwrap(),
                    link,
                    data,
                }
            })
            .collect()
    }

    #[test]
    fn sha256_digest_of_empty_input_is_the_well_known_value() {
        assert_eq!(
            Digest::sha256(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Digest::sha256(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn digest_parse_refuses_other_algorithms_and_bad_hex() {
        assert!(Digest::parse(Digest::sha256(b"x").as_str()).is_ok());
        assert!(Digest::parse("sha512:abcd").is_err());
        assert!(Digest::parse("sha256:ABC").is_err());
        assert!(Digest::parse(&format!("sha256:{}", "g".repeat(64))).is_err());
    }

    #[test]
    fn layer_tar_keeps_modes_owners_links_and_the_fixed_mtime() {
        let mut layer = LayerBuilder::new();
        layer
            .dir("/bin", 0o755)
            .dir("tmp/", 0o1777)
            .file("bin/busybox", 0o755, b"ELF".to_vec())
            .hardlink("bin/sh", "/bin/busybox")
            .symlink("bin/ash", "busybox")
            .file("etc/owned", Meta::mode(0o4750).owner(33, 44), b"x".to_vec());
        let got = entries(&layer.to_tar().unwrap());
        let names: Vec<_> = got.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin/",
                "tmp/",
                "bin/busybox",
                "bin/sh",
                "bin/ash",
                "etc/owned"
            ]
        );
        assert!(got.iter().all(|e| e.mtime == DEFAULT_MTIME));
        assert_eq!(got[0].kind, tar::EntryType::Directory);
        assert_eq!(got[1].mode, 0o1777);
        assert_eq!(got[2].data, b"ELF");
        let sh = &got[3];
        assert_eq!(sh.kind, tar::EntryType::Link);
        assert_eq!(sh.link.as_deref(), Some("bin/busybox"));
        assert_eq!(sh.mode, 0o755, "a hard link carries its target's mode");
        assert_eq!(got[4].kind, tar::EntryType::Symlink);
        assert_eq!(got[4].link.as_deref(), Some("busybox"));
        assert_eq!((got[5].mode, got[5].uid, got[5].gid), (0o4750, 33, 44));
    }

    #[test]
    fn long_paths_and_link_targets_survive() {
        let long = format!("usr/{}/file", "d".repeat(150));
        let mut layer = LayerBuilder::new();
        layer
            .file(&long, 0o644, Vec::new())
            .hardlink("short", &long);
        let got = entries(&layer.to_tar().unwrap());
        assert_eq!(got[0].path, long);
        assert_eq!(got[1].link.as_deref(), Some(long.as_str()));
    }

    #[test]
    fn layers_are_deterministic_and_diff_id_is_the_uncompressed_digest() {
        let mut b = LayerBuilder::new();
        b.file("a", 0o644, b"hello".to_vec());
        let one = b.build(Compression::Gzip).unwrap();
        let two = b.build(Compression::Gzip).unwrap();
        assert_eq!(one.blob.digest(), two.blob.digest());
        assert_eq!(one.diff_id, Digest::sha256(&b.to_tar().unwrap()));
        assert_eq!(one.blob.media_type(), media_type::OCI_LAYER_GZIP);

        let mut gunzipped = Vec::new();
        flate2::read::GzDecoder::new(one.blob.data())
            .read_to_end(&mut gunzipped)
            .unwrap();
        assert_eq!(Digest::sha256(&gunzipped), one.diff_id);

        let plain = b.build(Compression::None).unwrap();
        assert_eq!(plain.blob.digest(), &plain.diff_id);
        assert_eq!(plain.blob.media_type(), media_type::OCI_LAYER_TAR);
        let later = b
            .clone()
            .with_mtime(DEFAULT_MTIME + 1)
            .build(Compression::None)
            .unwrap();
        assert_ne!(later.diff_id, plain.diff_id);
    }

    #[test]
    fn config_and_manifest_reference_each_other() {
        let mut b = LayerBuilder::new();
        b.file("a", 0o644, b"hello".to_vec());
        let layer = b.build(Compression::Gzip).unwrap();
        let config = ImageConfig {
            user: Some("1000".into()),
            env: vec!["PATH=/bin".into()],
            entrypoint: vec!["/bin/sh".into()],
            cmd: vec!["-c".into(), "true".into()],
            working_dir: Some("/w".into()),
            labels: [("k".to_owned(), "v".to_owned())].into(),
            volumes: ["/data".to_owned()].into(),
            exposed_ports: ["80/tcp".to_owned()].into(),
            stop_signal: Some("SIGQUIT".into()),
        };
        let img = Image::build(Platform::linux_amd64(), &config, vec![layer.clone()]).unwrap();
        let cfg: serde_json::Value = serde_json::from_slice(img.config.data()).unwrap();
        assert_eq!(cfg["architecture"], "amd64");
        assert_eq!(cfg["os"], "linux");
        assert_eq!(cfg["rootfs"]["diff_ids"][0], layer.diff_id.as_str());
        assert_eq!(cfg["config"]["User"], "1000");
        assert_eq!(cfg["config"]["Volumes"]["/data"], json!({}));
        assert_eq!(cfg["config"]["ExposedPorts"]["80/tcp"], json!({}));
        assert_eq!(cfg["config"]["StopSignal"], "SIGQUIT");
        assert_eq!(cfg["config"]["Labels"]["k"], "v");

        let m: serde_json::Value = serde_json::from_slice(img.manifest.data()).unwrap();
        assert_eq!(m["schemaVersion"], 2);
        assert_eq!(m["mediaType"], media_type::OCI_MANIFEST);
        assert_eq!(m["config"]["digest"], img.config.digest().as_str());
        assert_eq!(m["config"]["size"], img.config.size());
        assert_eq!(m["layers"][0]["digest"], layer.blob.digest().as_str());
        assert_eq!(m["layers"][0]["mediaType"], media_type::OCI_LAYER_GZIP);
    }

    #[test]
    fn index_lists_each_image_with_its_platform() {
        let layer = LayerBuilder::new().build(Compression::Gzip).unwrap();
        let amd = Image::build(
            Platform::linux_amd64(),
            &ImageConfig::default(),
            vec![layer.clone()],
        )
        .unwrap();
        let arm = Image::build(
            Platform::linux_arm64(),
            &ImageConfig::default(),
            vec![layer],
        )
        .unwrap();
        assert_ne!(amd.id(), arm.id());
        let idx = ImageIndex::build(vec![amd.clone(), arm]).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(idx.index.data()).unwrap();
        assert_eq!(doc["mediaType"], media_type::OCI_INDEX);
        assert_eq!(doc["manifests"][0]["digest"], amd.digest().as_str());
        assert_eq!(doc["manifests"][0]["platform"]["architecture"], "amd64");
        assert_eq!(doc["manifests"][1]["platform"]["variant"], "v8");
        let artifact = Artifact::Index(idx);
        assert_eq!(
            artifact
                .image_for(&Platform::linux_amd64())
                .unwrap()
                .digest(),
            amd.digest()
        );
        assert!(ImageIndex::build(Vec::new()).is_err());
    }
}
