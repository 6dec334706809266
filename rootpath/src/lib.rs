//! Paths under an untrusted root, resolved inside it.
//!
//! An image's rootfs is written by someone else: any component of a path below it may be a
//! symlink, absolute (`/etc -> /host-etc`) or relative (`etc -> ../../../../etc`), and berthd
//! runs as root. Joining `rootfs.join("etc/passwd")` and checking only the last component lets
//! such a link read or write a file of the host. [`Root`] resolves every component the way the
//! container itself would see it: an absolute symlink restarts at the root, `..` never climbs
//! above it, and the result is an open file descriptor, so nothing can swap a component between
//! the check and the use.
//!
//! The kernel does this with `openat2(2)` and `RESOLVE_IN_ROOT` (Linux 5.6, as runc uses it);
//! on older kernels, or where a seccomp filter refuses the call, a component-by-component walk
//! with `O_NOFOLLOW` does the same in user space.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, fstat};

/// As many symlinks as Linux follows in one resolution (`MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// `openat2` returns EAGAIN when a rename raced the resolution; runc retries the same way.
const OPENAT2_RETRIES: usize = 32;

/// Set once `openat2` is known to be missing, so later calls go straight to the walk.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// A failed resolution or open below a root, naming both.
#[derive(Debug, thiserror::Error)]
#[error("{path} in root {root}: {source}")]
pub struct Error {
    root: PathBuf,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl Error {
    fn new(root: &Path, path: &Path, errno: Errno) -> Self {
        Self {
            root: root.to_path_buf(),
            path: path.to_path_buf(),
            source: std::io::Error::from(errno),
        }
    }

    /// The kind of the underlying error (`NotFound` for a path the root lacks).
    pub fn kind(&self) -> std::io::ErrorKind {
        self.source.kind()
    }

    /// The underlying OS error number.
    pub fn raw_os_error(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::new(e.source.kind(), e)
    }
}

/// How paths are resolved; [`Resolve::Auto`] unless a test needs the walk on a new kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolve {
    /// `openat2` with `RESOLVE_IN_ROOT`, falling back to the walk where the kernel lacks it.
    Auto,
    /// The user-space walk only.
    Walk,
}

/// A directory that paths are resolved inside of, as if it were `/`.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
    resolve: Resolve,
}

impl Root {
    /// Opens `path` (trusted: a directory berth made) as a root.
    pub fn open(path: &Path) -> Result<Self, Error> {
        Self::open_with(path, Resolve::Auto)
    }

    /// Opens `path` as a root resolved the given way.
    pub fn open_with(path: &Path, resolve: Resolve) -> Result<Self, Error> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::new(path, Path::new("/"), e))?;
        Ok(Self {
            fd,
            path: path.to_path_buf(),
            resolve,
        })
    }

    /// The root's own path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `rel` (absolute or relative, both meaning below the root) with `flags`, creating
    /// it with `mode` when `flags` has `O_CREAT`. A symlink as the last component is followed
    /// inside the root unless `flags` has `O_NOFOLLOW`.
    pub fn open_at(&self, rel: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, Error> {
        let flags = flags | OFlag::O_CLOEXEC;
        if self.resolve == Resolve::Auto && !NO_OPENAT2.load(Ordering::Relaxed) {
            match openat2_in_root(self.fd.as_fd(), rel, flags, mode) {
                Err(Errno::ENOSYS) | Err(Errno::EPERM) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                }
                r => return r.map_err(|e| Error::new(&self.path, rel, e)),
            }
        }
        walk(self.fd.as_fd(), rel, flags, mode).map_err(|e| Error::new(&self.path, rel, e))
    }

    /// Opens the regular file `rel` for reading.
    pub fn open_file(&self, rel: &Path) -> Result<File, Error> {
        let fd = self.open_at(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())?;
        let file = File::from(fd);
        // A fifo or device in an image must not block or drive berthd.
        match file.metadata() {
            Ok(m) if m.is_file() => Ok(file),
            Ok(m) if m.is_dir() => Err(Error::new(&self.path, rel, Errno::EISDIR)),
            Ok(_) => Err(Error::new(&self.path, rel, Errno::EINVAL)),
            Err(e) => Err(Error {
                root: self.path.clone(),
                path: rel.to_path_buf(),
                source: e,
            }),
        }
    }

    /// Reads the regular file `rel`, at most `limit` bytes of it, as UTF-8 (lossily).
    pub fn read_to_string(&self, rel: &Path, limit: u64) -> Result<String, Error> {
        let mut bytes = Vec::new();
        self.open_file(rel)?
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| Error {
                root: self.path.clone(),
                path: rel.to_path_buf(),
                source: e,
            })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The status of `rel` itself: its last component is not followed (a symlink there is
    /// reported as one), every other one is resolved inside the root.
    pub fn lstat(&self, rel: &Path) -> Result<FileStat, Error> {
        let fd = self.open_at(rel, OFlag::O_PATH | OFlag::O_NOFOLLOW, Mode::empty())?;
        fstat(&fd).map_err(|e| Error::new(&self.path, rel, e))
    }

    /// Opens the directory `rel` for reading its entries.
    pub fn open_dir(&self, rel: &Path) -> Result<OwnedFd, Error> {
        self.open_at(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
    }

    /// Creates `rel` and its missing parents with `mode` (before the umask), every one inside
    /// the root, and returns the directory opened. `..` is refused: what it means depends on
    /// the symlinks on the way, and nothing berth creates needs it. A symlink on the way is
    /// followed inside the root; one whose target does not exist is an error (`NotFound`), as
    /// `mkdir -p` has it, rather than a reason to create its target.
    pub fn create_dir_all(&self, rel: &Path, mode: Mode) -> Result<OwnedFd, Error> {
        if rel.components().any(|c| c == Component::ParentDir) {
            return Err(Error::new(&self.path, rel, Errno::EINVAL));
        }
        match self.open_dir(rel) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            r => return r,
        }
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(parent), Some(name)) => (parent, name),
            _ => return self.open_dir(rel),
        };
        let parent_fd = self.create_dir_all(parent, mode)?;
        match nix::sys::stat::mkdirat(parent_fd.as_fd(), name, mode) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::new(&self.path, rel, e)),
        }
        // Re-resolved from the root: a symlink put there meanwhile is followed inside it.
        self.open_dir(rel)
    }
}

