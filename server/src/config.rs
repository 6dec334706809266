//! berthd configuration: a TOML file (default `/etc/berth/berth.toml`) overlaid by command-line
//! flags, one flag per key, in the style of CRI-O.
//!
//! [`DEFAULT_CONFIG_TOML`] is the commented default file that `berthd config default` prints; a
//! unit test keeps it equal to [`Config::default`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where berthd looks for its config file when `--config` is not given. A missing file there
/// means "embedded defaults"; a missing file named by `--config` is an error.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/berth.toml";

/// The default network's subnet. Not containerd's and Podman's 10.88.0.0/16, not CRI-O's
/// 10.85.0.0/16, not the pools Podman carves new networks from (10.89.0.0/16 upward), not
/// Kubernetes' default service range 10.96.0.0/12: a node running one of those beside berth
/// keeps working.
pub const DEFAULT_SUBNET: &str = "10.87.0.0/16";
/// The default network's bridge (containerd and CRI-O use `cni0`, Podman `podman0`).
pub const DEFAULT_BRIDGE: &str = "berth0";

/// The default runtime handler's name, as kubelet's RuntimeClass `handler` field names it.
pub const DEFAULT_RUNTIME: &str = "runc";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent data: metadata database, content, snapshots.
    pub root: PathBuf,
    /// Runtime state that does not survive a reboot: shim sockets, bundles, netns files.
    pub state: PathBuf,
    /// The CRI socket.
    pub socket: PathBuf,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    pub cgroup_driver: CgroupDriver,
    /// Address of the streaming server (exec, attach, port-forward); port 0 picks a free port.
    pub stream_address: SocketAddr,
    /// Handler used when a pod names no runtime handler.
    pub default_runtime: String,
    pub runtimes: BTreeMap<String, RuntimeHandler>,
    pub network: NetworkConfig,
    pub registry: RegistryConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandler {
    /// The OCI runtime binary: an absolute path, or a name looked up in `PATH`.
    pub path: PathBuf,
    /// On a hybrid cgroup host, run the runtime without the cgroup2 mount at
    /// /sys/fs/cgroup/unified so that it manages cgroup v1 only. Unset: on for crun, which
    /// refuses hybrid hosts, off for any other runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hide_unified_cgroup: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Whether berthd writes a berth-bridge network into an empty `cni_conf_dir` at start.
    pub install_default_conflist: bool,
    /// The IPv4 subnet of that default network.
    pub default_subnet: String,
    /// The bridge of that default network.
    pub default_bridge: String,
    /// The CNI network name of that default network (names its leases dir and NAT table).
    pub default_network_name: String,
}

