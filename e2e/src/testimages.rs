//! The images critest v1.34 pulls, rebuilt from this machine's Debian packages and pushed under
//! the repository paths and tags critest hard-codes, without the registry host. A runtime
//! configured with this registry as the mirror of `registry.k8s.io` and `gcr.io` then serves
//! critest without internet access.
//!
//! What each image must contain comes from cri-tools' `images/` and the `pkg/validate` specs:
//!
//! - the default image (`e2e-test-images/busybox`) needs `sh`, `echo`, `sleep`, `top`, `id`,
//!   `pidof`, `netstat`, `ls`, `cat`, `touch`, `mount`, `hostname` (busybox applets, each a hard
//!   link to `/bin/busybox`, so masking one path never masks the others), plus `pgrep` and
//!   `ipcs`, which Debian does not build into busybox: those two are the host's procps and
//!   util-linux binaries with their shared libraries. The busybox is Debian's dynamic build
//!   when unpacked (see `BUSYBOX_DYNAMIC` for why), else busybox-static;
//! - `nginx` runs a real nginx as PID 1 with `master process` in its title and
//!   `/var/run/nginx.pid` (the PID-namespace specs), answering 200 on port 80;
//! - `httpd` is a stand-in (busybox httpd on port 80 behind a script that logs a line
//!   containing `httpd`, which the multi-container spec waits for);
//! - `nonewprivs` runs a setuid-root static program printing `Effective uid: N`;
//! - the `k8s-staging-cri-tools` images follow cri-tools' `images/build`: USER variants, a
//!   predefined group, marker files named after the image, one image under three tags.
//!
//! Multi-platform images (everything upstream publishes as a list) are OCI indexes with an
//! amd64 image and an arm64 placeholder that holds only a marker file: a runtime that picks the
//! wrong platform then fails loudly instead of running amd64 binaries under an arm64 label.
//!
//! Images are built once per test process and kept in memory; pushing to another registry
//! re-sends the same blobs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail};

use crate::image::{
    Artifact, Compression, Digest, Image, ImageConfig, ImageIndex, Layer, LayerBuilder, Meta,
    Platform,
};
use crate::registry::Registry;

pub const REGISTRY_K8S_IO: &str = "registry.k8s.io";
pub const GCR_IO: &str = "gcr.io";
/// The registry's old name; critest 1.37 pulls `pause:3.9` from both to check that one image
/// pulled under two names is one image.
pub const K8S_GCR_IO: &str = "k8s.gcr.io";

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Debian's dynamically linked busybox (package `busybox`, unpacked there with
/// `apt-get download busybox && dpkg-deb -x busybox_*.deb /var/cache/berth/busybox-deb`, since it
/// conflicts with busybox-static). Preferred: its shell looks commands up in PATH, while
/// busybox-static's shell runs applets in-process (FEATURE_SH_STANDALONE), so masking `/bin/ls`
/// cannot make `sh -c ls` fail and critest's MaskedPaths spec fails whatever the runtime does.
const BUSYBOX_DYNAMIC: &str = "/var/cache/berth/busybox-deb/bin/busybox";
/// Debian's busybox-static, the fallback.
const BUSYBOX_STATIC: &str = "/bin/busybox";
/// Tools critest runs in the default image that Debian's busybox may lack, with the host
/// binary that stands in for the applet.
const HOST_TOOLS: &[(&str, &str)] = &[("pgrep", "/usr/bin/pgrep"), ("ipcs", "/usr/bin/ipcs")];
const NGINX: &str = "/usr/sbin/nginx";

