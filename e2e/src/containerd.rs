//! Debian's containerd (1.6, CRI plugin) as the reference runtime of the benchmarks and of the
//! interop tests: started with its own root, state and sockets under a temporary directory,
//! pulling over plain http from the local registry, which also serves as the mirror of
//! registry.k8s.io (its sandbox image's home). Torn down on drop like [`crate::daemon::Berthd`]:
//! the daemon, then its shims and their containers, then its mounts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cleanup::{kill_containers_rooted_in, kill_processes_mentioning, unmount_under};
use crate::daemon::DEBIAN_CNI_BIN_DIR;

pub const CONTAINERD: &str = "/usr/bin/containerd";
const REGISTRY_K8S_IO: &str = "registry.k8s.io";

pub struct Containerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    crictl: PathBuf,
}

impl Containerd {
    /// Starts containerd; `network` (a CNI conflist) becomes its pod network when given, with
    /// Debian's CNI plugins.
    pub fn start(
        registry_host: &str,
        crictl: &Path,
        network: Option<&serde_json::Value>,
    ) -> Result<Containerd> {
        Containerd::start_with_plugins(registry_host, crictl, network, &[])
    }

    /// Like [`Containerd::start`], with `extra_plugins` (binaries such as berth-bridge) beside
    /// Debian's CNI plugins in a bin dir of its own (containerd 1.6 takes one bin dir).
    pub fn start_with_plugins(
        registry_host: &str,
        crictl: &Path,
        network: Option<&serde_json::Value>,
        extra_plugins: &[PathBuf],
    ) -> Result<Containerd> {
        let dir = tempfile::Builder::new().prefix("berth-ctrd-").tempdir()?;
        let d = dir.path();
        std::fs::create_dir_all(d.join("net.d"))?;
        let bin_dir = if extra_plugins.is_empty() {
            PathBuf::from(DEBIAN_CNI_BIN_DIR)
        } else {
            let bin = d.join("cni-bin");
            std::fs::create_dir_all(&bin)?;
            for entry in std::fs::read_dir(DEBIAN_CNI_BIN_DIR)? {
                let entry = entry?;
                std::os::unix::fs::symlink(entry.path(), bin.join(entry.file_name()))?;
            }
            for plugin in extra_plugins {
                let name = plugin
                    .file_name()
                    .with_context(|| format!("plugin path {}", plugin.display()))?;
                std::os::unix::fs::symlink(plugin, bin.join(name))?;
            }
            bin
        };
        if let Some(conflist) = network {
            std::fs::write(d.join("net.d/10-bench.conflist"), conflist.to_string())?;
        }
        let local = format!(
            "[host.\"http://{registry_host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        for (host, server) in [
            (registry_host, format!("http://{registry_host}")),
            (REGISTRY_K8S_IO, format!("https://{REGISTRY_K8S_IO}")),
        ] {
            let certs = d.join("certs.d").join(host);
            std::fs::create_dir_all(&certs)?;
            std::fs::write(
                certs.join("hosts.toml"),
                format!("server = \"{server}\"\n\n{local}"),
            )?;
        }
        // restrict_oom_score_adj: this host denies CAP_SYS_RESOURCE (see the README).
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  restrict_oom_score_adj = true
  sandbox_image = "{REGISTRY_K8S_IO}/pause:3.10"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{d}/net.d"
    bin_dir = "{bin}"
"#,
            d = d.display(),
            bin = bin_dir.display()
        );
        std::fs::write(d.join("config.toml"), config)?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let c = Containerd {
            child: Some(child),
            dir,
            crictl: crictl.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if c.crictl(&["version"])
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                return Ok(c);
            }
            if Instant::now() > deadline {
                bail!("containerd not ready after 30 s: {}", c.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Where containerd keeps everything; its shims' command lines name it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn crictl(&self, args: &[&str]) -> Result<Output> {
        let endpoint = format!("unix://{}/containerd.sock", self.dir.path().display());
        Ok(Command::new(&self.crictl)
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--image-endpoint",
                &endpoint,
            ])
            .args(["--timeout", "10m"])
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    /// The last 20 lines of containerd's log.
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = kill(pid, Signal::SIGKILL);
            let _ = child.wait();
        }
        // Shims (their command lines name the dir), then the pause and container processes
        // of pods a failed run left behind (their rootfs lives under it), then mounts.
        let dir = self.dir.path().to_path_buf();
        for _ in 0..2 {
            kill_processes_mentioning(&dir, Duration::from_secs(5));
            kill_containers_rooted_in(&dir);
        }
        unmount_under(&dir);
    }
}