/// kubelet's default sandbox image, pinned by default.
pub const DEFAULT_PINNED_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// 128 GiB: past the largest real layers (machine-learning images carry layers of tens of GiB),
/// short of what fills a node's disk from a small download.
pub const DEFAULT_MAX_LAYER_UNCOMPRESSED_BYTES: u64 = 128 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registries (`host` or `host:port`) reached over plain http.
    pub insecure: Vec<String>,
    /// Mirrors per registry host, tried in order before the host itself.
    pub mirrors: BTreeMap<String, Mirror>,
    /// Seconds a pull may go without receiving a byte before it fails.
    pub pull_progress_timeout_secs: u64,
    /// A layer may decompress to at most this many times its compressed size (past 16 MiB);
    /// 0: no ratio limit.
    pub max_layer_expansion_ratio: u64,
    /// A layer may decompress to at most this many bytes.
    pub max_layer_uncompressed_bytes: u64,
    /// Images reported `pinned` (kubelet's image garbage collection never removes them).
    pub pinned_images: Vec<String>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            mirrors: BTreeMap::new(),
            pull_progress_timeout_secs: 60,
            max_layer_expansion_ratio: 100,
            max_layer_uncompressed_bytes: DEFAULT_MAX_LAYER_UNCOMPRESSED_BYTES,
            pinned_images: vec![DEFAULT_PINNED_IMAGE.to_string()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    pub endpoints: Vec<String>,
    /// Whether the registry itself is tried after every mirror failed.
    #[serde(default = "yes")]
    pub fallback_to_origin: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

impl Default for Config {
    fn default() -> Self {
        let mut runtimes = BTreeMap::new();
        runtimes.insert(
            DEFAULT_RUNTIME.to_string(),
            RuntimeHandler {
                path: PathBuf::from("runc"),
                hide_unified_cgroup: None,
            },
        );
        Config {
            root: PathBuf::from("/var/lib/berth"),
            state: PathBuf::from("/run/berth"),
            socket: PathBuf::from("/run/berth/berthd.sock"),
            log_level: LogLevel::Info,
            log_format: LogFormat::Text,
            cgroup_driver: CgroupDriver::Cgroupfs,
            stream_address: SocketAddr::from(([127, 0, 0, 1], 0)),
            default_runtime: DEFAULT_RUNTIME.to_string(),
            runtimes,
            network: NetworkConfig::default(),
            registry: RegistryConfig::default(),
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            install_default_conflist: true,
            default_subnet: DEFAULT_SUBNET.to_string(),
            default_bridge: DEFAULT_BRIDGE.to_string(),
            default_network_name: "berth".to_string(),
        }
    }
}

/// The default configuration file, with a comment on every key.
pub const DEFAULT_CONFIG_TOML: &str = r#"# berthd configuration (TOML). Every key has a command-line flag of the same name
# (`log_level` is `--log-level`); a flag overrides the file.

# Persistent data: metadata database, content store, snapshots.
root = "/var/lib/berth"

# Runtime state that does not survive a reboot: shim sockets, bundles, netns files.
state = "/run/berth"

# The CRI socket kubelet and crictl connect to (created with mode 0660).
socket = "/run/berth/berthd.sock"

# trace, debug, info, warn or error.
log_level = "info"

# text or json.
log_format = "text"

# cgroupfs or systemd; must match kubelet's cgroupDriver.
cgroup_driver = "cgroupfs"

# Address of the streaming server for exec, attach and port-forward; port 0 picks a free port.
stream_address = "127.0.0.1:0"

# The runtime handler used when a pod's RuntimeClass names none.
default_runtime = "runc"

# OCI runtime handlers, by the name a RuntimeClass `handler` uses (flag: --runtime NAME=PATH).
# `path` is an absolute path or a name looked up in PATH; berthd refuses to start when a
# configured runtime binary is missing. Handlers defined in the file replace this default set.
[runtimes.runc]
path = "runc"

# A second handler, for example:
# [runtimes.crun]
# path = "/usr/bin/crun"
# On a hybrid cgroup host (v1 controllers plus cgroup2 at /sys/fs/cgroup/unified), run the
# runtime in a mount namespace without that cgroup2 mount, so it manages v1 only. Unset: on
# for crun (it refuses hybrid hosts whose cgroup2 hierarchy holds a controller), else off.
# hide_unified_cgroup = true

[network]
# Where the CNI network configuration is read from: the first .conflist, .conf or .json file
# in lexical order.
cni_conf_dir = "/etc/cni/net.d"

# Where CNI plugin binaries are searched, in order (flag: --cni-bin-dir, repeatable).
# berth-bridge is also found next to berthd.
cni_bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]

# When cni_conf_dir holds no network config at start, write 99-berth.conflist there: one
# berth-bridge network (masquerade, host ports) on default_bridge with default_subnet.
install_default_conflist = true

# The default network's IPv4 subnet; the bridge gets its first address. 10.87.0.0/16 stays
# clear of containerd's and Podman's 10.88.0.0/16, CRI-O's 10.85.0.0/16, Podman's pools from
# 10.89.0.0/16 and Kubernetes' service range 10.96.0.0/12.
default_subnet = "10.87.0.0/16"

