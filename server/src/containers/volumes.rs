//! The image's declared `VOLUME`s: a fresh directory per container and volume, seeded with
//! what the image has at that path (containerd's volume copy-up), bind-mounted read-write.
//!
//! ```text
//! <container dir>/volumes/<n>/   the n-th volume of the image config (removed with the container)
//! ```

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use berth_proto::cri::{ContainerConfig, Mount, MountPropagation};
use berth_rootpath::Root;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use oci_spec::image::Config as ImageConfig;

/// The image volumes a container gets: those no CRI mount covers (same destination), in the
/// image's order, with the `n` of their directory.
pub fn needed(image: &ImageConfig, config: &ContainerConfig) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (n, v) in image
        .volumes()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let clean = clean(&v);
        let covered = config
            .mounts
            .iter()
            .any(|m| clean_eq(&m.container_path, &clean));
        if !covered && !out.iter().any(|(_, o)| *o == clean) {
            out.push((n, clean));
        }
    }
    out
}

fn clean(p: &str) -> String {
    let parts: Vec<String> = Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().to_string()),
            _ => None,
        })
        .collect();
    format!("/{}", parts.join("/"))
}

fn clean_eq(a: &str, b: &str) -> bool {
    clean(a) == clean(b)
}

/// The CRI mount of a prepared volume directory, as the spec takes CRI mounts.
pub fn mount(container_path: &str, dir: &Path) -> Mount {
    Mount {
        container_path: container_path.to_string(),
        host_path: dir.display().to_string(),
        propagation: MountPropagation::PropagationPrivate as i32,
        ..Default::default()
    }
}

/// Why a volume could not be seeded: the image's content is unusable, or berth's own
/// directory could not be written.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Image(#[from] berth_rootpath::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Creates `dir` and copies the image's content at `container_path` (below `rootfs`) into
/// it, keeping modes, owners and symlinks. The path is resolved inside the rootfs, symlinks
/// included, as the container sees it; a path the image lacks, or that is not a directory,
/// gives an empty directory. The copy goes by descriptors and never follows a symlink of the
/// tree: those are copied as symlinks.
pub fn prepare(rootfs: &Path, container_path: &str, dir: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(dir)?;
    // The rootfs directory itself is berth's: failing to open it is not the image's fault.
    let root = Root::open(rootfs).map_err(std::io::Error::from)?;
    let src = match root.open_dir(Path::new(container_path)) {
        Ok(fd) => fd,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(Errno::ENOTDIR as i32) =>
        {
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    copy_attrs(&fstat(&src).map_err(std::io::Error::from)?, dir)?;
    copy_tree(&src, dir)?;
    Ok(())
}

fn copy_attrs(meta: &FileStat, to: &Path) -> std::io::Result<()> {
    std::os::unix::fs::lchown(to, Some(meta.st_uid), Some(meta.st_gid))?;
    if meta.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFLNK.bits() {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.st_mode & 0o7777))?;
    }
    Ok(())
}

