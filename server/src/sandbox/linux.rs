//! The real seams of the sandbox service: namespaces pinned with bind mounts, and the pod
//! network through the configured CNI plugin chain.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use berth_netplugin::cni::{CniRunner, RuntimeConf, result_ips};
use berth_netplugin::conf::load_default;

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
}

/// The pod network: the first CNI configuration in `conf_dir`, read on every call so that a
/// configuration installed after start is used (as NetworkReady reports it).
pub struct CniNetwork {
    conf_dir: PathBuf,
    runner: CniRunner,
}

/// The interface name inside the pod, as kubelet expects it.
const POD_INTERFACE: &str = "eth0";

impl CniNetwork {
    pub fn new(conf_dir: PathBuf, bin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> CniNetwork {
        CniNetwork {
            conf_dir,
            runner: CniRunner::new(bin_dirs, cache_dir),
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
        rt
    }
}

impl PodNetwork for CniNetwork {
    fn ready(&self) -> Result<(), NetworkError> {
        load_default(&self.conf_dir)
            .map(|_| ())
            .map_err(|e| NetworkError::NotReady(format!("network plugin is not ready: {e}")))
    }

    fn setup(&self, pod: &NetworkAttachment) -> Result<Vec<IpAddr>, NetworkError> {
        let list = load_default(&self.conf_dir)
            .map_err(|e| NetworkError::NotReady(format!("network plugin is not ready: {e}")))?;
        let result = self
            .runner
            .add(&list, &Self::runtime_conf(pod))
            .map_err(|e| NetworkError::Plugin(e.to_string()))?;
        Ok(result_ips(&result))
    }

    fn teardown(&self, pod: &NetworkAttachment) -> Result<(), NetworkError> {
        let list = match load_default(&self.conf_dir) {
            Ok(list) => list,
            Err(e) => {
                // Nothing to run DEL with; the attachment (if any) cannot be released by us.
                tracing::warn!(pod.id = %pod.pod_id, error = %e, "no CNI config for DEL");
                return Ok(());
            }
        };
        self.runner
            .del(&list, &Self::runtime_conf(pod))
            .map_err(|e| NetworkError::Plugin(e.to_string()))
    }
}
