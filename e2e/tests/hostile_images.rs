//! Images whose symlinks point out of their rootfs at every place berthd (as root) or runc
//! touches: the user and group files, VOLUME paths, the working directory, `/etc/hosts`,
//! `/etc/resolv.conf`, `/etc/hostname`, `/dev`, and symlink loops. Each image is built by the
//! harness on top of the critest busybox layer, with links aimed at marker directories in the
//! test's own directory on the host. A case either works with the image's own meaning (the link
//! resolved inside the rootfs, where the image put its own copy) or fails with a clear error;
//! the host's markers are never read, written or added to. Runs as root.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use berth_e2e::daemon::{Berthd, BerthdOptions, berthd_with_busybox};
use berth_e2e::fixtures::{path_str as s, write_json};
use berth_e2e::image::{Compression, Image, ImageConfig, Layer, LayerBuilder, Platform};
use berth_e2e::registry::Registry;
use berth_e2e::testimages::{self, Content};
use serde_json::json;

/// Far more `..` than any temp dir is deep: a relative link that would climb to the host's `/`.
const UP: &str = "../../../../../../../../../../../../../../../../";

fn start(test: u8) -> Result<(Berthd, Registry)> {
    let pid = std::process::id();
    berthd_with_busybox(
        BerthdOptions::default(),
        &format!("bh{}t{test}", pid % 100_000),
        &format!("10.{}.{}.0/24", 230 + test, pid % 250),
    )
}

/// The critest busybox rootfs layer every hostile image starts from.
fn busybox_layer() -> Result<Layer> {
    let entry = testimages::catalog()
        .iter()
        .find(|e| e.content == Content::Busybox)
        .context("no busybox in the critest catalog")?;
    let image = testimages::artifact(entry)?
        .image_for(&Platform::linux_amd64())
        .context("busybox has no linux/amd64 image")?;
    image
        .layers
        .first()
        .cloned()
        .context("busybox image has no layer")
}

/// A host directory of the test holding `files`, which the images aim their links at.
fn host_dir(berthd: &Berthd, name: &str, files: &[(&str, &str)]) -> Result<PathBuf> {
    let dir = berthd.paths().dir.join(name);
    std::fs::create_dir_all(&dir)?;
    for (file, text) in files {
        std::fs::write(dir.join(file), text)?;
    }
    Ok(dir)
}

/// The host directory's entries and contents, to compare before and after.
fn snapshot(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let entry = entry?;
        let text = std::fs::read_to_string(entry.path()).unwrap_or_else(|_| "<not a file>".into());
        out.push((entry.file_name().to_string_lossy().into_owned(), text));
    }
    out.sort();
    Ok(out)
}

/// `path` of the host as a path inside a rootfs (no leading `/`).
fn inside(path: &Path) -> String {
    path.display()
        .to_string()
        .trim_start_matches('/')
        .to_string()
}

/// Adds the directories leading to `path` (and `path` itself) to `layer`.
fn dirs(layer: &mut LayerBuilder, path: &str) {
    let mut at = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(part);
        if !layer.contains(&at) {
            layer.dir(&at, 0o755);
        }
    }
}

/// Pushes busybox plus `layer` with `config` as `hostile/<name>` and pulls it; returns the
/// reference.
fn push(
    berthd: &Berthd,
    registry: &Registry,
    name: &str,
    config: ImageConfig,
    layer: &LayerBuilder,
) -> Result<String> {
    let config = ImageConfig {
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        ..config
    };
    let image = Image::build(
        Platform::linux_amd64(),
        &config,
        vec![busybox_layer()?, layer.build(Compression::Gzip)?],
    )?;
    let repo = format!("hostile/{name}");
    registry.client().push_image(&repo, "1", &image)?;
    let reference = format!("{}/{repo}:1", registry.host());
    berthd.crictl_ok(&["pull", &reference])?;
    Ok(reference)
}

