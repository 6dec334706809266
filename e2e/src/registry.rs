//! A throwaway OCI registry: Debian's `docker-registry` (distribution 2.8) on a free 127.0.0.1
//! port, with storage in a temporary directory that is removed on drop; optionally a second one
//! serving the same storage over TLS with a certificate made by `openssl`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::distribution::RegistryClient;
use crate::process::{LoggedChild, free_port, wait_until};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Another process can take the free port between our probe and the registry's bind.
const START_ATTEMPTS: usize = 3;

#[derive(Clone)]
struct Credentials {
    user: String,
    password: String,
}

/// A running registry. Dropping it stops the process (SIGTERM, then SIGKILL) and deletes its
/// storage.
pub struct Registry {
    // Field order matters: the process stops before its storage directory is removed.
    child: LoggedChild,
    addr: SocketAddr,
    credentials: Option<Credentials>,
    /// Serves TLS rather than plain HTTP.
    tls: bool,
    _dir: TempDir,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .field("pid", &self.child.pid())
            .field("auth", &self.credentials.is_some())
            .field("tls", &self.tls)
            .finish()
    }
}

impl Registry {
    /// An open registry (no authentication).
    pub fn start() -> Result<Self> {
        Self::start_inner(None)
    }

    /// A registry requiring HTTP basic auth with this user and password (htpasswd, bcrypt).
    pub fn start_with_basic_auth(user: &str, password: &str) -> Result<Self> {
        Self::start_inner(Some(Credentials {
            user: user.to_owned(),
            password: password.to_owned(),
        }))
    }

    fn start_inner(credentials: Option<Credentials>) -> Result<Self> {
        Self::start_attempts(credentials, None, None)
    }

    /// Another registry on its own 127.0.0.1 port, serving this one's storage over TLS with
    /// `tls`'s certificate (push through this one: [`Registry::client`] speaks plain HTTP).
    /// Drop it before this one.
    pub fn serve_over_tls(&self, tls: &TlsFiles) -> Result<Registry> {
        Self::start_attempts(None, Some(self._dir.path().join("data")), Some(tls))
    }

    fn start_attempts(
        credentials: Option<Credentials>,
        storage: Option<PathBuf>,
        tls: Option<&TlsFiles>,
    ) -> Result<Self> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(credentials.clone(), storage.clone(), tls) {
                Ok(registry) => return Ok(registry),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("registry was never started")))
    }

    fn try_start(
        credentials: Option<Credentials>,
        storage: Option<PathBuf>,
        tls: Option<&TlsFiles>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .context("registry temp dir")?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        if let Some(c) = &credentials {
            write_htpasswd(&dir.path().join("htpasswd"), &c.user, &c.password)?;
        }
        let config = dir.path().join("config.yml");
        let storage = storage.unwrap_or_else(|| dir.path().join("data"));
        let yaml = config_yaml(dir.path(), &storage, addr, credentials.is_some(), tls);
        std::fs::write(&config, yaml).with_context(|| format!("write {}", config.display()))?;

        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve").arg(&config);
        let mut child =
            LoggedChild::spawn("docker-registry", cmd, &dir.path().join("registry.log"))?;

        let mut client = RegistryClient::new(&addr.to_string());
        if let Some(c) = &credentials {
            client = client.with_basic_auth(&c.user, &c.password);
        }
        let mut exited = None;
        // A TLS server answers plain HTTP with 400 ("Client sent an HTTP request to an HTTPS
        // server"): that it answers so also shows that it speaks TLS.
        let ready_status = if tls.is_some() { 400 } else { 200 };
        let ready = wait_until(READY_TIMEOUT, || {
            exited = child.exited();
            exited.is_some() || client.ping().is_ok_and(|s| s == ready_status)
        });
        if let Some(status) = exited {
            bail!(
                "docker-registry on {addr} exited ({status}):\n{}",
                child.log_tail(4096)
            );
        }
        if !ready {
            bail!(
                "docker-registry on {addr} not ready after {READY_TIMEOUT:?}:\n{}",
                child.log_tail(4096)
            );
        }
        if credentials.is_some() {
            // Authentication must be enforced, or auth tests would pass against an open registry.
            let anonymous = RegistryClient::new(&addr.to_string()).ping()?;
            if anonymous != 401 {
                bail!(
                    "docker-registry on {addr} answered {anonymous} to an anonymous GET /v2/, expected 401"
                );
            }
        }
        Ok(Registry {
            child,
            addr,
            credentials,
            tls: tls.is_some(),
            _dir: dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, the registry host part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT` (`https://` when it serves TLS), as a registry mirror endpoint.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// A client for this registry, carrying the credentials if it requires them.
    pub fn client(&self) -> RegistryClient {
        let client = RegistryClient::new(&self.host());
        match &self.credentials {
            Some(c) => client.with_basic_auth(&c.user, &c.password),
            None => client,
        }
    }

    /// The user and password this registry requires, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|c| (c.user.as_str(), c.password.as_str()))
    }

    /// The end of the registry's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.child.log_tail(8192)
    }
}

