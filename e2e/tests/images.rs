//! berthd's ImageService through crictl against the local registry: pulls by tag and by digest,
//! multi-arch resolution, mirrors, basic auth, listing, inspecting, removing and fs info.
//! Runs as root; needs the berthd binary and the pinned crictl.
#![allow(clippy::unwrap_used, reason = "test code")]

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use berth_e2e::daemon::{Berthd, BerthdOptions, berthd_binary};
use berth_e2e::image::{Artifact, Platform};
use berth_e2e::registry::Registry;
use berth_e2e::testimages::{self, Content, REGISTRY_K8S_IO, catalog, push_critest_images};

const BUSYBOX_REPO: &str = "e2e-test-images/busybox";
const BUSYBOX_TAG: &str = "1.29-2";

/// The busybox catalog image: its index digest and the amd64 image id.
fn busybox() -> Result<(&'static Artifact, String, String)> {
    let entry = catalog()
        .iter()
        .find(|e| e.content == Content::Busybox && e.repository == BUSYBOX_REPO)
        .context("busybox in the catalog")?;
    let artifact = testimages::artifact(entry)?;
    let image = artifact
        .image_for(&Platform::linux_amd64())
        .context("busybox has an amd64 image")?;
    Ok((
        artifact,
        artifact.digest().to_string(),
        image.id().to_string(),
    ))
}

/// crictl with `-o json` before the positional arguments (`crictl_json` appends it, which
/// `inspecti` would take for an image name).
fn crictl_json(berthd: &Berthd, command: &str, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = vec![command, "-o", "json"];
    all.extend(args);
    let out = berthd.crictl_ok(&all)?;
    serde_json::from_str(&out).with_context(|| format!("crictl {all:?} printed {out}"))
}