/// How an image is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// The busybox rootfs, `CMD ["sh"]`.
    Busybox,
    /// Debian's nginx on the given port.
    Nginx { port: u16 },
    /// A busybox httpd stand-in for the Apache image.
    Httpd,
    /// A setuid-root program printing its effective uid.
    NoNewPrivs,
    /// A pause process (sandbox image for runtimes that use one).
    Pause,
    /// The busybox rootfs with this `USER`.
    User(&'static str),
    /// User default-user (uid 1000) in group group-defined-in-image (gid 50000), `USER 1000`.
    PredefinedGroup,
    /// The busybox rootfs plus an empty file `/<name>`, as cri-tools' `images/image-test`.
    MarkerFile(&'static str),
}

/// One repository and the tags that point at the same image in it.
#[derive(Clone, Copy, Debug)]
pub struct CatalogEntry {
    /// The registry critest names (`registry.k8s.io` or `gcr.io`), served here by a mirror.
    pub upstream_registry: &'static str,
    pub repository: &'static str,
    pub tags: &'static [&'static str],
    pub content: Content,
    /// Pushed as an index (amd64 + arm64 placeholder), as upstream publishes it.
    pub multi_platform: bool,
    /// Why a critest spec that uses this image cannot pass here, if one cannot.
    pub known_issue: Option<&'static str>,
}

impl CatalogEntry {
    /// The references critest uses, e.g. `registry.k8s.io/e2e-test-images/busybox:1.29-2`.
    pub fn upstream_references(&self) -> Vec<String> {
        self.tags
            .iter()
            .map(|t| format!("{}/{}:{t}", self.upstream_registry, self.repository))
            .collect()
    }
}

const fn entry(
    registry: &'static str,
    repository: &'static str,
    tags: &'static [&'static str],
    content: Content,
) -> CatalogEntry {
    CatalogEntry {
        upstream_registry: registry,
        repository,
        tags,
        content,
        multi_platform: true,
        known_issue: None,
    }
}

const CATALOG: &[CatalogEntry] = &[
    entry(
        REGISTRY_K8S_IO,
        "e2e-test-images/busybox",
        &["1.29-2"],
        Content::Busybox,
    ),
    entry(
        REGISTRY_K8S_IO,
        "e2e-test-images/nginx",
        &["1.14-2"],
        Content::Nginx { port: 80 },
    ),
    entry(
        REGISTRY_K8S_IO,
        "e2e-test-images/httpd",
        &["2.4.39-4"],
        Content::Httpd,
    ),
    entry(
        REGISTRY_K8S_IO,
        "e2e-test-images/nonewprivs",
        &["1.3"],
        Content::NoNewPrivs,
    ),
    // Not pulled by critest itself: the sandbox image containerd 2.x and CRI-O default to.
    entry(REGISTRY_K8S_IO, "pause", &["3.10", "3.9"], Content::Pause),
    CatalogEntry {
        // Already per-architecture upstream (`hostnet-nginx-<arch>`): a plain manifest.
        multi_platform: false,
        ..entry(
            GCR_IO,
            "k8s-staging-cri-tools/hostnet-nginx-amd64",
            &["latest"],
            Content::Nginx { port: 12003 },
        )
    },
    entry(
        GCR_IO,
        "k8s-staging-cri-tools/test-image-user-uid",
        &["latest"],
        Content::User("1002"),
    ),
    entry(
        GCR_IO,
        "k8s-staging-cri-tools/test-image-user-username",
        &["latest"],
        Content::User("www-data"),
    ),
    entry(
        GCR_IO,
        "k8s-staging-cri-tools/test-image-user-uid-group",
        &["latest"],
        Content::User("1003:1004"),
    ),
    entry(
        GCR_IO,
        "k8s-staging-cri-tools/test-image-user-username-group",
        &["latest"],
        Content::User("www-data:1004"),
    ),
    entry(
        GCR_IO,
        "k8s-staging-cri-tools/test-image-predefined-group",
        &["latest"],
        Content::PredefinedGroup,
    ),
    entry(
        GCR_IO,
        "k8s-staging-cri-tools/test-image-latest",
        &["latest"],
        Content::MarkerFile("test-image-latest"),
    ),
    CatalogEntry {
        known_issue: Some(
            "critest pulls test-image-digest@sha256:9700f9a2f5bf2c45f2f605a0bd3bce7cf37420ec9d3ed50ac2758413308766bf, \
             a digest of upstream's build that cannot be reproduced here: \
             'public image with digest should be pulled and removed' is expected to fail",
        ),
        ..entry(
            GCR_IO,
            "k8s-staging-cri-tools/test-image-digest",
            &["latest"],
            Content::MarkerFile("test-image-digest"),
        )
    },
    // `test` and `all` are different images upstream (each holds a file named after its tag).
    entry(
        GCR_IO,
        "k8s-staging-cri-tools/test-image-tag",
        &["test"],
        Content::MarkerFile("test"),
    ),
    entry(
        GCR_IO,
        "k8s-staging-cri-tools/test-image-tag",
        &["all"],
        Content::MarkerFile("all"),
    ),
    entry(
        GCR_IO,
        "k8s-staging-cri-tools/test-image-1",
        &["latest"],
        Content::MarkerFile("test-image-1"),
    ),
    entry(
        GCR_IO,
        "k8s-staging-cri-tools/test-image-2",
        &["latest"],
        Content::MarkerFile("test-image-2"),
    ),
    entry(
        GCR_IO,
        "k8s-staging-cri-tools/test-image-3",
        &["latest"],
        Content::MarkerFile("test-image-3"),
    ),
    entry(
        GCR_IO,
        "k8s-staging-cri-tools/test-image-tags",
        &["1", "2", "3"],
        Content::MarkerFile("same-image"),
    ),
];

