//! Version, Status and RuntimeConfig: what the runtime is and whether it is ready.

use std::collections::HashMap;

use berth_proto::cri::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeCondition, RuntimeConfigResponse,
    RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus, StatusResponse, VersionResponse,
};

use berth_netplugin::cni::CniRunner;
use berth_netplugin::network::Network;

use super::Cri;
use crate::config;
use crate::sandbox::linux::not_ready_message;

/// The CRI API version berth speaks.
const RUNTIME_API_VERSION: &str = "v1";
/// The kubelet runtime API version that `Version` reports, as containerd and CRI-O do.
const KUBE_RUNTIME_API_VERSION: &str = "0.1.0";

const RUNTIME_READY: &str = "RuntimeReady";
const NETWORK_READY: &str = "NetworkReady";

impl Cri {
    pub(super) fn version(&self) -> VersionResponse {
        VersionResponse {
            version: KUBE_RUNTIME_API_VERSION.to_string(),
            runtime_name: "berth".to_string(),
            runtime_version: env!("CARGO_PKG_VERSION").to_string(),
            runtime_api_version: RUNTIME_API_VERSION.to_string(),
        }
    }

    pub(super) fn status(&self, verbose: bool) -> StatusResponse {
        let runtime = self.runtime_condition();
        // The same check RunPodSandbox makes: the current first config, its plugins
        // installed, and their STATUS (CNI 1.1).
        let network = Network::new(
            self.config.network.cni_conf_dir.clone(),
            CniRunner::new(
                self.config.network.cni_bin_dirs.clone(),
                self.config.state.join("cni"),
            ),
        )
        .ready();
        let network_condition = match &network {
            Ok(_) => ready(NETWORK_READY),
            Err(e) => not_ready(NETWORK_READY, "NetworkPluginNotReady", not_ready_message(e)),
        };
        let mut info = HashMap::new();
        if verbose {
            let network_info = match &network {
                Ok(list) => serde_json::json!({
                    "name": list.name,
                    "cniVersion": list.cni_version,
                    "plugins": list.plugin_types,
                    "source": list.source,
                }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            let load_status = match &network {
                Ok(_) => "OK".to_string(),
                Err(e) => e.to_string(),
            };
            info.insert("config".to_string(), to_json(&*self.config));
            info.insert("node".to_string(), to_json(&*self.node));
            info.insert("network".to_string(), network_info.to_string());
            // Same key as containerd, which scripts around `crictl info` look for.
            info.insert("lastCNILoadStatus".to_string(), to_json(&load_status));
        }
        StatusResponse {
            status: Some(RuntimeStatus {
                conditions: vec![runtime, network_condition],
            }),
            info,
            runtime_handlers: self.runtime_handlers(),
            // Both policies are applied and ContainerStatus reports the process's user.
            features: Some(berth_proto::cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        }
    }

    /// Every configured handler, plus the default one again under the empty name, which is
    /// how kubelet asks about pods without a RuntimeClass.
    fn runtime_handlers(&self) -> Vec<RuntimeHandler> {
        let handler = |name: &str, bin: &crate::node::RuntimeBinary| RuntimeHandler {
            name: name.to_string(),
            features: Some(RuntimeHandlerFeatures {
                recursive_read_only_mounts: bin.features.recursive_read_only_mounts,
                // berth gives pods no user namespace yet, whatever the runtime could do: so
                // kubelet refuses `hostUsers: false` pods at admission instead of retrying
                // CreateContainer in a loop.
                user_namespaces: false,
            }),
        };
        let default = self
            .node
            .runtimes
            .get(&self.config.default_runtime)
            .map(|bin| handler("", bin));
        default
            .into_iter()
            .chain(self.node.runtimes.iter().map(|(n, bin)| handler(n, bin)))
            .collect()
    }

    pub(super) fn runtime_config(&self) -> RuntimeConfigResponse {
        let driver = match self.config.cgroup_driver {
            config::CgroupDriver::Cgroupfs => CgroupDriver::Cgroupfs,
            config::CgroupDriver::Systemd => CgroupDriver::Systemd,
        };
        RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }
    }

    /// Ready while the default handler's binary, found at start, is still there.
    fn runtime_condition(&self) -> RuntimeCondition {
        let name = &self.config.default_runtime;
        match self.node.runtimes.get(name) {
            Some(bin) if bin.path.is_file() => ready(RUNTIME_READY),
            Some(bin) => not_ready(
                RUNTIME_READY,
                "RuntimeBinaryMissing",
                format!("OCI runtime {name:?} binary {} is gone", bin.path.display()),
            ),
            None => not_ready(
                RUNTIME_READY,
                "RuntimeNotConfigured",
                format!("default runtime {name:?} is not configured"),
            ),
        }
    }
}

fn ready(kind: &str) -> RuntimeCondition {
    RuntimeCondition {
        r#type: kind.to_string(),
        status: true,
        reason: String::new(),
        message: String::new(),
    }
}

fn not_ready(kind: &str, reason: &str, message: String) -> RuntimeCondition {
    RuntimeCondition {
        r#type: kind.to_string(),
        status: false,
        reason: reason.to_string(),
        message,
    }
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::node::{CgroupVersion, NodeInfo, RuntimeBinary, RuntimeFeatures};

    fn cri(conf_dir: PathBuf, runtime_path: PathBuf) -> Cri {
        let mut config = Config::default();
        config.network.cni_bin_dirs = vec![conf_dir.with_file_name("bin")];
        config.network.cni_conf_dir = conf_dir;
        let mut runtimes = BTreeMap::new();
        runtimes.insert(
            "runc".to_string(),
            RuntimeBinary {
                path: runtime_path,
                features: RuntimeFeatures {
                    recursive_read_only_mounts: true,
                    // What the runtime could do; berth still reports false.
                    user_namespaces: true,
                },
                hide_unified_cgroup: false,
            },
        );
        Cri {
            config: Arc::new(config),
            node: Arc::new(NodeInfo {
                cgroup_version: CgroupVersion::V1,
                oom_score_adj_floor: 0,
                runtimes,
                apparmor: crate::apparmor::AppArmor::Disabled,
            }),
        }
    }

    fn condition<'a>(s: &'a StatusResponse, kind: &str) -> &'a RuntimeCondition {
        // Only the tests look conditions up; the order is RuntimeReady, NetworkReady.
        s.status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.r#type == kind)
            .unwrap()
    }

