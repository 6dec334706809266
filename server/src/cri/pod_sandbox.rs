//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus and ListPodSandbox: the
//! sandbox service's results in CRI form. The service is synchronous, so each call runs on the
//! blocking pool.

use std::collections::HashMap;
use std::sync::Arc;

use berth_proto::cri::{
    LinuxPodSandboxStatus, ListPodSandboxRequest, ListPodSandboxResponse, Namespace, PodIp,
    PodSandbox, PodSandboxFilter, PodSandboxNetworkStatus, PodSandboxState, PodSandboxStatus,
    PodSandboxStatusRequest, PodSandboxStatusResponse, RemovePodSandboxRequest,
    RemovePodSandboxResponse, RunPodSandboxRequest, RunPodSandboxResponse, StopPodSandboxRequest,
    StopPodSandboxResponse,
};
use berth_store::SandboxState;
use tracing::Instrument;

use crate::containers::service::Containers;
use crate::error::Error;
use crate::sandbox::service::{Sandbox, SandboxError, Sandboxes};

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, Error> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| SandboxError::Task(e.to_string()))?
        .map_err(Error::from)
}

fn cri_state(state: SandboxState) -> PodSandboxState {
    match state {
        SandboxState::Ready => PodSandboxState::SandboxReady,
        _ => PodSandboxState::SandboxNotready,
    }
}

fn to_map(m: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(super) async fn run(
    sandboxes: Arc<Sandboxes>,
    req: RunPodSandboxRequest,
) -> Result<RunPodSandboxResponse, Error> {
    let config = req
        .config
        .ok_or_else(|| Error::InvalidArgument("pod sandbox config is required".into()))?;
    let span = tracing::info_span!("RunPodSandbox", pod.id = tracing::field::Empty);
    let handler = req.runtime_handler;
    async move {
        let id = blocking(move || sandboxes.run(config, &handler)).await?;
        tracing::Span::current().record("pod.id", id.as_str());
        Ok(RunPodSandboxResponse { pod_sandbox_id: id })
    }
    .instrument(span)
    .await
}

pub(super) async fn stop(
    sandboxes: Arc<Sandboxes>,
    containers: Arc<Containers>,
    req: StopPodSandboxRequest,
) -> Result<StopPodSandboxResponse, Error> {
    let id = req.pod_sandbox_id;
    let span = tracing::info_span!("StopPodSandbox", pod.id = %id);
    let pod = id.clone();
    tokio::task::spawn_blocking(move || containers.stop_pod(&pod, false))
        .instrument(span.clone())
        .await
        .map_err(|e| SandboxError::Task(e.to_string()))??;
    blocking(move || sandboxes.stop(&id))
        .instrument(span)
        .await?;
    Ok(StopPodSandboxResponse {})
}

pub(super) async fn remove(
    sandboxes: Arc<Sandboxes>,
    containers: Arc<Containers>,
    req: RemovePodSandboxRequest,
) -> Result<RemovePodSandboxResponse, Error> {
    let id = req.pod_sandbox_id;
    let span = tracing::info_span!("RemovePodSandbox", pod.id = %id);
    let pod = id.clone();
    tokio::task::spawn_blocking(move || containers.stop_pod(&pod, true))
        .instrument(span.clone())
        .await
        .map_err(|e| SandboxError::Task(e.to_string()))??;
    blocking(move || sandboxes.remove(&id))
        .instrument(span)
        .await?;
    Ok(RemovePodSandboxResponse {})
}

pub(super) async fn status(
    sandboxes: Arc<Sandboxes>,
    req: PodSandboxStatusRequest,
) -> Result<PodSandboxStatusResponse, Error> {
    let id = req.pod_sandbox_id;
    let span = tracing::info_span!("PodSandboxStatus", pod.id = %id);
    let pod = blocking(move || sandboxes.status(&id))
        .instrument(span)
        .await?;
    let mut info = HashMap::new();
    if req.verbose {
        let verbose = serde_json::json!({
            "pid": pod.record.shim_pid,
            "netnsPath": pod.record.netns_path,
            "shimAddress": pod.record.shim_address,
            "runtimeHandler": pod.record.runtime_handler,
            "config": pod.config,
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    Ok(PodSandboxStatusResponse {
        status: Some(pod_status(&pod)),
        info,
        containers_statuses: Vec::new(),
        timestamp: 0,
    })
}

fn pod_status(pod: &Sandbox) -> PodSandboxStatus {
    let r = &pod.record;
    let mut ips = r.ips.iter();
    let network = PodSandboxNetworkStatus {
        ip: ips.next().cloned().unwrap_or_default(),
        additional_ips: ips.map(|ip| PodIp { ip: ip.clone() }).collect(),
    };
    let options = pod
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    PodSandboxStatus {
        id: r.id.clone(),
        metadata: pod.config.metadata.clone(),
        state: cri_state(pod.state()) as i32,
        created_at: r.created_at_ns,
        network: Some(network),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: Some(options),
            }),
        }),
        labels: to_map(&r.labels),
        annotations: to_map(&r.annotations),
        runtime_handler: r.runtime_handler.clone(),
    }
}