/// Every image pushed by [`push_critest_images`].
pub fn catalog() -> &'static [CatalogEntry] {
    CATALOG
}

/// One tag pushed to a registry.
#[derive(Clone, Debug)]
pub struct PushedImage {
    pub upstream_registry: &'static str,
    pub repository: &'static str,
    pub tag: &'static str,
    /// What the tag resolves to: the index digest for multi-platform images.
    pub digest: Digest,
    pub known_issue: Option<&'static str>,
}

impl PushedImage {
    /// The reference critest uses, e.g. `gcr.io/k8s-staging-cri-tools/test-image-1:latest`.
    pub fn upstream_reference(&self) -> String {
        format!(
            "{}/{}:{}",
            self.upstream_registry, self.repository, self.tag
        )
    }

    /// The same image addressed directly on a registry (`127.0.0.1:PORT/...`).
    pub fn reference_in(&self, registry_host: &str) -> String {
        format!("{registry_host}/{}:{}", self.repository, self.tag)
    }
}

/// Builds (once per process) and pushes every catalog image to `registry`.
pub fn push_critest_images(registry: &Registry) -> Result<Vec<PushedImage>> {
    let client = registry.client();
    let mut pushed = Vec::new();
    for (entry, artifact) in CATALOG.iter().zip(artifacts()?) {
        for &tag in entry.tags {
            let digest = client
                .push(entry.repository, tag, artifact)
                .with_context(|| {
                    format!("push {}:{tag} to {}", entry.repository, registry.host())
                })?;
            pushed.push(PushedImage {
                upstream_registry: entry.upstream_registry,
                repository: entry.repository,
                tag,
                digest,
                known_issue: entry.known_issue,
            });
        }
    }
    Ok(pushed)
}

/// The built image of a catalog entry (built on first use).
pub fn artifact(entry: &CatalogEntry) -> Result<&'static Artifact> {
    let index = CATALOG
        .iter()
        .position(|e| e.repository == entry.repository && e.tags == entry.tags)
        .with_context(|| format!("{} is not in the catalog", entry.repository))?;
    artifacts()?
        .get(index)
        .context("catalog and built images differ in length")
}

/// The built images, in catalog order.
fn artifacts() -> Result<&'static [Artifact]> {
    // Errors are kept as text: anyhow::Error is not Clone, and every caller needs the cause.
    static BUILT: OnceLock<std::result::Result<Vec<Artifact>, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_all().map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow!("building the critest images failed: {e}"))
}

