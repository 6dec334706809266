//! The overlay snapshotter: snapshots as directories, mounted with overlayfs.
//!
//! On-disk layout under the root berthd gives it (`<berth root>/snapshots`):
//!
//! ```text
//! <id>/                    one complete snapshot; <id> = first 32 hex digits of sha256(key)
//!   meta.json              key, parent key, kind, labels, times (format version 1)
//!   fs/                    the layer content; the overlay upperdir of an active snapshot
//!   work/                  the overlay workdir (active snapshots only)
//! tmp/<random>/            snapshots being built, and removed ones being deleted
//! staging/<random>/        staged imports (see [`OverlaySnapshotter::stage`]): `fs/` + later meta
//! ```
//!
//! A snapshot is built in `tmp/` or `staging/` with its `meta.json` written and synced, then
//! renamed to `<id>/`, so a crash never leaves an incomplete snapshot under an id; whatever
//! remains in `tmp/` and `staging/` at open is removed. Removal renames into `tmp/` first. A commit rewrites `meta.json` (atomically) and then renames the directory to its new
//! id: a crash in between leaves a directory whose `meta.json` names another key, and open
//! finishes the rename.
//!
//! The index (key → record) lives in memory and is rebuilt at open by scanning the `<id>/`
//! directories (names that are not ids are left alone).
//! One `OverlaySnapshotter` per root: berthd's root lock guarantees it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use crate::{Info, Kind, Mount, Result, SnapshotError, Snapshotter, Usage};

const TMP_DIR: &str = "tmp";
const STAGING_DIR: &str = "staging";
const META_FILE: &str = "meta.json";
const META_TMP_FILE: &str = "meta.json.tmp";
const FS_DIR: &str = "fs";
const WORK_DIR: &str = "work";
const META_VERSION: u32 = 1;

/// Hex digits of sha256(key) used as a snapshot's directory name: 128 bits, short enough to
/// keep overlay's `lowerdir=` option (at most one page) within reach of deep images.
const ID_LEN: usize = 32;

/// An overlayfs snapshotter rooted at one directory.
#[derive(Debug)]
pub struct OverlaySnapshotter {
    root: PathBuf,
    /// Whether overlay mounts get `index=off`.
    index_off: bool,
    /// The most option bytes mount(2) takes: one page, the terminating NUL included.
    max_mount_data: usize,
    index: Mutex<HashMap<String, Record>>,
}

/// An empty directory to unpack a layer into, imported with [`OverlaySnapshotter::import`].
/// Dropping it without importing removes it.
#[derive(Debug)]
pub struct Staging {
    dir: TempDir,
    fs: PathBuf,
}

impl Staging {
    /// Where the layer content goes (the future snapshot's `fs/`).
    pub fn path(&self) -> &Path {
        &self.fs
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    version: u32,
    key: String,
    parent: Option<String>,
    kind: RecordKind,
    labels: BTreeMap<String, String>,
    created_at_ns: i64,
    updated_at_ns: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RecordKind {
    View,
    Active,
    Committed,
}

impl From<RecordKind> for Kind {
    fn from(k: RecordKind) -> Self {
        match k {
            RecordKind::View => Kind::View,
            RecordKind::Active => Kind::Active,
            RecordKind::Committed => Kind::Committed,
        }
    }
}

impl Record {
    fn info(&self) -> Info {
        Info {
            key: self.key.clone(),
            parent: self.parent.clone(),
            kind: self.kind.into(),
            labels: self.labels.clone(),
            created_at_ns: self.created_at_ns,
            updated_at_ns: self.updated_at_ns,
        }
    }
}

/// The directory name of the snapshot `key`.
fn snapshot_id(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut id = String::with_capacity(ID_LEN);
    for b in digest.iter().take(ID_LEN / 2) {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

fn is_snapshot_id(name: &str) -> bool {
    name.len() == ID_LEN && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn io_err(key: &str) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        key: key.to_owned(),
        source,
    }
}

/// Like [`io_err`] for errors that already name a path: the path goes into the message.
fn io_err_at<'a>(key: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        key: key.to_owned(),
        source: io::Error::new(source.kind(), format!("{}: {source}", path.display())),
    }
}

fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Writes `record` as `<dir>/meta.json` atomically and durably.
fn write_record(dir: &Path, record: &Record) -> io::Result<()> {
    let tmp = dir.join(META_TMP_FILE);
    let data = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    let mut file = File::create(&tmp)?;
    file.write_all(&data)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(META_FILE))?;
    fsync_dir(dir)
}