fn openat2_in_root(
    root: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlag,
    mode: Mode,
) -> nix::Result<OwnedFd> {
    let rel = relative(rel);
    let how = OpenHow::new()
        .flags(flags)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let mut last = Errno::EAGAIN;
    for _ in 0..OPENAT2_RETRIES {
        match nix::fcntl::openat2(root, rel.as_os_str(), how) {
            Err(Errno::EAGAIN) => last = Errno::EAGAIN,
            r => return r,
        }
    }
    Err(last)
}

/// `rel` as `openat2` takes it below the root (an absolute path is relative to the root with
/// `RESOLVE_IN_ROOT`); `.` for the root itself. Kept byte for byte: a trailing `/.` or `/` means
/// the name before it is followed.
fn relative(rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel.to_path_buf()
    }
}

/// The user-space `RESOLVE_IN_ROOT`: every directory is opened `O_PATH | O_NOFOLLOW` from the
/// one before, so a component swapped for a symlink after it was checked fails to open rather
/// than being followed; symlinks are read and their targets walked from the root (absolute) or
/// from where they are (relative), and `..` at the root stays at the root.
fn walk(root: BorrowedFd<'_>, rel: &Path, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut todo: VecDeque<OsString> = components(rel.as_os_str());
    // The directories from the root down to the current one; `stack[0]` is a copy of the root.
    let mut stack: Vec<OwnedFd> = vec![nix::fcntl::openat(root, ".", dir_flags, Mode::empty())?];
    let mut hops = 0;
    while let Some(name) = todo.pop_front() {
        let Some(current) = stack.last() else {
            return Err(Errno::EINVAL);
        };
        if name == "." {
            // Only ever last (see `components`): the directory reached.
            return reopen(stack.last(), flags, mode);
        }
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            if todo.is_empty() {
                return reopen(stack.last(), flags, mode);
            }
            continue;
        }
        let last = todo.is_empty();
        match nix::fcntl::readlinkat(current.as_fd(), name.as_os_str()) {
            Ok(target) if !(last && flags.contains(OFlag::O_NOFOLLOW)) => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(Errno::ELOOP);
                }
                if target.as_bytes().starts_with(b"/") {
                    stack.truncate(1);
                }
                let mut expanded = components(&target);
                expanded.extend(todo);
                todo = expanded;
                if todo.is_empty() {
                    // A link to `/` (or to `.`) was the last name: it is the directory reached.
                    return reopen(stack.last(), flags, mode);
                }
                continue;
            }
            // Not a symlink (or one the caller asked not to follow): opened below.
            Ok(_) | Err(Errno::EINVAL) => {}
            Err(Errno::ENOENT) if last && flags.contains(OFlag::O_CREAT) => {}
            Err(e) => return Err(e),
        }
        if last {
            return nix::fcntl::openat(
                current.as_fd(),
                name.as_os_str(),
                flags | OFlag::O_NOFOLLOW,
                mode,
            );
        }
        let next = nix::fcntl::openat(current.as_fd(), name.as_os_str(), dir_flags, Mode::empty())?;
        stack.push(next);
    }
    reopen(stack.last(), flags, mode)
}

/// Opens the directory `fd` holds (an `O_PATH` descriptor) with the caller's flags.
fn reopen(fd: Option<&OwnedFd>, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let fd = fd.ok_or(Errno::EINVAL)?;
    if flags.contains(OFlag::O_CREAT) && flags.contains(OFlag::O_EXCL) {
        return Err(Errno::EEXIST);
    }
    nix::fcntl::openat(
        fd.as_fd(),
        ".",
        flags & !(OFlag::O_CREAT | OFlag::O_NOFOLLOW),
        mode,
    )
}

/// The names of a path, `.` and empty ones dropped, `..` kept for the walk to interpret. A
/// trailing `/` or `/.` becomes a last `.`: as in POSIX, the name before it is followed.
fn components(path: &OsStr) -> VecDeque<OsString> {
    let bytes = path.as_bytes();
    let mut out: VecDeque<OsString> = bytes
        .split(|b| *b == b'/')
        .filter(|part| !part.is_empty() && *part != b".")
        .map(|part| OsStr::from_bytes(part).to_os_string())
        .collect();
    if !out.is_empty() && (bytes.ends_with(b"/") || bytes.ends_with(b"/.")) {
        out.push_back(".".into());
    }
    out
}

#[cfg(test)]
mod tests;
