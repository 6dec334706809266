//! berth's task API (`berth.tasks.v1`), served to berthctl on the same socket as the CRI.
//!
//! It translates and owns no state: a task is a container of the container service
//! ([`Containers::task`], [`Containers::kill_task`], [`Containers::wait_task`], ExecSync for
//! Exec); `Pids` and `Stats` go to the pod's shim through [`TaskProbe`]; the shims are the
//! sandbox service's ready pods, checked against `/proc`. The services are synchronous, so
//! each call runs on the blocking pool, in a span naming the RPC and the ids.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_proto::shim::cgroups::metrics::Metrics;
use berth_proto::tasks::tasks_server::{Tasks, TasksServer};
use berth_proto::tasks::{
    ExecProcessRequest, ExecProcessResponse, GetTaskRequest, GetTaskResponse, KillTaskRequest,
    KillTaskResponse, ListPidsRequest, ListPidsResponse, ListShimsRequest, ListShimsResponse,
    ListTasksRequest, ListTasksResponse, MetricsRequest, MetricsResponse, ProcessInfo, Shim, Task,
    TaskMetrics, TaskStatus as ProtoStatus, WaitTaskRequest, WaitTaskResponse,
};
use berth_store::SandboxState;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::containers::inspect::{TaskOpError, TaskProbe, TaskStatus, TaskView, wait_error};
use crate::containers::service::{ContainerError, Containers};
use crate::error::Error;
use crate::sandbox::service::{Sandboxes, ShimLauncher, ShimProcess};
use crate::shims::ProcessShims;

/// The largest signal number on Linux (SIGRTMAX).
const MAX_SIGNAL: u32 = 64;

pub struct TaskApi(Arc<Services>);

/// What the API calls; shared with the blocking closures.
struct Services {
    containers: Arc<Containers>,
    sandboxes: Arc<Sandboxes>,
    probe: Arc<dyn TaskProbe>,
    shims: Arc<ProcessShims>,
    /// Turns true when berthd shuts down: a pending Wait ends then, or the server would wait
    /// for it (for ever) before exiting.
    stopping: watch::Receiver<bool>,
}

pub fn service(
    containers: Arc<Containers>,
    sandboxes: Arc<Sandboxes>,
    probe: Arc<dyn TaskProbe>,
    shims: Arc<ProcessShims>,
    stopping: watch::Receiver<bool>,
) -> TasksServer<TaskApi> {
    TasksServer::new(TaskApi(Arc::new(Services {
        containers,
        sandboxes,
        probe,
        shims,
        stopping,
    })))
}

/// Runs `f` on the blocking pool inside the current span.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| Error::Container(ContainerError::Join(e.to_string())))?
}

fn op_error(e: TaskOpError) -> Error {
    match e {
        TaskOpError::Container(e) => Error::Container(e),
        e @ (TaskOpError::NotRunning { .. } | TaskOpError::Precondition { .. }) => {
            Error::FailedPrecondition(e.to_string())
        }
        e @ TaskOpError::ProcessNotFound { .. } => Error::NotFound(e.to_string()),
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A signal number the kernel accepts (0, the existence check, is not a signal to send).
fn valid_signal(signal: u32) -> Result<u32, Error> {
    if (1..=MAX_SIGNAL).contains(&signal) {
        Ok(signal)
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid signal {signal}: expected 1 to {MAX_SIGNAL}"
        )))
    }
}

fn proto_status(status: TaskStatus) -> ProtoStatus {
    match status {
        TaskStatus::Created => ProtoStatus::Created,
        TaskStatus::Running => ProtoStatus::Running,
        TaskStatus::Paused => ProtoStatus::Paused,
        TaskStatus::Stopped => ProtoStatus::Stopped,
        TaskStatus::Unknown => ProtoStatus::Unknown,
    }
}

