//! The cgroups berthd itself creates and removes: a pod's default cgroup (the parent of its
//! containers' cgroups when kubelet names none) and the cgroup that holds the shims.
//!
//! Container cgroups are the OCI runtime's: it creates them (and any missing parent) at create
//! and removes them at delete. The parent it created for a pod stays behind, so the sandbox
//! service removes it with the pod. Works on every hierarchy mounted under /sys/fs/cgroup, so
//! the same code serves cgroup v1 (one hierarchy per controller, plus named and hybrid ones)
//! and v2 (one unified hierarchy).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::sandbox::service::{PodCgroups, PodLimits};

/// The cgroup (relative to each hierarchy's root) that holds every shim.
pub const SHIM_CGROUP: &str = "berth/shims";

/// The cgroup (relative to each hierarchy's root) of pod `id` when kubelet names no parent.
pub fn default_pod_cgroup(id: &str) -> String {
    format!("berth/{id}")
}

/// The mounted cgroup hierarchies.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    roots: Vec<PathBuf>,
    /// The cgroup2 mounts among `roots` (the unified hierarchy, on a v2 or hybrid host).
    unified: Vec<PathBuf>,
}

impl CgroupFs {
    /// The hierarchies listed in a `/proc/self/mountinfo` text (cgroup and cgroup2 mounts).
    pub fn from_mountinfo(mountinfo: &str) -> CgroupFs {
        let mounts: Vec<(PathBuf, bool)> = mountinfo
            .lines()
            .filter_map(|line| {
                let mount_point = line.split_whitespace().nth(4)?;
                let fstype = line.split_once(" - ")?.1.split_whitespace().next()?;
                matches!(fstype, "cgroup" | "cgroup2")
                    .then(|| (PathBuf::from(mount_point), fstype == "cgroup2"))
            })
            .collect();
        let mut roots: Vec<PathBuf> = mounts.iter().map(|(p, _)| p.clone()).collect();
        // cpu and cpuacct share one hierarchy that is often mounted twice (and symlinked);
        // one entry per mount point is enough.
        roots.sort();
        roots.dedup();
        let mut unified: Vec<PathBuf> = mounts
            .into_iter()
            .filter_map(|(p, v2)| v2.then_some(p))
            .collect();
        unified.sort();
        unified.dedup();
        CgroupFs { roots, unified }
    }

    /// The hierarchies of this host.
    pub fn probe() -> std::io::Result<CgroupFs> {
        Ok(CgroupFs::from_mountinfo(&std::fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    }

    /// Removes cgroup `rel` from every hierarchy; one that does not exist is fine. Fails on
    /// the first hierarchy where it still holds processes or child cgroups.
    pub fn remove(&self, rel: &str) -> Result<(), String> {
        for root in &self.roots {
            let dir = root.join(rel.trim_start_matches('/'));
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(format!("removing cgroup {}: {e}", dir.display())),
            }
        }
        Ok(())
    }

    /// Creates cgroup `rel` in every hierarchy where it is missing and moves `pid` into it.
    /// A hierarchy that refuses (for example a v1 cpuset one whose cpus are not set yet, or a
    /// read-only one) is skipped: the process then stays where it was in that hierarchy only.
    pub fn enter(&self, rel: &str, pid: u32) -> Vec<String> {
        enter_roots(&self.roots, rel, "cgroup.procs", pid)
    }

    /// As [`CgroupFs::enter`], in the cgroup2 hierarchy only.
    pub fn enter_unified(&self, rel: &str, pid: u32) -> Vec<String> {
        enter_roots(&self.unified, rel, "cgroup.procs", pid)
    }

    /// Moves thread `tid` alone into cgroup `rel` of every cgroup v1 hierarchy (their `tasks`
    /// files take single threads; cgroup2 takes whole processes only). Processes the thread
    /// forks afterwards are born there, which costs nothing per process, where moving each
    /// one costs a few milliseconds per hierarchy on v1.
    pub fn enter_thread_v1(&self, rel: &str, tid: u32) -> Vec<String> {
        let v1: Vec<PathBuf> = self
            .roots
            .iter()
            .filter(|r| !self.unified.contains(r))
            .cloned()
            .collect();
        enter_roots(&v1, rel, "tasks", tid)
    }
}

fn enter_roots(roots: &[PathBuf], rel: &str, file: &str, id: u32) -> Vec<String> {
    let mut problems = Vec::new();
    for root in roots {
        let dir = root.join(rel.trim_start_matches('/'));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            problems.push(format!("creating {}: {e}", dir.display()));
            continue;
        }
        inherit_cpuset(root, rel);
        let target = dir.join(file);
        if let Err(e) = std::fs::write(&target, id.to_string()) {
            problems.push(format!("writing {}: {e}", target.display()));
        }
    }
    problems
}

/// A new v1 cpuset cgroup starts with empty cpus and mems and takes no process until they
/// are set; fill them in from each parent, top down, for every level `rel` created.
fn inherit_cpuset(root: &Path, rel: &str) {
    let mut parent = root.to_path_buf();
    for part in Path::new(rel.trim_start_matches('/')).components() {
        let dir = parent.join(part);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let target = dir.join(file);
            let empty = std::fs::read_to_string(&target).is_ok_and(|v| v.trim().is_empty());
            if empty && let Ok(value) = std::fs::read_to_string(parent.join(file)) {
                let _ = std::fs::write(&target, value.trim());
            }
        }
        parent = dir;
    }
}

