//! The local registry serves every image critest pulls, and those images hold what critest's
//! specs run in them. Runs as root (the content checks chroot into unpacked layers).

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use berth_e2e::distribution::{RegistryClient, is_index};
use berth_e2e::image::{Artifact, Digest, Image, Platform};
use berth_e2e::registry::Registry;
use berth_e2e::testimages::{self, Content, catalog, push_critest_images};

#[test]
fn registry_serves_every_critest_image() -> Result<()> {
    let registry = Registry::start()?;
    let started = Instant::now();
    let pushed = push_critest_images(&registry)?;
    eprintln!(
        "built and pushed {} tags in {:?}",
        pushed.len(),
        started.elapsed()
    );
    let client = registry.client();

    let tags: usize = catalog().iter().map(|e| e.tags.len()).sum();
    ensure!(
        pushed.len() == tags,
        "pushed {} tags, the catalog has {tags}",
        pushed.len()
    );

    for image in &pushed {
        let manifest = client.get_manifest(image.repository, image.tag)?;
        ensure!(
            manifest.digest == image.digest,
            "{}: registry serves {}, pushed {}",
            image.upstream_reference(),
            manifest.digest,
            image.digest
        );
        let manifests = if is_index(&manifest.media_type) {
            let index = manifest.json()?;
            let children = index["manifests"]
                .as_array()
                .context("index without manifests")?;
            ensure!(
                children.len() == 2,
                "{}: expected amd64 and arm64 entries",
                image.upstream_reference()
            );
            children
                .iter()
                .map(|child| {
                    let digest = Digest::parse(child["digest"].as_str().unwrap_or_default())?;
                    client.get_manifest(image.repository, digest.as_str())
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![manifest]
        };
        for manifest in manifests {
            let doc = manifest.json()?;
            let config = Digest::parse(doc["config"]["digest"].as_str().unwrap_or_default())?;
            client.get_blob(image.repository, &config)?;
            let layers = doc["layers"]
                .as_array()
                .context("manifest without layers")?;
            ensure!(
                !layers.is_empty(),
                "{}: manifest without layers",
                image.upstream_reference()
            );
            for layer in layers {
                let digest = Digest::parse(layer["digest"].as_str().unwrap_or_default())?;
                let blob = client.get_blob(image.repository, &digest)?;
                ensure!(
                    layer["size"].as_u64() == Some(blob.len() as u64),
                    "{digest}: size mismatch"
                );
            }
        }
    }

    // The same tags on a second registry reuse the built blobs (built once per process).
    let second = Registry::start()?;
    let started = Instant::now();
    let again = push_critest_images(&second)?;
    eprintln!(
        "pushed {} tags to a second registry in {:?}",
        again.len(),
        started.elapsed()
    );
    for (a, b) in pushed.iter().zip(&again) {
        ensure!(
            a.digest == b.digest,
            "{} differs between pushes",
            a.upstream_reference()
        );
    }

    check_busybox_applets_are_hard_links(&client)
}

#[test]
fn registry_with_basic_auth_accepts_only_its_credentials() -> Result<()> {
    let registry = Registry::start_with_basic_auth("berth", "s3cret pass")?;
    ensure!(registry.credentials() == Some(("berth", "s3cret pass")));
    let entry = catalog()
        .iter()
        .find(|e| e.content == Content::Busybox)
        .context("busybox")?;
    let artifact = testimages::artifact(entry)?;

    let anonymous = RegistryClient::new(&registry.host());
    ensure!(anonymous.ping()? == 401);
    ensure!(
        anonymous.push(entry.repository, "anon", artifact).is_err(),
        "anonymous push accepted"
    );
    let wrong = RegistryClient::new(&registry.host()).with_basic_auth("berth", "wrong");
    ensure!(wrong.ping()? == 401);

    let client = registry.client();
    let digest = client.push(entry.repository, "authed", artifact)?;
    ensure!(client.get_manifest(entry.repository, "authed")?.digest == digest);
    ensure!(anonymous.get_manifest(entry.repository, "authed").is_err());
    Ok(())
}

fn check_busybox_applets_are_hard_links(client: &RegistryClient) -> Result<()> {
    let busybox = amd64_manifest(client, "e2e-test-images/busybox", "1.29-2")?;
    let layer = Digest::parse(busybox["layers"][0]["digest"].as_str().unwrap_or_default())?;
    let tar = gunzip(&client.get_blob("e2e-test-images/busybox", &layer)?)?;
    let mut found_busybox = false;
    let mut sh_link = None;
    for entry in tar::Archive::new(tar.as_slice()).entries()? {
        let entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        match path.as_str() {
            "bin/busybox" => {
                ensure!(
                    entry.header().entry_type() == tar::EntryType::Regular,
                    "bin/busybox is not a file"
                );
                ensure!(
                    entry.header().mode()? & 0o111 != 0,
                    "bin/busybox is not executable"
                );
                found_busybox = true;
            }
            "bin/sh" => {
                sh_link = Some((
                    entry.header().entry_type(),
                    entry.link_name()?.map(|l| l.into_owned()),
                ));
            }
            _ => {}
        }
    }
    ensure!(found_busybox, "the busybox layer has no bin/busybox");
    match sh_link {
        Some((tar::EntryType::Link, Some(target))) if target == Path::new("bin/busybox") => Ok(()),
        other => bail!("bin/sh should be a hard link to bin/busybox, found {other:?}"),
    }
}

fn amd64_manifest(client: &RegistryClient, repo: &str, tag: &str) -> Result<serde_json::Value> {
    let top = client.get_manifest(repo, tag)?;
    if !is_index(&top.media_type) {
        return top.json();
    }
    let index = top.json()?;
    let entry = index["manifests"]
        .as_array()
        .and_then(|m| m.iter().find(|d| d["platform"]["architecture"] == "amd64"))
        .with_context(|| format!("{repo}:{tag} has no amd64 entry"))?;
    client
        .get_manifest(repo, entry["digest"].as_str().unwrap_or_default())?
        .json()
}

fn gunzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out)?;
    Ok(out)
}

