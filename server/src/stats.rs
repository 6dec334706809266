//! Resource usage of containers and pods, for the CRI stats calls kubelet polls (every 10 s
//! or so, for every container at once): CPU, memory and process counts from cgroups (a
//! container's through its shim, a pod's from its own cgroup), a writable layer's disk use from
//! the snapshotter, a pod's network counters from its network namespace.
//!
//! What kubelet cannot get from one sample is kept between calls: the previous CPU reading of
//! each container and pod (CPU rate = the difference over the time between two calls, as
//! containerd computes `usage_nano_cores`), and each writable layer's disk use, which takes a
//! walk of the layer's files and so is re-measured at most every [`LAYER_TTL`]. Entries of
//! containers and pods that are gone are dropped whenever a list call no longer sees them.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_proto::shim::cgroups::metrics::Metrics;
use berth_snapshotter::Snapshotter;
use berth_store::{ContainerState, SandboxState};

use crate::cgroups::default_pod_cgroup;
use crate::containers::inspect::TaskProbe;
use crate::containers::service::{Container, ContainerError, Containers};
use crate::node::CgroupVersion;
use crate::sandbox::service::{Sandbox, SandboxError, Sandboxes};

/// How long a writable layer's measured disk use is reused.
pub const LAYER_TTL: Duration = Duration::from_secs(10);

/// A v1 memory limit at or above this is no limit (v1 shows "unlimited" as a page-rounded
/// i64::MAX, v2 as u64::MAX once mapped), as containerd reads it.
const UNLIMITED: u64 = 1 << 62;

/// One reading of a cgroup, from a container's shim or a pod's cgroup files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// CPU time used since the cgroup was made, in nanoseconds.
    pub cpu_ns: u64,
    pub memory_usage: u64,
    /// `None`: no memory limit.
    pub memory_limit: Option<u64>,
    /// Page cache that can be reclaimed at once: what working set leaves out.
    pub inactive_file: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub processes: Option<u64>,
}

