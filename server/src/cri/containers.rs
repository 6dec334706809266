//! CreateContainer, StartContainer, StopContainer, RemoveContainer, ContainerStatus,
//! ListContainers, ExecSync, ReopenContainerLog and UpdateContainerResources: the container
//! service's results in CRI form. The service is synchronous, so each call runs on the blocking
//! pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::cri::{
    Container as CriContainer, ContainerFilter, ContainerResources, ContainerState as CriState,
    ContainerStatus, ContainerStatusRequest, ContainerStatusResponse, ContainerUser,
    CreateContainerRequest, CreateContainerResponse, ExecSyncRequest, ExecSyncResponse,
    LinuxContainerUser, ListContainersRequest, ListContainersResponse, RemoveContainerRequest,
    RemoveContainerResponse, ReopenContainerLogRequest, ReopenContainerLogResponse,
    StartContainerRequest, StartContainerResponse, StopContainerRequest, StopContainerResponse,
    UpdateContainerResourcesRequest, UpdateContainerResourcesResponse,
};
use berth_store::ContainerState;
use tracing::Instrument;

use crate::containers::service::{Container, ContainerError, Containers};
use crate::error::Error;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ContainerError> + Send + 'static,
) -> Result<T, Error> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| ContainerError::Join(e.to_string()))?
        .map_err(Error::from)
}

fn cri_state(state: ContainerState) -> CriState {
    match state {
        ContainerState::Creating | ContainerState::Created => CriState::ContainerCreated,
        ContainerState::Running => CriState::ContainerRunning,
        ContainerState::Exited => CriState::ContainerExited,
        ContainerState::Unknown | ContainerState::Removing => CriState::ContainerUnknown,
    }
}

fn to_map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(super) async fn create(
    containers: Arc<Containers>,
    req: CreateContainerRequest,
) -> Result<CreateContainerResponse, Error> {
    let config = req
        .config
        .ok_or_else(|| Error::InvalidArgument("container config is required".into()))?;
    let pod = req.pod_sandbox_id;
    let span =
        tracing::info_span!("CreateContainer", pod.id = %pod, container.id = tracing::field::Empty);
    async move {
        let id = blocking(move || containers.create(&pod, config)).await?;
        tracing::Span::current().record("container.id", id.as_str());
        Ok(CreateContainerResponse { container_id: id })
    }
    .instrument(span)
    .await
}

pub(super) async fn start(
    containers: Arc<Containers>,
    req: StartContainerRequest,
) -> Result<StartContainerResponse, Error> {
    let id = req.container_id;
    let span = tracing::info_span!("StartContainer", container.id = %id);
    blocking(move || containers.start(&id))
        .instrument(span)
        .await?;
    Ok(StartContainerResponse {})
}

pub(super) async fn stop(
    containers: Arc<Containers>,
    req: StopContainerRequest,
) -> Result<StopContainerResponse, Error> {
    let id = req.container_id;
    let timeout = Duration::from_secs(u64::try_from(req.timeout).unwrap_or(0));
    let span = tracing::info_span!("StopContainer", container.id = %id);
    blocking(move || containers.stop(&id, timeout))
        .instrument(span)
        .await?;
    Ok(StopContainerResponse {})
}

pub(super) async fn remove(
    containers: Arc<Containers>,
    req: RemoveContainerRequest,
) -> Result<RemoveContainerResponse, Error> {
    let id = req.container_id;
    let span = tracing::info_span!("RemoveContainer", container.id = %id);
    blocking(move || containers.remove(&id))
        .instrument(span)
        .await?;
    Ok(RemoveContainerResponse {})
}

pub(super) async fn status(
    containers: Arc<Containers>,
    req: ContainerStatusRequest,
) -> Result<ContainerStatusResponse, Error> {
    let id = req.container_id;
    let verbose = req.verbose;
    let span = tracing::info_span!("ContainerStatus", container.id = %id);
    let (c, info, user, resources) = blocking(move || {
        let c = containers.status(&id)?;
        let info = verbose.then(|| containers.runtime_info(&c));
        let user = containers.process_user(&c);
        let resources = containers.resources(&c.record)?;
        Ok((c, info, user, resources))
    })
    .instrument(span)
    .await?;
    let mut out = HashMap::new();
    if let Some((pid, bundle)) = info {
        let v = serde_json::json!({
            "sandboxID": c.record.sandbox_id,
            "pid": pid,
            "bundle": bundle,
            "snapshotKey": c.record.id,
            "snapshotter": "overlayfs",
            "config": c.config,
        });
        out.insert("info".to_string(), v.to_string());
    }
    let mut status = container_status(&c);
    status.user = user.map(|(uid, gid, groups)| ContainerUser {
        linux: Some(LinuxContainerUser {
            uid: i64::from(uid),
            gid: i64::from(gid),
            supplemental_groups: groups.into_iter().map(i64::from).collect(),
        }),
    });
    status.resources = resources.map(|linux| ContainerResources {
        linux: Some(linux),
        windows: None,
    });
    Ok(ContainerStatusResponse {
        status: Some(status),
        info: out,
    })
}

