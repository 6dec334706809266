//! Registries on this machine need no `--insecure-registry`: berthd asks them over https first
//! and over plain HTTP when https cannot connect, for the registry itself and for mirrors; a
//! TLS registry listed as insecure fails with a message that says what to change.
//! Runs as root; needs the berthd binary, the pinned crictl, docker-registry and openssl.

use anyhow::{Context, Result, ensure};
use berth_e2e::daemon::{Berthd, BerthdOptions, berthd_binary};
use berth_e2e::image::Platform;
use berth_e2e::registry::{Registry, TlsFiles};
use berth_e2e::testimages::{self, Content, catalog};

const BUSYBOX_REPO: &str = "e2e-test-images/busybox";
const BUSYBOX_TAG: &str = "1.29-2";
/// What berthd logs when it has found which protocol a registry on this machine speaks.
const FOUND: &str = "registry on this machine";

/// A registry holding busybox, and busybox's amd64 image id.
fn registry_with_busybox() -> Result<(Registry, String)> {
    let entry = catalog()
        .iter()
        .find(|e| e.content == Content::Busybox && e.repository == BUSYBOX_REPO)
        .context("busybox in the catalog")?;
    let artifact = testimages::artifact(entry)?;
    let id = artifact
        .image_for(&Platform::linux_amd64())
        .context("busybox has an amd64 image")?
        .id()
        .to_string();
    let registry = Registry::start()?;
    registry
        .client()
        .push(BUSYBOX_REPO, BUSYBOX_TAG, artifact)?;
    Ok((registry, id))
}

fn log(berthd: &Berthd) -> Result<String> {
    Ok(std::fs::read_to_string(&berthd.paths().log)?)
}

#[test]
fn a_plain_http_registry_on_this_machine_needs_no_insecure_flag() -> Result<()> {
    berthd_binary()?;
    let (registry, id) = registry_with_busybox()?;
    let berthd = Berthd::start(BerthdOptions::default())?;
    let port = registry.addr().port();
    let hosts = [registry.host(), format!("localhost:{port}")];
    for host in &hosts {
        let reference = format!("{host}/{BUSYBOX_REPO}:{BUSYBOX_TAG}");
        let out = berthd.crictl_ok(&["pull", &reference])?;
        ensure!(out.contains(&id), "crictl pull {reference} printed {out}");
    }
    let log = log(&berthd)?;
    ensure!(
        log.matches(FOUND).count() == hosts.len(),
        "plain HTTP found once per host:\n{log}"
    );
    // Remembered: no second TLS attempt.
    berthd.crictl_ok(&[
        "pull",
        &format!("{}/{BUSYBOX_REPO}:{BUSYBOX_TAG}", hosts[0]),
    ])?;
    let log = self::log(&berthd)?;
    ensure!(
        log.matches(FOUND).count() == hosts.len(),
        "the protocol is asked once per host:\n{log}"
    );
    Ok(())
}

#[test]
fn an_https_mirror_url_on_this_machine_reaches_a_plain_http_registry() -> Result<()> {
    berthd_binary()?;
    let (registry, id) = registry_with_busybox()?;
    let mirror = format!("https://localhost:{}", registry.addr().port());
    // No fallback to the origin: traffic stays on this machine.
    let config = format!(
        "[registry.mirrors.\"quay.io\"]\nendpoints = [\"{mirror}\"]\nfallback_to_origin = false\n"
    );
    let berthd = Berthd::start(BerthdOptions {
        config,
        ..BerthdOptions::default()
    })?;
    let upstream = format!("quay.io/{BUSYBOX_REPO}:{BUSYBOX_TAG}");
    let out = berthd.crictl_ok(&["pull", &upstream])?;
    ensure!(out.contains(&id), "crictl pull printed {out}");
    let log = log(&berthd)?;
    ensure!(log.contains(FOUND), "{log}");
    Ok(())
}

#[test]
fn a_tls_registry_on_this_machine_is_reached_over_https() -> Result<()> {
    berthd_binary()?;
    let (registry, id) = registry_with_busybox()?;
    let certs = tempfile::tempdir()?;
    let tls = TlsFiles::generate(certs.path())?;
    let secure = registry.serve_over_tls(&tls)?;
    // berthd trusts the test CA (and only it) through rustls-native-certs' SSL_CERT_FILE.
    let berthd = Berthd::start(BerthdOptions::default().env("SSL_CERT_FILE", &tls.ca))?;
    let port = secure.addr().port();
    for host in [secure.host(), format!("localhost:{port}")] {
        let reference = format!("{host}/{BUSYBOX_REPO}:{BUSYBOX_TAG}");
        let out = berthd.crictl_ok(&["pull", &reference])?;
        ensure!(out.contains(&id), "crictl pull {reference} printed {out}");
    }
    let log = log(&berthd)?;
    ensure!(
        log.contains(&format!("https://{}", secure.host())) && !log.contains("trying plain HTTP"),
        "pulled over https, no plain HTTP attempt:\n{log}"
    );
    Ok(())
}

#[test]
fn a_tls_registry_listed_as_insecure_says_to_remove_it() -> Result<()> {
    berthd_binary()?;
    let (registry, _) = registry_with_busybox()?;
    let certs = tempfile::tempdir()?;
    let tls = TlsFiles::generate(certs.path())?;
    let secure = registry.serve_over_tls(&tls)?;
    let host = secure.host();
    let berthd = Berthd::start(BerthdOptions::default().insecure_registry(&host))?;
    let reference = format!("{host}/{BUSYBOX_REPO}:{BUSYBOX_TAG}");
    let out = berthd.crictl(&["pull", &reference])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "pull succeeded");
    let want = format!(
        "registry {host} is listed with --insecure-registry but speaks TLS; remove it from the \
         insecure registries"
    );
    ensure!(
        stderr.contains("Unavailable") && stderr.contains(&reference) && stderr.contains(&want),
        "an Unavailable error naming the reference and saying what to do: {stderr}"
    );
    Ok(())
}
