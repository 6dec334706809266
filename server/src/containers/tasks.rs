//! The seams of the container service: the pod's shim (its task API) and the rootfs mounts,
//! with their real implementations on `berth-shim` over ttrpc and on mount(2).

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::shim::api::{
    CreateTaskRequest, DeleteRequest, ExecProcessRequest, KillRequest, StartRequest, StateRequest,
    Status as TaskStatus, UpdateTaskRequest, WaitRequest,
};
use berth_proto::shim::protobuf::well_known_types::any::Any;
use berth_proto::shim::shim_async::TaskClient;
use berth_proto::shim::ttrpc::{self, context};
use berth_snapshotter::Mount;
use nix::mount::{MntFlags, MsFlags};
use tokio::runtime::Handle;

use crate::shims::ProcessShims;

/// How long a ttrpc call to a shim may take (Wait excepted).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A process's exit as the shim reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal.
    pub status: u32,
    pub at_ns: i64,
}

/// A process's state as the shim reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskState {
    pub pid: u32,
    pub running: bool,
    pub exit: Option<Exit>,
    pub oom_killed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The process (or the pod's shim) is gone.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Failed(String),
}

pub type WaitFuture = Pin<Box<dyn Future<Output = Result<Exit, TaskError>> + Send>>;

/// The task API of a pod's shim, by pod id. Blocking methods; call them off the runtime's
/// worker threads. `exec_id` empty means the container's init.
pub trait Tasks: Send + Sync {
    fn create(&self, pod: &str, id: &str, bundle: &Path, log: &Path) -> Result<u32, TaskError>;
    fn start(&self, pod: &str, id: &str, exec_id: &str) -> Result<u32, TaskError>;
    fn state(&self, pod: &str, id: &str, exec_id: &str) -> Result<TaskState, TaskError>;
    fn kill(
        &self,
        pod: &str,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), TaskError>;
    fn delete(&self, pod: &str, id: &str, exec_id: &str) -> Result<(), TaskError>;
    /// Adds an exec process (OCI process JSON) writing to `stdout` and `stderr` (FIFOs).
    fn exec(
        &self,
        pod: &str,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdout: &Path,
        stderr: &Path,
    ) -> Result<(), TaskError>;
    /// `resources`: OCI LinuxResources JSON (empty: none); `annotations` as the shim reads them.
    fn update(
        &self,
        pod: &str,
        id: &str,
        resources: Vec<u8>,
        annotations: HashMap<String, String>,
    ) -> Result<(), TaskError>;
    /// Resolves once the process has exited.
    fn wait(&self, pod: &str, id: &str, exec_id: &str) -> WaitFuture;
}

/// Mounts and unmounts container root filesystems.
pub trait RootfsMounter: Send + Sync {
    fn mount(&self, mounts: &[Mount], target: &Path) -> Result<(), String>;
    /// Idempotent: a target that is not mounted (or missing) is fine.
    fn unmount(&self, target: &Path) -> Result<(), String>;
}

/// [`Tasks`] on the pods' `berth-shim`s.
pub struct ShimTasks {
    shims: Arc<ProcessShims>,
    runtime: Handle,
}

impl ShimTasks {
    pub fn new(shims: Arc<ProcessShims>, runtime: Handle) -> ShimTasks {
        ShimTasks { shims, runtime }
    }

    fn client(&self, pod: &str) -> Result<TaskClient, TaskError> {
        self.shims
            .client(pod)
            .ok_or_else(|| TaskError::NotFound(format!("the shim of pod {pod} is not running")))
    }

    pub(super) fn call<T, F>(
        &self,
        pod: &str,
        f: impl FnOnce(TaskClient, context::Context) -> F,
    ) -> Result<T, TaskError>
    where
        F: Future<Output = ttrpc::Result<T>>,
    {
        let client = self.client(pod)?;
        let timeout = i64::try_from(CALL_TIMEOUT.as_nanos()).unwrap_or(i64::MAX);
        self.runtime
            .block_on(f(client, context::with_timeout(timeout)))
            .map_err(task_error)
    }
}

fn task_error(e: ttrpc::Error) -> TaskError {
    match e {
        ttrpc::Error::RpcStatus(s) => {
            let msg = s.message().to_string();
            match s.code() {
                ttrpc::Code::NOT_FOUND => TaskError::NotFound(msg),
                ttrpc::Code::FAILED_PRECONDITION => TaskError::FailedPrecondition(msg),
                _ => TaskError::Failed(msg),
            }
        }
        other => TaskError::Failed(other.to_string()),
    }
}

fn timestamp_ns(ts: &berth_proto::shim::protobuf::well_known_types::timestamp::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(ts.nanos))
}

