//! berthd under test: a child process with a private root, state dir, socket and CNI config,
//! all inside one temporary directory, and a teardown on drop that also runs when the test
//! panics.
//!
//! Teardown, in order: stop berthd (SIGTERM, SIGKILL after a grace period); stop leftover
//! processes whose command line names the temporary directory (detached shims) and kill
//! container processes whose mounts name it (their rootfs lives there); lazily unmount
//! everything under it, deepest first; remove the network namespaces and the bridge named in the
//! options; delete the directory.

use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, umount2};
use serde_json::json;
use tempfile::TempDir;

use crate::cleanup::{
    kill_containers_rooted_in, kill_pid_holders, kill_processes_mentioning, remove_pod_cgroups,
    unmount_under,
};
use crate::fixtures::path_str;
use crate::process::{LoggedChild, wait_until};
use crate::registry::Registry;
use crate::testimages::{GCR_IO, K8S_GCR_IO, REGISTRY_K8S_IO};
use crate::tools;

/// Environment variable naming the berthd binary to test.
pub const BERTHD_BIN_ENV: &str = "BERTHD_BIN";
/// Debian's containernetworking-plugins.
pub const DEBIAN_CNI_BIN_DIR: &str = "/usr/lib/cni";
/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// How to start berthd. `Default` gives a daemon with no registry settings and an empty CNI
/// config dir.
#[derive(Clone, Debug)]
pub struct BerthdOptions {
    /// `--registry-mirror HOST=URL`, e.g. (`registry.k8s.io`, `http://127.0.0.1:5000`).
    pub registry_mirrors: Vec<(String, String)>,
    /// `--insecure-registry HOST:PORT` (plain HTTP).
    pub insecure_registries: Vec<String>,
    /// `--runtime NAME=PATH`.
    pub runtimes: Vec<(String, PathBuf)>,
    /// Appended to the command line after everything else.
    pub extra_args: Vec<OsString>,
    /// Added to the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// Contents of the `--config` file.
    pub config: String,
    pub cni_bin_dir: PathBuf,
    /// With `subnet`, writes a bridge + portmap CNI network on this bridge into the CNI config
    /// dir; the bridge is deleted at teardown.
    pub bridge: Option<String>,
    /// IPv4 CIDR for the bridge network's host-local IPAM, e.g. `10.88.7.0/24`.
    pub subnet: Option<String>,
    /// `(bridge, subnet)`: berthd installs its default berth-bridge network with these (the
    /// bridge is deleted and the forward guard removed at teardown). Without it berthd is told
    /// not to install any default network.
    pub default_network: Option<(String, String)>,
    /// A directory owned by this test in which berthd creates network namespace files: every
    /// entry is unmounted and removed at teardown. Never a shared one such as `/run/netns`.
    pub netns_dir: Option<PathBuf>,
    /// How long to wait for the CRI socket to answer.
    pub ready_timeout: Duration,
    /// How long berthd gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
}

impl Default for BerthdOptions {
    fn default() -> Self {
        BerthdOptions {
            registry_mirrors: Vec::new(),
            insecure_registries: Vec::new(),
            runtimes: Vec::new(),
            extra_args: Vec::new(),
            env: Vec::new(),
            config: String::new(),
            cni_bin_dir: PathBuf::from(DEBIAN_CNI_BIN_DIR),
            bridge: None,
            subnet: None,
            default_network: None,
            netns_dir: None,
            ready_timeout: Duration::from_secs(30),
            stop_grace: Duration::from_secs(10),
        }
    }
}

impl BerthdOptions {
    pub fn registry_mirror(mut self, host: &str, url: &str) -> Self {
        self.registry_mirrors
            .push((host.to_owned(), url.to_owned()));
        self
    }

    pub fn insecure_registry(mut self, host: &str) -> Self {
        self.insecure_registries.push(host.to_owned());
        self
    }

    /// Serves `registry.k8s.io`, `k8s.gcr.io` and `gcr.io` from `registry` (plain HTTP), as critest's images
    /// are pushed there by [`crate::testimages::push_critest_images`].
    pub fn mirror_critest_registries(self, registry: &Registry) -> Self {
        let url = registry.url();
        self.insecure_registry(&registry.host())
            .registry_mirror(REGISTRY_K8S_IO, &url)
            .registry_mirror(GCR_IO, &url)
            .registry_mirror(K8S_GCR_IO, &url)
    }

