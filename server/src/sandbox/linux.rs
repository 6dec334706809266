//! The real seams of the sandbox service: namespaces pinned with bind mounts, and the pod
//! network through the configured CNI plugin chain, and the network's start-up (default
//! network, garbage collection).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use berth_netplugin::bridge::link::loopback_up;
use berth_netplugin::cni::{Attachment, CniRunner, RuntimeConf, result_ips};
use berth_netplugin::network::{BERTH_BRIDGE, Network, NotReady};

use crate::config::Config;
use crate::sandbox::namespaces::{self, Namespace, NamespaceError};
use crate::sandbox::service::{NamespacePinner, NetworkAttachment, NetworkError, PodNetwork};

/// Namespaces pinned to files by [`namespaces::pin_new`].
pub struct PinnedNamespaces;

impl NamespacePinner for PinnedNamespaces {
    fn pin(
        &self,
        ns: Namespace,
        path: &Path,
        hostname: Option<&str>,
    ) -> Result<(), NamespaceError> {
        namespaces::pin_new(ns, path, hostname)
    }

    fn remove(&self, path: &Path) -> Result<(), NamespaceError> {
        namespaces::remove(path)
    }

    fn mount_shm(&self, path: &Path, size: u64) -> Result<(), NamespaceError> {
        namespaces::mount_shm(path, size)
    }

    fn remove_shm(&self, path: &Path) -> Result<(), NamespaceError> {
        namespaces::remove_shm(path)
    }
}

/// The pod network: the first CNI configuration in the conf dir, read on every call so that a
/// configuration installed or changed after start is used at once (as NetworkReady reports it).
pub struct CniNetwork {
    network: Network,
}

/// The interface name inside the pod, as kubelet expects it.
const POD_INTERFACE: &str = "eth0";

impl CniNetwork {
    pub fn new(conf_dir: PathBuf, bin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> CniNetwork {
        CniNetwork {
            network: Network::new(conf_dir, CniRunner::new(bin_dirs, cache_dir)),
        }
    }

    fn runtime_conf(pod: &NetworkAttachment) -> RuntimeConf {
        let mut rt = RuntimeConf {
            container_id: pod.pod_id.clone(),
            netns: pod.netns.clone(),
            if_name: POD_INTERFACE.to_string(),
            args: vec![
                ("K8S_POD_NAMESPACE".into(), pod.namespace.clone()),
                ("K8S_POD_NAME".into(), pod.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), pod.pod_id.clone()),
                ("K8S_POD_UID".into(), pod.uid.clone()),
            ],
            ..Default::default()
        };
        rt.capability_args.insert(
            "portMappings".into(),
            serde_json::Value::Array(pod.port_mappings.clone()),
        );
        if let Some(dns) = &pod.dns {
            rt.capability_args.insert("dns".into(), dns.clone());
        }
        if !pod.ip_ranges.is_empty() {
            let ranges: Vec<serde_json::Value> = pod
                .ip_ranges
                .iter()
                .map(|c| serde_json::json!([{ "subnet": c }]))
                .collect();
            rt.capability_args
                .insert("ipRanges".into(), serde_json::Value::Array(ranges));
        }
        if let Some(bandwidth) = &pod.bandwidth {
            rt.capability_args
                .insert("bandwidth".into(), bandwidth.clone());
        }
        rt
    }

    /// CNI GC at start: releases what the network holds for pods berthd no longer knows
    /// (`known_pods` are the ids of every pod with a network namespace of its own). Errors are
    /// logged: a failed GC leaves leftovers, never breaks a known pod.
    pub fn collect_garbage(&self, known_pods: &[String]) {
        let valid: Vec<Attachment> = known_pods
            .iter()
            .map(|id| Attachment {
                container_id: id.clone(),
                if_name: POD_INTERFACE.to_string(),
            })
            .collect();
        match self.network.gc(&valid) {
            Ok(Some(report)) => tracing::info!(
                kept = valid.len(),
                deleted = report.deleted.len(),
                plugins_collected = report.collected,
                "CNI garbage collection"
            ),
            Ok(None) => tracing::debug!("no CNI config: no garbage collection"),
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "CNI garbage collection");
                }
            }
        }
    }
}

impl PodNetwork for CniNetwork {
    fn ready(&self) -> Result<(), NetworkError> {
        self.network
            .ready()
            .map(|_| ())
            .map_err(|e| NetworkError::NotReady(not_ready_message(&e)))
    }