fn build_all() -> Result<Vec<Artifact>> {
    let parts = Ingredients::prepare()?;
    CATALOG
        .iter()
        .map(|entry| build_entry(entry, &parts))
        .collect()
}

/// Layers and binaries shared by several images, made once.
struct Ingredients {
    base: Layer,
    nginx: Layer,
    arm64_placeholder: Layer,
}

impl Ingredients {
    fn prepare() -> Result<Self> {
        // Files the base layer holds, so the nginx layer does not repeat shared libraries.
        let (base, base_paths) = base_layer()?;
        let mut nginx = LayerBuilder::new();
        add_host_binaries(&mut nginx, &[(NGINX, "usr/sbin/nginx")], &base_paths)?;
        let mut placeholder = LayerBuilder::new();
        placeholder.dir("etc", 0o755).file(
            "etc/berth-e2e-platform",
            0o644,
            "linux/arm64 placeholder: this image holds no arm64 binaries\n",
        );
        Ok(Ingredients {
            base: base.build(Compression::Gzip)?,
            nginx: nginx.build(Compression::Gzip)?,
            arm64_placeholder: placeholder.build(Compression::Gzip)?,
        })
    }
}

fn build_entry(entry: &CatalogEntry, parts: &Ingredients) -> Result<Artifact> {
    let (config, layers) = amd64_content(entry.content, parts)
        .with_context(|| format!("build {}", entry.repository))?;
    let amd64 = Image::build(Platform::linux_amd64(), &config, layers)?;
    if !entry.multi_platform {
        return Ok(Artifact::Image(amd64));
    }
    let arm64 = Image::build(
        Platform::linux_arm64(),
        &config,
        vec![parts.arm64_placeholder.clone()],
    )?;
    Ok(Artifact::Index(ImageIndex::build(vec![amd64, arm64])?))
}

fn busybox_config() -> ImageConfig {
    ImageConfig {
        env: vec![DEFAULT_PATH.into()],
        cmd: vec!["sh".into()],
        ..ImageConfig::default()
    }
}