# The default network's bridge (1 to 15 characters).
default_bridge = "berth0"

# The default network's CNI name: berth-bridge keeps its leases in <root>/cni/<name> and its
# NAT rules in the nftables table berth-<name>.
default_network_name = "berth"

[registry]
# Registries reached over plain http, as host or host:port (flag: --insecure-registry,
# repeatable). A registry on this machine (localhost, 127.0.0.0/8, ::1) needs no entry: it is
# asked over https first, then over plain http. Every other registry is reached over https.
insecure = []

# A pull that receives no byte for this many seconds fails instead of hanging
# (flag: --pull-progress-timeout-secs).
pull_progress_timeout_secs = 60

# A layer is an untrusted archive: one that decompresses to more than this many times its
# compressed size is refused as a decompression bomb, and nothing of it is kept
# (flag: --max-layer-expansion-ratio; 0 turns the ratio check off). The ratio applies past
# 16 MiB only, since tiny layers compress extremely well. Ordinary layers expand 2 to 10 times;
# gzip cannot exceed about 1030, zstd can reach millions.
max_layer_expansion_ratio = 100

# No layer may decompress to more than this many bytes, whatever its compressed size
# (flag: --max-layer-uncompressed-bytes; 128 GiB). Manifests, indexes and configs are limited
# to 4 MiB each, images to 500 layers (what overlayfs stacks), tar entries to 1,000,000 per
# layer and entry paths to 4096 bytes.
max_layer_uncompressed_bytes = 137438953472

# Images reported as pinned, so that kubelet's image garbage collection keeps them; by name
# and tag or name and digest (flag: --pinned-image, repeatable, replaces the list). berth
# needs no pause image itself; kubelet's default sandbox image is pinned as containerd pins its
# sandbox image.
pinned_images = ["registry.k8s.io/pause:3.10"]