    pub fn runtime(mut self, name: &str, path: impl Into<PathBuf>) -> Self {
        self.runtimes.push((name.to_owned(), path.into()));
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// berthd's own default network (berth-bridge) on `bridge` with `subnet`.
    pub fn default_network(mut self, bridge: &str, subnet: &str) -> Self {
        self.default_network = Some((bridge.to_owned(), subnet.to_owned()));
        self
    }

    pub fn bridge_network(mut self, bridge: &str, subnet: &str) -> Self {
        self.bridge = Some(bridge.to_owned());
        self.subnet = Some(subnet.to_owned());
        self
    }
}

/// The files and directories of one daemon instance, all under its temporary directory.
#[derive(Clone, Debug)]
pub struct BerthdPaths {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub log: PathBuf,
    pub crictl_config: PathBuf,
}

impl BerthdPaths {
    fn under(dir: &Path) -> Self {
        BerthdPaths {
            dir: dir.to_owned(),
            root: dir.join("root"),
            state: dir.join("state"),
            socket: dir.join("berthd.sock"),
            config: dir.join("berthd.toml"),
            cni_conf_dir: dir.join("cni/net.d"),
            log: dir.join("berthd.log"),
            crictl_config: dir.join("crictl.yaml"),
        }
    }
}

/// A running berthd.
pub struct Berthd {
    child: LoggedChild,
    binary: PathBuf,
    paths: BerthdPaths,
    options: BerthdOptions,
    crictl: PathBuf,
    // Taken in Drop, after everything that lives inside it is gone.
    dir: Option<TempDir>,
}

impl std::fmt::Debug for Berthd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Berthd")
            .field("pid", &self.child.pid())
            .field("dir", &self.paths.dir)
            .finish()
    }
}

impl Berthd {
    /// Starts berthd and waits until `crictl version` answers on its socket.
    pub fn start(options: BerthdOptions) -> Result<Self> {
        let binary = berthd_binary()?;
        let crictl = tools::crictl()?;
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-")
            .tempdir()
            .context("berthd temp dir")?;
        let paths = BerthdPaths::under(dir.path());
        prepare_files(&paths, &options)?;

        let child = spawn(&binary, &paths, &options)?;
        let mut daemon = Berthd {
            child,
            binary,
            paths,
            options,
            crictl,
            dir: Some(dir),
        };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    /// Stops berthd (SIGTERM, SIGKILL after the grace period) and starts it again on the same
    /// root, state and socket, leaving shims, containers and mounts in place: what a restart
    /// test needs to check recovery. The old socket file stays too: berthd must cope with it.
    pub fn restart(&mut self) -> Result<()> {
        self.child.stop(self.options.stop_grace);
        self.child = spawn(&self.binary, &self.paths, &self.options)?;
        self.wait_ready()
    }

    /// SIGKILL, as a crash: shims, containers, mounts and the socket file stay behind.
    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill9()
    }