impl PodCgroups for CgroupFs {
    fn create(&self, pod_id: &str, limits: &PodLimits) -> Result<(), String> {
        let rel = default_pod_cgroup(pod_id);
        let mut files: Vec<(&str, String)> = Vec::new();
        if let Some(m) = limits.memory_bytes {
            files.push(("memory.limit_in_bytes", m.to_string()));
            files.push(("memory.max", m.to_string()));
        }
        if let Some(s) = limits.cpu_shares {
            files.push(("cpu.shares", s.to_string()));
            files.push(("cpu.weight", shares_to_weight(s).to_string()));
        }
        if let Some((quota, period)) = limits.cpu_quota {
            files.push(("cpu.cfs_period_us", period.to_string()));
            files.push(("cpu.cfs_quota_us", quota.to_string()));
            files.push(("cpu.max", format!("{quota} {period}")));
        }
        for root in &self.roots {
            let dir = root.join(&rel);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating cgroup {}: {e}", dir.display()))?;
            inherit_cpuset(root, &rel);
            // Each hierarchy has the control files of its own controllers only.
            for (file, value) in &files {
                let path = dir.join(file);
                if path.exists() {
                    std::fs::write(&path, value)
                        .map_err(|e| format!("writing {value} to {}: {e}", path.display()))?;
                }
            }
        }
        Ok(())
    }

    fn remove(&self, pod_id: &str) -> Result<(), String> {
        CgroupFs::remove(self, &default_pod_cgroup(pod_id))
    }
}

/// cgroup v2 `cpu.weight` for v1 `cpu.shares`, as runc and the kernel docs convert them.
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.saturating_sub(2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
30 25 0:27 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
32 30 0:29 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
33 30 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
34 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
40 25 0:40 / /proc rw - proc proc rw
";

    #[test]
    fn every_cgroup_mount_is_a_root() {
        let fs = CgroupFs::from_mountinfo(HYBRID);
        let roots: Vec<&str> = fs.roots.iter().filter_map(|p| p.to_str()).collect();
        assert_eq!(
            roots,
            [
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified",
            ]
        );
    }

    #[test]
    fn the_unified_hierarchy_is_known_apart() {
        let fs = CgroupFs::from_mountinfo(HYBRID);
        assert_eq!(fs.unified, [PathBuf::from("/sys/fs/cgroup/unified")]);
    }

    #[test]
    fn threads_enter_v1_hierarchies_through_tasks_and_processes_cgroup2_through_procs() {
        let tmp = tempfile::tempdir().unwrap();
        let (v1, v2) = (tmp.path().join("memory"), tmp.path().join("unified"));
        let fs = CgroupFs {
            roots: vec![v1.clone(), v2.clone()],
            unified: vec![v2.clone()],
        };
        assert!(fs.enter_thread_v1("berth/shims", 11).is_empty());
        assert!(fs.enter_unified("berth/shims", 22).is_empty());
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(v1.join("berth/shims/tasks")), "11");
        assert!(!v2.join("berth/shims/tasks").exists());
        assert_eq!(read(v2.join("berth/shims/cgroup.procs")), "22");
        assert!(!v1.join("berth/shims/cgroup.procs").exists());
    }

    #[test]
    fn pod_limits_go_to_the_files_each_hierarchy_has() {
        let tmp = tempfile::tempdir().unwrap();
        let (mem, cpu) = (tmp.path().join("memory"), tmp.path().join("cpu"));
        // The kernel makes a controller's files in each new cgroup; the test makes them first.
        for (root, files) in [
            (&mem, &["memory.limit_in_bytes"][..]),
            (
                &cpu,
                &["cpu.shares", "cpu.cfs_quota_us", "cpu.cfs_period_us"][..],
            ),
        ] {
            std::fs::create_dir_all(root.join("berth/pod1")).unwrap();
            for f in files {
                std::fs::write(root.join("berth/pod1").join(f), "").unwrap();
            }
        }
        let fs = CgroupFs {
            roots: vec![mem.clone(), cpu.clone()],
            unified: Vec::new(),
        };
        let limits = PodLimits {
            memory_bytes: Some(1 << 30),
            cpu_shares: Some(1024),
            cpu_quota: Some((50_000, 100_000)),
        };
        PodCgroups::create(&fs, "pod1", &limits).unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(
            read(mem.join("berth/pod1/memory.limit_in_bytes")),
            "1073741824"
        );
        assert_eq!(read(cpu.join("berth/pod1/cpu.shares")), "1024");
        assert_eq!(read(cpu.join("berth/pod1/cpu.cfs_quota_us")), "50000");
        assert!(!mem.join("berth/pod1/cpu.shares").exists());
        assert!(!mem.join("berth/pod1/memory.max").exists());
        assert_eq!(shares_to_weight(1024), 39);
    }

    #[test]
    fn v2_has_one_root() {
        let fs = CgroupFs::from_mountinfo(
            "30 25 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n",
        );
        assert_eq!(fs.roots, [PathBuf::from("/sys/fs/cgroup")]);
    }

    #[test]
    fn remove_takes_the_directory_from_every_root_and_tolerates_missing_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(a.join("berth/pod1")).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let fs = CgroupFs {
            roots: vec![a.clone(), b],
            unified: Vec::new(),
        };
        fs.remove(&default_pod_cgroup("pod1")).unwrap();
        assert!(!a.join("berth/pod1").exists());
        fs.remove(&default_pod_cgroup("pod1")).unwrap();
    }

    #[test]
    fn a_cgroup_with_children_is_not_removed() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("berth/pod1/ctr")).unwrap();
        let fs = CgroupFs {
            roots: vec![tmp.path().to_path_buf()],
            unified: Vec::new(),
        };
        let err = fs.remove("berth/pod1").unwrap_err();
        assert!(err.contains("berth/pod1"), "{err}");
    }
}