fn pod(berthd: &Berthd, name: &str) -> Result<(String, PathBuf)> {
    let dir = berthd.paths().dir.clone();
    let cfg = write_json(
        &dir,
        &format!("{name}-pod.json"),
        &json!({
            "metadata": {"name": name, "namespace": "e2e", "uid": format!("uid-{name}"), "attempt": 1},
            "hostname": format!("{name}-host"),
            "log_directory": dir.join("logs").join(name),
            "linux": {},
        }),
    )?;
    let id = berthd.crictl_ok(&["runp", s(&cfg)?])?.trim().to_string();
    Ok((id, cfg))
}

fn container_config(berthd: &Berthd, name: &str, image: &str) -> Result<PathBuf> {
    write_json(
        &berthd.paths().dir,
        &format!("{name}-ctr.json"),
        &json!({
            "metadata": {"name": name},
            "image": {"image": image},
            "command": ["sleep", "1000"],
            "log_path": format!("{name}/0.log"),
            "linux": {},
        }),
    )
}

/// Creates and starts a container of `image` in the pod; returns its id.
fn run(berthd: &Berthd, pod: &(String, PathBuf), name: &str, image: &str) -> Result<String> {
    let cfg = container_config(berthd, name, image)?;
    let id = berthd
        .crictl_ok(&["create", &pod.0, s(&cfg)?, s(&pod.1)?])?
        .trim()
        .to_string();
    berthd.crictl_ok(&["start", &id])?;
    Ok(id)
}

/// The stderr of a create that must fail.
fn refused(berthd: &Berthd, pod: &(String, PathBuf), name: &str, image: &str) -> Result<String> {
    let cfg = container_config(berthd, name, image)?;
    let out = berthd.crictl(&["create", &pod.0, s(&cfg)?, s(&pod.1)?])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(!out.status.success(), "create of {image} succeeded");
    Ok(stderr)
}

fn exec(berthd: &Berthd, id: &str, cmd: &[&str]) -> Result<String> {
    let mut args = vec!["exec", "-s", id];
    args.extend_from_slice(cmd);
    Ok(berthd.crictl_ok(&args)?.trim().to_string())
}

const HOST_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nhostile:x:4242:4242::/:/bin/sh\n";
const HOST_GROUP: &str = "root:x:0:\nhostile:x:4242:\n";

fn image_passwd(uid: u32) -> String {
    format!("root:x:0:0:root:/root:/bin/sh\nhostile:x:{uid}:{uid}::/:/bin/sh\n")
}

fn image_group(gid: u32) -> String {
    format!("root:x:0:\nhostile:x:{gid}:\n")
}

#[test]
fn the_user_is_looked_up_in_the_images_own_files_whatever_its_symlinks() -> Result<()> {
    let (berthd, registry) = start(1)?;
    let host = host_dir(
        &berthd,
        "host-etc",
        &[("passwd", HOST_PASSWD), ("group", HOST_GROUP)],
    )?;
    let before = snapshot(&host)?;
    let user = ImageConfig {
        user: Some("hostile".into()),
        ..ImageConfig::default()
    };
    let copy = inside(&host);

    // `/etc -> <host>/host-etc`: an absolute link as the first component.
    let mut layer = LayerBuilder::new();
    layer.symlink("etc", s(&host)?);
    dirs(&mut layer, &copy);
    layer
        .file(&format!("{copy}/passwd"), 0o644, image_passwd(1234))
        .file(&format!("{copy}/group"), 0o644, image_group(1234));
    let etc_abs = push(&berthd, &registry, "etc-abs", user.clone(), &layer)?;

    // `etc/passwd -> ../../…/<host>/passwd`: a relative link as the last component.
    let mut layer = LayerBuilder::new();
    layer
        .dir("etc", 0o755)
        .symlink("etc/passwd", &format!("{UP}{copy}/passwd"))
        .symlink("etc/group", &format!("{UP}{copy}/group"));
    dirs(&mut layer, &copy);
    layer
        .file(&format!("{copy}/passwd"), 0o644, image_passwd(1235))
        .file(&format!("{copy}/group"), 0o644, image_group(1235));
    let passwd_rel = push(&berthd, &registry, "passwd-rel", user.clone(), &layer)?;

    // `etc -> ../../…/<host>` with no copy inside: the image simply has no such user.
    let mut layer = LayerBuilder::new();
    layer.symlink("etc", &format!("{UP}{copy}"));
    let etc_rel_missing = push(&berthd, &registry, "etc-rel-missing", user.clone(), &layer)?;

    // `etc/passwd -> /etc/passwd`: a loop.
    let mut layer = LayerBuilder::new();
    layer.dir("etc", 0o755).symlink("etc/passwd", "/etc/passwd");
    let passwd_loop = push(&berthd, &registry, "passwd-loop", user, &layer)?;

    let pod = pod(&berthd, "users")?;
    let id = run(&berthd, &pod, "etc-abs", &etc_abs)?;
    ensure!(exec(&berthd, &id, &["id", "-u"])? == "1234", "etc-abs uid");
    ensure!(exec(&berthd, &id, &["id", "-g"])? == "1234", "etc-abs gid");
    let id = run(&berthd, &pod, "passwd-rel", &passwd_rel)?;
    ensure!(
        exec(&berthd, &id, &["id", "-u"])? == "1235",
        "passwd-rel uid"
    );
    ensure!(
        exec(&berthd, &id, &["id", "-g"])? == "1235",
        "passwd-rel gid"
    );

    let stderr = refused(&berthd, &pod, "etc-rel-missing", &etc_rel_missing)?;
    ensure!(
        stderr.contains("hostile") && stderr.contains("not found in the image's /etc/passwd"),
        "{stderr}"
    );
    let stderr = refused(&berthd, &pod, "passwd-loop", &passwd_loop)?;
    ensure!(
        stderr.contains("FailedPrecondition")
            && stderr.contains("etc/passwd")
            && stderr.contains("symbolic links"),
        "{stderr}"
    );

    ensure!(
        snapshot(&host)? == before,
        "host dir changed: {:?}",
        snapshot(&host)?
    );
    berthd.crictl_ok(&["rmp", "-f", &pod.0])?;
    Ok(())
}