fn amd64_content(content: Content, parts: &Ingredients) -> Result<(ImageConfig, Vec<Layer>)> {
    let base = parts.base.clone();
    let gz = Compression::Gzip;
    Ok(match content {
        Content::Busybox => (busybox_config(), vec![base]),
        Content::User(user) => (
            ImageConfig {
                user: Some(user.into()),
                ..busybox_config()
            },
            vec![base],
        ),
        Content::MarkerFile(name) => {
            let mut layer = LayerBuilder::new();
            layer.file(name, 0o644, Vec::new());
            (busybox_config(), vec![base, layer.build(gz)?])
        }
        Content::PredefinedGroup => {
            // What `adduser -u 1000 -D default-user && addgroup -g 50000 group-defined-in-image
            // && addgroup default-user group-defined-in-image` leaves in busybox's files.
            let mut layer = LayerBuilder::new();
            layer
                .dir("etc", 0o755)
                .file(
                    "etc/passwd",
                    0o644,
                    passwd(&["default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh"]),
                )
                .file(
                    "etc/group",
                    0o644,
                    group(&[
                        "default-user:x:1000:",
                        "group-defined-in-image:x:50000:default-user",
                    ]),
                )
                .dir("home", 0o755)
                .dir("home/default-user", Meta::mode(0o755).owner(1000, 1000));
            (
                ImageConfig {
                    user: Some("1000".into()),
                    ..busybox_config()
                },
                vec![base, layer.build(gz)?],
            )
        }
        Content::Nginx { port } => {
            let config = ImageConfig {
                cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
                exposed_ports: [format!("{port}/tcp")].into(),
                stop_signal: Some("SIGTERM".into()),
                ..busybox_config()
            };
            (
                config,
                vec![
                    base,
                    parts.nginx.clone(),
                    nginx_config_layer(port)?.build(gz)?,
                ],
            )
        }
        Content::Httpd => {
            let mut layer = LayerBuilder::new();
            layer
                .dir("usr/local/apache2", 0o755)
                .dir("usr/local/apache2/htdocs", 0o755)
                .file(
                    "usr/local/apache2/htdocs/index.html",
                    0o644,
                    "<html><body><h1>It works!</h1></body></html>\n",
                )
                .file("usr/local/bin/httpd-foreground", 0o755, HTTPD_FOREGROUND);
            let config = ImageConfig {
                env: vec![
                    "PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                    "HTTPD_PREFIX=/usr/local/apache2".into(),
                ],
                cmd: vec!["httpd-foreground".into()],
                working_dir: Some("/usr/local/apache2".into()),
                exposed_ports: ["80/tcp".to_owned()].into(),
                // Upstream stops Apache gracefully with SIGWINCH, which busybox httpd ignores.
                stop_signal: Some("SIGTERM".into()),
                ..ImageConfig::default()
            };
            (config, vec![base, layer.build(gz)?])
        }
        Content::NoNewPrivs => {
            let nnp = compile_static_c("nnp", NNP_C)?;
            let mut layer = LayerBuilder::new();
            // setuid root: with no_new_privs unset the kernel runs it as euid 0.
            layer.file("usr/local/bin/nnp", 0o4755, nnp);
            let config = ImageConfig {
                env: vec![DEFAULT_PATH.into()],
                entrypoint: vec!["/usr/local/bin/nnp".into()],
                ..ImageConfig::default()
            };
            (config, vec![base, layer.build(gz)?])
        }
        Content::Pause => {
            let mut layer = LayerBuilder::new();
            layer.file("pause", 0o755, compile_static_c("pause", PAUSE_C)?);
            let config = ImageConfig {
                user: Some("65535:65535".into()),
                entrypoint: vec!["/pause".into()],
                ..ImageConfig::default()
            };
            (config, vec![layer.build(gz)?])
        }
    })
}

const HTTPD_FOREGROUND: &str = r#"#!/bin/sh
# Stand-in for the Apache image: busybox httpd. The shell stays PID 1 so SIGTERM stops it.
echo "httpd: serving /usr/local/apache2/htdocs on port 80 (busybox httpd stand-in for Apache 2.4)"
httpd -f -v -p 80 -h /usr/local/apache2/htdocs &
pid=$!
trap 'kill "$pid"; wait "$pid"; exit 0' TERM INT
wait "$pid"
"#;

const NNP_C: &str = r#"#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("Effective uid: %d\n", geteuid());
    return 0;
}
"#;

/// Kubernetes' pause in spirit: sleep until SIGINT/SIGTERM, reaping children meanwhile.
const PAUSE_C: &str = r#"#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction term = {0}, child = {0};
    term.sa_handler = stop;
    child.sa_handler = reap;
    child.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGINT, &term, NULL) < 0 || sigaction(SIGTERM, &term, NULL) < 0 ||
        sigaction(SIGCHLD, &child, NULL) < 0) {
        return 1;
    }
    for (;;) pause();
}
"#;

fn nginx_config_layer(port: u16) -> Result<LayerBuilder> {
    let mime_types = std::fs::read("/etc/nginx/mime.types")
        .context("read /etc/nginx/mime.types (apt package nginx)")?;
    let mut layer = LayerBuilder::new();
    layer
        .dir("etc/nginx", 0o755)
        .file("etc/nginx/nginx.conf", 0o644, NGINX_CONF)
        .file("etc/nginx/mime.types", 0o644, mime_types)
        .dir("etc/nginx/conf.d", 0o755)
        .file("etc/nginx/conf.d/default.conf", 0o644, nginx_site(port))
        .dir("usr/share/nginx", 0o755)
        .dir("usr/share/nginx/html", 0o755)
        .file(
            "usr/share/nginx/html/index.html",
            0o644,
            "<html><body><h1>Welcome to nginx!</h1></body></html>\n",
        )
        .file(
            "usr/share/nginx/html/50x.html",
            0o644,
            "<html><body><h1>An error occurred.</h1></body></html>\n",
        )
        .dir("var/log/nginx", 0o755)
        // As in the official image: logs go to the container's stdout and stderr.
        .symlink("var/log/nginx/access.log", "/dev/stdout")
        .symlink("var/log/nginx/error.log", "/dev/stderr")
        .dir("var/lib/nginx", 0o755)
        .dir("var/cache/nginx", 0o755);
    Ok(layer)
}