fn images_json(berthd: &Berthd) -> Result<Vec<serde_json::Value>> {
    let list = crictl_json(berthd, "images", &[])?;
    Ok(list["images"].as_array().cloned().unwrap_or_default())
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn crictl_pulls_by_tag_and_digest_lists_inspects_and_removes() -> Result<()> {
    berthd_binary()?;
    let registry = Registry::start()?;
    push_critest_images(&registry)?;
    let host = registry.host();
    let berthd = Berthd::start(BerthdOptions::default().insecure_registry(&host))?;
    let (_, index_digest, amd64_id) = busybox()?;
    let tagged = format!("{host}/{BUSYBOX_REPO}:{BUSYBOX_TAG}");

    let started = Instant::now();
    let out = berthd.crictl_ok(&["pull", &tagged])?;
    eprintln!("pull of {tagged}: {:?}", started.elapsed());
    ensure!(out.contains(&amd64_id), "crictl pull printed {out}");

    // The layer is unpacked into a committed snapshot (`<root>/snapshots/<id>/fs`).
    let snapshots = berthd.paths().root.join("snapshots");
    let unpacked = std::fs::read_dir(&snapshots)?
        .filter_map(|e| e.ok())
        .any(|e| e.path().join("fs/bin/busybox").is_file());
    ensure!(
        unpacked,
        "no snapshot under {} holds bin/busybox",
        snapshots.display()
    );

    // Already present: one manifest request, fast.
    let started = Instant::now();
    berthd.crictl_ok(&["pull", &tagged])?;
    eprintln!("second pull of {tagged}: {:?}", started.elapsed());

    let images = images_json(&berthd)?;
    ensure!(images.len() == 1, "crictl images: {images:?}");
    let image = &images[0];
    ensure!(
        image["id"] == amd64_id.as_str(),
        "the index resolves to the amd64 image {amd64_id}: {image}"
    );
    ensure!(
        strings(&image["repoTags"]) == vec![tagged.clone()],
        "{image}"
    );
    let by_digest = format!("{host}/{BUSYBOX_REPO}@{index_digest}");
    ensure!(
        strings(&image["repoDigests"]) == vec![by_digest.clone()],
        "{image}"
    );
    let size: u64 = image["size"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| image["size"].as_u64())
        .context("size")?;
    ensure!(size > 0, "{image}");

    // By digest: the same image, no new tag.
    let out = berthd.crictl_ok(&["pull", &by_digest])?;
    ensure!(out.contains(&amd64_id), "crictl pull printed {out}");
    ensure!(images_json(&berthd)?.len() == 1);

    for name in [&tagged, &by_digest, &amd64_id] {
        let status = crictl_json(&berthd, "inspecti", &[name])?;
        ensure!(
            status["status"]["id"] == amd64_id.as_str(),
            "{name}: {status}"
        );
        // crictl prints the verbose `info` JSON as the top-level `info`.
        let spec = &status["info"]["imageSpec"];
        ensure!(
            spec["architecture"] == "amd64" && spec["rootfs"]["diff_ids"].is_array(),
            "{name}: verbose info has the image config: {status}"
        );
    }

    let fs = crictl_json(&berthd, "imagefsinfo", &[])?;
    let usage = &fs["status"]["imageFilesystems"][0];
    let used: u64 = usage["usedBytes"]["value"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| usage["usedBytes"]["value"].as_u64())
        .with_context(|| format!("imagefsinfo: {fs}"))?;
    ensure!(
        used >= size,
        "imagefsinfo {fs} counts the content ({size} bytes)"
    );
    ensure!(
        usage["fsId"]["mountpoint"]
            .as_str()
            .is_some_and(|m| m.starts_with('/')),
        "{fs}"
    );

    // A second tag on the same image, then removing one tag keeps the other.
    let registry_client = registry.client();
    let (artifact, ..) = busybox()?;
    registry_client.push(BUSYBOX_REPO, "second", artifact)?;
    let second = format!("{host}/{BUSYBOX_REPO}:second");
    berthd.crictl_ok(&["pull", &second])?;
    let images = images_json(&berthd)?;
    ensure!(images.len() == 1, "{images:?}");
    ensure!(strings(&images[0]["repoTags"]).len() == 2, "{images:?}");
    berthd.crictl_ok(&["rmi", &tagged])?;
    let images = images_json(&berthd)?;
    ensure!(
        images.len() == 1 && strings(&images[0]["repoTags"]) == vec![second.clone()],
        "{images:?}"
    );
    berthd.crictl_ok(&["rmi", &amd64_id])?;
    ensure!(images_json(&berthd)?.is_empty());
    // With no image left, garbage collection took every blob and layer snapshot.
    let root = berthd.paths().root.clone();
    let blobs: Vec<_> = std::fs::read_dir(root.join("content/blobs/sha256"))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    ensure!(blobs.is_empty(), "blobs left after rmi: {blobs:?}");
    let layers: Vec<_> = std::fs::read_dir(root.join("snapshots"))?
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "tmp" && n != "staging")
        .collect();
    ensure!(layers.is_empty(), "snapshots left after rmi: {layers:?}");
    let status = berthd.crictl(&["inspecti", &tagged])?;
    ensure!(
        !status.status.success(),
        "inspecti of a removed image fails in crictl"
    );
    Ok(())
}