impl CgroupUsage {
    /// A shim's Stats answer (containerd's v1 metrics, v2 already mapped to them).
    pub fn from_metrics(m: &Metrics) -> CgroupUsage {
        let mut out = CgroupUsage::default();
        if let Some(cpu) = m.cpu.as_ref()
            && let Some(usage) = cpu.usage.as_ref()
        {
            out.cpu_ns = usage.total;
        }
        if let Some(mem) = m.memory.as_ref() {
            if let Some(usage) = mem.usage.as_ref() {
                out.memory_usage = usage.usage;
                out.memory_limit = Some(usage.limit).filter(|l| *l < UNLIMITED);
            }
            out.inactive_file = mem.total_inactive_file;
            out.rss = mem.total_rss;
            out.page_faults = mem.total_pg_fault;
            out.major_page_faults = mem.total_pg_maj_fault;
        }
        out.processes = m.pids.as_ref().map(|p| p.current);
        out
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuUsage {
    pub total_ns: u64,
    /// CPU used since the previous reading, in billionths of a core; `None` on the first.
    pub nano_cores: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Usage less reclaimable page cache: what kubelet evicts on.
    pub working_set: u64,
    /// Limit less working set; `None` without a limit.
    pub available: Option<u64>,
    pub usage: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
}

/// CPU and memory of a container or pod at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceUsage {
    pub timestamp_ns: i64,
    pub cpu: CpuUsage,
    pub memory: MemoryUsage,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerUsage {
    pub timestamp_ns: i64,
    /// The filesystem the layer lives on (the snapshotter's root).
    pub mountpoint: PathBuf,
    pub bytes: u64,
    pub inodes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceUsage {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkUsage {
    pub timestamp_ns: i64,
    /// `eth0`, the interface CNI gives a pod.
    pub default_interface: Option<InterfaceUsage>,
    /// Every interface but loopback.
    pub interfaces: Vec<InterfaceUsage>,
}

#[derive(Debug, Clone)]
pub struct ContainerStats {
    pub container: Container,
    /// `None` unless the container runs.
    pub usage: Option<ResourceUsage>,
    pub writable_layer: Option<LayerUsage>,
}

#[derive(Debug, Clone)]
pub struct PodStats {
    pub pod: Sandbox,
    /// `None` unless the pod is ready and its cgroup readable.
    pub usage: Option<ResourceUsage>,
    pub processes: Option<u64>,
    pub network: Option<NetworkUsage>,
    pub containers: Vec<ContainerStats>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// What stats read from the host, a seam for the unit tests.
pub trait UsageSource: Send + Sync {
    /// A running container's cgroup, from its shim.
    fn container(&self, pod: &str, id: &str) -> Result<CgroupUsage, String>;
    /// Disk use (bytes, inodes) of a container's writable layer.
    fn writable_layer(&self, id: &str) -> Result<(u64, u64), String>;
    /// Where writable layers live.
    fn layer_mountpoint(&self) -> PathBuf;
    /// File `file` of cgroup `rel`, in `controller`'s v1 hierarchy or the v2 one.
    fn cgroup_file(&self, controller: &str, rel: &str, file: &str) -> io::Result<String>;
    /// `/proc/<pid>/net/dev`: the counters of the network namespace `pid` is in.
    fn net_dev(&self, pid: u32) -> io::Result<String>;
    /// The wall clock, in nanoseconds since the epoch.
    fn now_ns(&self) -> i64;
}

#[derive(Default)]
struct Cache {
    /// Previous CPU reading per container or pod id: (timestamp, total ns).
    cpu: HashMap<String, (i64, u64)>,
    layers: HashMap<String, (Instant, LayerUsage)>,
}

/// The readings kept between calls, over a [`UsageSource`].
pub struct UsageCache {
    source: Arc<dyn UsageSource>,
    cache: Mutex<Cache>,
}

pub struct Stats {
    containers: Arc<Containers>,
    sandboxes: Arc<Sandboxes>,
    cgroup: CgroupVersion,
    cache: UsageCache,
}

impl UsageCache {
    pub fn new(source: Arc<dyn UsageSource>) -> UsageCache {
        UsageCache {
            source,
            cache: Mutex::new(Cache::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops cache entries of ids not in `live` (container ids only, unless `pods_too`).
    fn forget_all_but<'a>(&self, live: impl Iterator<Item = &'a str>, pods_too: bool) {
        let live: HashSet<&str> = live.collect();
        let mut cache = self.lock();
        if pods_too {
            cache.cpu.retain(|id, _| live.contains(id.as_str()));
        }
        cache.layers.retain(|id, _| live.contains(id.as_str()));
    }

    /// The reading as CRI reports it, with the CPU rate since the previous reading of `id`.
    fn usage(&self, id: &str, cg: &CgroupUsage) -> ResourceUsage {
        let now = self.source.now_ns();
        let previous = self.lock().cpu.insert(id.to_string(), (now, cg.cpu_ns));
        let nano_cores = previous.and_then(|(then, total)| {
            let elapsed = u64::try_from(now.checked_sub(then)?)
                .ok()
                .filter(|e| *e > 0)?;
            let used = cg.cpu_ns.checked_sub(total)?;
            u64::try_from(u128::from(used) * 1_000_000_000 / u128::from(elapsed)).ok()
        });
        let working_set = cg.memory_usage.saturating_sub(cg.inactive_file);
        ResourceUsage {
            timestamp_ns: now,
            cpu: CpuUsage {
                total_ns: cg.cpu_ns,
                nano_cores,
            },
            memory: MemoryUsage {
                working_set,
                available: cg.memory_limit.map(|l| l.saturating_sub(working_set)),
                usage: cg.memory_usage,
                rss: cg.rss,
                page_faults: cg.page_faults,
                major_page_faults: cg.major_page_faults,
            },
        }
    }

    fn layer(&self, id: &str) -> Option<LayerUsage> {
        if let Some((at, usage)) = self.lock().layers.get(id)
            && at.elapsed() < LAYER_TTL
        {
            return Some(usage.clone());
        }
        // Measured without the cache lock: a large layer must not hold up other calls.
        match self.source.writable_layer(id) {
            Ok((bytes, inodes)) => {
                let usage = LayerUsage {
                    timestamp_ns: self.source.now_ns(),
                    mountpoint: self.source.layer_mountpoint(),
                    bytes,
                    inodes,
                };
                self.lock()
                    .layers
                    .insert(id.to_string(), (Instant::now(), usage.clone()));
                Some(usage)
            }
            Err(e) => {
                tracing::debug!(container.id = %id, error = %e, "writable layer usage");
                None
            }
        }
    }
}

impl Stats {
    pub fn new(
        containers: Arc<Containers>,
        sandboxes: Arc<Sandboxes>,
        source: Arc<dyn UsageSource>,
        cgroup: CgroupVersion,
    ) -> Stats {
        Stats {
            containers,
            sandboxes,
            cgroup,
            cache: UsageCache::new(source),
        }
    }

    /// ContainerStats: NotFound for an unknown container.
    pub fn container(&self, id: &str) -> Result<ContainerStats, StatsError> {
        let c = self.containers.status(id)?;
        Ok(self.container_stats(c))
    }

    /// ListContainerStats: every container `keep` accepts.
    pub fn containers(
        &self,
        keep: impl Fn(&Container) -> bool,
    ) -> Result<Vec<ContainerStats>, StatsError> {
        let all = self.containers.list()?;
        self.cache
            .forget_all_but(all.iter().map(|c| c.record.id.as_str()), false);
        Ok(all
            .into_iter()
            .filter(|c| keep(c))
            .map(|c| self.container_stats(c))
            .collect())
    }

    /// PodSandboxStats: NotFound for an unknown pod.
    pub fn pod(&self, id: &str) -> Result<PodStats, StatsError> {
        let pod = self.sandboxes.status(id)?;
        let containers = self.containers.list()?;
        Ok(self.pod_stats(pod, &containers))
    }

    /// ListPodSandboxStats: every pod `keep` accepts.
    pub fn pods(&self, keep: impl Fn(&Sandbox) -> bool) -> Result<Vec<PodStats>, StatsError> {
        let pods = self.sandboxes.list()?;
        let containers = self.containers.list()?;
        self.cache.forget_all_but(
            pods.iter()
                .map(|p| p.record.id.as_str())
                .chain(containers.iter().map(|c| c.record.id.as_str())),
            true,
        );
        Ok(pods
            .into_iter()
            .filter(|p| keep(p))
            .map(|p| self.pod_stats(p, &containers))
            .collect())
    }

    fn container_stats(&self, container: Container) -> ContainerStats {
        let r = &container.record;
        let usage = if r.state() == ContainerState::Running {
            match self.cache.source.container(&r.sandbox_id, &r.id) {
                Ok(cg) => Some(self.cache.usage(&r.id, &cg)),
                Err(e) => {
                    // It may have exited since it was listed.
                    tracing::debug!(container.id = %r.id, error = %e, "container stats");
                    None
                }
            }
        } else {
            None
        };
        let writable_layer = self.cache.layer(&r.id);
        ContainerStats {
            container,
            usage,
            writable_layer,
        }
    }

    fn pod_stats(&self, pod: Sandbox, all: &[Container]) -> PodStats {
        let id = pod.record.id.clone();
        let containers: Vec<ContainerStats> = all
            .iter()
            .filter(|c| c.record.sandbox_id == id)
            .map(|c| self.container_stats(c.clone()))
            .collect();
        let ready = pod.state() == SandboxState::Ready;
        let rel = pod
            .config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.trim_matches('/').to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| default_pod_cgroup(&id));
        let cgroup = if ready {
            match self.pod_cgroup(&rel) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    tracing::debug!(pod.id = %id, cgroup = %rel, error = %e, "pod cgroup stats");
                    None
                }
            }
        } else {
            None
        };
        let usage = cgroup.as_ref().map(|cg| self.cache.usage(&id, cg));
        // The namespace's counters, read through any process in it: a running container's.
        let network = ready
            .then(|| {
                containers
                    .iter()
                    .filter(|c| c.usage.is_some())
                    .find_map(|c| {
                        let (pid, _) = self.containers.runtime_info(&c.container);
                        (pid != 0).then_some(pid)
                    })
            })
            .flatten()
            .and_then(|pid| self.cache.source.net_dev(pid).ok())
            .map(|text| network_usage(&text, self.cache.source.now_ns()));
        PodStats {
            processes: cgroup.and_then(|cg| cg.processes),
            pod,
            usage,
            network,
            containers,
        }
    }

    fn pod_cgroup(&self, rel: &str) -> io::Result<CgroupUsage> {
        let read =
            |controller: &str, file: &str| self.cache.source.cgroup_file(controller, rel, file);
        match self.cgroup {
            CgroupVersion::V1 => cgroup_v1(read),
            CgroupVersion::V2 => cgroup_v2(read),
        }
    }
}

/// The value of `key` in a `key value` per line file (memory.stat, cpu.stat).
fn stat_value(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

fn number(text: io::Result<String>) -> io::Result<u64> {
    let text = text?;
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}: {e}")))
}

/// A cgroup v1 reading: cpuacct, memory and pids hierarchies.
fn cgroup_v1(read: impl Fn(&str, &str) -> io::Result<String>) -> io::Result<CgroupUsage> {
    let stat = read("memory", "memory.stat")?;
    let limit = number(read("memory", "memory.limit_in_bytes"))?;
    Ok(CgroupUsage {
        cpu_ns: number(read("cpuacct", "cpuacct.usage"))?,
        memory_usage: number(read("memory", "memory.usage_in_bytes"))?,
        memory_limit: Some(limit).filter(|l| *l < UNLIMITED),
        inactive_file: stat_value(&stat, "total_inactive_file"),
        rss: stat_value(&stat, "total_rss"),
        page_faults: stat_value(&stat, "total_pgfault"),
        major_page_faults: stat_value(&stat, "total_pgmajfault"),
        processes: number(read("pids", "pids.current")).ok(),
    })
}

/// A cgroup v2 reading: cpu.stat, memory.* and pids.current of one directory.
fn cgroup_v2(read: impl Fn(&str, &str) -> io::Result<String>) -> io::Result<CgroupUsage> {
    let stat = read("memory", "memory.stat")?;
    let max = read("memory", "memory.max")?;
    Ok(CgroupUsage {
        cpu_ns: stat_value(&read("cpu", "cpu.stat")?, "usage_usec").saturating_mul(1000),
        memory_usage: number(read("memory", "memory.current"))?,
        memory_limit: max.trim().parse().ok(),
        inactive_file: stat_value(&stat, "inactive_file"),
        rss: stat_value(&stat, "anon"),
        page_faults: stat_value(&stat, "pgfault"),
        major_page_faults: stat_value(&stat, "pgmajfault"),
        processes: number(read("pids", "pids.current")).ok(),
    })
}

/// Parses `/proc/<pid>/net/dev`: per interface, receive bytes and errors are the 1st and 3rd
/// counters, transmit bytes and errors the 9th and 11th.
fn network_usage(text: &str, timestamp_ns: i64) -> NetworkUsage {
    let interfaces: Vec<InterfaceUsage> = text
        .lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            let n: Vec<u64> = counters
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            (name != "lo" && n.len() >= 11).then(|| InterfaceUsage {
                name: name.to_string(),
                rx_bytes: n[0],
                rx_errors: n[2],
                tx_bytes: n[8],
                tx_errors: n[10],
            })
        })
        .collect();
    NetworkUsage {
        timestamp_ns,
        default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(),
        interfaces,
    }
}

/// The real host: shims through [`TaskProbe`], the snapshotter, /sys/fs/cgroup and /proc.
pub struct HostUsage {
    pub probe: Arc<dyn TaskProbe>,
    pub snapshots: Arc<dyn Snapshotter>,
    pub snapshot_root: PathBuf,
    pub cgroup: CgroupVersion,
}

impl UsageSource for HostUsage {
    fn container(&self, pod: &str, id: &str) -> Result<CgroupUsage, String> {
        self.probe
            .stats(pod, id)
            .map(|m| CgroupUsage::from_metrics(&m))
            .map_err(|e| e.to_string())
    }

    fn writable_layer(&self, id: &str) -> Result<(u64, u64), String> {
        self.snapshots
            .usage(id)
            .map(|u| (u.bytes, u.inodes))
            .map_err(|e| e.to_string())
    }

    fn layer_mountpoint(&self) -> PathBuf {
        self.snapshot_root.clone()
    }

    fn cgroup_file(&self, controller: &str, rel: &str, file: &str) -> io::Result<String> {
        let root = PathBuf::from("/sys/fs/cgroup");
        let dir = match self.cgroup {
            CgroupVersion::V1 => root.join(controller),
            CgroupVersion::V2 => root,
        };
        std::fs::read_to_string(dir.join(rel).join(file))
    }

    fn net_dev(&self, pid: u32) -> io::Result<String> {
        std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
    }

    fn now_ns(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;