# Mirrors per registry host, tried in order before the registry itself
# (flag: --registry-mirror HOST=URL, repeatable). For example:
# [registry.mirrors."registry.k8s.io"]
# endpoints = ["http://127.0.0.1:5000"]
# fallback_to_origin = true
"#;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: line {line}, key {key}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("invalid config {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid value {value:?} for {flag}: {message}")]
    Flag {
        flag: &'static str,
        value: String,
        message: String,
    },
    #[error("invalid config: {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    /// Loads the file at `path`, or the embedded defaults when `path` is `None` and the default
    /// file does not exist.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            match e.span() {
                Some(span) => {
                    let (line, key) = locate(text, span.start);
                    ConfigError::Parse {
                        path: path.to_path_buf(),
                        line,
                        key,
                        message,
                    }
                }
                None => ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message,
                },
            }
        })
    }

    /// Checks what serde cannot: references between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.runtimes.contains_key(&self.default_runtime) {
            return Err(ConfigError::Invalid {
                key: "default_runtime",
                message: format!(
                    "{:?} is not a configured runtime (configured: {})",
                    self.default_runtime,
                    self.runtimes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        self.default_network(Path::new(""))
            .validate()
            .map_err(|e| {
                use berth_netplugin::network::DefaultNetworkError as E;
                let key = match e {
                    E::Bridge(_) => "network.default_bridge",
                    E::Name(_) => "network.default_network_name",
                    _ => "network.default_subnet",
                };
                ConfigError::Invalid {
                    key,
                    message: e.to_string(),
                }
            })?;
        if self.registry.pull_progress_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "registry.pull_progress_timeout_secs",
                message: "must be at least 1".to_string(),
            });
        }
        if self.registry.max_layer_uncompressed_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "registry.max_layer_uncompressed_bytes",
                message: "must be at least 1".to_string(),
            });
        }
        for image in &self.registry.pinned_images {
            crate::images::reference::ImageRef::parse(image).map_err(|e| ConfigError::Invalid {
                key: "registry.pinned_images",
                message: e.to_string(),
            })?;
        }
        for (host, mirror) in &self.registry.mirrors {
            if mirror.endpoints.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "registry.mirrors",
                    message: format!("mirror for {host} has no endpoints"),
                });
            }
            for endpoint in &mirror.endpoints {
                check_endpoint(endpoint).map_err(|message| ConfigError::Invalid {
                    key: "registry.mirrors",
                    message: format!("endpoint {endpoint:?} for {host}: {message}"),
                })?;
            }
        }
        Ok(())
    }

    /// The network berthd installs when the CNI conf dir is empty; berth-bridge keeps its
    /// leases in `<root>/cni/<name>`.
    pub fn default_network(&self, root: &Path) -> berth_netplugin::network::DefaultNetwork {
        berth_netplugin::network::DefaultNetwork {
            name: self.network.default_network_name.clone(),
            bridge: self.network.default_bridge.clone(),
            subnet: self.network.default_subnet.clone(),
            data_dir: root.join("cni"),
        }
    }

    /// Adds a runtime handler from a `NAME=PATH` flag value, replacing one of the same name.
    pub fn add_runtime_flag(&mut self, value: &str) -> Result<(), ConfigError> {
        let (name, path) = split_pair("--runtime", value, "NAME=PATH")?;
        self.runtimes.insert(
            name.to_string(),
            RuntimeHandler {
                path: PathBuf::from(path),
                hide_unified_cgroup: None,
            },
        );
        Ok(())
    }

    /// Appends a mirror endpoint from a `HOST=URL` flag value.
    pub fn add_mirror_flag(&mut self, value: &str) -> Result<(), ConfigError> {
        let (host, url) = split_pair("--registry-mirror", value, "HOST=URL")?;
        check_endpoint(url).map_err(|message| ConfigError::Flag {
            flag: "--registry-mirror",
            value: value.to_string(),
            message,
        })?;
        self.registry
            .mirrors
            .entry(host.to_string())
            .or_insert_with(|| Mirror {
                endpoints: Vec::new(),
                fallback_to_origin: true,
            })
            .endpoints
            .push(url.to_string());
        Ok(())
    }
}

fn split_pair<'a>(
    flag: &'static str,
    value: &'a str,
    form: &str,
) -> Result<(&'a str, &'a str), ConfigError> {
    match value.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k, v)),
        _ => Err(ConfigError::Flag {
            flag,
            value: value.to_string(),
            message: format!("expected {form}"),
        }),
    }
}

fn check_endpoint(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| "must start with http:// or https://".to_string())?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host".to_string());
    }
    Ok(())
}

