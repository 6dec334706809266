//! The pod network as berthd sees it: the current configuration of a CNI conf dir, whether it
//! is ready, and the default configuration berthd installs when the dir holds none.
//!
//! The conf dir is read again on every question (a directory listing and one small file, a
//! few microseconds), so NetworkReady and RunPodSandbox always see the file that is there now:
//! no watcher thread, and no window in which a cached answer is stale. containerd watches the
//! dir with fsnotify to the same effect.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::bridge::ipam::IpNet;
use crate::cni::{Attachment, CniRunner, GcReport};
use crate::conf::{ConfError, NetworkConfigList, load_default};

/// The plugin type of berth-bridge, which is also its binary's name.
pub const BERTH_BRIDGE: &str = "berth-bridge";

/// The file name of the default configuration. It is only written into an empty dir, and it
/// sorts after the names network add-ons install (`05-cilium`, `10-calico`, `10-flannel`,
/// ...), so an operator's network installed later takes over without anyone deleting it.
pub const DEFAULT_CONFLIST: &str = "99-berth.conflist";

/// Why the network is not ready; the message names the file (or dir) and the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotReady(pub String);

/// A file and when it was last modified.
type FileStamp = (PathBuf, Option<SystemTime>);

/// The pod network of one CNI conf dir, run with one [`CniRunner`].
#[derive(Debug, Clone)]
pub struct Network {
    conf_dir: PathBuf,
    runner: CniRunner,
    /// The config file and plugin binaries (with their modification times) whose versions
    /// were last found compatible: VERSION runs again only when one of them changes.
    validated: Arc<Mutex<Option<Vec<FileStamp>>>>,
}

impl Network {
    pub fn new(conf_dir: PathBuf, runner: CniRunner) -> Network {
        Network {
            conf_dir,
            runner,
            validated: Arc::new(Mutex::new(None)),
        }
    }

    /// VERSION of every plugin of `list` unless these very files were checked already.
    fn validate(&self, list: &NetworkConfigList) -> Result<(), crate::cni::CniError> {
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut key: Vec<FileStamp> = vec![(list.source.clone(), mtime(&list.source))];
        for path in self.runner.plugin_paths(list)? {
            let t = mtime(&path);
            key.push((path, t));
        }
        let mut validated = self
            .validated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if validated.as_ref() == Some(&key) {
            return Ok(());
        }
        self.runner.validate(list)?;
        *validated = Some(key);
        Ok(())
    }

    pub fn runner(&self) -> &CniRunner {
        &self.runner
    }

    /// The current configuration, read from the dir now.
    pub fn config(&self) -> Result<NetworkConfigList, ConfError> {
        load_default(&self.conf_dir)
    }

    /// The current configuration if the network can take pods: the first file of the dir is
    /// valid, every plugin of its chain is installed, and (CNI 1.1 chains) every plugin answers
    /// STATUS. Otherwise the reason, naming the file and what is wrong with it.
    pub fn ready(&self) -> Result<NetworkConfigList, NotReady> {
        let list = self.config().map_err(|e| NotReady(e.to_string()))?;
        let in_file = |e: crate::cni::CniError| {
            NotReady(format!("network config {}: {e}", list.source.display()))
        };
        self.runner.find_plugins(&list).map_err(in_file)?;
        self.validate(&list).map_err(in_file)?;
        self.runner.status(&list).map_err(in_file)?;
        Ok(list)
    }

    /// CNI GC of the current network, keeping `valid`; `Ok(None)` when there is no usable
    /// configuration to run it with.
    pub fn gc(&self, valid: &[Attachment]) -> Result<Option<GcReport>, Vec<String>> {
        let Ok(list) = self.config() else {
            return Ok(None);
        };
        self.runner
            .gc(&list, valid)
            .map(Some)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }
}

/// The network berthd writes into an empty conf dir: one berth-bridge network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultNetwork {
    pub name: String,
    pub bridge: String,
    pub subnet: String,
    /// Where berth-bridge keeps the leases (`<data_dir>/<name>`).
    pub data_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DefaultNetworkError {
    #[error("default network subnet {subnet:?}: {message}")]
    Subnet { subnet: String, message: String },
    #[error("default network bridge {0:?} is not a valid interface name")]
    Bridge(String),
    #[error(
        "default network name {0:?} is not a valid network name (letters, digits, '-', '_', '.')"
    )]
    Name(String),
    #[error("writing the default network config {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Conf(ConfError),
}

