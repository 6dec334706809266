//! The image's declared `VOLUME`s: a fresh directory per container and volume, seeded with
//! what the image has at that path (containerd's volume copy-up), bind-mounted read-write.
//!
//! ```text
//! <container dir>/volumes/<n>/   the n-th volume of the image config (removed with the container)
//! ```

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use berth_proto::cri::{ContainerConfig, Mount, MountPropagation};
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

/// Creates `dir` and copies the image's content at `container_path` (below `rootfs`) into
/// it, keeping modes, owners and symlinks. A path the image lacks gives an empty directory; a
/// symlink in the path is not followed out of the rootfs (nothing is copied then).
pub fn prepare(rootfs: &Path, container_path: &str, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut src = rootfs.to_path_buf();
    for c in Path::new(container_path).components() {
        if let Component::Normal(part) = c {
            src.push(part);
            match std::fs::symlink_metadata(&src) {
                Ok(m) if m.file_type().is_symlink() => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
    let meta = std::fs::symlink_metadata(&src)?;
    if !meta.is_dir() {
        return Ok(());
    }
    copy_attrs(&meta, dir)?;
    copy_tree(&src, dir)
}

fn copy_attrs(meta: &std::fs::Metadata, to: &Path) -> std::io::Result<()> {
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    if !meta.file_type().is_symlink() {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let src: PathBuf = entry.path();
        let dst = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)?;
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
}
