//! The container service as berth's task API (`server/src/tasks.rs`) sees it: a container's
//! task (status, init pid, exit) from its record and, while it lives, its shim's `State`;
//! signals and waits on it; and the shim calls only the task API makes (`Pids`, `Stats`),
//! behind [`TaskProbe`]. Nothing here changes a record: exits are still recorded by the
//! container service's monitor.

use std::collections::HashMap;
use std::path::PathBuf;

use berth_proto::shim::api::{PidsRequest, StatsRequest};
use berth_proto::shim::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat, Throttle,
};
use berth_proto::shim::cgroups_v2::metrics as v2;
use berth_proto::shim::protobuf::Message;
use berth_proto::shim::protobuf::well_known_types::any::Any;
use berth_store::{ContainerRecord, ContainerState};

use crate::containers::service::{ContainerError, Containers};
use crate::containers::tasks::{Exit, ShimTasks, TaskError, TaskState, WaitFuture};

/// Type URLs of the shim's Stats answer: containerd's metrics message of the host's cgroup
/// version.
const METRICS_V1_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";
const METRICS_V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Created,
    Running,
    Paused,
    Stopped,
    /// The record says it lives but its shim does not answer.
    Unknown,
}

impl TaskStatus {
    pub fn name(self) -> &'static str {
        match self {
            TaskStatus::Created => "created",
            TaskStatus::Running => "running",
            TaskStatus::Paused => "paused",
            TaskStatus::Stopped => "stopped",
            TaskStatus::Unknown => "unknown",
        }
    }
}

/// A container's task.
#[derive(Debug, Clone)]
pub struct TaskView {
    pub record: ContainerRecord,
    pub status: TaskStatus,
    /// The init pid while created, running or paused; 0 otherwise.
    pub pid: u32,
    pub exit: Option<Exit>,
    /// The pod's runtime handler.
    pub runtime_handler: String,
    pub bundle: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskOpError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("task {id} is {status}, not running")]
    NotRunning { id: String, status: &'static str },
    /// The shim refused: the process already finished, or the shim is gone.
    #[error("task {id}: {message}")]
    Precondition { id: String, message: String },
    /// No exec process with that id in the task.
    #[error("task {id}: {message}")]
    ProcessNotFound { id: String, message: String },
}

/// The status, init pid and exit of a task, from its record and, when the record says it
/// lives, the shim's `State` (`None`: the shim did not answer).
pub fn task_status(
    record: &ContainerRecord,
    shim: Option<&TaskState>,
) -> (TaskStatus, u32, Option<Exit>) {
    let recorded_exit = || Exit {
        status: u32::try_from(record.exit_code).unwrap_or(255),
        at_ns: record.finished_at_ns,
    };
    match record.state() {
        ContainerState::Exited => (TaskStatus::Stopped, 0, Some(recorded_exit())),
        ContainerState::Created | ContainerState::Running => match shim {
            None => (TaskStatus::Unknown, 0, None),
            // Exited before the monitor recorded it.
            Some(TaskState {
                exit: Some(exit), ..
            }) => (TaskStatus::Stopped, 0, Some(*exit)),
            Some(s) if s.running => (TaskStatus::Running, s.pid, None),
            Some(s) if record.state() == ContainerState::Created => {
                (TaskStatus::Created, s.pid, None)
            }
            Some(s) => (TaskStatus::Paused, s.pid, None),
        },
        ContainerState::Creating | ContainerState::Removing | ContainerState::Unknown => {
            (TaskStatus::Unknown, 0, None)
        }
    }
}

fn op_error(id: &str, exec_id: &str, e: TaskError) -> TaskOpError {
    let id = id.to_string();
    match e {
        TaskError::NotFound(message) if !exec_id.is_empty() => {
            TaskOpError::ProcessNotFound { id, message }
        }
        TaskError::NotFound(message) | TaskError::FailedPrecondition(message) => {
            TaskOpError::Precondition { id, message }
        }
        TaskError::Failed(message) => ContainerError::Task { id, message }.into(),
    }
}