#[test]
fn mirror_serves_registry_k8s_io_and_missing_tags_are_not_found() -> Result<()> {
    berthd_binary()?;
    let registry = Registry::start()?;
    push_critest_images(&registry)?;
    let berthd = Berthd::start(BerthdOptions::default().mirror_critest_registries(&registry))?;
    let (_, _, amd64_id) = busybox()?;
    let upstream = format!("{REGISTRY_K8S_IO}/{BUSYBOX_REPO}:{BUSYBOX_TAG}");

    // Two pulls at once share one download.
    let started = Instant::now();
    let outputs = std::thread::scope(|s| {
        let pulls: Vec<_> = (0..2)
            .map(|_| s.spawn(|| berthd.crictl_ok(&["pull", &upstream])))
            .collect();
        pulls
            .into_iter()
            .map(|p| p.join().unwrap())
            .collect::<Result<Vec<_>>>()
    })?;
    eprintln!(
        "two concurrent pulls of {upstream} through the mirror: {:?}",
        started.elapsed()
    );
    for out in &outputs {
        ensure!(out.contains(&amd64_id), "crictl pull printed {out}");
    }
    let log = std::fs::read_to_string(&berthd.paths().log)?;
    ensure!(
        log.matches("pulling layer").count() == 1 && log.contains("joining a pull"),
        "one download for two pulls:\n{log}"
    );
    let status = crictl_json(&berthd, "inspecti", &[&upstream])?;
    ensure!(status["status"]["id"] == amd64_id.as_str(), "{status}");
    ensure!(
        strings(&status["status"]["repoTags"]) == vec![upstream.clone()],
        "tags keep the upstream name: {status}"
    );

    // The mirror says "not found" and the origin is unreachable here: NotFound wins.
    let missing = format!("{REGISTRY_K8S_IO}/{BUSYBOX_REPO}:no-such-tag");
    let out = berthd.crictl(&["pull", &missing])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "pull of a missing tag succeeded");
    ensure!(
        stderr.contains("NotFound") && stderr.contains(&missing),
        "NotFound naming the reference: {stderr}"
    );

    let out = berthd.crictl(&["pull", "Not/A/Valid:Reference"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("InvalidArgument"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn basic_auth_registry_needs_the_credentials() -> Result<()> {
    berthd_binary()?;
    let registry = Registry::start_with_basic_auth("berth", "s3cret")?;
    let (artifact, _, amd64_id) = busybox()?;
    registry
        .client()
        .push(BUSYBOX_REPO, BUSYBOX_TAG, artifact)?;
    let host = registry.host();
    let berthd = Berthd::start(BerthdOptions::default().insecure_registry(&host))?;
    let reference = format!("{host}/{BUSYBOX_REPO}:{BUSYBOX_TAG}");

    let out = berthd.crictl(&["pull", &reference])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "anonymous pull succeeded");
    ensure!(
        stderr.contains(&host) && stderr.contains("authentication"),
        "the error names the registry and says authentication failed: {stderr}"
    );
    let out = berthd.crictl(&["pull", "--creds", "berth:wrong", &reference])?;
    ensure!(!out.status.success(), "wrong password accepted");

    let out = berthd.crictl_ok(&["pull", "--creds", "berth:s3cret", &reference])?;
    ensure!(out.contains(&amd64_id), "crictl pull printed {out}");
    ensure!(
        !std::fs::read_to_string(&berthd.paths().log)?.contains("s3cret"),
        "the password never reaches the log"
    );
    Ok(())
}

#[test]
fn layers_shared_between_images_are_fetched_and_unpacked_once_gzip_zstd_and_plain() -> Result<()> {
    use berth_e2e::image::{Compression, Image, ImageConfig, LayerBuilder};

    berthd_binary()?;
    let registry = Registry::start()?;
    let mut base = LayerBuilder::new();
    base.dir("etc", 0o755).file("etc/base", 0o644, "base");
    let base = base.build(Compression::Gzip)?;
    let mut a = LayerBuilder::new();
    a.file("a.txt", 0o644, "a");
    // Uncompressed on purpose: a plain tar layer.
    let a = a.build(Compression::None)?;
    let mut b = LayerBuilder::new();
    b.file("b.txt", 0o644, "b");
    // zstd, the third compression a registry may serve.
    let b = b.build(Compression::Zstd)?;
    let config = ImageConfig::default();
    let image_a = Image::build(Platform::linux_amd64(), &config, vec![base.clone(), a])?;
    let image_b = Image::build(Platform::linux_amd64(), &config, vec![base, b])?;
    let client = registry.client();
    client.push_image("shared/a", "v1", &image_a)?;
    client.push_image("shared/b", "v1", &image_b)?;
    let host = registry.host();
    let berthd = Berthd::start(BerthdOptions::default().insecure_registry(&host))?;

    let out = berthd.crictl_ok(&["pull", &format!("{host}/shared/a:v1")])?;
    ensure!(out.contains(image_a.id().as_str()), "{out}");
    let out = berthd.crictl_ok(&["pull", &format!("{host}/shared/b:v1")])?;
    ensure!(out.contains(image_b.id().as_str()), "{out}");

    let log = std::fs::read_to_string(&berthd.paths().log)?;
    ensure!(
        log.matches("pulling layer").count() == 3,
        "the shared base layer is downloaded once:\n{log}"
    );
    let snapshots: Vec<_> = std::fs::read_dir(berthd.paths().root.join("snapshots"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("fs").is_dir())
        .collect();
    ensure!(
        snapshots.len() == 3,
        "base, a and b are one snapshot each: {snapshots:?}"
    );
    let with = |file: &str| snapshots.iter().any(|s| s.join("fs").join(file).is_file());
    ensure!(with("etc/base") && with("a.txt") && with("b.txt"));
    ensure!(images_json(&berthd)?.len() == 2);
    Ok(())
}

#[test]
fn kill_9_during_a_pull_leaves_no_image_and_the_next_pull_succeeds() -> Result<()> {
    use std::time::Duration;

    use berth_e2e::image::{Compression, Image, ImageConfig, LayerBuilder};
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    berthd_binary()?;
    let registry = Registry::start()?;
    // Big and uncompressed, so that the pull lasts long enough to be killed in the middle.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let data: Vec<u8> = (0..48 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut layer = LayerBuilder::new();
    layer.file("big", 0o644, data);
    let image = Image::build(
        Platform::linux_amd64(),
        &ImageConfig::default(),
        vec![layer.build(Compression::None)?],
    )?;
    registry.client().push_image("big/image", "v1", &image)?;
    let host = registry.host();
    let mut berthd = Berthd::start(BerthdOptions::default().insecure_registry(&host))?;
    let reference = format!("{host}/big/image:v1");

    let log = berthd.paths().log.clone();
    let pid = Pid::from_raw(i32::try_from(berthd.pid())?);
    let pulled = std::thread::scope(|s| {
        let pull = s.spawn(|| berthd.crictl(&["pull", &reference]));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("pulling layer")
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        kill(pid, Signal::SIGKILL).unwrap();
        pull.join().unwrap()
    })?;
    ensure!(
        !pulled.status.success(),
        "the pull finished before the kill"
    );

    berthd.restart()?;
    let root = berthd.paths().root.clone();
    let ingest = std::fs::read_dir(root.join("content/ingest"))?.count();
    ensure!(ingest == 0, "{ingest} partial downloads left after restart");
    let staging = std::fs::read_dir(root.join("snapshots/staging"))?.count();
    ensure!(staging == 0, "{staging} staged layers left after restart");
    ensure!(
        images_json(&berthd)?.is_empty(),
        "a half-pulled image is listed"
    );

    let started = Instant::now();
    let out = berthd.crictl_ok(&["pull", &reference])?;
    eprintln!("pull of a 48 MiB layer: {:?}", started.elapsed());
    ensure!(out.contains(image.id().as_str()), "{out}");
    Ok(())
}

#[test]
fn a_mirror_with_a_repository_prefix_serves_another_registry() -> Result<()> {
    berthd_binary()?;
    let registry = Registry::start()?;
    let (artifact, _, amd64_id) = busybox()?;
    // A proxy-cache layout: the mirror keeps quay.io's images under its own project path.
    registry
        .client()
        .push(&format!("quay-cache/{BUSYBOX_REPO}"), BUSYBOX_TAG, artifact)?;
    let berthd = Berthd::start(
        BerthdOptions::default()
            .registry_mirror("quay.io", &format!("{}/v2/quay-cache", registry.url())),
    )?;
    let upstream = format!("quay.io/{BUSYBOX_REPO}:{BUSYBOX_TAG}");
    let out = berthd.crictl_ok(&["pull", &upstream])?;
    ensure!(out.contains(&amd64_id), "crictl pull printed {out}");
    let status = crictl_json(&berthd, "inspecti", &[&upstream])?;
    ensure!(
        strings(&status["status"]["repoTags"]) == vec![upstream.clone()],
        "tags keep the upstream name: {status}"
    );
    Ok(())
}
