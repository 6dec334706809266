//! What the container spec reads from the host: host paths of mounts (resolved, created when
//! missing), the mount a path lives on and its propagation, device nodes, seccomp profile
//! files. A seam ([`Host`]) so that the spec rules are unit-tested without root.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::apparmor::AppArmor;
use crate::containers::spec::NodeFacts;
use crate::node::CgroupVersion;

/// The mount a path lives on, from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPoint {
    pub mount_point: PathBuf,
    /// The optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
}

impl MountPoint {
    pub fn shared(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("shared:"))
    }

    pub fn slave(&self) -> bool {
        self.optional.iter().any(|o| o.starts_with("master:"))
    }
}

/// A device node on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    pub path: PathBuf,
    /// Its path below the directory asked for; empty when the node itself was asked for.
    pub relative: PathBuf,
    /// `c` or `b`.
    pub kind: char,
    pub major: i64,
    pub minor: i64,
    /// The permission bits of the node.
    pub mode: u32,
}

pub trait Host {
    /// The real path of a mount's host path (symlinks resolved); a missing path is created as
    /// a directory first, as containerd does (kubelet relies on it for some volume types).
    fn prepare_host_path(&self, path: &Path) -> Result<PathBuf, String>;
    /// The mount `path` lives on.
    fn mount_of(&self, path: &Path) -> Result<MountPoint, String>;
    /// The device nodes at `path` (symlinks resolved): the node itself, or every node below
    /// a directory.
    fn devices(&self, path: &Path) -> Result<Vec<HostDevice>, String>;
    /// A file's text (seccomp profiles).
    fn read_to_string(&self, path: &Path) -> std::io::Result<String>;
}

/// Parses /proc/self/mountinfo and returns the mount that holds `path` (an absolute,
/// resolved path): the last mount whose mount point is `path` or one of its ancestors.
pub fn find_mount(mountinfo: &str, path: &Path) -> Option<MountPoint> {
    let mut best: Option<MountPoint> = None;
    for line in mountinfo.lines() {
        let Some((head, _)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = head.split_whitespace().collect();
        let Some(mount_point) = fields.get(4).map(|m| PathBuf::from(unescape(m))) else {
            continue;
        };
        if !path.starts_with(&mount_point) {
            continue;
        }
        let longer = best
            .as_ref()
            .is_none_or(|b| mount_point.as_os_str().len() >= b.mount_point.as_os_str().len());
        if longer {
            best = Some(MountPoint {
                mount_point,
                optional: fields.iter().skip(6).map(|s| s.to_string()).collect(),
            });
        }
    }
    best
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.clone().take(3).collect();
            if oct.len() == 3
                && let Ok(v) = u8::from_str_radix(&oct, 8)
            {
                out.push(char::from(v));
                for _ in 0..3 {
                    chars.next();
                }
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Directories below a device dir walked for a privileged container that are skipped.
const HOST_DIRS_WITHOUT_DEVICES: &[&str] =
    &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// The real host.
pub struct LinuxHost;

impl LinuxHost {
    /// Reads the facts of this node (the runtime's `rro` support and AppArmor, prepared once
    /// at start, are the caller's).
    pub fn node_facts(rro: bool, apparmor: AppArmor) -> NodeFacts {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let cgroup = CgroupVersion::detect(&mountinfo);
        let v2_controllers =
            std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        let (hugetlb, swap) = match cgroup {
            CgroupVersion::V1 => (
                Path::new("/sys/fs/cgroup/hugetlb").is_dir(),
                Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
            ),
            CgroupVersion::V2 => (
                v2_controllers.split_whitespace().any(|c| c == "hugetlb"),
                Path::new("/sys/fs/cgroup/init.scope/memory.swap.max").exists()
                    || Path::new("/sys/fs/cgroup/system.slice/memory.swap.max").exists(),
            ),
        };
        NodeFacts {
            cgroup,
            rro,
            apparmor,
            hugetlb,
            swap,
            bounding: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("CapBnd:"))
                        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                })
                .unwrap_or(0),
        }
    }
}

impl LinuxHost {
    fn device(path: &Path, relative: &Path, meta: &std::fs::Metadata) -> Option<HostDevice> {
        let ft = meta.file_type();
        let kind = if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else {
            return None;
        };
        let rdev = meta.rdev();
        Some(HostDevice {
            path: path.to_path_buf(),
            relative: relative.to_path_buf(),
            kind,
            major: i64::from(nix::sys::stat::major(rdev) as u32),
            minor: i64::from(nix::sys::stat::minor(rdev) as u32),
            mode: meta.mode() & 0o7777,
        })
    }