fn matches(pod: &Sandbox, filter: &PodSandboxFilter) -> bool {
    let r = &pod.record;
    (filter.id.is_empty() || r.id.starts_with(&filter.id))
        && filter
            .state
            .is_none_or(|s| s.state == cri_state(pod.state()) as i32)
        && filter
            .label_selector
            .iter()
            .all(|(k, v)| r.labels.get(k) == Some(v))
}

pub(super) async fn list(
    sandboxes: Arc<Sandboxes>,
    req: ListPodSandboxRequest,
) -> Result<ListPodSandboxResponse, Error> {
    let pods = blocking(move || sandboxes.list()).await?;
    let filter = req.filter.unwrap_or_default();
    let items = pods
        .iter()
        .filter(|p| matches(p, &filter))
        .map(|p| PodSandbox {
            id: p.record.id.clone(),
            metadata: p.config.metadata.clone(),
            state: cri_state(p.state()) as i32,
            created_at: p.record.created_at_ns,
            labels: to_map(&p.record.labels),
            annotations: to_map(&p.record.annotations),
            runtime_handler: p.record.runtime_handler.clone(),
        })
        .collect();
    Ok(ListPodSandboxResponse { items })
}

#[cfg(test)]
mod tests {
    use berth_proto::cri::{PodSandboxConfig, PodSandboxMetadata, PodSandboxStateValue};
    use berth_store::SandboxRecord;

    use super::*;

    fn pod(id: &str, state: SandboxState, labels: &[(&str, &str)]) -> Sandbox {
        let mut record = SandboxRecord {
            id: id.into(),
            ips: vec!["10.1.0.2".into(), "fd00::2".into()],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        record.set_state(state);
        Sandbox {
            record,
            config: PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "n".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn filter_by_id_prefix_state_and_labels() {
        let p = pod("abcdef", SandboxState::Ready, &[("app", "web"), ("x", "y")]);
        let mut f = PodSandboxFilter::default();
        assert!(matches(&p, &f));
        f.id = "abc".into();
        assert!(matches(&p, &f));
        f.id = "abd".into();
        assert!(!matches(&p, &f));
        f.id.clear();
        f.state = Some(PodSandboxStateValue {
            state: PodSandboxState::SandboxNotready as i32,
        });
        assert!(!matches(&p, &f));
        f.state = Some(PodSandboxStateValue {
            state: PodSandboxState::SandboxReady as i32,
        });
        assert!(matches(&p, &f));
        f.label_selector.insert("app".into(), "web".into());
        assert!(matches(&p, &f));
        f.label_selector.insert("app".into(), "db".into());
        assert!(!matches(&p, &f));
    }

    #[test]
    fn status_reports_primary_and_additional_ips() {
        let s = pod_status(&pod("a", SandboxState::NotReady, &[]));
        assert_eq!(s.state, PodSandboxState::SandboxNotready as i32);
        let net = s.network.unwrap();
        assert_eq!(net.ip, "10.1.0.2");
        assert_eq!(
            net.additional_ips,
            vec![PodIp {
                ip: "fd00::2".into()
            }]
        );
        assert_eq!(s.metadata.unwrap().name, "n");
        assert!(s.linux.unwrap().namespaces.unwrap().options.is_some());
    }
}
