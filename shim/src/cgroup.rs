//! cgroup v1 reads for a container: memory and cpuacct usage (Stats) and the OOM kill counter.
//!
//! The container's cgroups come from `/proc/<init pid>/cgroup`, read right after `runc create`,
//! and are located through the cgroup v1 mounts in `/proc/self/mountinfo`. On a cgroup v2 host
//! both paths stay unset and Stats says so.

use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics,
};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A container's v1 memory and cpuacct cgroup directories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    pub memory: Option<PathBuf>,
    pub cpuacct: Option<PathBuf>,
}

impl CgroupPaths {
    pub fn of_pid(pid: u32) -> CgroupPaths {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|s| parse_proc_cgroup(&s, &v1_mounts(&mounts)))
            .unwrap_or_default()
    }

    /// The `oom_kill` counter of `memory.oom_control` (kernel 4.13+); 0 when unreadable.
    pub fn oom_kills(&self) -> u64 {
        self.memory
            .as_deref()
            .map(read_oom_control)
            .map(|c| c.oom_kill)
            .unwrap_or(0)
    }

    /// The metrics containerd reports for cgroup v1 (`io.containerd.cgroups.v1.Metrics`), partly
    /// filled: memory usage, limit, max, failcnt, a few memory.stat fields, cpuacct usage and the
    /// OOM control counters.
    pub fn metrics(&self) -> Option<Metrics> {
        if self.memory.is_none() && self.cpuacct.is_none() {
            return None;
        }
        let mut m = Metrics::new();
        if let Some(dir) = &self.memory {
            let entry = |prefix: &str| {
                let mut e = MemoryEntry::new();
                e.usage = read_u64(&dir.join(format!("{prefix}usage_in_bytes")));
                e.limit = read_u64(&dir.join(format!("{prefix}limit_in_bytes")));
                e.max = read_u64(&dir.join(format!("{prefix}max_usage_in_bytes")));
                e.failcnt = read_u64(&dir.join(format!("{prefix}failcnt")));
                e
            };
            let mut mem = MemoryStat::new();
            mem.usage = Some(entry("memory.")).into();
            if dir.join("memory.memsw.usage_in_bytes").exists() {
                mem.swap = Some(entry("memory.memsw.")).into();
            }
            let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
            for (key, value) in parse_flat_keyed(&stat) {
                match key {
                    "cache" => mem.cache = value,
                    "rss" => mem.rss = value,
                    "mapped_file" => mem.mapped_file = value,
                    "inactive_file" => mem.inactive_file = value,
                    "active_file" => mem.active_file = value,
                    "total_cache" => mem.total_cache = value,
                    "total_rss" => mem.total_rss = value,
                    "total_inactive_file" => mem.total_inactive_file = value,
                    "total_active_file" => mem.total_active_file = value,
                    "pgfault" => mem.pg_fault = value,
                    "pgmajfault" => mem.pg_maj_fault = value,
                    _ => {}
                }
            }
            m.memory = Some(mem).into();
            m.memory_oom_control = Some(read_oom_control(dir)).into();
        }
        if let Some(dir) = &self.cpuacct {
            let mut usage = CPUUsage::new();
            usage.total = read_u64(&dir.join("cpuacct.usage"));
            usage.user = read_u64(&dir.join("cpuacct.usage_user"));
            usage.kernel = read_u64(&dir.join("cpuacct.usage_sys"));
            usage.per_cpu = std::fs::read_to_string(dir.join("cpuacct.usage_percpu"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            let mut cpu = CPUStat::new();
            cpu.usage = Some(usage).into();
            m.cpu = Some(cpu).into();
        }
        Some(m)
    }
}

/// A cgroup v1 hierarchy: its controllers, where it is mounted, and the cgroup at the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mount {
    controllers: Vec<String>,
    mount_point: PathBuf,
    root: String,
}