#[test]
fn image_volumes_behind_symlinks_are_seeded_from_the_rootfs_only() -> Result<()> {
    let (berthd, registry) = start(2)?;
    let host = host_dir(&berthd, "host-vol", &[("host-secret", "host\n")])?;
    std::fs::create_dir_all(host.join("data"))?;
    std::fs::write(host.join("data/host-secret"), "host\n")?;
    let before = snapshot(&host)?;
    let before_data = snapshot(&host.join("data"))?;
    let copy = inside(&host);

    let mut layer = LayerBuilder::new();
    // First component absolute: `/vabs -> <host>`, VOLUME /vabs/data.
    layer.symlink("vabs", s(&host)?);
    // Last component relative: `/vrel -> ../../…/<host>/data`, VOLUME /vrel.
    layer.symlink("vrel", &format!("{UP}{copy}/data"));
    // Middle component relative: `/vmid/sub -> ../../…/<host>`, VOLUME /vmid/sub/data.
    layer
        .dir("vmid", 0o755)
        .symlink("vmid/sub", &format!("{UP}{copy}"));
    // A loop: `/vloop -> vloop`, VOLUME /vloop/data is refused below in its own image.
    dirs(&mut layer, &format!("{copy}/data"));
    layer.file(&format!("{copy}/data/image-seed"), 0o644, "image\n");
    let config = ImageConfig {
        volumes: ["/vabs/data", "/vrel", "/vmid/sub/data"]
            .into_iter()
            .map(String::from)
            .collect(),
        ..ImageConfig::default()
    };
    let volumes = push(&berthd, &registry, "volumes", config, &layer)?;

    let mut layer = LayerBuilder::new();
    layer.symlink("vloop", "vloop");
    let config = ImageConfig {
        volumes: ["/vloop/data".to_string()].into_iter().collect(),
        ..ImageConfig::default()
    };
    let volume_loop = push(&berthd, &registry, "volume-loop", config, &layer)?;

    let pod = pod(&berthd, "volumes")?;
    let id = run(&berthd, &pod, "volumes", &volumes)?;
    for dir in ["/vabs/data", "/vrel", "/vmid/sub/data"] {
        let listing = exec(&berthd, &id, &["ls", "-a", dir])?;
        ensure!(
            listing.contains("image-seed") && !listing.contains("host-secret"),
            "{dir}: {listing}"
        );
        exec(&berthd, &id, &["touch", &format!("{dir}/written")])?;
    }

    let stderr = refused(&berthd, &pod, "volume-loop", &volume_loop)?;
    ensure!(
        stderr.contains("FailedPrecondition")
            && stderr.contains("/vloop/data")
            && stderr.contains("symbolic links"),
        "{stderr}"
    );

    ensure!(
        snapshot(&host)? == before,
        "host dir changed: {:?}",
        snapshot(&host)?
    );
    ensure!(
        snapshot(&host.join("data"))? == before_data,
        "host data dir changed: {:?}",
        snapshot(&host.join("data"))?
    );
    berthd.crictl_ok(&["rmp", "-f", &pod.0])?;
    Ok(())
}