fn read_record(dir: &Path) -> io::Result<Record> {
    let data = fs::read(dir.join(META_FILE))?;
    let record: Record = serde_json::from_slice(&data).map_err(io::Error::other)?;
    if record.version != META_VERSION {
        return Err(io::Error::other(format!(
            "unsupported snapshot metadata version {}",
            record.version
        )));
    }
    Ok(record)
}

/// rename(2) that fails with `EEXIST` instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE).map_err(io::Error::from)
}

/// Flushes the filesystem holding `path`, so a layer marked complete has its content on disk.
fn syncfs(path: &Path) -> io::Result<()> {
    let dir = File::open(path)?;
    nix::unistd::syncfs(&dir).map_err(io::Error::from)
}

fn mkdir(path: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new().mode(mode).create(path)
}

/// Removes every entry of `dir`.
fn clear_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.symlink_metadata()?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

impl OverlaySnapshotter {
    /// Opens (creating it if needed) the snapshotter rooted at `root`: removes leftovers of
    /// interrupted operations, finishes interrupted commits and rebuilds the index.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let at_root = root.display().to_string();
        for dir in [root.clone(), root.join(TMP_DIR), root.join(STAGING_DIR)] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io_err_at(&at_root, &dir))?;
        }
        for dir in [root.join(TMP_DIR), root.join(STAGING_DIR)] {
            clear_dir(&dir).map_err(io_err_at(&at_root, &dir))?;
        }
        let mut index = HashMap::new();
        let entries = fs::read_dir(&root).map_err(io_err_at(&at_root, &root))?;
        for entry in entries {
            let entry = entry.map_err(io_err_at(&at_root, &root))?;
            let mut dir = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_snapshot_id(&name) {
                continue;
            }
            // A directory without readable metadata cannot come from a crash (snapshots are
            // renamed in complete): keep it for inspection, out of the index.
            let Ok(record) = read_record(&dir) else {
                continue;
            };
            let _ = fs::remove_file(dir.join(META_TMP_FILE));
            let id = snapshot_id(&record.key);
            if id != name {
                // An interrupted commit: the metadata was rewritten, the rename did not happen.
                let target = root.join(&id);
                match rename_noreplace(&dir, &target) {
                    Ok(()) => dir = target,
                    // Cannot come from a commit (it checks the name is free first): keep it
                    // for inspection, out of the index.
                    Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => continue,
                    Err(e) => return Err(io_err_at(&record.key, &dir)(e)),
                }
            }
            if record.kind == RecordKind::Committed {
                let work = dir.join(WORK_DIR);
                if work.exists() {
                    fs::remove_dir_all(&work).map_err(io_err_at(&record.key, &work))?;
                }
            }
            index.insert(record.key.clone(), record);
        }
        // As containerd: whenever the kernel knows the option, turn the inode index off, since
        // a lower layer is shared by many uppers.
        let index_off = Path::new("/sys/module/overlay/parameters/index").exists();
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(4096);
        Ok(Self {
            root,
            index_off,
            max_mount_data: page,
            index: Mutex::new(index),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes an empty staging directory to unpack a layer into, in parallel with others.
    pub fn stage(&self) -> Result<Staging> {
        let at_root = self.root.display().to_string();
        let staging = self.root.join(STAGING_DIR);
        let dir = tempfile::Builder::new()
            .prefix("stage-")
            .tempdir_in(&staging)
            .map_err(io_err_at(&at_root, &staging))?;
        let fs_dir = dir.path().join(FS_DIR);
        mkdir(&fs_dir, 0o755).map_err(io_err_at(&at_root, &fs_dir))?;
        Ok(Staging { dir, fs: fs_dir })
    }

    /// Commits the content of `staging` as the committed snapshot `name` on top of `parent`.
    /// `AlreadyExists` when `name` exists: the layer is already there (pulled by someone else),
    /// and the staging directory is dropped. The content is synced to disk first.
    pub fn import(
        &self,
        name: &str,
        parent: Option<&str>,
        staging: Staging,
        labels: BTreeMap<String, String>,
    ) -> Result<()> {
        if self.lock().contains_key(name) {
            return Err(SnapshotError::AlreadyExists(name.to_owned()));
        }
        // Without the lock: syncfs flushes the whole filesystem and may take a while.
        syncfs(staging.dir.path()).map_err(io_err(name))?;
        let mut index = self.lock();
        if index.contains_key(name) {
            return Err(SnapshotError::AlreadyExists(name.to_owned()));
        }
        check_parent(&index, parent)?;
        let now = now_ns();
        let record = Record {
            version: META_VERSION,
            key: name.to_owned(),
            parent: parent.map(str::to_owned),
            kind: RecordKind::Committed,
            labels,
            created_at_ns: now,
            updated_at_ns: now,
        };
        write_record(staging.dir.path(), &record).map_err(io_err(name))?;
        self.install(staging.dir.path(), name)?;
        // The directory is now the snapshot's: disarm the removal on drop.
        let _ = staging.dir.keep();
        index.insert(name.to_owned(), record);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Record>> {
        // Every update of the index is a single insert or remove after the disk is done:
        // a panic elsewhere leaves it consistent.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dir_of(&self, key: &str) -> PathBuf {
        self.root.join(snapshot_id(key))
    }

    /// Renames a complete snapshot directory into place as `key`'s.
    fn install(&self, from: &Path, key: &str) -> Result<()> {
        let target = self.dir_of(key);
        match rename_noreplace(from, &target) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => {
                return Err(SnapshotError::AlreadyExists(key.to_owned()));
            }
            Err(e) => return Err(io_err_at(key, &target)(e)),
        }
        // The snapshot is in place: a failed sync of the directory only risks losing it in a
        // crash, as if it had never been made, so it must not fail the call that made it.
        let _ = fsync_dir(&self.root);
        Ok(())
    }

    fn create(
        &self,
        kind: RecordKind,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        let mut index = self.lock();
        if index.contains_key(key) {
            return Err(SnapshotError::AlreadyExists(key.to_owned()));
        }
        check_parent(&index, parent)?;
        // Before anything is created: a chain too deep to mount is refused.
        let mounts = self.mounts_for(&index, key, kind, parent)?;
        let tmp = self.root.join(TMP_DIR);
        let dir = tempfile::Builder::new()
            .prefix("new-")
            .tempdir_in(&tmp)
            .map_err(io_err_at(key, &tmp))?;
        mkdir(&dir.path().join(FS_DIR), 0o755).map_err(io_err(key))?;
        if kind == RecordKind::Active {
            mkdir(&dir.path().join(WORK_DIR), 0o700).map_err(io_err(key))?;
        }
        let now = now_ns();
        let record = Record {
            version: META_VERSION,
            key: key.to_owned(),
            parent: parent.map(str::to_owned),
            kind,
            labels,
            created_at_ns: now,
            updated_at_ns: now,
        };
        write_record(dir.path(), &record).map_err(io_err(key))?;
        self.install(dir.path(), key)?;
        let _ = dir.keep();
        index.insert(key.to_owned(), record);
        Ok(mounts)
    }

    /// The `fs` dirs of `parent` and its ancestors, nearest first (`key` names errors).
    fn lower_dirs(
        &self,
        index: &HashMap<String, Record>,
        key: &str,
        parent: Option<&str>,
    ) -> Result<Vec<PathBuf>> {
        let mut dirs = Vec::new();
        let mut seen = HashSet::new();
        let mut next = parent.map(str::to_owned);
        while let Some(parent) = next {
            if !seen.insert(parent.clone()) {
                return Err(SnapshotError::FailedPrecondition {
                    key: key.to_owned(),
                    message: format!("parent chain loops at {parent}"),
                });
            }
            let record = index
                .get(&parent)
                .ok_or_else(|| SnapshotError::NotFound(parent.clone()))?;
            dirs.push(self.dir_of(&parent).join(FS_DIR));
            next = record.parent.clone();
        }
        Ok(dirs)
    }

    fn mounts_of(&self, index: &HashMap<String, Record>, key: &str) -> Result<Vec<Mount>> {
        let record = index
            .get(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?;
        self.mounts_for(index, key, record.kind, record.parent.as_deref())
    }

    /// The mounts of a snapshot `key` of `kind` on `parent`, whether or not it exists yet.
    fn mounts_for(
        &self,
        index: &HashMap<String, Record>,
        key: &str,
        kind: RecordKind,
        parent: Option<&str>,
    ) -> Result<Vec<Mount>> {
        let dir = self.dir_of(key);
        let lowers = self.lower_dirs(index, key, parent)?;
        let bind = |source: &Path, rw: bool| Mount {
            fs_type: "bind".to_owned(),
            source: source.display().to_string(),
            options: vec!["rbind".to_owned(), if rw { "rw" } else { "ro" }.to_owned()],
        };
        let active = kind == RecordKind::Active;
        if lowers.is_empty() {
            return Ok(vec![bind(&dir.join(FS_DIR), active)]);
        }
        if !active && lowers.len() == 1 {
            return Ok(vec![bind(&lowers[0], false)]);
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_owned());
        }
        if active {
            options.push(format!("workdir={}", dir.join(WORK_DIR).display()));
            options.push(format!("upperdir={}", dir.join(FS_DIR).display()));
        } else {
            options.push("ro".to_owned());
        }
        let lowers: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        options.push(format!("lowerdir={}", lowers.join(":")));
        // Joined with commas, plus the NUL.
        let data_len = options.iter().map(|o| o.len() + 1).sum::<usize>();
        if data_len > self.max_mount_data {
            return Err(SnapshotError::FailedPrecondition {
                key: key.to_owned(),
                message: format!(
                    "overlay options for {} layers take {data_len} bytes, over mount(2)'s limit \
                     of {}",
                    lowers.len(),
                    self.max_mount_data
                ),
            });
        }
        Ok(vec![Mount {
            fs_type: "overlay".to_owned(),
            source: "overlay".to_owned(),
            options,
        }])
    }
}

fn check_parent(index: &HashMap<String, Record>, parent: Option<&str>) -> Result<()> {
    let Some(parent) = parent else {
        return Ok(());
    };
    let record = index
        .get(parent)
        .ok_or_else(|| SnapshotError::NotFound(parent.to_owned()))?;
    if record.kind != RecordKind::Committed {
        return Err(SnapshotError::FailedPrecondition {
            key: parent.to_owned(),
            message: "parent is not committed".to_owned(),
        });
    }
    Ok(())
}

/// Disk use of the tree at `root`: allocated bytes (as `du`) and inodes, each hard-linked
/// inode counted once. The root directory counts. The tree is a running container's upper
/// directory, which it may change under the walk: directories are opened by descriptor from
/// their parent with `O_NOFOLLOW`, so one swapped for a symlink is never followed out.
fn disk_usage(root: &Path) -> io::Result<Usage> {
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let top = nix::fcntl::open(root, dir_flags, Mode::empty())?;
    let meta = fstat(&top)?;
    let mut usage = Usage {
        inodes: 1,
        bytes: u64::try_from(meta.st_blocks).unwrap_or(0) * 512,
    };
    let mut seen = HashSet::new();
    let mut pending = vec![top];
    while let Some(dir) = pending.pop() {
        // The entries of exactly the directory held open.
        for entry in fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))? {
            let name = entry?.file_name();
            let meta = match fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(m) => m,
                // Removed by the container meanwhile.
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            let is_dir = meta.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
            if meta.st_nlink > 1 && !is_dir && !seen.insert((meta.st_dev, meta.st_ino)) {
                continue;
            }
            usage.inodes += 1;
            usage.bytes += u64::try_from(meta.st_blocks).unwrap_or(0) * 512;
            if is_dir {
                match openat(&dir, name.as_os_str(), dir_flags, Mode::empty()) {
                    Ok(sub) => pending.push(sub),
                    Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(usage)
}

impl Snapshotter for OverlaySnapshotter {
    fn stat(&self, key: &str) -> Result<Info> {
        self.lock()
            .get(key)
            .map(Record::info)
            .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        if !self.lock().contains_key(key) {
            return Err(SnapshotError::NotFound(key.to_owned()));
        }
        // Walked without the lock: a large layer must not stall every other call.
        let fs_dir = self.dir_of(key).join(FS_DIR);
        match disk_usage(&fs_dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.lock().contains_key(key) => {
                Err(SnapshotError::NotFound(key.to_owned()))
            }
            other => other.map_err(io_err_at(key, &fs_dir)),
        }
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let index = self.lock();
        self.mounts_of(&index, key)
    }

    fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(RecordKind::Active, key, parent, labels)
    }

    fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(RecordKind::View, key, parent, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        if !self.lock().contains_key(key) {
            return Err(SnapshotError::NotFound(key.to_owned()));
        }
        // Content on disk before the metadata says committed; without the lock, as in import.
        syncfs(&self.dir_of(key)).map_err(io_err(key))?;
        let mut index = self.lock();
        let record = index
            .get(key)
            .ok_or_else(|| SnapshotError::NotFound(key.to_owned()))?;
        if record.kind != RecordKind::Active {
            return Err(SnapshotError::FailedPrecondition {
                key: key.to_owned(),
                message: "only an active snapshot can be committed".to_owned(),
            });
        }
        if index.contains_key(name) {
            return Err(SnapshotError::AlreadyExists(name.to_owned()));
        }
        let now = now_ns();
        let committed = Record {
            version: META_VERSION,
            key: name.to_owned(),
            parent: record.parent.clone(),
            kind: RecordKind::Committed,
            labels,
            created_at_ns: now,
            updated_at_ns: now,
        };
        let dir = self.dir_of(key);
        // Metadata first, then the rename: open finishes a commit interrupted in between.
        write_record(&dir, &committed).map_err(io_err(key))?;
        if let Err(e) = self.install(&dir, name) {
            // Put the active record back so the snapshot stays usable under its key.
            if let Some(active) = index.get(key) {
                let _ = write_record(&dir, active);
            }
            return Err(e);
        }
        index.remove(key);
        index.insert(name.to_owned(), committed);
        let work = self.dir_of(name).join(WORK_DIR);
        drop(index);
        // A committed snapshot needs no workdir; open removes it if this fails.
        let _ = fs::remove_dir_all(work);
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<()> {
        let mut index = self.lock();
        if !index.contains_key(key) {
            return Ok(());
        }
        if let Some(child) = index.values().find(|r| r.parent.as_deref() == Some(key)) {
            return Err(SnapshotError::FailedPrecondition {
                key: key.to_owned(),
                message: format!("snapshot {} has it as parent", child.key),
            });
        }
        let dir = self.dir_of(key);
        let trash = self
            .root
            .join(TMP_DIR)
            .join(format!("rm-{}-{}", snapshot_id(key), now_ns()));
        fs::rename(&dir, &trash).map_err(io_err_at(key, &dir))?;
        index.remove(key);
        drop(index);
        // Out of place already: a failure here leaves garbage that open removes.
        fs::remove_dir_all(&trash).map_err(io_err_at(key, &trash))
    }

    fn walk(&self, visit: &mut dyn FnMut(&Info) -> bool) -> Result<()> {
        // A copy, so `visit` may call back into the snapshotter.
        let mut infos: Vec<Info> = self.lock().values().map(Record::info).collect();
        infos.sort_by(|a, b| a.key.cmp(&b.key));
        for info in &infos {
            if !visit(info) {
                break;
            }
        }
        Ok(())
    }
}