fn container_status(c: &Container) -> ContainerStatus {
    let r = &c.record;
    ContainerStatus {
        id: r.id.clone(),
        metadata: c.config.metadata.clone(),
        state: cri_state(r.state()) as i32,
        created_at: r.created_at_ns,
        started_at: r.started_at_ns,
        finished_at: r.finished_at_ns,
        exit_code: r.exit_code,
        image: c.config.image.clone(),
        image_ref: r.image_ref.clone(),
        image_id: r.image_ref.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: to_map(&r.labels),
        annotations: to_map(&r.annotations),
        mounts: c.config.mounts.clone(),
        log_path: r.log_path.clone(),
        ..Default::default()
    }
}

fn matches(c: &Container, filter: &ContainerFilter) -> bool {
    let r = &c.record;
    (filter.id.is_empty() || r.id.starts_with(&filter.id))
        && (filter.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&filter.pod_sandbox_id))
        && filter
            .state
            .is_none_or(|s| s.state == cri_state(r.state()) as i32)
        && filter
            .label_selector
            .iter()
            .all(|(k, v)| r.labels.get(k) == Some(v))
}

pub(super) async fn list(
    containers: Arc<Containers>,
    req: ListContainersRequest,
) -> Result<ListContainersResponse, Error> {
    let all = blocking(move || containers.list()).await?;
    let filter = req.filter.unwrap_or_default();
    let containers = all
        .iter()
        .filter(|c| matches(c, &filter))
        .map(|c| CriContainer {
            id: c.record.id.clone(),
            pod_sandbox_id: c.record.sandbox_id.clone(),
            metadata: c.config.metadata.clone(),
            image: c.config.image.clone(),
            image_ref: c.record.image_ref.clone(),
            image_id: c.record.image_ref.clone(),
            state: cri_state(c.record.state()) as i32,
            created_at: c.record.created_at_ns,
            labels: to_map(&c.record.labels),
            annotations: to_map(&c.record.annotations),
        })
        .collect();
    Ok(ListContainersResponse { containers })
}

pub(super) async fn exec_sync(
    containers: Arc<Containers>,
    req: ExecSyncRequest,
) -> Result<ExecSyncResponse, Error> {
    let id = req.container_id;
    let timeout = Duration::from_secs(u64::try_from(req.timeout).unwrap_or(0));
    let span = tracing::info_span!("ExecSync", container.id = %id);
    let out = blocking(move || containers.exec_sync(&id, req.cmd, timeout))
        .instrument(span)
        .await?;
    Ok(ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    })
}

pub(super) async fn reopen_log(
    containers: Arc<Containers>,
    req: ReopenContainerLogRequest,
) -> Result<ReopenContainerLogResponse, Error> {
    let id = req.container_id;
    let span = tracing::info_span!("ReopenContainerLog", container.id = %id);
    blocking(move || containers.reopen_log(&id))
        .instrument(span)
        .await?;
    Ok(ReopenContainerLogResponse {})
}

pub(super) async fn update_resources(
    containers: Arc<Containers>,
    req: UpdateContainerResourcesRequest,
) -> Result<UpdateContainerResourcesResponse, Error> {
    let id = req.container_id;
    let resources = req.linux.unwrap_or_default();
    let span = tracing::info_span!("UpdateContainerResources", container.id = %id);
    blocking(move || containers.update_resources(&id, &resources))
        .instrument(span)
        .await?;
    Ok(UpdateContainerResourcesResponse {})
}

#[cfg(test)]
mod tests {
    use berth_proto::cri::{ContainerMetadata, ContainerStateValue};
    use berth_store::ContainerRecord;

    use super::*;

    fn container(id: &str, pod: &str, state: ContainerState) -> Container {
        let mut record = ContainerRecord {
            id: id.into(),
            sandbox_id: pod.into(),
            exit_code: 3,
            reason: "Error".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        };
        record.set_state(state);
        Container {
            record,
            config: berth_proto::cri::ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "c".into(),
                    attempt: 0,
                }),
                ..Default::default()
            },
        }
    }

    #[test]
    fn filter_by_id_pod_state_and_labels() {
        let c = container("abc", "pod1", ContainerState::Running);
        let mut f = ContainerFilter::default();
        assert!(matches(&c, &f));
        f.id = "ab".into();
        f.pod_sandbox_id = "pod".into();
        assert!(matches(&c, &f));
        f.state = Some(ContainerStateValue {
            state: CriState::ContainerExited as i32,
        });
        assert!(!matches(&c, &f));
        f.state = Some(ContainerStateValue {
            state: CriState::ContainerRunning as i32,
        });
        f.label_selector.insert("app".into(), "web".into());
        assert!(matches(&c, &f));
        f.pod_sandbox_id = "other".into();
        assert!(!matches(&c, &f));
    }

    #[test]
    fn status_reports_exit_and_reason() {
        let s = container_status(&container("abc", "p", ContainerState::Exited));
        assert_eq!(s.state, CriState::ContainerExited as i32);
        assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
        assert_eq!(s.metadata.unwrap().name, "c");
    }
}