/// The cgroup v1 mounts in the text of `/proc/self/mountinfo`.
pub fn v1_mounts(mountinfo: &str) -> Vec<V1Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut post = post.split(' ');
            if post.next()? != "cgroup" {
                return None;
            }
            let options = post.nth(1)?;
            let mut pre = pre.split(' ');
            let root = pre.nth(3)?.to_string();
            let mount_point = PathBuf::from(pre.next()?);
            let controllers = options.split(',').map(str::to_string).collect();
            Some(V1Mount {
                controllers,
                mount_point,
                root,
            })
        })
        .collect()
}

/// The memory and cpuacct dirs from the text of `/proc/<pid>/cgroup`, located through the v1
/// mounts (or under /sys/fs/cgroup/<controller list> when no mount names the controller).
pub fn parse_proc_cgroup(text: &str, mounts: &[V1Mount]) -> CgroupPaths {
    let mut paths = CgroupPaths::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            continue;
        }
        let first = controllers.split(',').next().unwrap_or_default();
        let dir = match mounts
            .iter()
            .find(|m| m.controllers.iter().any(|c| c == first))
        {
            Some(m) => {
                let rel = path.strip_prefix(m.root.as_str()).unwrap_or(path);
                m.mount_point.join(rel.trim_start_matches('/'))
            }
            None => Path::new(CGROUP_ROOT)
                .join(controllers)
                .join(path.trim_start_matches('/')),
        };
        for c in controllers.split(',') {
            match c {
                "memory" => paths.memory = Some(dir.clone()),
                "cpuacct" => paths.cpuacct = Some(dir.clone()),
                _ => {}
            }
        }
    }
    paths
}

fn parse_flat_keyed(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let (k, v) = l.split_once(' ')?;
        Some((k, v.trim().parse().ok()?))
    })
}

fn read_oom_control(dir: &Path) -> MemoryOomControl {
    let text = std::fs::read_to_string(dir.join("memory.oom_control")).unwrap_or_default();
    let mut c = MemoryOomControl::new();
    for (k, v) in parse_flat_keyed(&text) {
        match k {
            "oom_kill_disable" => c.oom_kill_disable = v,
            "under_oom" => c.under_oom = v,
            "oom_kill" => c.oom_kill = v,
            _ => {}
        }
    }
    c
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
24 30 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct
27 24 0:25 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory
28 24 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:12 - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_mounts_are_read_from_mountinfo() {
        let m = v1_mounts(MOUNTINFO);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert!(m[0].controllers.contains(&"cpuacct".to_string()));
    }

    #[test]
    fn proc_cgroup_v1_lines_give_memory_and_cpuacct_dirs() {
        let text = "12:pids:/berth/c1\n4:cpu,cpuacct:/berth/c1\n9:memory:/berth/c1\n0::/berth/c1\n";
        let p = parse_proc_cgroup(text, &v1_mounts(MOUNTINFO));
        assert_eq!(
            p.memory.unwrap(),
            Path::new("/sys/fs/cgroup/memory/berth/c1")
        );
        assert_eq!(
            p.cpuacct.unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct/berth/c1")
        );
    }

    #[test]
    fn separately_mounted_cpuacct_is_found_without_mountinfo() {
        let p = parse_proc_cgroup("2:cpuacct:/c\n", &[]);
        assert_eq!(p.cpuacct.unwrap(), Path::new("/sys/fs/cgroup/cpuacct/c"));
    }

    #[test]
    fn cgroup_v2_only_gives_no_v1_dirs() {
        assert_eq!(
            parse_proc_cgroup("0::/berth/c1\n", &v1_mounts(MOUNTINFO)),
            CgroupPaths::default()
        );
    }

    #[test]
    fn oom_control_counters_are_parsed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        let p = CgroupPaths {
            memory: Some(dir.path().to_path_buf()),
            cpuacct: None,
        };
        assert_eq!(p.oom_kills(), 2);
        let m = p.metrics().unwrap();
        assert_eq!(m.memory_oom_control.oom_kill, 2);
    }
}