fn write_htpasswd(path: &Path, user: &str, password: &str) -> Result<()> {
    // distribution only accepts bcrypt entries (-B).
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .context("run htpasswd (apt package apache2-utils)")?;
    if !out.status.success() {
        bail!(
            "htpasswd -Bbn failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(path, &out.stdout).with_context(|| format!("write {}", path.display()))
}

/// A CA certificate and a server certificate and key it signed, for `localhost` and
/// `127.0.0.1`, in PEM files.
#[derive(Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Made with `openssl` in `dir`.
    pub fn generate(dir: &Path) -> Result<TlsFiles> {
        let files = TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        let ca_key = dir.join("ca.key");
        let csr = dir.join("server.csr");
        let ext = dir.join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .with_context(|| format!("write {}", ext.display()))?;
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
        ];
        openssl(
            Command::new("openssl")
                .args(["req", "-x509", "-days", "2", "-subj", "/CN=berth e2e CA"])
                .args(new_key)
                .arg(&ca_key)
                .arg("-out")
                .arg(&files.ca),
        )?;
        openssl(
            Command::new("openssl")
                .args(["req", "-subj", "/CN=localhost"])
                .args(new_key)
                .arg(&files.key)
                .arg("-out")
                .arg(&csr),
        )?;
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&files.ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&files.cert),
        )?;
        Ok(files)
    }
}

fn openssl(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().context("run openssl")?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn config_yaml(
    dir: &Path,
    storage: &Path,
    addr: SocketAddr,
    auth: bool,
    tls: Option<&TlsFiles>,
) -> String {
    // JSON strings are valid YAML scalars: this quotes paths safely.
    let quote = |p: &Path| serde_json::Value::from(p.to_string_lossy()).to_string();
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
         \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n  secret: berth-e2e-{port}\n",
        root = quote(storage),
        port = addr.port(),
    );
    if let Some(tls) = tls {
        yaml.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            quote(&tls.cert),
            quote(&tls.key)
        ));
    }
    if auth {
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: berth-e2e\n    path: {}\n",
            quote(&dir.join("htpasswd"))
        ));
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_storage_addr_delete_and_optional_auth() {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 5123));
        let open = config_yaml(
            Path::new("/tmp/r"),
            Path::new("/tmp/r/data"),
            addr,
            false,
            None,
        );
        assert!(open.contains("rootdirectory: \"/tmp/r/data\""));
        assert!(open.contains("  addr: 127.0.0.1:5123\n"));
        assert!(open.contains("  delete:\n    enabled: true\n"));
        assert!(open.contains("  maintenance:\n"));
        assert!(!open.contains("htpasswd"));
        let auth = config_yaml(
            Path::new("/tmp/r"),
            Path::new("/tmp/r/data"),
            addr,
            true,
            None,
        );
        assert!(
            auth.contains(
                "auth:\n  htpasswd:\n    realm: berth-e2e\n    path: \"/tmp/r/htpasswd\"\n"
            )
        );
        let tls = TlsFiles {
            ca: "/t/ca.crt".into(),
            cert: "/t/s.crt".into(),
            key: "/t/s.key".into(),
        };
        let with_tls = config_yaml(
            Path::new("/tmp/r"),
            Path::new("/x"),
            addr,
            false,
            Some(&tls),
        );
        assert!(with_tls.contains("rootdirectory: \"/x\""));
        assert!(with_tls.contains(
            "secret: berth-e2e-5123\n  tls:\n    certificate: \"/t/s.crt\"\n    key: \"/t/s.key\"\n"
        ));
    }
}