    /// Starts berthd again on the same root, state and socket, after [`Berthd::kill9`].
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.exited().is_none() {
            bail!("berthd (pid {}) still runs", self.child.pid());
        }
        self.child = spawn(&self.binary, &self.paths, &self.options)?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let binary = self.binary.clone();
        let timeout = self.options.ready_timeout;
        let mut exited = None;
        let mut last = String::new();
        let ready = wait_until(timeout, || {
            exited = self.child.exited();
            if exited.is_some() {
                return true;
            }
            if !self.paths.socket.exists() {
                last = "socket not created yet".into();
                return false;
            }
            match self.crictl_with_timeout(&["version"], "2s") {
                Ok(out) if out.status.success() => true,
                Ok(out) => {
                    last = format!(
                        "crictl version: {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                    false
                }
                Err(e) => {
                    last = format!("{e:#}");
                    false
                }
            }
        });
        if let Some(status) = exited {
            bail!(
                "berthd ({}) exited during start-up ({status}); log:\n{}",
                binary.display(),
                self.log_tail()
            );
        }
        if !ready {
            bail!(
                "berthd ({}) not ready after {timeout:?} ({last}); log:\n{}",
                binary.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    pub fn paths(&self) -> &BerthdPaths {
        &self.paths
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// `unix://<socket>`, the CRI endpoint for crictl and critest.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.paths.socket.display())
    }

    /// The last 16 KiB of berthd's log.
    pub fn log_tail(&self) -> String {
        self.child.log_tail(16 * 1024)
    }

    /// `Some(status)` if berthd has exited.
    pub fn exited(&mut self) -> Option<String> {
        self.child.exited()
    }

    /// Runs the pinned crictl against this daemon (runtime and image endpoint, 30 s timeout).
    pub fn crictl(&self, args: &[&str]) -> Result<Output> {
        self.crictl_with_timeout(args, "30s")
    }

    /// Like [`Berthd::crictl`], but a non-zero exit is an error carrying stderr and berthd's log.
    pub fn crictl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.crictl(args)?;
        if !out.status.success() {
            bail!(
                "crictl {} failed ({}):\nstdout: {}\nstderr: {}\nberthd log:\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        String::from_utf8(out.stdout)
            .with_context(|| format!("crictl {} printed non-UTF-8", args.join(" ")))
    }

    /// `crictl create` then `start` of a container from its config files; its id.
    pub fn run_container(&self, pod: &str, ctr_cfg: &Path, pod_cfg: &Path) -> Result<String> {
        let (ctr_cfg, pod_cfg) = (path_str(ctr_cfg)?, path_str(pod_cfg)?);
        let id = self
            .crictl_ok(&["create", pod, ctr_cfg, pod_cfg])?
            .trim()
            .to_string();
        self.crictl_ok(&["start", &id])?;
        Ok(id)
    }

    /// Runs crictl with `-o json` after the subcommand (`args[0]`) and parses its output; flags
    /// go before any id, since crictl stops parsing flags at the first argument.
    pub fn crictl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        let at = all.len().min(1);
        all.splice(at..at, ["-o", "json"]);
        let out = self.crictl_ok(&all)?;
        serde_json::from_str(&out)
            .with_context(|| format!("crictl {} printed invalid JSON: {out}", all.join(" ")))
    }

    fn crictl_with_timeout(&self, args: &[&str], timeout: &str) -> Result<Output> {
        let endpoint = self.endpoint();
        Command::new(&self.crictl)
            .arg("--config")
            .arg(&self.paths.crictl_config)
            .args([
                "--runtime-endpoint",
                &endpoint,
                "--image-endpoint",
                &endpoint,
                "--timeout",
                timeout,
            ])
            .args(args)
            .output()
            .with_context(|| format!("run {} {}", self.crictl.display(), args.join(" ")))
    }

    fn teardown(&mut self) {
        self.child.stop(self.options.stop_grace);
        self.release_pod_networks();
        let dir = self.paths.dir.clone();
        kill_pid_holders(&self.paths.state.join("shims"));
        // Twice: a shim killed in the first pass may have had children of its own.
        for _ in 0..2 {
            kill_processes_mentioning(&dir, Duration::from_secs(5));
            kill_containers_rooted_in(&dir);
        }
        unmount_under(&dir);
        remove_pod_cgroups(&self.paths.state.join("sandboxes"));
        if let Some(netns_dir) = &self.options.netns_dir {
            remove_netns_files(netns_dir);
        }
        if let Some(bridge) = &self.options.bridge {
            delete_berth_bridge_nat(bridge);
            delete_link(bridge);
            remove_forward_guard(bridge);
        }
        if let Some((bridge, _)) = &self.options.default_network {
            delete_berth_bridge_nat(bridge);
            delete_link(bridge);
            remove_forward_guard(bridge);
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_owned();
            if let Err(e) = dir.close() {
                eprintln!("berth-e2e: remove {}: {e}", path.display());
            }
        }
    }
}

impl Berthd {
    /// CNI DEL of every attachment berthd's result cache still holds (a failed test leaves
    /// pods behind): host-local leases, portmap's iptables rules, berth-bridge's NAT rules and
    /// veths live outside the test's directory. Runs while the namespaces are still pinned.
    fn release_pod_networks(&self) {
        let Ok(list) = berth_netplugin::conf::load_default(&self.paths.cni_conf_dir) else {
            return;
        };
        let mut bin_dirs = vec![self.options.cni_bin_dir.clone()];
        if let Some(dir) = self.binary.parent() {
            bin_dirs.push(dir.to_path_buf());
        }
        let runner = berth_netplugin::cni::CniRunner::new(bin_dirs, self.paths.state.join("cni"));
        // No valid attachment: every cached one is deleted (and CNI 1.1 plugins collect).
        if let Err(errors) = runner.gc(&list, &[]) {
            for e in errors {
                eprintln!("berth-e2e: releasing pod networks: {e}");
            }
        }
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The critest busybox image most container tests run.
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// What a container test starts from: a fresh local registry holding the critest images, and a
/// berthd (with `options`) that mirrors their registries to it, on its own bridge network
/// `bridge` with `subnet`, with [`BUSYBOX`] pulled; images pushed to the registry under their
/// own names pull from it too. The registry must outlive the berthd.
pub fn berthd_with_busybox(
    options: BerthdOptions,
    bridge: &str,
    subnet: &str,
) -> Result<(Berthd, Registry)> {
    berthd_binary()?;
    let registry = Registry::start()?;
    crate::testimages::push_critest_images(&registry)?;
    let berthd = Berthd::start(
        options
            .mirror_critest_registries(&registry)
            .insecure_registry(&registry.host())
            .bridge_network(bridge, subnet),
    )?;
    berthd.crictl_ok(&["pull", BUSYBOX])?;
    Ok((berthd, registry))
}

/// The berthd binary: `$BERTHD_BIN`, else `berthd` in the cargo profile dir this test binary
/// was built into (`<target>/debug/deps/<test>` → `<target>/debug/berthd`).
pub fn berthd_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(BERTHD_BIN_ENV) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{BERTHD_BIN_ENV}={} is not a file", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locate the test executable")?;
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile_dir| profile_dir.join("berthd"))
        .with_context(|| format!("no profile dir above {}", exe.display()))?;
    if !candidate.is_file() {
        bail!(
            "berthd binary not found: {BERTHD_BIN_ENV} is unset and {} does not exist \
             (build it with `cargo build -p berth-server` or set {BERTHD_BIN_ENV})",
            candidate.display()
        );
    }
    Ok(candidate)
}

fn spawn(binary: &Path, paths: &BerthdPaths, options: &BerthdOptions) -> Result<LoggedChild> {
    let mut cmd = Command::new(binary);
    cmd.args(berthd_args(paths, options));
    cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
    LoggedChild::spawn("berthd", cmd, &paths.log)
}

fn prepare_files(paths: &BerthdPaths, options: &BerthdOptions) -> Result<()> {
    if paths.socket.as_os_str().len() > MAX_SOCKET_PATH {
        bail!(
            "socket path {} is longer than a unix socket allows; set TMPDIR to a shorter dir",
            paths.socket.display()
        );
    }
    // berthd refuses a root or state dir that group or others may write; an explicit mode
    // keeps that true under any umask.
    for dir in [&paths.root, &paths.state, &paths.cni_conf_dir] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&paths.config, &options.config)
        .with_context(|| format!("write {}", paths.config.display()))?;
    let endpoint = format!("unix://{}", paths.socket.display());
    std::fs::write(
        &paths.crictl_config,
        format!(
            "runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 30\ndebug: false\n"
        ),
    )
    .with_context(|| format!("write {}", paths.crictl_config.display()))?;
    if let (Some(bridge), Some(subnet)) = (&options.bridge, &options.subnet) {
        install_forward_guard(bridge, subnet)?;
        let conflist = bridge_conflist(bridge, subnet, &paths.state.join("cni-ipam"));
        let file = paths.cni_conf_dir.join("10-berth-e2e.conflist");
        std::fs::write(&file, serde_json::to_vec_pretty(&conflist)?)
            .with_context(|| format!("write {}", file.display()))?;
    }
    if let Some((bridge, subnet)) = &options.default_network {
        install_forward_guard(bridge, subnet)?;
    }
    Ok(())
}

fn berthd_args(paths: &BerthdPaths, options: &BerthdOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut flag = |name: &str, value: OsString| {
        args.push(name.into());
        args.push(value);
    };
    flag("--config", paths.config.clone().into());
    flag("--root", paths.root.clone().into());
    flag("--state", paths.state.clone().into());
    flag("--socket", paths.socket.clone().into());
    flag("--log-level", "debug".into());
    flag("--cni-conf-dir", paths.cni_conf_dir.clone().into());
    flag("--cni-bin-dir", options.cni_bin_dir.clone().into());
    match &options.default_network {
        Some((bridge, subnet)) => {
            flag("--install-default-conflist", "true".into());
            flag("--default-subnet", subnet.into());
            flag("--default-bridge", bridge.into());
            flag("--default-network-name", bridge.into());
        }
        None => flag("--install-default-conflist", "false".into()),
    }
    for host in &options.insecure_registries {
        flag("--insecure-registry", host.into());
    }
    for (host, url) in &options.registry_mirrors {
        flag("--registry-mirror", format!("{host}={url}").into());
    }
    for (name, path) in &options.runtimes {
        let mut value = OsString::from(format!("{name}="));
        value.push(path);
        flag("--runtime", value);
    }
    args.extend(options.extra_args.iter().cloned());
    args
}

/// A bridge network whose IPAM state stays in the test's directory (not /var/lib/cni).
pub fn bridge_conflist(bridge: &str, subnet: &str, ipam_dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "berth-e2e",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

fn remove_netns_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // Not mounted (already released) is fine: the file still has to go.
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        if let Err(e) = std::fs::remove_file(&path) {
            eprintln!("berth-e2e: remove netns {}: {e}", path.display());
        }
    }
}

