//! berthd's command line: one flag per config key; a flag overrides the config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{CgroupDriver, Config, ConfigError, LogFormat, LogLevel};

#[derive(Debug, Parser)]
#[command(
    name = "berthd",
    version,
    about = "berth: a Kubernetes container runtime serving the CRI"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub flags: Flags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the default configuration file, with comments.
    Default,
    /// Print the effective configuration (file plus flags) as TOML.
    Show,
}

#[derive(Debug, Args)]
pub struct Flags {
    /// Config file [default: /etc/berth/berth.toml, embedded defaults when it does not exist].
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Persistent data directory [default: /var/lib/berth].
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// Runtime state directory [default: /run/berth].
    #[arg(long, global = true)]
    pub state: Option<PathBuf>,
    /// CRI socket path [default: /run/berth/berthd.sock].
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    #[arg(long, value_enum, global = true)]
    pub log_level: Option<LogLevel>,
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    #[arg(long, value_enum, global = true)]
    pub cgroup_driver: Option<CgroupDriver>,
    /// Streaming server address (exec, attach, port-forward) [default: 127.0.0.1:0].
    #[arg(long, global = true)]
    pub stream_address: Option<SocketAddr>,
    /// Runtime handler for pods that name none [default: runc].
    #[arg(long, global = true)]
    pub default_runtime: Option<String>,
    /// Add or replace an OCI runtime handler (repeatable).
    #[arg(long = "runtime", value_name = "NAME=PATH", global = true)]
    pub runtimes: Vec<String>,
    /// CNI network configuration directory [default: /etc/cni/net.d].
    #[arg(long, global = true)]
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directory (repeatable; replaces the configured list).
    #[arg(long = "cni-bin-dir", global = true)]
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Write a berth-bridge network into an empty CNI conf dir at start [default: true].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, global = true)]
    pub install_default_conflist: Option<bool>,
    /// IPv4 subnet of that default network [default: 10.87.0.0/16].
    #[arg(long, value_name = "CIDR", global = true)]
    pub default_subnet: Option<String>,
    /// Bridge of that default network [default: berth0].
    #[arg(long, value_name = "NAME", global = true)]
    pub default_bridge: Option<String>,
    /// CNI name of that default network [default: berth].
    #[arg(long, value_name = "NAME", global = true)]
    pub default_network_name: Option<String>,
    /// Registry reached over plain http (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]", global = true)]
    pub insecure_registries: Vec<String>,
    /// Mirror for a registry host, tried before it (repeatable).
    #[arg(long = "registry-mirror", value_name = "HOST=URL", global = true)]
    pub registry_mirrors: Vec<String>,
    /// Seconds a pull may go without progress before it fails [default: 60].
    #[arg(long, value_name = "SECONDS", global = true)]
    pub pull_progress_timeout_secs: Option<u64>,
    /// Most times a layer may decompress past its compressed size; 0: no limit [default: 100].
    #[arg(long, value_name = "N", global = true)]
    pub max_layer_expansion_ratio: Option<u64>,
    /// Most bytes a layer may decompress to [default: 137438953472, 128 GiB].
    #[arg(long, value_name = "BYTES", global = true)]
    pub max_layer_uncompressed_bytes: Option<u64>,
    /// Image reported pinned (repeatable; replaces the configured list).
    #[arg(long = "pinned-image", value_name = "IMAGE", global = true)]
    pub pinned_images: Vec<String>,
}

impl Flags {
    /// The effective configuration: the file (or the defaults), then the flags.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut c = Config::load(self.config.as_deref())?;
        if let Some(v) = self.root {
            c.root = v;
        }
        if let Some(v) = self.state {
            c.state = v;
        }
        if let Some(v) = self.socket {
            c.socket = v;
        }
        if let Some(v) = self.log_level {
            c.log_level = v;
        }
        if let Some(v) = self.log_format {
            c.log_format = v;
        }
        if let Some(v) = self.cgroup_driver {
            c.cgroup_driver = v;
        }
        if let Some(v) = self.stream_address {
            c.stream_address = v;
        }
        if let Some(v) = self.default_runtime {
            c.default_runtime = v;
        }
        for r in &self.runtimes {
            c.add_runtime_flag(r)?;
        }
        if let Some(v) = self.cni_conf_dir {
            c.network.cni_conf_dir = v;
        }
        if !self.cni_bin_dirs.is_empty() {
            c.network.cni_bin_dirs = self.cni_bin_dirs;
        }
        if let Some(v) = self.install_default_conflist {
            c.network.install_default_conflist = v;
        }
        if let Some(v) = self.default_subnet {
            c.network.default_subnet = v;
        }
        if let Some(v) = self.default_bridge {
            c.network.default_bridge = v;
        }
        if let Some(v) = self.default_network_name {
            c.network.default_network_name = v;
        }
        c.registry.insecure.extend(self.insecure_registries);
        for m in &self.registry_mirrors {
            c.add_mirror_flag(m)?;
        }
        if let Some(v) = self.pull_progress_timeout_secs {
            c.registry.pull_progress_timeout_secs = v;
        }
        if let Some(v) = self.max_layer_expansion_ratio {
            c.registry.max_layer_expansion_ratio = v;
        }
        if let Some(v) = self.max_layer_uncompressed_bytes {
            c.registry.max_layer_uncompressed_bytes = v;
        }
        if !self.pinned_images.is_empty() {
            c.registry.pinned_images = self.pinned_images;
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("berthd").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        std::fs::write(&file, "root = \"/from/file\"\nlog_level = \"warn\"\n").unwrap();
        let cli = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--log-level",
            "debug",
            "--runtime",
            "crun=/usr/bin/crun",
            "--insecure-registry",
            "127.0.0.1:5000",
            "--registry-mirror",
            "registry.k8s.io=http://127.0.0.1:5000",
            "--cni-bin-dir",
            "/a",
            "--cni-bin-dir",
            "/b",
            "--install-default-conflist",
            "false",
            "--default-subnet",
            "10.3.0.0/24",
            "--default-bridge",
            "pods0",
        ]);
        let c = cli.flags.into_config().unwrap();
        assert_eq!(c.root, PathBuf::from("/from/file"));
        assert_eq!(c.log_level, LogLevel::Debug);
        assert!(c.runtimes.contains_key("crun") && c.runtimes.contains_key("runc"));
        assert_eq!(c.registry.insecure, vec!["127.0.0.1:5000".to_string()]);
        assert_eq!(
            c.network.cni_bin_dirs,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert!(!c.network.install_default_conflist);
        assert_eq!(c.network.default_subnet, "10.3.0.0/24");
        assert_eq!(c.network.default_bridge, "pods0");
        assert_eq!(
            c.registry.mirrors["registry.k8s.io"].endpoints,
            vec!["http://127.0.0.1:5000".to_string()]
        );
    }

    #[test]
    fn unknown_default_runtime_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        std::fs::write(&file, "").unwrap();
        let cli = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--default-runtime",
            "kata",
        ]);
        assert!(cli.flags.into_config().is_err());
    }

    #[test]
    fn invalid_default_subnet_flag_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        std::fs::write(&file, "").unwrap();
        let cli = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--default-subnet",
            "10.3.0.0",
        ]);
        let err = cli.flags.into_config().unwrap_err().to_string();
        assert!(err.contains("10.3.0.0"), "{err}");
    }

    #[test]
    fn config_default_subcommand_parses() {
        let cli = parse(&["config", "default"]);
        assert!(matches!(
            cli.command,
            Some(Command::Config {
                action: ConfigAction::Default
            })
        ));
    }
}