    fn setup(&self, pod: &NetworkAttachment) -> Result<Vec<IpAddr>, NetworkError> {
        let list = self
            .network
            .config()
            .map_err(|e| NetworkError::NotReady(format!("network plugin is not ready: {e}")))?;
        // Whatever the chain: a pod always has a working loopback.
        loopback_up(&pod.netns).map_err(|e| NetworkError::Plugin(e.to_string()))?;
        let result = self
            .network
            .runner()
            .add(&list, &Self::runtime_conf(pod))
            .map_err(|e| NetworkError::Plugin(e.to_string()))?;
        Ok(result_ips(&result))
    }

    fn teardown(&self, pod: &NetworkAttachment) -> Result<(), NetworkError> {
        let rt = Self::runtime_conf(pod);
        // The chain ADD ran, from the result cache: the conf dir may hold another one by now.
        match self.network.runner().del_cached(&rt) {
            Ok(0) => {}
            Ok(_) => return Ok(()),
            Err(e) => return Err(NetworkError::Plugin(e.to_string())),
        }
        let list = match self.network.config() {
            Ok(list) => list,
            Err(e) => {
                // Nothing to run DEL with; the attachment (if any) cannot be released by us.
                tracing::warn!(pod.id = %pod.pod_id, error = %e, "no CNI config for DEL");
                return Ok(());
            }
        };
        self.network
            .runner()
            .del(&list, &rt)
            .map_err(|e| NetworkError::Plugin(e.to_string()))
    }
}

/// NetworkReady's message, also RunPodSandbox's reason while the network is not ready.
pub fn not_ready_message(e: &NotReady) -> String {
    format!("network plugin is not ready: {e}")
}

/// Network set-up at start, before anything reads the config: berth-bridge next to berthd
/// (where a build or package puts it) joins the CNI bin dirs when they lack it, and the default
/// berth-bridge network is written into an empty conf dir (when configured, and berth-bridge
/// was found: a network whose plugin is missing would only turn NetworkReady into an error).
pub fn prepare_network(config: &mut Config) {
    let in_bin_dirs = |c: &Config| {
        c.network
            .cni_bin_dirs
            .iter()
            .any(|d| d.join(BERTH_BRIDGE).is_file())
    };
    if !in_bin_dirs(config) {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
            .filter(|d| d.join(BERTH_BRIDGE).is_file());
        if let Some(dir) = beside {
            tracing::info!(dir = %dir.display(), "{BERTH_BRIDGE} found next to berthd; added to the CNI bin dirs");
            config.network.cni_bin_dirs.push(dir);
        }
    }
    if !config.network.install_default_conflist {
        return;
    }
    if !in_bin_dirs(config) {
        tracing::warn!(
            bin_dirs = ?config.network.cni_bin_dirs,
            "{BERTH_BRIDGE} not found next to berthd nor in the CNI bin dirs; no default network installed"
        );
        return;
    }
    let default = config.default_network(&config.root);
    match default.install_if_missing(&config.network.cni_conf_dir) {
        Ok(Some(path)) => tracing::info!(
            path = %path.display(),
            subnet = %default.subnet,
            bridge = %default.bridge,
            "installed the default pod network"
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot install the default pod network"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_conf_carries_the_pods_args_and_capabilities() {
        let pod = NetworkAttachment {
            pod_id: "p1".into(),
            netns: "/run/berth/sandboxes/p1/ns/net".into(),
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            port_mappings: vec![serde_json::json!({"hostPort": 8080, "containerPort": 80})],
            dns: None,
            bandwidth: Some(serde_json::json!({"ingressRate": 1000})),
            ip_ranges: vec!["10.244.1.0/24".into()],
        };
        let rt = CniNetwork::runtime_conf(&pod);
        assert_eq!(rt.container_id, "p1");
        assert_eq!(rt.if_name, "eth0");
        assert!(rt.args.contains(&("K8S_POD_NAME".into(), "web".into())));
        let caps = &rt.capability_args;
        assert_eq!(caps["portMappings"][0]["hostPort"], 8080);
        assert_eq!(
            caps["ipRanges"],
            serde_json::json!([[{"subnet": "10.244.1.0/24"}]])
        );
        assert_eq!(caps["bandwidth"]["ingressRate"], 1000);
        assert!(!caps.contains_key("dns"));
    }
}
