//! The content store: blobs by digest under `<root>/content/blobs/sha256/<hex>`.
//!
//! A blob is written to a temp file in `<root>/content/ingest/`, hashed while it streams, and
//! renamed into place only once its digest matches: a blob at its final path is always complete
//! and verified. Ingest files left by a crash are removed when the store opens.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use super::ImageError;
use super::reference::is_sha256_hex;

#[derive(Debug)]
pub struct ContentStore {
    root: PathBuf,
    next_ingest: AtomicU64,
}

impl ContentStore {
    /// Opens (creating) the store under `root` and removes leftover ingest files.
    pub fn open(root: &Path) -> Result<ContentStore, ImageError> {
        let store = ContentStore {
            root: root.to_path_buf(),
            next_ingest: AtomicU64::new(0),
        };
        let ingest = store.ingest_dir();
        if ingest.exists() {
            std::fs::remove_dir_all(&ingest).map_err(|e| io_err(&ingest, e))?;
        }
        for dir in [store.root.join("blobs/sha256"), ingest] {
            std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        match digest.split_once(':') {
            Some(("sha256", hex)) if is_sha256_hex(hex) => {
                Ok(self.root.join("blobs/sha256").join(hex))
            }
            _ => Err(ImageError::Malformed(format!(
                "unsupported digest {digest:?}"
            ))),
        }
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    /// The digests of every blob in the store.
    pub fn list(&self) -> Result<Vec<String>, ImageError> {
        let dir = self.root.join("blobs/sha256");
        let entries = std::fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|hex| is_sha256_hex(hex))
            .map(|hex| format!("sha256:{hex}"))
            .collect())
    }

    /// Deletes the blob `digest`; a missing one is fine. Returns the bytes freed.
    pub fn delete(&self, digest: &str) -> Result<u64, ImageError> {
        let path = self.path(digest)?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.path(digest)?;
        std::fs::read(&path).map_err(|e| io_err(&path, e))
    }

    /// Writes `data` as the blob `digest` after checking it.
    pub fn write_all(&self, digest: &str, data: &[u8]) -> Result<(), ImageError> {
        let mut w = self.writer(digest)?;
        w.write(data)?;
        w.commit()
    }

    /// A writer for the blob `digest`; nothing is visible until [`Ingest::commit`].
    pub fn writer(&self, digest: &str) -> Result<Ingest, ImageError> {
        let target = self.path(digest)?;
        let n = self.next_ingest.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .ingest_dir()
            .join(format!("{}-{}-{n}", &digest[7..19], std::process::id()));
        let file = std::fs::File::create(&temp).map_err(|e| io_err(&temp, e))?;
        Ok(Ingest {
            digest: digest.to_string(),
            target,
            temp,
            file: Some(std::io::BufWriter::with_capacity(256 * 1024, file)),
            hasher: Sha256::new(),
            written: 0,
        })
    }
}

/// A blob being written. Dropped without `commit`, its temp file is removed.
pub struct Ingest {
    digest: String,
    target: PathBuf,
    temp: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    hasher: Sha256,
    written: u64,
}

impl Ingest {
    pub fn write(&mut self, data: &[u8]) -> Result<(), ImageError> {
        self.hasher.update(data);
        self.written += data.len() as u64;
        match &mut self.file {
            Some(f) => f.write_all(data).map_err(|e| io_err(&self.temp, e)),
            None => Err(io_err(
                &self.temp,
                std::io::Error::other("write after commit"),
            )),
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Whether what was written so far has the expected digest.
    pub fn check(&self) -> Result<(), ImageError> {
        let actual = format!("sha256:{}", hex(&self.hasher.clone().finalize()));
        if actual != self.digest {
            return Err(ImageError::DigestMismatch {
                blob: self.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Verifies the digest, syncs, and renames the blob into place.
    pub fn commit(mut self) -> Result<(), ImageError> {
        self.check()?;
        if let Some(f) = self.file.take() {
            let file = f
                .into_inner()
                .map_err(|e| io_err(&self.temp, e.into_error()))?;
            file.sync_all().map_err(|e| io_err(&self.temp, e))?;
        }
        std::fs::rename(&self.temp, &self.target).map_err(|e| io_err(&self.target, e))?;
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // After a successful commit the temp path no longer exists.
        let _ = std::fs::remove_file(&self.temp);
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn io_err(path: &Path, e: std::io::Error) -> ImageError {
    ImageError::Io(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_blob_is_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let digest = sha256_digest(b"hello");
        let mut w = store.writer(&digest).unwrap();
        w.write(b"hel").unwrap();
        w.write(b"lo").unwrap();
        assert!(!store.contains(&digest));
        w.commit().unwrap();
        assert!(store.contains(&digest));
        assert_eq!(store.read(&digest).unwrap(), b"hello");
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn mismatch_names_the_blob_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let digest = sha256_digest(b"hello");
        let err = store.write_all(&digest, b"HELLO").unwrap_err();
        assert!(err.to_string().contains(&digest), "{err}");
        assert!(!store.contains(&digest));
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn leftover_ingest_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ingest")).unwrap();
        std::fs::write(dir.path().join("ingest/partial"), b"x").unwrap();
        ContentStore::open(dir.path()).unwrap();
        assert!(!dir.path().join("ingest/partial").exists());
    }
}
