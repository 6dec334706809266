//! A throwaway OCI registry: Debian's `docker-registry` (distribution 2.8) on a free 127.0.0.1
//! port, with storage in a temporary directory that is removed on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
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
    _dir: TempDir,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .field("pid", &self.child.pid())
            .field("auth", &self.credentials.is_some())
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
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(credentials.clone()) {
                Ok(registry) => return Ok(registry),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("registry was never started")))
    }

    fn try_start(credentials: Option<Credentials>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .context("registry temp dir")?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        if let Some(c) = &credentials {
            write_htpasswd(&dir.path().join("htpasswd"), &c.user, &c.password)?;
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            config_yaml(dir.path(), addr, credentials.is_some()),
        )
        .with_context(|| format!("write {}", config.display()))?;

        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve").arg(&config);
        let mut child =
            LoggedChild::spawn("docker-registry", cmd, &dir.path().join("registry.log"))?;

        let mut client = RegistryClient::new(&addr.to_string());
        if let Some(c) = &credentials {
            client = client.with_basic_auth(&c.user, &c.password);
        }
        let mut exited = None;
        let ready = wait_until(READY_TIMEOUT, || {
            exited = child.exited();
            exited.is_some() || matches!(client.ping(), Ok(200))
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

    /// `http://127.0.0.1:PORT`, as a registry mirror endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

fn config_yaml(dir: &Path, addr: SocketAddr, auth: bool) -> String {
    // JSON strings are valid YAML scalars: this quotes paths safely.
    let quote = |p: &Path| serde_json::Value::from(p.to_string_lossy()).to_string();
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: info\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
         \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n  secret: berth-e2e-{port}\n",
        root = quote(&dir.join("data")),
        port = addr.port(),
    );
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
        let open = config_yaml(Path::new("/tmp/r"), addr, false);
        assert!(open.contains("rootdirectory: \"/tmp/r/data\""));
        assert!(open.contains("  addr: 127.0.0.1:5123\n"));
        assert!(open.contains("  delete:\n    enabled: true\n"));
        assert!(open.contains("  maintenance:\n"));
        assert!(!open.contains("htpasswd"));
        let auth = config_yaml(Path::new("/tmp/r"), addr, true);
        assert!(
            auth.contains(
                "auth:\n  htpasswd:\n    realm: berth-e2e\n    path: \"/tmp/r/htpasswd\"\n"
            )
        );
    }
}