const NGINX_CONF: &str = "user www-data;
worker_processes 1;
error_log /var/log/nginx/error.log notice;
# critest's HostPID spec waits for this file.
pid /var/run/nginx.pid;

events {
    worker_connections 1024;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log /var/log/nginx/access.log;
    sendfile on;
    keepalive_timeout 65;
    include /etc/nginx/conf.d/*.conf;
}
";

fn nginx_site(port: u16) -> String {
    format!(
        "server {{
    listen {port};
    server_name localhost;
    location / {{
        root /usr/share/nginx/html;
        index index.html index.htm;
    }}
    error_page 500 502 503 504 /50x.html;
    location = /50x.html {{
        root /usr/share/nginx/html;
    }}
}}
"
    )
}

/// The users of busybox's official image, plus `extra` lines.
fn passwd(extra: &[&str]) -> String {
    let mut s = String::from(
        "root:x:0:0:root:/root:/bin/sh\n\
         daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
         bin:x:2:2:bin:/bin:/bin/false\n\
         sys:x:3:3:sys:/dev:/bin/false\n\
         sync:x:4:100:sync:/bin:/bin/sync\n\
         mail:x:8:8:mail:/var/spool/mail:/bin/false\n\
         www-data:x:33:33:www-data:/var/www:/bin/false\n\
         operator:x:37:37:Operator:/var:/bin/false\n\
         nobody:x:65534:65534:nobody:/home:/bin/false\n",
    );
    for line in extra {
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// The groups of busybox's official image, plus `extra` lines.
fn group(extra: &[&str]) -> String {
    let mut s = String::from(
        "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nadm:x:4:\ntty:x:5:\ndisk:x:6:\nlp:x:7:\nmail:x:8:\n\
         kmem:x:9:\nwheel:x:10:root\ncdrom:x:11:\ndialout:x:18:\nfloppy:x:19:\nvideo:x:28:\naudio:x:29:\n\
         tape:x:32:\nwww-data:x:33:\noperator:x:37:\nutmp:x:43:\nplugdev:x:46:\nstaff:x:50:\nlock:x:54:\n\
         netdev:x:82:\nusers:x:100:\nnogroup:x:65534:\n",
    );
    for line in extra {
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// The busybox rootfs: `/bin/busybox` with every applet as a hard link to it (so no single
/// path, if masked or replaced, takes the shell with it), the accounts critest uses, and the
/// host's pgrep/ipcs where busybox lacks them.
fn base_layer() -> Result<(LayerBuilder, BTreeSet<String>)> {
    let busybox = busybox_source();
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .with_context(|| format!("run {busybox} --list-full"))?;
    if !list.status.success() {
        bail!("busybox --list-full failed: {}", list.status);
    }
    let applets = applet_paths(&String::from_utf8_lossy(&list.stdout));

    let mut layer = LayerBuilder::new();
    for dir in [
        "bin",
        "dev",
        "etc",
        "home",
        "lib",
        "lib64",
        "proc",
        "run",
        "sbin",
        "sys",
        "usr",
        "usr/bin",
        "usr/lib",
        "usr/local",
        "usr/local/bin",
        "usr/sbin",
        "var",
        "var/log",
        "var/run",
        "var/spool",
        "var/spool/mail",
        "var/www",
    ] {
        layer.dir(dir, 0o755);
    }
    layer
        .dir("root", 0o700)
        .dir("tmp", 0o1777)
        .dir("var/tmp", 0o1777);
    layer
        .file("etc/passwd", 0o644, passwd(&[]))
        .file("etc/group", 0o644, group(&[]))
        .file(
            "etc/shadow",
            0o640,
            "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
        )
        .file(
            "etc/nsswitch.conf",
            0o644,
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
        );

    add_host_binaries(&mut layer, &[(busybox, "bin/busybox")], &BTreeSet::new())?;
    for applet in applets.iter().filter(|a| a.as_str() != "bin/busybox") {
        ensure_parents(&mut layer, applet);
        layer.hardlink(applet, "bin/busybox");
    }
    let tools: Vec<(&str, String)> = HOST_TOOLS
        .iter()
        .filter(|(name, _)| !applets.iter().any(|a| a.rsplit('/').next() == Some(*name)))
        .map(|(name, host)| (*host, format!("usr/bin/{name}")))
        .collect();
    let tools: Vec<(&str, &str)> = tools
        .iter()
        .map(|(host, path)| (*host, path.as_str()))
        .collect();
    add_host_binaries(&mut layer, &tools, &BTreeSet::new())?;

    let paths = layer.paths().map(str::to_owned).collect();
    Ok((layer, paths))
}

fn busybox_source() -> &'static str {
    if Path::new(BUSYBOX_DYNAMIC).is_file() {
        return BUSYBOX_DYNAMIC;
    }
    eprintln!(
        "berth-e2e: {BUSYBOX_DYNAMIC} missing, using {BUSYBOX_STATIC}: \
         critest's MaskedPaths spec cannot pass with its in-process applets"
    );
    BUSYBOX_STATIC
}

/// `busybox --list-full` output as relative paths.
fn applet_paths(list: &str) -> Vec<String> {
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.trim_start_matches('/').to_owned())
        .collect()
}

/// Copies host binaries (`(host path, image path)`) and the shared libraries `ldd` lists for
/// them, at the paths `ldd` prints, skipping files already in `skip`.
fn add_host_binaries(
    layer: &mut LayerBuilder,
    binaries: &[(&str, &str)],
    skip: &BTreeSet<String>,
) -> Result<()> {
    for (host, image_path) in binaries {
        let data = std::fs::read(host).with_context(|| format!("read host binary {host}"))?;
        ensure_parents(layer, image_path);
        layer.file(image_path, 0o755, data);
    }
    for lib in shared_library_paths(binaries.iter().map(|(host, _)| Path::new(*host)))? {
        let path = rel(&lib);
        if skip.contains(&path) || layer.contains(&path) {
            continue;
        }
        // Read through symlinks: the image gets a regular file under the soname ldd printed.
        let data = std::fs::read(&lib)
            .with_context(|| format!("read shared library {}", lib.display()))?;
        ensure_parents(layer, &path);
        layer.file(&path, 0o755, data);
    }
    Ok(())
}

fn rel(path: &Path) -> String {
    path.to_string_lossy().trim_start_matches('/').to_owned()
}

/// Adds the missing parent directories of `path` (0755, root).
fn ensure_parents(layer: &mut LayerBuilder, path: &str) {
    let mut parent = String::new();
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    for component in components.iter().take(components.len().saturating_sub(1)) {
        if !parent.is_empty() {
            parent.push('/');
        }
        parent.push_str(component);
        if !layer.contains(&parent) {
            layer.dir(&parent, 0o755);
        }
    }
}

/// The union of the shared libraries (and the dynamic loader) the binaries need, as `ldd`
/// resolves them on this host.
fn shared_library_paths<'a>(binaries: impl Iterator<Item = &'a Path>) -> Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    for binary in binaries {
        let out = Command::new("ldd")
            .arg(binary)
            .output()
            .with_context(|| format!("run ldd {}", binary.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            if stdout.contains("not a dynamic executable")
                || stderr.contains("not a dynamic executable")
            {
                continue;
            }
            bail!("ldd {} failed ({}): {stderr}", binary.display(), out.status);
        }
        libs.extend(parse_ldd(&stdout).with_context(|| format!("ldd {}", binary.display()))?);
    }
    Ok(libs)
}

/// Parses `ldd` output: `name => /path (0x...)` and `/path/ld.so (0x...)`; the vDSO has no file.
fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("=> not found") {
            bail!("missing shared library: {line}");
        }
        let target = match line.split_once("=>") {
            Some((_, rhs)) => rhs.trim(),
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Compiles a C program statically with the host's gcc and returns the binary.
fn compile_static_c(name: &str, source: &str) -> Result<Vec<u8>> {
    let dir = tempfile::Builder::new()
        .prefix("berth-e2e-cc-")
        .tempdir()
        .context("temp dir for gcc")?;
    let src = dir.path().join(format!("{name}.c"));
    let out = dir.path().join(name);
    std::fs::write(&src, source).with_context(|| format!("write {}", src.display()))?;
    let result = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .context("run gcc (apt packages gcc, libc6-dev)")?;
    if !result.status.success() {
        bail!(
            "gcc {name}.c failed ({}): {}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
    }
    std::fs::read(&out).with_context(|| format!("read {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_yields_library_and_loader_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f9a)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f9b)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn parents_are_added_once_in_order() {
        let mut layer = LayerBuilder::new();
        layer.dir("usr", 0o755);
        ensure_parents(&mut layer, "usr/lib/x86_64-linux-gnu/libc.so.6");
        ensure_parents(&mut layer, "usr/lib/x86_64-linux-gnu/libm.so.6");
        let tar = layer.to_tar().unwrap();
        let names: Vec<String> = tar::Archive::new(tar.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["usr/", "usr/lib/", "usr/lib/x86_64-linux-gnu/"]);
    }

    #[test]
    fn accounts_include_the_users_critest_names() {
        let p = passwd(&["default-user:x:1000:1000::/home/default-user:/bin/sh"]);
        for user in [
            "root:x:0:0:",
            "nobody:x:65534:",
            "www-data:x:33:33:",
            "default-user:x:1000:",
        ] {
            assert!(p.contains(user), "{user}");
        }
        let g = group(&[]);
        assert!(g.contains("www-data:x:33:"));
        assert!(g.contains("nogroup:x:65534:"));
    }

    #[test]
    fn catalog_covers_every_reference_critest_hard_codes() {
        let refs: Vec<String> = catalog()
            .iter()
            .flat_map(CatalogEntry::upstream_references)
            .collect();
        for want in [
            "registry.k8s.io/e2e-test-images/busybox:1.29-2",
            "registry.k8s.io/e2e-test-images/nginx:1.14-2",
            "registry.k8s.io/e2e-test-images/httpd:2.4.39-4",
            "registry.k8s.io/e2e-test-images/nonewprivs:1.3",
            "gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-user-uid:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-user-username:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-user-uid-group:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-user-username-group:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-latest:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-digest:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-tag:test",
            "gcr.io/k8s-staging-cri-tools/test-image-tag:all",
            "gcr.io/k8s-staging-cri-tools/test-image-1:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-2:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-3:latest",
            "gcr.io/k8s-staging-cri-tools/test-image-tags:1",
            "gcr.io/k8s-staging-cri-tools/test-image-tags:2",
            "gcr.io/k8s-staging-cri-tools/test-image-tags:3",
            // critest 1.37 pulls it as k8s.gcr.io/pause:3.9 too, through the same mirror.
            "registry.k8s.io/pause:3.9",
        ] {
            assert!(
                refs.iter().any(|r| r == want),
                "{want} missing from the catalog"
            );
        }
        let unique: BTreeSet<&String> = refs.iter().collect();
        assert_eq!(unique.len(), refs.len(), "a reference is listed twice");
    }
}
