//! The OCI layer applier: unpacks an uncompressed layer tar into an overlay upper directory.
//!
//! Every entry path is resolved inside the destination as if it were `/` (the way containerd's
//! `fs.RootPath` does): a leading `/` is stripped, `..` stops at the root, and a symlink met on
//! the way (one that the layer itself wrote) is followed *inside* the root, component by
//! component with `lstat`, an absolute target restarting at the root. The final component of an
//! entry is never followed: it is created, or removed and re-created. Nothing is written outside
//! the destination.
//!
//! OCI whiteouts become overlayfs ones: `.wh.<name>` is a character device 0/0 named `<name>`,
//! `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory. Layers cannot set
//! `trusted.overlay.*` xattrs of their own (they would steer overlayfs: redirects, metacopy);
//! those PAX records are dropped.
//!
//! The destination must be private to the caller while the layer is applied (a fresh staging
//! directory): the resolution relies on nobody else changing the tree meanwhile.

use std::collections::{HashSet, VecDeque};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;

/// Prefix of an OCI whiteout file name.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Prefix of whiteout meta files (`.wh..wh.*`); only the opaque marker means something.
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
/// The opaque-directory marker.
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";
/// Symlinks followed while resolving one path before giving up (Linux allows 40).
const MAX_SYMLINKS: usize = 255;
/// Tar entries one layer may hold. The largest real layers (a full distribution, a Python or
/// Node tree) hold a few hundred thousand files; a million empty files cost an ext4 node of
/// 100 GiB a sixth of its inodes, from a layer of a few MiB.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// The longest entry path or link target, in bytes: Linux's `PATH_MAX`.
pub const MAX_PATH_BYTES: usize = 4096;

