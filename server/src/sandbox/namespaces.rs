//! Pinning a pod's namespaces to files, as CRI-O's pinns does: a network, IPC or UTS namespace
//! lives as long as a bind mount of it exists, so a pod needs no process to hold them. The files
//! are what CNI plugins (`CNI_NETNS`) and the OCI runtime (`linux.namespaces[].path`) join.
//!
//! A PID namespace dies with its init process, so a pod that shares one needs a holder process;
//! that is not done here.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Net,
    Ipc,
    Uts,
}

impl Namespace {
    /// The name under /proc/<pid>/ns/ and of the pinned file.
    pub fn name(self) -> &'static str {
        match self {
            Namespace::Net => "net",
            Namespace::Ipc => "ipc",
            Namespace::Uts => "uts",
        }
    }

    fn clone_flag(self) -> CloneFlags {
        match self {
            Namespace::Net => CloneFlags::CLONE_NEWNET,
            Namespace::Ipc => CloneFlags::CLONE_NEWIPC,
            Namespace::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("creating {ns} namespace at {path}: {step}: {source}")]
    Create {
        ns: &'static str,
        path: PathBuf,
        step: &'static str,
        source: nix::Error,
    },
    #[error("creating {ns} namespace at {path}: {source}")]
    Io {
        ns: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("creating {ns} namespace at {path}: the helper thread panicked")]
    Thread { ns: &'static str, path: PathBuf },
    #[error("removing namespace file {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mounting the pod's /dev/shm at {path}: {source}")]
    Shm {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Creates a new namespace of kind `ns` pinned at `path` (which must not exist). For a UTS
/// namespace, `hostname` is set inside it. On error nothing is left at `path`.
pub fn pin_new(ns: Namespace, path: &Path, hostname: Option<&str>) -> Result<(), NamespaceError> {
    let io_err = |source| NamespaceError::Io {
        ns: ns.name(),
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err)?;
    let target = path.to_path_buf();
    let hostname = hostname.map(str::to_owned);
    // unshare(2) of these kinds changes only the calling thread, so a short-lived thread of our
    // own (never a pooled one) enters the new namespace, pins it and exits with it.
    let joined = std::thread::spawn(move || -> Result<(), (&'static str, nix::Error)> {
        unshare(ns.clone_flag()).map_err(|e| ("unshare", e))?;
        if let Some(name) = hostname {
            nix::unistd::sethostname(name).map_err(|e| ("sethostname", e))?;
        }
        let own = format!("/proc/thread-self/ns/{}", ns.name());
        mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| ("bind mount", e))
    })
    .join();
    let result = match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err((step, source))) => Err(NamespaceError::Create {
            ns: ns.name(),
            path: path.to_path_buf(),
            step,
            source,
        }),
        Err(_) => Err(NamespaceError::Thread {
            ns: ns.name(),
            path: path.to_path_buf(),
        }),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Unpins and removes a namespace file. A missing file, or one that is not mounted (a crash
/// between creating and mounting it), is fine: removal is idempotent.
pub fn remove(path: &Path) -> Result<(), NamespaceError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => {
            return Err(NamespaceError::Remove {
                path: path.to_path_buf(),
                source: e.into(),
            });
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NamespaceError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Mounts a tmpfs of `size` bytes at the directory `path` (created), as a pod's `/dev/shm`:
/// world-writable with the sticky bit, no devices, no set-uid, no exec (containerd's options).
pub fn mount_shm(path: &Path, size: u64) -> Result<(), NamespaceError> {
    let err = |source: std::io::Error| NamespaceError::Shm {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    let data = format!("mode=1777,size={size}");
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(data.as_str()),
    )
    .map_err(|e| {
        let _ = std::fs::remove_dir(path);
        err(e.into())
    })
}

/// Unmounts and removes a pod's `/dev/shm` directory; a missing or unmounted one is fine.
pub fn remove_shm(path: &Path) -> Result<(), NamespaceError> {
    let err = |source: std::io::Error| NamespaceError::Remove {
        path: path.to_path_buf(),
        source,
    };
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(err(e.into())),
    }
    match std::fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn nsenter(flag: &str, path: &Path, cmd: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--{flag}={}", path.display()))
            .args(cmd)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn mounted(path: &Path) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let p = path.display().to_string();
        info.lines()
            .any(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
    }

    #[test]
    fn pinned_network_namespace_has_only_loopback_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod/net");
        pin_new(Namespace::Net, &path, None).unwrap();
        assert!(mounted(&path));
        let links = nsenter("net", &path, &["ip", "-o", "link"]);
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains("lo:"), "{links}");
        let host = std::fs::read_link("/proc/self/ns/net").unwrap();
        let pinned = nsenter("net", &path, &["readlink", "/proc/self/ns/net"]);
        assert_ne!(
            pinned.trim(),
            host.to_string_lossy(),
            "a new namespace, not ours"
        );

        remove(&path).unwrap();
        assert!(!path.exists() && !mounted(&path));
        remove(&path).unwrap();
    }

    #[test]
    fn pinned_uts_namespace_carries_the_hostname_and_ours_is_unchanged() {
        let before = nix::unistd::gethostname().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uts");
        pin_new(Namespace::Uts, &path, Some("berth-test-pod")).unwrap();
        assert_eq!(
            nsenter("uts", &path, &["hostname"]).trim(),
            "berth-test-pod"
        );
        assert_eq!(nix::unistd::gethostname().unwrap(), before);
        remove(&path).unwrap();
    }

    #[test]
    fn ipc_namespace_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipc");
        pin_new(Namespace::Ipc, &path, None).unwrap();
        let err = pin_new(Namespace::Ipc, &path, None).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(mounted(&path), "a failed second pin leaves the first alone");
        remove(&path).unwrap();

        // A file left by a crash before the mount: removal still succeeds.
        std::fs::write(&path, "").unwrap();
        remove(&path).unwrap();
        assert!(!path.exists());
    }
}