impl Containers {
    /// The task of container `id` (or of the one whose id starts with it), or NotFound.
    pub fn task(&self, id: &str) -> Result<TaskView, ContainerError> {
        let record = self
            .find(id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        Ok(self.view(record, &mut HashMap::new()))
    }

    /// The tasks of every container, or of pod `pod` (an id or unique prefix) when not empty.
    pub fn tasks(&self, pod: &str) -> Result<Vec<TaskView>, ContainerError> {
        let pod = if pod.is_empty() {
            None
        } else {
            Some(self.sandboxes.status(pod)?.record.id)
        };
        let mut handlers = HashMap::new();
        Ok(self
            .list()?
            .into_iter()
            .filter(|c| pod.as_ref().is_none_or(|p| *p == c.record.sandbox_id))
            .map(|c| self.view(c.record, &mut handlers))
            .collect())
    }

    /// `handlers` caches each pod's runtime handler across one listing.
    fn view(&self, record: ContainerRecord, handlers: &mut HashMap<String, String>) -> TaskView {
        let shim = match record.state() {
            ContainerState::Created | ContainerState::Running => self
                .tasks
                .state(&record.sandbox_id, &record.id, "")
                .map_err(|e| tracing::debug!(container.id = %record.id, error = %e, "task state"))
                .ok(),
            _ => None,
        };
        let (status, pid, exit) = task_status(&record, shim.as_ref());
        let runtime_handler = handlers
            .entry(record.sandbox_id.clone())
            .or_insert_with(|| {
                self.sandboxes
                    .status(&record.sandbox_id)
                    .map(|p| p.record.runtime_handler)
                    .unwrap_or_default()
            })
            .clone();
        TaskView {
            bundle: self.dir(&record.id),
            record,
            status,
            pid,
            exit,
            runtime_handler,
        }
    }

    /// Sends `signal` to the task's init (or exec `exec_id`, or with `all` every process).
    /// The task must be created or running (running for an exec).
    pub fn kill_task(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), TaskOpError> {
        let task = self.task(id)?;
        let id = task.record.id.as_str();
        let alive = if exec_id.is_empty() {
            matches!(
                task.status,
                TaskStatus::Created | TaskStatus::Running | TaskStatus::Paused
            )
        } else {
            task.status == TaskStatus::Running
        };
        if !alive {
            return Err(TaskOpError::NotRunning {
                id: id.to_string(),
                status: task.status.name(),
            });
        }
        self.tasks
            .kill(&task.record.sandbox_id, id, exec_id, signal, all)
            .map_err(|e| op_error(id, exec_id, e))
    }

    /// A future of the exit of the task's init (at once for a stopped task, from its record)
    /// or of exec `exec_id`, with the task's full id.
    pub fn wait_task(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(String, WaitFuture), ContainerError> {
        let record = self
            .find(id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        let future = if exec_id.is_empty() && record.state() == ContainerState::Exited {
            let (_, _, exit) = task_status(&record, None);
            let exit = exit.unwrap_or(Exit {
                status: 255,
                at_ns: 0,
            });
            Box::pin(std::future::ready(Ok(exit))) as WaitFuture
        } else {
            self.tasks.wait(&record.sandbox_id, &record.id, exec_id)
        };
        Ok((record.id, future))
    }
}

/// Maps a failed wait on task `id` (exec `exec_id`).
pub fn wait_error(id: &str, exec_id: &str, e: TaskError) -> TaskOpError {
    op_error(id, exec_id, e)
}

/// The shim calls the task API makes beyond the container service's [`Tasks`]. Blocking, like
/// it; call from blocking threads.
///
/// [`Tasks`]: crate::containers::tasks::Tasks
pub trait TaskProbe: Send + Sync {
    /// Pids of the container's processes (`runc ps`); empty once it has stopped.
    fn pids(&self, pod: &str, id: &str) -> Result<Vec<u32>, TaskError>;
    /// The container's cgroup metrics in containerd's v1 terms (a cgroup v2 answer mapped).
    fn stats(&self, pod: &str, id: &str) -> Result<Metrics, TaskError>;
}

/// Decodes the `Any` of a shim's Stats answer: the v1 message as it is, the v2 message mapped
/// to v1 by [`v1_from_v2`].
pub fn decode_metrics(any: &Any) -> Result<Metrics, TaskError> {
    let undecodable = |e| TaskError::Failed(format!("undecodable stats from the shim: {e}"));
    match any.type_url.as_str() {
        METRICS_V1_TYPE_URL => Metrics::parse_from_bytes(&any.value).map_err(undecodable),
        METRICS_V2_TYPE_URL => v2::Metrics::parse_from_bytes(&any.value)
            .map(|m| v1_from_v2(&m))
            .map_err(undecodable),
        other => Err(TaskError::Failed(format!(
            "the shim returned stats of type {other:?}, expected {METRICS_V1_TYPE_URL} or \
             {METRICS_V2_TYPE_URL}"
        ))),
    }
}

/// containerd's cgroup v2 metrics in v1 terms, so one reader serves both hosts. v2's
/// memory.stat is hierarchical, so each value fills the v1 field and its `total_` twin:
/// `anon` is rss, `file` is cache, `file_mapped` mapped_file; usage, limit and max come from
/// memory.current, memory.max and memory.peak (an unlimited v2 limit stays `u64::MAX`, where v1
/// shows a page-rounded i64::MAX), failcnt from memory.events `max`, the OOM kill counter from
/// memory.events `oom_kill`; CPU microseconds become nanoseconds (no per-CPU usage in v2); pids
/// map as they are. Swap (v1 memsw counts memory plus swap, v2 swap alone) and io are left out.
fn v1_from_v2(m: &v2::Metrics) -> Metrics {
    let mut out = Metrics::new();
    if let Some(mem) = m.memory.as_ref() {
        let mut usage = MemoryEntry::new();
        usage.usage = mem.usage;
        usage.limit = mem.usage_limit;
        usage.max = mem.max_usage;
        usage.failcnt = m.memory_events.as_ref().map_or(0, |e| e.max);
        let mut s = MemoryStat::new();
        s.usage = Some(usage).into();
        (s.rss, s.total_rss) = (mem.anon, mem.anon);
        (s.rss_huge, s.total_rss_huge) = (mem.anon_thp, mem.anon_thp);
        (s.cache, s.total_cache) = (mem.file, mem.file);
        (s.mapped_file, s.total_mapped_file) = (mem.file_mapped, mem.file_mapped);
        (s.dirty, s.total_dirty) = (mem.file_dirty, mem.file_dirty);
        (s.writeback, s.total_writeback) = (mem.file_writeback, mem.file_writeback);
        (s.pg_fault, s.total_pg_fault) = (mem.pgfault, mem.pgfault);
        (s.pg_maj_fault, s.total_pg_maj_fault) = (mem.pgmajfault, mem.pgmajfault);
        (s.inactive_anon, s.total_inactive_anon) = (mem.inactive_anon, mem.inactive_anon);
        (s.active_anon, s.total_active_anon) = (mem.active_anon, mem.active_anon);
        (s.inactive_file, s.total_inactive_file) = (mem.inactive_file, mem.inactive_file);
        (s.active_file, s.total_active_file) = (mem.active_file, mem.active_file);
        (s.unevictable, s.total_unevictable) = (mem.unevictable, mem.unevictable);
        s.hierarchical_memory_limit = mem.usage_limit;
        out.memory = Some(s).into();
    }
    if let Some(events) = m.memory_events.as_ref() {
        let mut oom = MemoryOomControl::new();
        oom.oom_kill = events.oom_kill;
        out.memory_oom_control = Some(oom).into();
    }
    if let Some(cpu) = m.cpu.as_ref() {
        let ns = |usec: u64| usec.saturating_mul(1000);
        let mut usage = CPUUsage::new();
        usage.total = ns(cpu.usage_usec);
        usage.user = ns(cpu.user_usec);
        usage.kernel = ns(cpu.system_usec);
        let mut throttling = Throttle::new();
        throttling.periods = cpu.nr_periods;
        throttling.throttled_periods = cpu.nr_throttled;
        throttling.throttled_time = ns(cpu.throttled_usec);
        let mut c = CPUStat::new();
        c.usage = Some(usage).into();
        c.throttling = Some(throttling).into();
        out.cpu = Some(c).into();
    }
    if let Some(pids) = m.pids.as_ref() {
        let mut p = PidsStat::new();
        p.current = pids.current;
        p.limit = pids.limit;
        out.pids = Some(p).into();
    }
    out
}

impl TaskProbe for ShimTasks {
    fn pids(&self, pod: &str, id: &str) -> Result<Vec<u32>, TaskError> {
        let req = PidsRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.call(pod, |c, ctx| async move { c.pids(ctx, &req).await })
            .map(|r| r.processes.iter().map(|p| p.pid).collect())
    }

    fn stats(&self, pod: &str, id: &str) -> Result<Metrics, TaskError> {
        let req = StatsRequest {
            id: id.to_string(),
            ..Default::default()
        };
        let r = self.call(pod, |c, ctx| async move { c.stats(ctx, &req).await })?;
        match r.stats.as_ref() {
            Some(any) => decode_metrics(any),
            None => Err(TaskError::Failed(format!(
                "the shim returned no stats for container {id}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: ContainerState) -> ContainerRecord {
        let mut r = ContainerRecord {
            id: "c1".into(),
            exit_code: 137,
            finished_at_ns: 42,
            ..Default::default()
        };
        r.set_state(state);
        r
    }

    fn shim(pid: u32, running: bool, exit: Option<Exit>) -> TaskState {
        TaskState {
            pid,
            running,
            exit,
            oom_killed: false,
        }
    }

    #[test]
    fn an_exited_record_is_stopped_with_its_recorded_exit() {
        let (status, pid, exit) = task_status(&record(ContainerState::Exited), None);
        assert_eq!((status, pid), (TaskStatus::Stopped, 0));
        assert_eq!(
            exit,
            Some(Exit {
                status: 137,
                at_ns: 42
            })
        );
    }

    #[test]
    fn a_live_record_takes_status_and_pid_from_the_shim() {
        let running = record(ContainerState::Running);
        assert_eq!(
            task_status(&running, Some(&shim(7, true, None))),
            (TaskStatus::Running, 7, None)
        );
        assert_eq!(
            task_status(&running, Some(&shim(7, false, None))),
            (TaskStatus::Paused, 7, None)
        );
        assert_eq!(
            task_status(
                &record(ContainerState::Created),
                Some(&shim(8, false, None))
            ),
            (TaskStatus::Created, 8, None)
        );
        assert_eq!(
            task_status(&running, None),
            (TaskStatus::Unknown, 0, None),
            "a shim that does not answer"
        );
    }

    #[test]
    fn an_exit_the_monitor_has_not_recorded_yet_shows_as_stopped() {
        let exit = Exit {
            status: 143,
            at_ns: 9,
        };
        assert_eq!(
            task_status(
                &record(ContainerState::Running),
                Some(&shim(7, false, Some(exit)))
            ),
            (TaskStatus::Stopped, 0, Some(exit))
        );
    }

    #[test]
    fn shim_refusals_map_by_target() {
        let e = op_error(
            "c1",
            "",
            TaskError::NotFound("process already finished".into()),
        );
        assert!(matches!(e, TaskOpError::Precondition { .. }), "{e}");
        let e = op_error("c1", "x", TaskError::NotFound("exec x not found".into()));
        assert!(matches!(e, TaskOpError::ProcessNotFound { .. }), "{e}");
        let e = op_error("c1", "", TaskError::Failed("runc kill failed".into()));
        assert!(
            matches!(e, TaskOpError::Container(ContainerError::Task { .. })),
            "{e}"
        );
        assert_eq!(e.to_string(), "container c1: runc kill failed");
    }

    #[test]
    fn stats_decode_from_v1_metrics_as_they_are() {
        let mut entry = MemoryEntry::new();
        entry.usage = 4096;
        let mut mem = MemoryStat::new();
        mem.usage = Some(entry).into();
        let mut m = Metrics::new();
        m.memory = Some(mem).into();
        let mut any = Any::new();
        any.type_url = METRICS_V1_TYPE_URL.into();
        any.value = m.write_to_bytes().unwrap();
        assert_eq!(decode_metrics(&any).unwrap(), m);

        any.type_url = "io.containerd.cgroups.v3.Metrics".into();
        let err = decode_metrics(&any).unwrap_err();
        assert!(err.to_string().contains("cgroups.v3"), "{err}");
        any.type_url = METRICS_V1_TYPE_URL.into();
        any.value = vec![0xff, 0xff, 0xff];
        assert!(decode_metrics(&any).is_err());
        any.type_url = METRICS_V2_TYPE_URL.into();
        assert!(decode_metrics(&any).is_err());
    }

    /// What berth-shim answers on a cgroup v2 host: the v2 message from the unified files.
    fn v2_answer() -> Any {
        let mut mem = v2::MemoryStat::new();
        mem.usage = 1_638_400;
        mem.usage_limit = 64 << 20;
        mem.max_usage = 2_097_152;
        mem.anon = 135_168;
        mem.file = 405_504;
        mem.inactive_file = 270_336;
        mem.active_file = 135_168;
        mem.pgfault = 1089;
        let mut events = v2::MemoryEvents::new();
        events.max = 12;
        events.oom = 2;
        events.oom_kill = 1;
        let mut cpu = v2::CPUStat::new();
        cpu.usage_usec = 30_000;
        cpu.user_usec = 20_000;
        cpu.system_usec = 10_000;
        cpu.nr_periods = 50;
        cpu.nr_throttled = 3;
        cpu.throttled_usec = 1500;
        let mut pids = v2::PidsStat::new();
        pids.current = 3;
        pids.limit = u64::MAX;
        let mut m = v2::Metrics::new();
        m.memory = Some(mem).into();
        m.memory_events = Some(events).into();
        m.cpu = Some(cpu).into();
        m.pids = Some(pids).into();
        let mut any = Any::new();
        any.type_url = METRICS_V2_TYPE_URL.into();
        any.value = m.write_to_bytes().unwrap();
        any
    }

    #[test]
    fn stats_decode_from_v2_metrics_mapped_to_v1() {
        let m = decode_metrics(&v2_answer()).unwrap();
        let mem = &m.memory;
        assert_eq!(
            (
                mem.usage.usage,
                mem.usage.limit,
                mem.usage.max,
                mem.usage.failcnt
            ),
            (1_638_400, 64 << 20, 2_097_152, 12)
        );
        assert_eq!((mem.rss, mem.total_rss), (135_168, 135_168));
        assert_eq!((mem.cache, mem.total_cache), (405_504, 405_504));
        assert_eq!(mem.total_inactive_file, 270_336);
        assert_eq!(mem.total_active_file, 135_168);
        assert_eq!(mem.total_pg_fault, 1089);
        assert!(mem.swap.is_none());
        assert_eq!(m.memory_oom_control.oom_kill, 1);
        let cpu = &m.cpu;
        assert_eq!(
            (cpu.usage.total, cpu.usage.user, cpu.usage.kernel),
            (30_000_000, 20_000_000, 10_000_000)
        );
        assert!(cpu.usage.per_cpu.is_empty());
        assert_eq!(
            (
                cpu.throttling.periods,
                cpu.throttling.throttled_periods,
                cpu.throttling.throttled_time
            ),
            (50, 3, 1_500_000)
        );
        assert_eq!((m.pids.current, m.pids.limit), (3, u64::MAX));
    }

    #[test]
    fn v2_metrics_without_controllers_map_to_empty_parts() {
        let mut any = Any::new();
        any.type_url = METRICS_V2_TYPE_URL.into();
        any.value = v2::Metrics::new().write_to_bytes().unwrap();
        assert_eq!(decode_metrics(&any).unwrap(), Metrics::new());
    }
}