fn to_task(view: TaskView) -> Task {
    let r = view.record;
    Task {
        pid: view.pid,
        status: proto_status(view.status) as i32,
        exit_status: view.exit.map(|e| e.status).unwrap_or(0),
        exited_at_ns: view.exit.map(|e| e.at_ns).unwrap_or(0),
        runtime_handler: view.runtime_handler,
        bundle: view.bundle.display().to_string(),
        created_at_ns: r.created_at_ns,
        started_at_ns: r.started_at_ns,
        reason: if view.status == TaskStatus::Stopped {
            r.reason
        } else {
            String::new()
        },
        image_ref: r.image_ref,
        name: r.name,
        sandbox_id: r.sandbox_id,
        id: r.id,
    }
}

/// containerd's cgroup v1 metrics in the task API's terms; the working set is usage minus
/// inactive file pages, floored at 0, as cAdvisor computes it for kubelet.
fn task_metrics(id: &str, m: &Metrics, pids: usize, timestamp_ns: i64) -> TaskMetrics {
    let mem = m.memory.as_ref();
    let usage = mem.and_then(|s| s.usage.as_ref());
    let usage_bytes = usage.map(|u| u.usage).unwrap_or(0);
    let inactive = mem.map(|s| s.total_inactive_file).unwrap_or(0);
    let cpu = m.cpu.as_ref().and_then(|c| c.usage.as_ref());
    TaskMetrics {
        id: id.to_string(),
        timestamp_ns,
        cpu_usage_ns: cpu.map(|c| c.total).unwrap_or(0),
        cpu_user_ns: cpu.map(|c| c.user).unwrap_or(0),
        cpu_kernel_ns: cpu.map(|c| c.kernel).unwrap_or(0),
        memory_usage_bytes: usage_bytes,
        memory_working_set_bytes: usage_bytes.saturating_sub(inactive),
        memory_limit_bytes: usage.map(|u| u.limit).unwrap_or(0),
        memory_rss_bytes: mem.map(|s| s.total_rss).unwrap_or(0),
        memory_cache_bytes: mem.map(|s| s.total_cache).unwrap_or(0),
        oom_kills: m
            .memory_oom_control
            .as_ref()
            .map(|o| o.oom_kill)
            .unwrap_or(0),
        pids: u64::try_from(pids).unwrap_or(u64::MAX),
    }
}