/// Unpacks the amd64 image of a catalog entry into `dir`, layer by layer.
fn unpack(content: Content, dir: &Path) -> Result<()> {
    let entry = catalog()
        .iter()
        .find(|e| e.content == content)
        .context("content not in catalog")?;
    let image: &Image = match testimages::artifact(entry)? {
        Artifact::Image(image) => image,
        index @ Artifact::Index(_) => index
            .image_for(&Platform::linux_amd64())
            .context("no amd64 image")?,
    };
    for layer in &image.layers {
        let tar = gunzip(layer.blob.data())?;
        let mut archive = tar::Archive::new(tar.as_slice());
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive
            .unpack(dir)
            .with_context(|| format!("unpack {} into {}", layer.blob.digest(), dir.display()))?;
    }
    Ok(())
}

fn chroot(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("chroot")
        .arg(dir)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()?;
    ensure!(
        out.status.success(),
        "chroot {} {args:?}: {}: {}{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn critest_images_run_what_the_specs_run() -> Result<()> {
    let busybox = tempfile::tempdir()?;
    unpack(Content::Busybox, busybox.path())?;
    // Commands critest execs in the default image; pgrep and ipcs are not in Debian's busybox.
    chroot(
        busybox.path(),
        &[
            "sh",
            "-c",
            "echo -n hello && sleep 0 && id -u && hostname >/dev/null",
        ],
    )?;
    chroot(busybox.path(), &["pgrep", "--version"])?;
    chroot(busybox.path(), &["ipcs", "-V"])?;
    for applet in [
        "top", "pidof", "netstat", "ls", "cat", "touch", "mount", "grep",
    ] {
        chroot(
            busybox.path(),
            &["sh", "-c", &format!("command -v {applet}")],
        )?;
    }
    ensure!(chroot(busybox.path(), &["id", "-u", "nobody"])?.trim() == "65534");
    ensure!(chroot(busybox.path(), &["id", "-u", "www-data"])?.trim() == "33");

    let group = tempfile::tempdir()?;
    unpack(Content::PredefinedGroup, group.path())?;
    let groups = chroot(group.path(), &["id", "-G", "default-user"])?;
    ensure!(
        groups.split_whitespace().any(|g| g == "50000"),
        "default-user groups: {groups}"
    );

    let nginx = tempfile::tempdir()?;
    unpack(Content::Nginx { port: 80 }, nginx.path())?;
    let version = Command::new("chroot")
        .arg(nginx.path())
        .args(["/usr/sbin/nginx", "-v"])
        .output()?;
    let version = String::from_utf8_lossy(&version.stderr);
    ensure!(
        version.contains("nginx version"),
        "nginx -v in the image: {version}"
    );

    let nnp = tempfile::tempdir()?;
    unpack(Content::NoNewPrivs, nnp.path())?;
    // Not a setuid check (root is already euid 0): the binary runs and prints the expected form.
    ensure!(chroot(nnp.path(), &["/usr/local/bin/nnp"])? == "Effective uid: 0\n");
    let out = Command::new("chroot")
        .args(["--userspec=1000:1000"])
        .arg(nnp.path())
        .arg("/usr/local/bin/nnp")
        .output()?;
    let out = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out == "Effective uid: 0\n",
        "setuid-root nnp run as uid 1000 printed {out:?}"
    );

    let httpd = tempfile::tempdir()?;
    unpack(Content::Httpd, httpd.path())?;
    chroot(
        httpd.path(),
        &["sh", "-n", "/usr/local/bin/httpd-foreground"],
    )?;
    Ok(())
}