    #[test]
    fn version_names_berth() {
        let dir = tempfile::tempdir().unwrap();
        let v = cri(dir.path().into(), "/bin/sh".into()).version();
        assert_eq!(v.runtime_name, "berth");
        assert_eq!(v.runtime_api_version, "v1");
        assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn network_not_ready_without_config_and_ready_with_one() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("runc");
        std::fs::write(&runtime, "").unwrap();
        let c = cri(dir.path().join("net.d"), runtime.clone());

        let s = c.status(true);
        assert!(condition(&s, RUNTIME_READY).status);
        let net = condition(&s, NETWORK_READY);
        assert!(!net.status);
        assert_eq!(net.reason, "NetworkPluginNotReady");
        assert!(net.message.contains("net.d"), "{}", net.message);

        std::fs::create_dir(dir.path().join("net.d")).unwrap();
        std::fs::write(dir.path().join("net.d/10-x.conflist"), "{").unwrap();
        let net = condition(&c.status(false), NETWORK_READY).clone();
        assert!(
            !net.status && net.message.contains("10-x.conflist"),
            "{}",
            net.message
        );

        // A chain of CNI 1.1: its plugin must be installed and answer STATUS.
        std::fs::write(
            dir.path().join("net.d/10-x.conflist"),
            r#"{"cniVersion":"1.1.0","name":"x","plugins":[{"type":"fake"}]}"#,
        )
        .unwrap();
        let net = condition(&c.status(false), NETWORK_READY).clone();
        assert!(
            !net.status && net.message.contains("\"fake\" not found"),
            "{}",
            net.message
        );
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let plugin = bin.join("fake");
        std::fs::write(
            &plugin,
            "#!/bin/sh\necho '{\"code\":50,\"msg\":\"not yet\"}'\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let net = condition(&c.status(false), NETWORK_READY).clone();
        assert!(
            !net.status && net.message.contains("not yet"),
            "{}",
            net.message
        );
        std::fs::write(&plugin, "#!/bin/sh\nexit 0\n").unwrap();

        let s = c.status(true);
        assert!(condition(&s, NETWORK_READY).status);
        let info: serde_json::Value = serde_json::from_str(&s.info["network"]).unwrap();
        assert_eq!(info["name"], "x");
        assert_eq!(s.info["lastCNILoadStatus"], "\"OK\"");

        std::fs::remove_file(&runtime).unwrap();
        let s = c.status(false);
        let rt = condition(&s, RUNTIME_READY);
        assert!(!rt.status);
        assert!(rt.message.contains("runc"), "{}", rt.message);
        assert!(s.info.is_empty(), "info only when verbose");
    }

    #[test]
    fn verbose_info_values_are_json() {
        let dir = tempfile::tempdir().unwrap();
        let s = cri(dir.path().into(), "/bin/sh".into()).status(true);
        for (key, value) in &s.info {
            serde_json::from_str::<serde_json::Value>(value)
                .unwrap_or_else(|e| panic!("info[{key}] is not JSON: {e}: {value}"));
        }
        let node: serde_json::Value = serde_json::from_str(&s.info["node"]).unwrap();
        assert_eq!(node["cgroupVersion"], "v1");
        let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
        assert_eq!(config["default_runtime"], "runc");
    }

    #[test]
    fn status_lists_handlers_with_their_features_and_the_default_as_empty_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = cri(dir.path().into(), "/bin/sh".into()).status(false);
        let names: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, vec!["", "runc"]);
        for h in &s.runtime_handlers {
            let f = h.features.unwrap();
            assert!(f.recursive_read_only_mounts && !f.user_namespaces);
        }
        assert!(s.features.unwrap().supplemental_groups_policy);
    }

    #[test]
    fn runtime_config_reports_cgroup_driver() {
        let dir = tempfile::tempdir().unwrap();
        let r = cri(dir.path().into(), "/bin/sh".into()).runtime_config();
        assert_eq!(
            r.linux.unwrap().cgroup_driver,
            CgroupDriver::Cgroupfs as i32
        );
    }
}