impl DefaultNetwork {
    /// Checks the subnet (an IPv4 network with room for a gateway and pods) and bridge name.
    pub fn validate(&self) -> Result<(), DefaultNetworkError> {
        let bad = |message: String| DefaultNetworkError::Subnet {
            subnet: self.subnet.clone(),
            message,
        };
        let net = IpNet::parse(&self.subnet).map_err(bad)?;
        if net.is_ipv6() {
            return Err(bad("an IPv4 subnet is needed".to_string()));
        }
        if net.prefix > 28 {
            return Err(bad("too small: a /28 or larger is needed".to_string()));
        }
        let given = self
            .subnet
            .split('/')
            .next()
            .and_then(|a| a.parse::<std::net::IpAddr>().ok());
        if given != Some(net.addr) {
            return Err(bad(format!(
                "host bits are set (the network is {}/{})",
                net.addr, net.prefix
            )));
        }
        if !crate::bridge::config::valid_ifname(&self.bridge) {
            return Err(DefaultNetworkError::Bridge(self.bridge.clone()));
        }
        let name_ok = !self.name.is_empty()
            && !self.name.starts_with('.')
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(DefaultNetworkError::Name(self.name.clone()));
        }
        Ok(())
    }

    /// The conflist: berth-bridge with masquerade, hairpin and host ports (berthd brings the
    /// pod's `lo` up itself, so no loopback plugin is needed). CNI 1.1, so that berthd can ask
    /// it for STATUS and GC.
    pub fn conflist(&self) -> Value {
        let gateway = IpNet::parse(&self.subnet)
            .map(|n| n.first_host().to_string())
            .unwrap_or_default();
        json!({
            "cniVersion": "1.1.0",
            "name": self.name,
            "plugins": [{
                "type": BERTH_BRIDGE,
                "bridge": self.bridge,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "ranges": [[{"subnet": self.subnet, "gateway": gateway}]],
                    "dataDir": self.data_dir,
                },
                "capabilities": {"portMappings": true},
            }],
        })
    }

    /// Writes [`DefaultNetwork::conflist`] as `conf_dir/99-berth.conflist` when the dir holds
    /// no network configuration (a dir with an invalid one is left for its owner to fix).
    /// Written to a temporary name and renamed, so a reader never sees half a file. Returns
    /// the path written, if any.
    pub fn install_if_missing(
        &self,
        conf_dir: &Path,
    ) -> Result<Option<PathBuf>, DefaultNetworkError> {
        self.validate()?;
        match load_default(conf_dir) {
            Err(ConfError::NoConfig { .. }) => {}
            Ok(_) | Err(ConfError::Invalid { .. }) | Err(ConfError::Read { .. }) => {
                return Ok(None);
            }
            Err(e @ ConfError::ReadDir { .. }) => return Err(DefaultNetworkError::Conf(e)),
        }
        let path = conf_dir.join(DEFAULT_CONFLIST);
        let write_err = |source| DefaultNetworkError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(conf_dir).map_err(write_err)?;
        // A name the loader skips (no .conflist/.conf/.json extension) until the rename.
        let tmp = conf_dir.join(format!(".{DEFAULT_CONFLIST}.tmp"));
        let text = serde_json::to_string_pretty(&self.conflist()).unwrap_or_default() + "\n";
        std::fs::write(&tmp, text).map_err(write_err)?;
        std::fs::rename(&tmp, &path).map_err(write_err)?;
        Ok(Some(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn default_net(data: &Path) -> DefaultNetwork {
        DefaultNetwork {
            name: "berth".into(),
            bridge: "berth0".into(),
            subnet: "10.87.0.0/16".into(),
            data_dir: data.to_path_buf(),
        }
    }

    fn script(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn default_conflist_is_installed_only_into_a_dir_without_config() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        let net = default_net(Path::new("/var/lib/berth/cni"));
        let path = net.install_if_missing(&conf).unwrap().unwrap();
        assert!(path.ends_with(DEFAULT_CONFLIST));
        let list = load_default(&conf).unwrap();
        assert_eq!(list.plugin_types, vec![BERTH_BRIDGE]);
        assert_eq!(list.cni_version, "1.1.0");
        assert_eq!(
            list.plugins[0]["ipam"]["ranges"][0][0]["gateway"],
            "10.87.0.1"
        );
        let parsed = crate::bridge::config::BridgeConf::parse(
            serde_json::to_string(&{
                let mut p = list.plugins[0].clone();
                p["name"] = json!("berth");
                p["cniVersion"] = json!("1.1.0");
                p
            })
            .unwrap()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(parsed.lease_dir, Path::new("/var/lib/berth/cni/berth"));
        assert!(parsed.ip_masq && parsed.hairpin);
        let leftovers: Vec<_> = std::fs::read_dir(&conf).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left");

        // A network add-on installed later sorts first and takes over.
        std::fs::write(
            conf.join("10-addon.conflist"),
            r#"{"cniVersion":"1.0.0","name":"addon","plugins":[{"type":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(load_default(&conf).unwrap().name, "addon");
        std::fs::remove_file(conf.join("10-addon.conflist")).unwrap();

        // Present (even someone else's, even invalid): never overwritten.
        std::fs::write(&path, "{ broken").unwrap();
        assert_eq!(net.install_if_missing(&conf).unwrap(), None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ broken");
    }

    #[test]
    fn default_network_is_validated() {
        let base = default_net(Path::new("/d"));
        for (subnet, needle) in [
            ("10.87.0.0", "CIDR"),
            ("10.87.0.0/29", "too small"),
            ("10.87.0.1/16", "host bits"),
            ("fd00::/64", "fd00"),
        ] {
            let net = DefaultNetwork {
                subnet: subnet.into(),
                ..base.clone()
            };
            let err = net.validate().unwrap_err().to_string();
            assert!(err.contains(subnet), "{err}");
            assert!(err.contains(needle) || needle == "fd00", "{subnet}: {err}");
        }
        let net = DefaultNetwork {
            bridge: "a-name-longer-than-15".into(),
            ..base
        };
        assert!(
            net.validate()
                .unwrap_err()
                .to_string()
                .contains("a-name-longer")
        );
    }

    #[test]
    fn ready_names_the_file_and_the_missing_plugin_then_asks_status() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("net.d");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let network = Network::new(
            conf.clone(),
            CniRunner::new(vec![bin.clone()], dir.path().join("cache")),
        );
        let err = network.ready().unwrap_err().0;
        assert!(
            err.contains("no network config") && err.contains("net.d"),
            "{err}"
        );

        std::fs::write(conf.join("10-a.conflist"), "{").unwrap();
        let err = network.ready().unwrap_err().0;
        assert!(err.contains("10-a.conflist"), "{err}");

        std::fs::write(
            conf.join("10-a.conflist"),
            r#"{"cniVersion":"1.1.0","name":"a","plugins":[{"type":"fake"}]}"#,
        )
        .unwrap();
        let err = network.ready().unwrap_err().0;
        assert!(
            err.contains("10-a.conflist")
                && err.contains("\"fake\" not found")
                && err.contains("bin"),
            "{err}"
        );

        script(
            &bin,
            "fake",
            r#"cat >/dev/null; [ "$CNI_COMMAND" = STATUS ] || exit 0; echo '{"code":50,"msg":"bridge is down"}'; exit 1"#,
        );
        let err = network.ready().unwrap_err().0;
        assert!(
            err.contains("10-a.conflist")
                && err.contains("STATUS")
                && err.contains("bridge is down"),
            "{err}"
        );

        script(&bin, "fake", "cat >/dev/null; exit 0");
        assert_eq!(network.ready().unwrap().name, "a");

        // A chain older than CNI 1.1 is not asked for STATUS.
        script(
            &bin,
            "fake",
            r#"[ "$CNI_COMMAND" = STATUS ] && exit 1; exit 0"#,
        );
        std::fs::write(
            conf.join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"fake"}]}"#,
        )
        .unwrap();
        assert!(network.ready().is_ok());
    }
}