#[test]
fn working_dir_and_pod_files_behind_symlinks_stay_in_the_rootfs() -> Result<()> {
    let (berthd, registry) = start(3)?;
    let host = host_dir(&berthd, "host-misc", &[])?;
    let copy = inside(&host);

    let mut layer = LayerBuilder::new();
    // WORKDIR /work/sub with `/work -> <host>`: runc creates `sub` where the link resolves
    // inside the rootfs.
    layer.symlink("work", s(&host)?);
    layer
        .dir("etc", 0o755)
        .symlink("etc/hosts", &format!("{}/hosts", host.display()))
        .symlink("etc/resolv.conf", &format!("{UP}{copy}/resolv.conf"))
        .symlink("etc/hostname", &format!("/{copy}/hostname"));
    let config = ImageConfig {
        working_dir: Some("/work/sub".into()),
        ..ImageConfig::default()
    };
    let files = push(&berthd, &registry, "files", config, &layer)?;

    // `/dev -> <host>`.
    let mut layer = LayerBuilder::new();
    layer.symlink("dev", s(&host)?);
    let dev = push(&berthd, &registry, "dev", ImageConfig::default(), &layer)?;

    // `/work -> /work`: a loop as the working directory fails.
    let mut layer = LayerBuilder::new();
    layer.symlink("work", "/work");
    let config = ImageConfig {
        working_dir: Some("/work/sub".into()),
        ..ImageConfig::default()
    };
    let work_loop = push(&berthd, &registry, "work-loop", config, &layer)?;

    let pod = pod(&berthd, "files")?;
    let id = run(&berthd, &pod, "files", &files)?;
    // The kernel reports the directory the link resolved to, inside the container's root.
    let cwd = exec(&berthd, &id, &["pwd"])?;
    ensure!(
        cwd == "/work/sub" || cwd == format!("/{copy}/sub"),
        "cwd {cwd}"
    );
    ensure!(
        exec(&berthd, &id, &["cat", "/etc/hostname"])? == "files-host",
        "hostname file"
    );
    let hosts = exec(&berthd, &id, &["cat", "/etc/hosts"])?;
    ensure!(hosts.contains("localhost"), "{hosts}");
    exec(&berthd, &id, &["cat", "/etc/resolv.conf"])?;

    // runc would make /dev's symlinks (fd, stdin, ptmx, ...) through it on the host: refused.
    let stderr = refused(&berthd, &pod, "dev", &dev)?;
    ensure!(
        stderr.contains("FailedPrecondition") && stderr.contains("/dev is a symlink"),
        "/dev symlink: {stderr}"
    );

    let cfg = container_config(&berthd, "work-loop", &work_loop)?;
    let created = berthd.crictl(&["create", &pod.0, s(&cfg)?, s(&pod.1)?])?;
    let failed = if created.status.success() {
        let id = String::from_utf8_lossy(&created.stdout).trim().to_string();
        let started = berthd.crictl(&["start", &id])?;
        ensure!(!started.status.success(), "a looping working dir started");
        started.stderr
    } else {
        created.stderr
    };
    let stderr = String::from_utf8_lossy(&failed);
    // runc refuses it, naming the directory.
    ensure!(
        stderr.contains("runc create failed") && stderr.contains("/work"),
        "looping working dir: {stderr}"
    );

    let left = snapshot(&host)?;
    ensure!(left.is_empty(), "host dir written: {left:?}");
    berthd.crictl_ok(&["rmp", "-f", &pod.0])?;
    Ok(())
}