/// `Rss` and `Pss` in bytes from the text of `/proc/<pid>/smaps_rollup`.
fn rss_pss(smaps_rollup: &str) -> (u64, u64) {
    let field = |name: &str| {
        smaps_rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// A process's command line from `/proc`, arguments joined by spaces; empty once it is gone.
fn command_line(pid: u32) -> String {
    let raw =
        std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Services {
    fn metrics_of(&self, view: &TaskView) -> Result<TaskMetrics, Error> {
        let (pod, id) = (&view.record.sandbox_id, &view.record.id);
        let task_err = |e: crate::containers::tasks::TaskError| {
            Error::Container(ContainerError::Task {
                id: id.clone(),
                message: e.to_string(),
            })
        };
        let stats = self.probe.stats(pod, id).map_err(task_err)?;
        let pids = self.probe.pids(pod, id).map_err(task_err)?;
        Ok(task_metrics(id, &stats, pids.len(), now_ns()))
    }

    fn shims(&self) -> Result<Vec<Shim>, Error> {
        let containers = self.containers.list()?;
        let mut shims = Vec::new();
        for pod in self.sandboxes.list()? {
            let r = &pod.record;
            if r.shim_pid == 0 && r.shim_address.is_empty() {
                continue;
            }
            let process = ShimProcess {
                address: r.shim_address.clone(),
                pid: r.shim_pid,
                pid_holder: r.pid_holder_pid,
            };
            let alive = r.state() == SandboxState::Ready && self.shims.alive(&r.id, &process);
            let (rss_bytes, pss_bytes) = if alive {
                std::fs::read_to_string(format!("/proc/{}/smaps_rollup", r.shim_pid))
                    .map(|s| rss_pss(&s))
                    .unwrap_or((0, 0))
            } else {
                (0, 0)
            };
            let tasks = containers
                .iter()
                .filter(|c| c.record.sandbox_id == r.id)
                .count();
            shims.push(Shim {
                sandbox_id: r.id.clone(),
                pid: r.shim_pid,
                address: r.shim_address.clone(),
                runtime_handler: r.runtime_handler.clone(),
                connected: self.shims.client(&r.id).is_some(),
                tasks: u32::try_from(tasks).unwrap_or(u32::MAX),
                alive,
                rss_bytes,
                pss_bytes,
                sandbox_name: r.name.clone(),
                sandbox_namespace: r.namespace.clone(),
            });
        }
        Ok(shims)
    }
}

#[tonic::async_trait]
impl Tasks for TaskApi {
    async fn list(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let pod = req.into_inner().sandbox_id;
        let span = tracing::info_span!("tasks.List", pod.id = %pod);
        let containers = self.0.containers.clone();
        let tasks = blocking(move || Ok(containers.tasks(&pod)?))
            .instrument(span)
            .await?;
        Ok(Response::new(ListTasksResponse {
            tasks: tasks.into_iter().map(to_task).collect(),
        }))
    }

    async fn get(&self, req: Request<GetTaskRequest>) -> Result<Response<GetTaskResponse>, Status> {
        let id = req.into_inner().id;
        let span = tracing::info_span!("tasks.Get", container.id = %id);
        let containers = self.0.containers.clone();
        let task = blocking(move || Ok(containers.task(&id)?))
            .instrument(span)
            .await?;
        Ok(Response::new(GetTaskResponse {
            task: Some(to_task(task)),
        }))
    }

    async fn kill(
        &self,
        req: Request<KillTaskRequest>,
    ) -> Result<Response<KillTaskResponse>, Status> {
        let req = req.into_inner();
        let span = tracing::info_span!(
            "tasks.Kill",
            container.id = %req.id,
            exec.id = %req.exec_id,
            signal = req.signal,
            all = req.all
        );
        let signal = valid_signal(req.signal)?;
        if req.all && !req.exec_id.is_empty() {
            return Err(Error::InvalidArgument(
                "all applies to a task's init, not to exec processes".into(),
            )
            .into());
        }
        let containers = self.0.containers.clone();
        blocking(move || {
            containers
                .kill_task(&req.id, &req.exec_id, signal, req.all)
                .map_err(op_error)
        })
        .instrument(span)
        .await?;
        Ok(Response::new(KillTaskResponse {}))
    }

    async fn exec(
        &self,
        req: Request<ExecProcessRequest>,
    ) -> Result<Response<ExecProcessResponse>, Status> {
        let req = req.into_inner();
        let span = tracing::info_span!("tasks.Exec", container.id = %req.id);
        if req.args.is_empty() {
            return Err(
                Error::InvalidArgument("exec args are empty: give a command".into()).into(),
            );
        }
        let timeout = Duration::from_secs(u64::from(req.timeout_seconds));
        let containers = self.0.containers.clone();
        let out = blocking(move || Ok(containers.exec_sync(&req.id, req.args, timeout)?))
            .instrument(span)
            .await?;
        Ok(Response::new(ExecProcessResponse {
            exit_status: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
        }))
    }

    async fn list_pids(
        &self,
        req: Request<ListPidsRequest>,
    ) -> Result<Response<ListPidsResponse>, Status> {
        let id = req.into_inner().id;
        let span = tracing::info_span!("tasks.ListPids", container.id = %id);
        let this = self.0.clone();
        let processes = blocking(move || {
            let task = this.containers.task(&id)?;
            if task.status == TaskStatus::Stopped {
                return Ok(Vec::new());
            }
            let (pod, id) = (&task.record.sandbox_id, &task.record.id);
            let pids = this.probe.pids(pod, id).map_err(|e| {
                Error::Container(ContainerError::Task {
                    id: id.clone(),
                    message: e.to_string(),
                })
            })?;
            Ok(pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    exec_id: String::new(),
                    command: command_line(pid),
                })
                .collect())
        })
        .instrument(span)
        .await?;
        Ok(Response::new(ListPidsResponse { processes }))
    }

    async fn wait(
        &self,
        req: Request<WaitTaskRequest>,
    ) -> Result<Response<WaitTaskResponse>, Status> {
        let req = req.into_inner();
        let span =
            tracing::info_span!("tasks.Wait", container.id = %req.id, exec.id = %req.exec_id);
        let containers = self.0.containers.clone();
        let mut stopping = self.0.stopping.clone();
        let exec_id = req.exec_id.clone();
        let exit = async move {
            let (id, wait) =
                blocking(move || Ok(containers.wait_task(&req.id, &req.exec_id)?)).await?;
            tokio::select! {
                exit = wait => exit.map_err(|e| Status::from(op_error(wait_error(&id, &exec_id, e)))),
                // An error means the sender is gone: berthd is stopping too.
                _ = stopping.wait_for(|s| *s) => Err(Status::unavailable("berthd is shutting down")),
            }
        }
        .instrument(span)
        .await?;
        Ok(Response::new(WaitTaskResponse {
            exit_status: exit.status,
            exited_at_ns: exit.at_ns,
        }))
    }

    async fn metrics(
        &self,
        req: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        let ids = req.into_inner().ids;
        let span = tracing::info_span!("tasks.Metrics", container.ids = ?ids);
        let this = self.0.clone();
        let metrics = blocking(move || {
            if ids.is_empty() {
                // Every running task; one whose shim fails is left out, not fatal to the list.
                let views = this.containers.tasks("")?;
                return Ok(views
                    .iter()
                    .filter(|v| v.status == TaskStatus::Running)
                    .filter_map(|v| {
                        this.metrics_of(v)
                            .map_err(|e| tracing::debug!(container.id = %v.record.id, error = %e, "metrics"))
                            .ok()
                    })
                    .collect());
            }
            ids.iter()
                .map(|id| {
                    let view = this.containers.task(id)?;
                    if view.status != TaskStatus::Running {
                        return Err(op_error(TaskOpError::NotRunning {
                            id: view.record.id.clone(),
                            status: view.status.name(),
                        }));
                    }
                    this.metrics_of(&view)
                })
                .collect()
        })
        .instrument(span)
        .await?;
        Ok(Response::new(MetricsResponse { metrics }))
    }

    async fn list_shims(
        &self,
        _: Request<ListShimsRequest>,
    ) -> Result<Response<ListShimsResponse>, Status> {
        let span = tracing::info_span!("tasks.ListShims");
        let this = self.0.clone();
        let shims = blocking(move || this.shims()).instrument(span).await?;
        Ok(Response::new(ListShimsResponse { shims }))
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::shim::cgroups::metrics::{
        CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat,
    };
    use berth_store::{ContainerRecord, ContainerState};

    use super::*;
    use crate::containers::tasks::Exit;

    #[test]
    fn signals_outside_the_kernels_range_are_invalid() {
        assert_eq!(valid_signal(9).unwrap(), 9);
        assert_eq!(valid_signal(64).unwrap(), 64);
        for bad in [0, 65, 1000] {
            let status = Status::from(valid_signal(bad).unwrap_err());
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains(&bad.to_string()), "{status:?}");
        }
    }

    #[test]
    fn refusals_map_to_their_codes() {
        let code = |e| Status::from(op_error(e)).code();
        assert_eq!(
            code(TaskOpError::NotRunning {
                id: "c".into(),
                status: "stopped"
            }),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code(TaskOpError::ProcessNotFound {
                id: "c".into(),
                message: "exec e not found".into()
            }),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(TaskOpError::Container(ContainerError::NotFound("c".into()))),
            tonic::Code::NotFound
        );
    }

    #[test]
    fn a_stopped_task_carries_its_exit_and_reason() {
        let mut record = ContainerRecord {
            id: "c1".into(),
            sandbox_id: "p1".into(),
            name: "web".into(),
            reason: "Error".into(),
            ..Default::default()
        };
        record.set_state(ContainerState::Exited);
        let task = to_task(TaskView {
            record: record.clone(),
            status: TaskStatus::Stopped,
            pid: 0,
            exit: Some(Exit {
                status: 143,
                at_ns: 5,
            }),
            runtime_handler: "runc".into(),
            bundle: "/run/berth/containers/c1".into(),
        });
        assert_eq!(task.status, ProtoStatus::Stopped as i32);
        assert_eq!((task.exit_status, task.exited_at_ns), (143, 5));
        assert_eq!((task.reason.as_str(), task.name.as_str()), ("Error", "web"));
        assert_eq!(task.bundle, "/run/berth/containers/c1");

        let running = to_task(TaskView {
            record,
            status: TaskStatus::Running,
            pid: 7,
            exit: None,
            runtime_handler: "runc".into(),
            bundle: "/b".into(),
        });
        assert_eq!((running.pid, running.exit_status), (7, 0));
        assert_eq!(running.reason, "", "no reason while it runs");
    }

    #[test]
    fn metrics_take_the_working_set_without_inactive_files() {
        let mut usage = MemoryEntry::new();
        usage.usage = 10 << 20;
        usage.limit = 64 << 20;
        let mut mem = MemoryStat::new();
        mem.usage = Some(usage).into();
        mem.total_inactive_file = 3 << 20;
        mem.total_rss = 6 << 20;
        mem.total_cache = 4 << 20;
        let mut cpu_usage = CPUUsage::new();
        cpu_usage.total = 1_500;
        cpu_usage.user = 1_000;
        cpu_usage.kernel = 500;
        let mut cpu = CPUStat::new();
        cpu.usage = Some(cpu_usage).into();
        let mut oom = MemoryOomControl::new();
        oom.oom_kill = 1;
        let mut m = Metrics::new();
        m.memory = Some(mem).into();
        m.cpu = Some(cpu).into();
        m.memory_oom_control = Some(oom).into();

        let t = task_metrics("c1", &m, 2, 99);
        assert_eq!(t.memory_usage_bytes, 10 << 20);
        assert_eq!(t.memory_working_set_bytes, 7 << 20);
        assert_eq!(t.memory_limit_bytes, 64 << 20);
        assert_eq!(
            (t.memory_rss_bytes, t.memory_cache_bytes),
            (6 << 20, 4 << 20)
        );
        assert_eq!(
            (t.cpu_usage_ns, t.cpu_user_ns, t.cpu_kernel_ns),
            (1_500, 1_000, 500)
        );
        assert_eq!((t.pids, t.oom_kills, t.timestamp_ns), (2, 1, 99));

        let empty = task_metrics("c2", &Metrics::new(), 0, 1);
        assert_eq!(
            (
                empty.memory_usage_bytes,
                empty.memory_working_set_bytes,
                empty.cpu_usage_ns
            ),
            (0, 0, 0),
            "a shim without a memory or cpuacct cgroup"
        );
    }

    #[test]
    fn shim_memory_is_read_from_smaps_rollup() {
        let text = "55d0c3a00000-7ffd5b9fe000 ---p 00000000 00:00 0    [rollup]\n\
                    Rss:                2048 kB\n\
                    Pss:                 700 kB\n\
                    Pss_Anon:            500 kB\n";
        assert_eq!(rss_pss(text), (2048 * 1024, 700 * 1024));
        assert_eq!(rss_pss(""), (0, 0));
    }

    #[test]
    fn command_lines_are_joined_and_empty_when_gone() {
        assert!(!command_line(std::process::id()).is_empty());
        assert_eq!(command_line(u32::MAX), "");
    }
}