/// Copies the directory open at `from` into the existing directory `to` (berth's own).
fn copy_tree(from: &OwnedFd, to: &Path) -> std::io::Result<()> {
    // The entries of exactly the directory held open, not of whatever a path names now.
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", from.as_raw_fd()))?;
    for entry in listing {
        let name = entry?.file_name();
        let dst = to.join(&name);
        let meta = fstatat(from, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let kind = meta.st_mode & SFlag::S_IFMT.bits();
        if kind == SFlag::S_IFDIR.bits() {
            let sub = openat(
                from,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            std::fs::create_dir(&dst)?;
            copy_tree(&sub, &dst)?;
        } else if kind == SFlag::S_IFLNK.bits() {
            std::os::unix::fs::symlink(readlinkat(from, name.as_os_str())?, &dst)?;
        } else if kind == SFlag::S_IFREG.bits() {
            let fd = openat(
                from,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            let mut src = std::fs::File::from(fd);
            if !src.metadata()?.is_file() {
                continue;
            }
            let mut out = std::fs::File::create_new(&dst)?;
            std::io::copy(&mut src, &mut out)?;
        } else {
            // Device nodes, fifos and sockets are not volume content.
            continue;
        }
        copy_attrs(&meta, &dst)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use oci_spec::image::ConfigBuilder;

    use super::*;

    #[test]
    fn volumes_not_covered_by_a_cri_mount_are_needed() {
        let image = ConfigBuilder::default()
            .volumes(vec!["/data/".to_string(), "/cache".into(), "/data".into()])
            .build()
            .unwrap();
        let config = ContainerConfig {
            mounts: vec![mount("/cache", Path::new("/srv/cache"))],
            ..Default::default()
        };
        assert_eq!(needed(&image, &config), vec![(0, "/data".to_string())]);
    }

    #[test]
    fn a_volume_is_seeded_from_the_image_without_leaving_the_rootfs() {
        let rootfs = tempfile::tempdir().unwrap();
        let data = rootfs.path().join("var/data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("sub/file"), "seed").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::os::unix::fs::symlink("sub/file", data.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", rootfs.path().join("escape")).unwrap();

        let out = tempfile::tempdir().unwrap();
        let vol = out.path().join("0");
        prepare(rootfs.path(), "/var/data", &vol).unwrap();
        assert_eq!(
            std::fs::read_to_string(vol.join("sub/file")).unwrap(),
            "seed"
        );
        assert_eq!(
            std::fs::read_link(vol.join("link")).unwrap(),
            Path::new("sub/file")
        );
        let mode = std::fs::metadata(&vol).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o1777);

        let empty = out.path().join("1");
        prepare(rootfs.path(), "/missing/dir", &empty).unwrap();
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
        let escaped = out.path().join("2");
        prepare(rootfs.path(), "/escape", &escaped).unwrap();
        assert_eq!(
            std::fs::read_dir(&escaped).unwrap().count(),
            0,
            "no copy of the host's /etc"
        );
    }

    #[test]
    fn a_symlinked_volume_path_is_resolved_inside_the_rootfs() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), "host").unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(rootfs.path().join("srv/data")).unwrap();
        std::fs::write(rootfs.path().join("srv/data/seed"), "image").unwrap();
        // `/data -> /srv/data`: the image's meaning is kept.
        std::os::unix::fs::symlink("/srv/data", rootfs.path().join("data")).unwrap();
        // `/abs -> <host>` and `/rel -> ../../…/<host>`: both land inside the rootfs.
        std::os::unix::fs::symlink(host.path(), rootfs.path().join("abs")).unwrap();
        let up = format!("{}{}", "../".repeat(20), host.path().display());
        std::os::unix::fs::symlink(&up, rootfs.path().join("rel")).unwrap();
        // A file of the tree that is a symlink to a host file stays a symlink.
        std::os::unix::fs::symlink(
            host.path().join("secret"),
            rootfs.path().join("srv/data/leak"),
        )
        .unwrap();

        let out = tempfile::tempdir().unwrap();
        prepare(rootfs.path(), "/data", &out.path().join("0")).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("0/seed")).unwrap(),
            "image"
        );
        assert!(
            std::fs::symlink_metadata(out.path().join("0/leak"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        for (n, path) in [(1, "/abs"), (2, "/rel"), (3, "/rel/..")] {
            let vol = out.path().join(n.to_string());
            prepare(rootfs.path(), path, &vol).unwrap();
            let names: Vec<_> = std::fs::read_dir(&vol)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(!names.iter().any(|n| n == "secret"), "{path}: {names:?}");
        }
    }

    #[test]
    fn a_volume_path_in_a_symlink_loop_is_an_image_error() {
        let rootfs = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("b", rootfs.path().join("a")).unwrap();
        std::os::unix::fs::symlink("a", rootfs.path().join("b")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let err = prepare(rootfs.path(), "/a/data", &out.path().join("0")).unwrap_err();
        assert!(matches!(err, VolumeError::Image(_)), "{err}");
        assert!(err.to_string().contains("/a/data"), "{err}");
    }
}