/// What an applied layer held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Tar entries processed (including whiteouts and skipped ones).
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("reading layer tar: {0}")]
    Read(#[source] io::Error),
    #[error("layer entry {entry}: {source}")]
    Entry {
        entry: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer entry {entry}: hard link target {target} is not in the layer")]
    HardlinkOutsideLayer { entry: PathBuf, target: PathBuf },
    #[error("layer entry {entry}: unsupported tar entry type {kind:?}")]
    UnsupportedEntryType {
        entry: PathBuf,
        kind: tar::EntryType,
    },
    #[error("layer entry {entry}: invalid whiteout")]
    InvalidWhiteout { entry: PathBuf },
    #[error("layer holds more than {MAX_ENTRIES} tar entries")]
    TooManyEntries,
    #[error("layer entry {entry}...: {what} of {len} bytes, longer than {MAX_PATH_BYTES}")]
    PathTooLong {
        /// The first bytes of the path.
        entry: String,
        what: &'static str,
        len: usize,
    },
}

/// Applies the uncompressed layer tar read from `reader` to `dest`, an overlay upper directory.
pub fn apply_layer<R: Read>(reader: R, dest: &Path) -> Result<ApplyStats, ApplyError> {
    let mut archive = tar::Archive::new(reader);
    let mut stats = ApplyStats::default();
    // Directory times are set once everything is written, since adding entries to a directory
    // changes its mtime.
    let mut dir_times: Vec<(PathBuf, TimeSpec)> = Vec::new();
    for entry in archive.entries().map_err(ApplyError::Read)? {
        let mut entry = entry.map_err(ApplyError::Read)?;
        stats.entries += 1;
        if stats.entries > MAX_ENTRIES {
            return Err(ApplyError::TooManyEntries);
        }
        check_length(&entry)?;
        let name = entry.path().map_err(ApplyError::Read)?.into_owned();
        let wrap = |source: io::Error| ApplyError::Entry {
            entry: name.clone(),
            source,
        };
        let meta = EntryMeta::read(&mut entry).map_err(wrap)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let Some((parent, base)) = split_clean(&name) else {
            // The root itself (`./`): an upper dir's root keeps the attributes the snapshotter
            // gave it, as containerd does.
            continue;
        };
        let parent = resolve_in_root(dest, &parent).map_err(wrap)?;
        let base_bytes = base.as_bytes();
        if let Some(hidden) = base_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            create_dirs(dest, &parent).map_err(wrap)?;
            let parent_path = dest.join(&parent);
            if base_bytes == WHITEOUT_OPAQUE.as_bytes() {
                set_xattr(&parent_path, OVERLAY_OPAQUE_XATTR, b"y")
                    .map_err(|e| xattr_context(OVERLAY_OPAQUE_XATTR, e))
                    .map_err(wrap)?;
            } else if !base_bytes.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
                if matches!(hidden, b"" | b"." | b"..") {
                    return Err(ApplyError::InvalidWhiteout { entry: name });
                }
                let path = parent_path.join(OsStr::from_bytes(hidden));
                remove_existing(&path, false).map_err(wrap)?;
                mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(io::Error::from)
                    .map_err(wrap)?;
                std::os::unix::fs::lchown(&path, Some(meta.uid), Some(meta.gid)).map_err(wrap)?;
            }
            continue;
        }
        create_dirs(dest, &parent).map_err(wrap)?;
        let path = dest.join(&parent).join(&base);

        match kind {
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(wrap)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let resolved = hardlink_target(dest, &target).map_err(wrap)?;
                let Some(resolved) = resolved else {
                    return Err(ApplyError::HardlinkOutsideLayer {
                        entry: name,
                        target,
                    });
                };
                if resolved == path {
                    continue;
                }
                remove_existing(&path, false).map_err(wrap)?;
                // linkat without AT_SYMLINK_FOLLOW: a symlink target is linked itself.
                fs::hard_link(&resolved, &path).map_err(wrap)?;
                // The link shares the target's inode: its metadata is the target's.
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                remove_existing(&path, false).map_err(wrap)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
                    .open(&path)
                    .map_err(wrap)?;
                stats.bytes += io::copy(&mut entry, &mut file).map_err(wrap)?;
            }
            tar::EntryType::Directory => {
                remove_existing(&path, true).map_err(wrap)?;
                match fs::create_dir(&path) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    other => other.map_err(wrap)?,
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(wrap)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                remove_existing(&path, false).map_err(wrap)?;
                std::os::unix::fs::symlink(&target, &path).map_err(wrap)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let sflag = match kind {
                    tar::EntryType::Char => SFlag::S_IFCHR,
                    tar::EntryType::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let header = entry.header();
                let major = header.device_major().map_err(wrap)?.unwrap_or(0);
                let minor = header.device_minor().map_err(wrap)?.unwrap_or(0);
                remove_existing(&path, false).map_err(wrap)?;
                mknod(
                    &path,
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    makedev(major.into(), minor.into()),
                )
                .map_err(io::Error::from)
                .map_err(wrap)?;
            }
            other => {
                return Err(ApplyError::UnsupportedEntryType {
                    entry: name,
                    kind: other,
                });
            }
        }

        // Owner before mode: chown clears setuid and setgid bits. Xattrs after chown, which
        // clears security.capability.
        std::os::unix::fs::lchown(&path, Some(meta.uid), Some(meta.gid)).map_err(wrap)?;
        let is_symlink = kind == tar::EntryType::Symlink;
        if !is_symlink {
            fs::set_permissions(&path, Permissions::from_mode(meta.mode & 0o7777)).map_err(wrap)?;
        }
        for (key, value) in &meta.xattrs {
            match set_xattr(&path, key, value) {
                // Linux allows no user.* xattrs on symlinks; the link itself is what matters.
                Err(e) if is_symlink && e.raw_os_error() == Some(nix::libc::EPERM) => {}
                other => other.map_err(|e| xattr_context(key, e)).map_err(wrap)?,
            }
        }
        if kind == tar::EntryType::Directory {
            dir_times.push((path, meta.mtime));
        } else {
            set_mtime(&path, meta.mtime).map_err(wrap)?;
        }
    }
    // The last entry for a directory wins; one replaced or whited out later is skipped.
    let mut done = HashSet::new();
    for (path, mtime) in dir_times.iter().rev() {
        if !done.insert(path) || !fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        set_mtime(path, *mtime).map_err(|source| ApplyError::Entry {
            entry: path.strip_prefix(dest).unwrap_or(path).to_path_buf(),
            source,
        })?;
    }
    Ok(stats)
}

/// Refuses an entry whose path or link target is longer than the kernel takes.
fn check_length<R: Read>(entry: &tar::Entry<'_, R>) -> Result<(), ApplyError> {
    let path = entry.path_bytes();
    let too_long = |what, len| ApplyError::PathTooLong {
        entry: String::from_utf8_lossy(&path[..path.len().min(64)]).into_owned(),
        what,
        len,
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(too_long("path", path.len()));
    }
    if let Some(target) = entry.link_name_bytes()
        && target.len() > MAX_PATH_BYTES
    {
        return Err(too_long("link target", target.len()));
    }
    Ok(())
}