/// The nftables table that keeps a test's pods on this machine: forwarded traffic from the
/// test's subnet to anything outside it is dropped, so no pod in a test reaches past the node.
fn guard_table(bridge: &str) -> String {
    format!("berth-e2e-guard-{bridge}")
}

/// A forward guard for a bridge this harness does not manage itself (a benchmark's other
/// runtime, containerd in an interop test): installed on creation; on drop the guard, the
/// bridge and a berth-bridge NAT table of a network named after the bridge are removed.
pub struct ForwardGuard(String);

impl ForwardGuard {
    pub fn install(bridge: &str, subnet: &str) -> Result<ForwardGuard> {
        install_forward_guard(bridge, subnet)?;
        Ok(ForwardGuard(bridge.to_owned()))
    }
}

impl Drop for ForwardGuard {
    fn drop(&mut self) {
        remove_forward_guard(&self.0);
        delete_berth_bridge_nat(&self.0);
        delete_link(&self.0);
    }
}

fn install_forward_guard(bridge: &str, subnet: &str) -> Result<()> {
    let table = guard_table(bridge);
    let ruleset = format!(
        "table ip {table} {{\n  chain forward {{\n    type filter hook forward priority -10; policy accept;\n    ip saddr {subnet} ip daddr != {subnet} drop\n  }}\n}}\n"
    );
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run nft")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(ruleset.as_bytes())
            .context("write nft ruleset")?;
    }
    let out = child.wait_with_output().context("wait for nft")?;
    if !out.status.success() {
        bail!(
            "installing the forward guard {table}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn remove_forward_guard(bridge: &str) {
    let table = guard_table(bridge);
    let _ = Command::new("nft")
        .args(["delete", "table", "ip", &table])
        .stderr(std::process::Stdio::null())
        .status();
}

/// berth-bridge's nftables table of a network on `bridge`, if a failed test left it: of any
/// family (`inet` since NAT is dual-stack, `ip` from older versions).
fn delete_berth_bridge_nat(bridge: &str) {
    let Ok(out) = Command::new("nft").args(["-j", "list", "tables"]).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    for item in v["nftables"].as_array().into_iter().flatten() {
        let Some(table) = item.get("table") else {
            continue;
        };
        let (Some(family), Some(name)) = (table["family"].as_str(), table["name"].as_str()) else {
            continue;
        };
        // berth-bridge's table is `berth-<network name>`; the harness names the network after
        // its bridge.
        if name == format!("berth-{bridge}") {
            let _ = Command::new("nft")
                .args(["delete", "table", family, name])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn delete_link(name: &str) {
    if !Path::new("/sys/class/net").join(name).exists() {
        return;
    }
    match Command::new("ip").args(["link", "delete", name]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "berth-e2e: ip link delete {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("berth-e2e: ip link delete {name}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_follows_the_berthd_interface() {
        let paths = BerthdPaths::under(Path::new("/tmp/t"));
        let options = BerthdOptions::default()
            .insecure_registry("127.0.0.1:5000")
            .registry_mirror("registry.k8s.io", "http://127.0.0.1:5000")
            .registry_mirror("gcr.io", "http://127.0.0.1:5000")
            .runtime("crun", "/usr/bin/crun")
            .arg("--extra");
        let args: Vec<String> = berthd_args(&paths, &options)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--config",
                "/tmp/t/berthd.toml",
                "--root",
                "/tmp/t/root",
                "--state",
                "/tmp/t/state",
                "--socket",
                "/tmp/t/berthd.sock",
                "--log-level",
                "debug",
                "--cni-conf-dir",
                "/tmp/t/cni/net.d",
                "--cni-bin-dir",
                "/usr/lib/cni",
                "--install-default-conflist",
                "false",
                "--insecure-registry",
                "127.0.0.1:5000",
                "--registry-mirror",
                "registry.k8s.io=http://127.0.0.1:5000",
                "--registry-mirror",
                "gcr.io=http://127.0.0.1:5000",
                "--runtime",
                "crun=/usr/bin/crun",
                "--extra",
            ]
        );
    }

    #[test]
    fn bridge_network_keeps_ipam_state_in_the_test_dir() {
        let conf = bridge_conflist(
            "berth-e2e0",
            "10.88.7.0/24",
            Path::new("/tmp/t/state/cni-ipam"),
        );
        assert_eq!(conf["plugins"][0]["bridge"], "berth-e2e0");
        assert_eq!(
            conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.88.7.0/24"
        );
        assert_eq!(
            conf["plugins"][0]["ipam"]["dataDir"],
            "/tmp/t/state/cni-ipam"
        );
    }
}