/// The 1-based line of byte `offset` in `text`, and the key (or table header) written there.
fn locate(text: &str, offset: usize) -> (usize, String) {
    let offset = offset.min(text.len());
    let line = text[..offset].matches('\n').count() + 1;
    let content = text.lines().nth(line - 1).unwrap_or("").trim();
    let key = match content.split_once('=') {
        Some((k, _)) => k.trim(),
        None => content,
    };
    (line, key.trim_matches(|c| c == '[' || c == ']').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_parses_to_default_config() {
        let parsed = Config::parse(Path::new("default"), DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(
            Config::parse(Path::new("e"), "").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "root = \"/x\"\n\nrooot = \"/y\"\n";
        let err = Config::parse(Path::new("/etc/b.toml"), text).unwrap_err();
        match &err {
            ConfigError::Parse { line, key, .. } => {
                assert_eq!(*line, 3);
                assert_eq!(key, "rooot");
            }
            other => panic!("unexpected error {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("/etc/b.toml") && msg.contains("line 3"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "error must be one line: {msg}");
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let text = "[network]\ncni_conf_dir = \"/a\"\n\nlog_level = \"loud\"\n";
        // log_level under [network] is an unknown key there.
        let err = Config::parse(Path::new("c"), text).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 4, .. }), "{err}");

        let text = "log_level = \"loud\"\n";
        let err = Config::parse(Path::new("c"), text).unwrap_err();
        match err {
            ConfigError::Parse {
                line, key, message, ..
            } => {
                assert_eq!((line, key.as_str()), (1, "log_level"));
                assert!(message.contains("loud"), "{message}");
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn wrong_type_names_key() {
        let err = Config::parse(Path::new("c"), "stream_address = 12\n").unwrap_err();
        assert!(
            matches!(&err, ConfigError::Parse { key, .. } if key == "stream_address"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_is_reported() {
        let err = Config::parse(Path::new("c"), "root = \n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[test]
    fn mirrors_and_runtimes_parse() {
        let text = r#"
default_runtime = "crun"
[runtimes.crun]
path = "/usr/bin/crun"
[registry]
insecure = ["127.0.0.1:5000"]
[registry.mirrors."registry.k8s.io"]
endpoints = ["http://127.0.0.1:5000"]
"#;
        let c = Config::parse(Path::new("c"), text).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.runtimes.keys().collect::<Vec<_>>(),
            vec!["crun"],
            "runtimes in the file replace the default set"
        );
        let m = &c.registry.mirrors["registry.k8s.io"];
        assert!(m.fallback_to_origin);
        assert_eq!(m.endpoints, vec!["http://127.0.0.1:5000".to_string()]);
    }

    #[test]
    fn default_runtime_must_be_configured() {
        let c = Config::parse(Path::new("c"), "default_runtime = \"kata\"\n").unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("kata"), "{err}");
    }

    #[test]
    fn flags_add_runtimes_and_mirrors() {
        let mut c = Config::default();
        c.add_runtime_flag("crun=/usr/bin/crun").unwrap();
        c.add_mirror_flag("gcr.io=http://127.0.0.1:1").unwrap();
        c.add_mirror_flag("gcr.io=https://m.example").unwrap();
        assert_eq!(c.runtimes["crun"].path, PathBuf::from("/usr/bin/crun"));
        assert_eq!(c.registry.mirrors["gcr.io"].endpoints.len(), 2);
        assert!(c.add_runtime_flag("crun").is_err());
        assert!(c.add_mirror_flag("gcr.io=ftp://x").is_err());
        assert!(c.add_mirror_flag("=http://x").is_err());
    }

    #[test]
    fn default_network_keys_parse_and_are_checked() {
        let c = Config::parse(
            Path::new("c"),
            "[network]\ninstall_default_conflist = false\ndefault_subnet = \"10.1.0.0/24\"\ndefault_bridge = \"pods0\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(!c.network.install_default_conflist);
        let net = c.default_network(Path::new("/var/lib/berth"));
        assert_eq!(
            (net.subnet.as_str(), net.bridge.as_str()),
            ("10.1.0.0/24", "pods0")
        );
        assert_eq!(net.data_dir, PathBuf::from("/var/lib/berth/cni"));

        let c = Config::parse(
            Path::new("c"),
            "[network]\ndefault_subnet = \"10.1.0.1/16\"\n",
        )
        .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("network.default_subnet") && err.contains("10.1.0.1/16"),
            "{err}"
        );
        let c = Config::parse(Path::new("c"), "[network]\ndefault_bridge = \"\"\n").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn layer_limits_parse_and_the_cap_must_be_positive() {
        let c = Config::parse(
            Path::new("c"),
            "[registry]\nmax_layer_expansion_ratio = 0\nmax_layer_uncompressed_bytes = 1000\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            (
                c.registry.max_layer_expansion_ratio,
                c.registry.max_layer_uncompressed_bytes
            ),
            (0, 1000)
        );
        let c = Config::parse(
            Path::new("c"),
            "[registry]\nmax_layer_uncompressed_bytes = 0\n",
        )
        .unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("registry.max_layer_uncompressed_bytes"),
            "{err}"
        );
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/berth.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }
}