/// The metadata of an entry, PAX records applied.
struct EntryMeta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: TimeSpec,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl EntryMeta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Self> {
        let header = entry.header();
        let to_u32 = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| io::Error::other(format!("{what} {v} out of range")))
        };
        let uid = to_u32(header.uid()?, "uid")?;
        let gid = to_u32(header.gid()?, "gid")?;
        let mode = header.mode()?;
        let secs = i64::try_from(header.mtime()?).unwrap_or(i64::MAX);
        let mut mtime = TimeSpec::new(secs, 0);
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions()? {
            for record in pax {
                let record = record?;
                let Ok(key) = record.key() else { continue };
                if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    if !name.starts_with("trusted.overlay.") {
                        xattrs.push((name.to_owned(), record.value_bytes().to_vec()));
                    }
                } else if key == "mtime"
                    && let Some(t) = record.value().ok().and_then(parse_pax_time)
                {
                    mtime = t;
                }
            }
        }
        Ok(Self {
            uid,
            gid,
            mode,
            mtime,
            xattrs,
        })
    }
}

/// Parses a PAX time (`seconds[.fraction]`, possibly negative).
fn parse_pax_time(value: &str) -> Option<TimeSpec> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        let digit = i64::from(c.to_digit(10)?);
        nanos += digit * 10_i64.pow(8 - u32::try_from(i).ok()?);
    }
    if secs < 0 && nanos > 0 {
        Some(TimeSpec::new(secs - 1, 1_000_000_000 - nanos))
    } else {
        Some(TimeSpec::new(secs, nanos))
    }
}

/// Cleans `name` lexically as an absolute path (`..` stops at the root) and splits it into its
/// parent (relative to the root) and final component; `None` for the root itself.
fn split_clean(name: &Path) -> Option<(PathBuf, OsString)> {
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let base = parts.pop()?.to_os_string();
    Some((parts.iter().collect(), base))
}

/// Resolves `path` inside `root` as if `root` were `/`, following symlinks inside the root, and
/// returns the result relative to `root`: a path of real directories (or of components that do
/// not exist yet), never a symlink.
pub(crate) fn resolve_in_root(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut pending: VecDeque<OsString> = path
        .components()
        .filter_map(component_name)
        .collect::<VecDeque<_>>();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(nix::libc::ELOOP));
                }
                let target = fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in target.components().rev().filter_map(component_name) {
                    pending.push_front(c);
                }
            }
            Ok(_) => resolved.push(part),
            Err(e) if e.kind() == io::ErrorKind::NotFound => resolved.push(part),
            Err(e) => return Err(e),
        }
    }
    Ok(resolved.iter().collect())
}