    fn walk(root: &Path, dir: &Path, out: &mut Vec<HostDevice>) -> Result<(), String> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            // Removed while we walked (a tmpfs user's scratch dir): nothing to give.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != root => return Ok(()),
            Err(e) => return Err(format!("reading {}: {e}", dir.display())),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            if meta.is_dir() {
                // As runc's device list: these hold no device nodes of the host's to give a
                // privileged container (the container gets its own), only whatever processes
                // keep there, which may be deep, changing or huge.
                if dir == root
                    && HOST_DIRS_WITHOUT_DEVICES.contains(&entry.file_name().to_str().unwrap_or(""))
                {
                    continue;
                }
                Self::walk(root, &path, out)?;
            } else if let Some(d) = Self::device(&path, &relative, &meta) {
                out.push(d);
            }
        }
        Ok(())
    }
}

impl Host for LinuxHost {
    fn prepare_host_path(&self, path: &Path) -> Result<PathBuf, String> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .create(path)
                    .map_err(|e| format!("creating missing host path {}: {e}", path.display()))?;
            }
            Err(e) => return Err(format!("host path {}: {e}", path.display())),
        }
        std::fs::canonicalize(path)
            .map_err(|e| format!("resolving host path {}: {e}", path.display()))
    }

    fn mount_of(&self, path: &Path) -> Result<MountPoint, String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
        find_mount(&info, path).ok_or_else(|| format!("no mount holds {}", path.display()))
    }

    fn devices(&self, path: &Path) -> Result<Vec<HostDevice>, String> {
        let real =
            std::fs::canonicalize(path).map_err(|e| format!("device {}: {e}", path.display()))?;
        let meta =
            std::fs::metadata(&real).map_err(|e| format!("device {}: {e}", path.display()))?;
        if meta.is_dir() {
            let mut out = Vec::new();
            Self::walk(&real, &real, &mut out)?;
            return Ok(out);
        }
        Self::device(&real, Path::new(""), &meta)
            .map(|d| vec![d])
            .ok_or_else(|| format!("{} is not a device node", path.display()))
    }

    fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 27 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw
47 27 254:0 /tmp/a/mnt /tmp/a/mnt rw,relatime shared:7 - ext4 /dev/vda rw
48 27 254:0 /tmp/b /tmp/b rw,relatime master:3 - ext4 /dev/vda rw
49 27 254:0 /tmp/c\\040d /tmp/c\\040d rw,relatime shared:9 master:3 - ext4 /dev/vda rw
";

    #[test]
    fn finds_the_innermost_mount_and_its_propagation() {
        let m = find_mount(MOUNTINFO, Path::new("/tmp/a/mnt/x")).unwrap();
        assert_eq!(m.mount_point, Path::new("/tmp/a/mnt"));
        assert!(m.shared() && !m.slave());
        let m = find_mount(MOUNTINFO, Path::new("/tmp/b")).unwrap();
        assert!(!m.shared() && m.slave());
        let m = find_mount(MOUNTINFO, Path::new("/tmp/a/other")).unwrap();
        assert_eq!(m.mount_point, Path::new("/"));
        assert!(!m.shared() && !m.slave(), "the root here is private");
        let m = find_mount(MOUNTINFO, Path::new("/tmp/c d/e")).unwrap();
        assert_eq!(m.mount_point, Path::new("/tmp/c d"));
        assert!(m.shared() && m.slave());
        // A path component prefix is not an ancestor.
        let m = find_mount(MOUNTINFO, Path::new("/devices")).unwrap();
        assert_eq!(m.mount_point, Path::new("/"));
    }

    #[test]
    fn node_facts_of_this_host() {
        let facts = LinuxHost::node_facts(true, AppArmor::Disabled);
        assert!(facts.rro);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(facts.cgroup, CgroupVersion::detect(&mountinfo));
        assert_ne!(
            facts.bounding, 0,
            "every test process holds some capability bound"
        );
    }

    #[test]
    fn real_host_resolves_symlinks_and_creates_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let real = std::fs::canonicalize(&target).unwrap();
        assert_eq!(LinuxHost.prepare_host_path(&link).unwrap(), real);
        let missing = dir.path().join("a/b");
        let made = LinuxHost.prepare_host_path(&missing).unwrap();
        assert!(made.is_dir());
        let null = LinuxHost.devices(Path::new("/dev/null")).unwrap();
        assert_eq!((null[0].kind, null[0].major, null[0].minor), ('c', 1, 3));
        assert!(
            LinuxHost
                .devices(dir.path().join("link").as_path())
                .unwrap()
                .is_empty()
        );
        assert!(LinuxHost.devices(Path::new("/etc/hostname")).is_err());
    }

    #[test]
    fn a_device_walk_skips_shm_pts_and_mqueue_as_runc_does() {
        use nix::sys::stat::{Mode, SFlag, makedev, mknod};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["shm", "pts/x", "mqueue", "snd"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
            // As root (the tests' premise): a node like /dev/null's.
            mknod(
                &root.join(sub).join("null"),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(1, 3),
            )
            .unwrap();
        }
        let found: Vec<PathBuf> = LinuxHost
            .devices(root)
            .unwrap()
            .into_iter()
            .map(|d| d.relative)
            .collect();
        assert_eq!(found, vec![PathBuf::from("snd/null")]);
    }
}