impl Tasks for ShimTasks {
    fn create(&self, pod: &str, id: &str, bundle: &Path, log: &Path) -> Result<u32, TaskError> {
        let req = CreateTaskRequest {
            id: id.to_string(),
            bundle: bundle.display().to_string(),
            stdout: log.display().to_string(),
            ..Default::default()
        };
        self.call(pod, |c, ctx| async move { c.create(ctx, &req).await })
            .map(|r| r.pid)
    }

    fn start(&self, pod: &str, id: &str, exec_id: &str) -> Result<u32, TaskError> {
        let req = StartRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.call(pod, |c, ctx| async move { c.start(ctx, &req).await })
            .map(|r| r.pid)
    }

    fn state(&self, pod: &str, id: &str, exec_id: &str) -> Result<TaskState, TaskError> {
        let req = StateRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let r = self.call(pod, |c, ctx| async move { c.state(ctx, &req).await })?;
        let stopped = r.status.enum_value_or_default() == TaskStatus::STOPPED;
        let oom_killed = r
            .special_fields
            .unknown_fields()
            .get(OOM_KILLED_FIELD)
            .is_some_and(|f| matches!(f, berth_proto::shim::protobuf::UnknownValueRef::Varint(1)));
        Ok(TaskState {
            pid: r.pid,
            running: r.status.enum_value_or_default() == TaskStatus::RUNNING,
            exit: stopped.then(|| Exit {
                status: r.exit_status,
                at_ns: r.exited_at.as_ref().map(timestamp_ns).unwrap_or(0),
            }),
            oom_killed,
        })
    }

    fn kill(
        &self,
        pod: &str,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), TaskError> {
        let req = KillRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        self.call(pod, |c, ctx| async move { c.kill(ctx, &req).await })
            .map(|_| ())
    }

    fn delete(&self, pod: &str, id: &str, exec_id: &str) -> Result<(), TaskError> {
        if exec_id.is_empty() && self.shims.client(pod).is_none() {
            // The shim is gone but the container may not be: its processes were reparented,
            // and its cgroup and runtime state stay until someone deletes them.
            return self.shims.delete_orphan(pod, id).map_err(TaskError::Failed);
        }
        let req = DeleteRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.call(pod, |c, ctx| async move { c.delete(ctx, &req).await })
            .map(|_| ())
    }

    fn exec(
        &self,
        pod: &str,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdout: &Path,
        stderr: &Path,
    ) -> Result<(), TaskError> {
        let mut spec = Any::new();
        spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".to_string();
        spec.value = process;
        let req = ExecProcessRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            spec: Some(spec).into(),
            stdout: stdout.display().to_string(),
            stderr: stderr.display().to_string(),
            ..Default::default()
        };
        self.call(pod, |c, ctx| async move { c.exec(ctx, &req).await })
            .map(|_| ())
    }

    fn update(
        &self,
        pod: &str,
        id: &str,
        resources: Vec<u8>,
        annotations: HashMap<String, String>,
    ) -> Result<(), TaskError> {
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        any.value = resources;
        let req = UpdateTaskRequest {
            id: id.to_string(),
            resources: Some(any).into(),
            annotations,
            ..Default::default()
        };
        self.call(pod, |c, ctx| async move { c.update(ctx, &req).await })
            .map(|_| ())
    }

    fn wait(&self, pod: &str, id: &str, exec_id: &str) -> WaitFuture {
        let client = self.client(pod);
        let req = WaitRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        Box::pin(async move {
            let r = client?
                .wait(context::Context::default(), &req)
                .await
                .map_err(task_error)?;
            Ok(Exit {
                status: r.exit_status,
                at_ns: r.exited_at.as_ref().map(timestamp_ns).unwrap_or(0),
            })
        })
    }
}

/// Unknown-field number the shim sets on `StateResponse` for an OOM-killed init
/// (`shim/src/service.rs`).
const OOM_KILLED_FIELD: u32 = 1000;

/// [`RootfsMounter`] with mount(2).
pub struct LinuxMounts;

impl RootfsMounter for LinuxMounts {
    fn mount(&self, mounts: &[Mount], target: &Path) -> Result<(), String> {
        for m in mounts {
            let err =
                |e: nix::Error| format!("mounting {} on {}: {e}", m.fs_type, target.display());
            if m.fs_type == "bind" {
                nix::mount::mount(
                    Some(m.source.as_str()),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(err)?;
                if m.options.iter().any(|o| o == "ro") {
                    nix::mount::mount(
                        None::<&str>,
                        target,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                        None::<&str>,
                    )
                    .map_err(err)?;
                }
            } else {
                let data = m.options.join(",");
                nix::mount::mount(
                    Some(m.source.as_str()),
                    target,
                    Some(m.fs_type.as_str()),
                    MsFlags::empty(),
                    Some(data.as_str()),
                )
                .map_err(err)?;
            }
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), String> {
        loop {
            match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(nix::Error::EINVAL | nix::Error::ENOENT) => return Ok(()),
                Err(e) => return Err(format!("unmounting {}: {e}", target.display())),
            }
        }
    }
}