/// A component as a name to walk: `..` kept as a marker, root and `.` dropped.
fn component_name(c: Component<'_>) -> Option<OsString> {
    match c {
        Component::Normal(p) => Some(p.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    }
}

/// Resolves a hard link's target inside `root` like an entry path (its last component not
/// followed); `None` when nothing linkable is there.
fn hardlink_target(root: &Path, target: &Path) -> io::Result<Option<PathBuf>> {
    let Some((parent, base)) = split_clean(target) else {
        return Ok(None);
    };
    let path = root.join(resolve_in_root(root, &parent)?).join(base);
    match fs::symlink_metadata(&path) {
        Ok(m) if !m.is_dir() => Ok(Some(path)),
        Ok(_) => Ok(None),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(Errno::ENOTDIR as i32) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Creates the missing directories of `rel` (resolved, so symlink-free) under `root`.
fn create_dirs(root: &Path, rel: &Path) -> io::Result<()> {
    let mut path = root.to_path_buf();
    for c in rel.components() {
        path.push(c);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(io::Error::from_raw_os_error(nix::libc::ENOTDIR)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&path)?;
                fs::set_permissions(&path, Permissions::from_mode(0o755))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes what is at `path` (never following it), except a directory about to be replaced by
/// a directory, which is kept with its content.
fn remove_existing(path: &Path, new_is_dir: bool) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            if new_is_dir {
                Ok(())
            } else {
                fs::remove_dir_all(path)
            }
        }
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_mtime(path: &Path, mtime: TimeSpec) -> io::Result<()> {
    utimensat(
        AT_FDCWD,
        path,
        &mtime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

fn xattr_context(name: &str, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("setting xattr {name}: {err}"))
}

/// Sets an xattr on `path` itself (not a symlink's target).
pub(crate) fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let c_name = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: both strings are NUL-terminated and outlive the call; `value` is a valid buffer
    // of `value.len()` bytes that the kernel only reads.
    let res = unsafe {
        nix::libc::lsetxattr(
            c_path.as_ptr(),
            c_name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if res == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(nix::libc::EOPNOTSUPP) && name != OVERLAY_OPAQUE_XATTR {
        // As containerd does: a filesystem without this xattr namespace keeps the file.
        return Ok(());
    }
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_clean_clamps_at_root() {
        assert_eq!(
            split_clean(Path::new("../../a/b")),
            Some((PathBuf::from("a"), OsString::from("b")))
        );
        assert_eq!(
            split_clean(Path::new("/etc/passwd")),
            Some((PathBuf::from("etc"), OsString::from("passwd")))
        );
        assert_eq!(split_clean(Path::new("./")), None);
        assert_eq!(split_clean(Path::new("a/..")), None);
    }

    #[test]
    fn pax_time_parses_fractions() {
        assert_eq!(parse_pax_time("12.5"), Some(TimeSpec::new(12, 500_000_000)));
        assert_eq!(parse_pax_time("7"), Some(TimeSpec::new(7, 0)));
        assert_eq!(parse_pax_time("x"), None);
    }

    #[test]
    fn resolve_follows_symlinks_inside_root() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", root.path().join("slash")).unwrap();
        std::os::unix::fs::symlink("../../../etc", root.path().join("up")).unwrap();
        fs::create_dir(root.path().join("d")).unwrap();
        std::os::unix::fs::symlink("d", root.path().join("rel")).unwrap();
        assert_eq!(
            resolve_in_root(root.path(), Path::new("slash/tmp")).unwrap(),
            PathBuf::from("tmp")
        );
        assert_eq!(
            resolve_in_root(root.path(), Path::new("up/x")).unwrap(),
            PathBuf::from("etc/x")
        );
        assert_eq!(
            resolve_in_root(root.path(), Path::new("rel/x")).unwrap(),
            PathBuf::from("d/x")
        );
    }

    /// A tar of `n` empty global PAX headers, produced as it is read.
    struct GlobalHeaders {
        block: [u8; 512],
        left: u64,
        pos: usize,
        trailer: usize,
    }

    impl GlobalHeaders {
        fn new(n: u64) -> Self {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::XGlobalHeader);
            header.set_size(0);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_path("g").unwrap();
            header.set_cksum();
            let mut block = [0u8; 512];
            block.copy_from_slice(header.as_bytes());
            GlobalHeaders {
                block,
                left: n,
                pos: 0,
                trailer: 1024,
            }
        }
    }

    impl Read for GlobalHeaders {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                let n = buf.len().min(self.trailer);
                buf[..n].fill(0);
                self.trailer -= n;
                return Ok(n);
            }
            let n = buf.len().min(512 - self.pos);
            buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == 512 {
                self.pos = 0;
                self.left -= 1;
            }
            Ok(n)
        }
    }

    #[test]
    fn a_layer_of_more_than_a_million_entries_is_refused() {
        let dest = tempfile::tempdir().unwrap();
        let stats = apply_layer(GlobalHeaders::new(MAX_ENTRIES), dest.path()).unwrap();
        assert_eq!(stats.entries, MAX_ENTRIES);
        let err = apply_layer(GlobalHeaders::new(MAX_ENTRIES + 1), dest.path()).unwrap_err();
        assert!(matches!(err, ApplyError::TooManyEntries), "{err}");
        assert!(err.to_string().contains("1000000"), "{err}");
    }

    #[test]
    fn paths_and_link_targets_past_path_max_are_refused() {
        let long = format!("{}/f", "d".repeat(MAX_PATH_BYTES));
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, &long, io::empty())
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let dest = tempfile::tempdir().unwrap();
        let err = apply_layer(tar.as_slice(), dest.path()).unwrap_err();
        assert!(
            matches!(&err, ApplyError::PathTooLong { what: "path", len, .. } if *len == long.len()),
            "{err}"
        );
        assert!(err.to_string().len() < 200, "{err}");
        assert_eq!(fs::read_dir(dest.path()).unwrap().count(), 0);

        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        builder
            .append_link(&mut header, "link", "t".repeat(MAX_PATH_BYTES + 1))
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let err = apply_layer(tar.as_slice(), dest.path()).unwrap_err();
        assert!(
            matches!(
                &err,
                ApplyError::PathTooLong {
                    what: "link target",
                    ..
                }
            ),
            "{err}"
        );
        // At the limit, a path is fine.
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o644);
        header.set_uid(nix::unistd::getuid().as_raw().into());
        header.set_gid(nix::unistd::getgid().as_raw().into());
        header.set_mtime(0);
        builder
            .append_data(&mut header, "f".repeat(255), io::empty())
            .unwrap();
        let tar = builder.into_inner().unwrap();
        apply_layer(tar.as_slice(), dest.path()).unwrap();
    }

    #[test]
    fn resolve_stops_symlink_loops() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b", root.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", root.path().join("b")).unwrap();
        let err = resolve_in_root(root.path(), Path::new("a/x")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::ELOOP));
    }
}
