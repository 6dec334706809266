//! A container's cgroup reads: memory and CPU usage (Stats) and the OOM kill counter (State),
//! on cgroup v1 and cgroup v2 hosts.
//!
//! The container's cgroup comes from `/proc/<init pid>/cgroup`, read right after `runc create`,
//! and is located through the cgroup mounts in `/proc/self/mountinfo`:
//!
//! - v2 host (cgroup2 mounted at /sys/fs/cgroup, as berthd's node check decides): the
//!   `0::<path>` line names the container's dir in the unified hierarchy. Stats answers
//!   containerd's `io.containerd.cgroups.v2.Metrics`, as containerd's runc shim does.
//! - v1 or hybrid host (/sys/fs/cgroup a tmpfs of v1 mounts, perhaps with a controller-less
//!   cgroup2 at `unified`): the memory and cpuacct lines; the `0::` line is ignored. Stats
//!   answers `io.containerd.cgroups.v1.Metrics`.
//!
//! OOM: the kernel counts OOM kills per cgroup (v1 `memory.oom_control` `oom_kill`, kernel
//! 4.13+; v2 `memory.events` `oom_kill`). The counter is taken at creation, so a container was
//! OOM-killed when it rose since then.

use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::Message;

/// Type URL of containerd's cgroup v1 metrics message.
pub const METRICS_V1_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";
/// Type URL of containerd's cgroup v2 metrics message.
pub const METRICS_V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where a container's cgroup lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Layout {
    /// No cgroup found (the init was already gone, or no memory/cpuacct/unified line).
    #[default]
    Unknown,
    /// The v1 memory and cpuacct dirs.
    V1 {
        memory: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
    },
    /// The dir in the unified hierarchy.
    V2 { dir: PathBuf },
}

/// A container's cgroup, with its OOM kill counter as it was at creation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    layout: Layout,
    oom_kills_at_start: u64,
}

/// A Stats answer: containerd's metrics message of the host's cgroup version.
#[derive(Debug, Clone, PartialEq)]
pub enum ContainerMetrics {
    V1(v1::Metrics),
    V2(v2::Metrics),
}

impl ContainerMetrics {
    pub fn type_url(&self) -> &'static str {
        match self {
            ContainerMetrics::V1(_) => METRICS_V1_TYPE_URL,
            ContainerMetrics::V2(_) => METRICS_V2_TYPE_URL,
        }
    }

    pub fn write_to_bytes(&self) -> Result<Vec<u8>, containerd_shim_protos::protobuf::Error> {
        match self {
            ContainerMetrics::V1(m) => m.write_to_bytes(),
            ContainerMetrics::V2(m) => m.write_to_bytes(),
        }
    }
}

impl CgroupPaths {
    pub fn of_pid(pid: u32) -> CgroupPaths {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let layout = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|s| locate(&s, &mountinfo))
            .unwrap_or_default();
        CgroupPaths::new(layout)
    }

    /// Takes the OOM kill counter as the baseline.
    pub fn new(layout: Layout) -> CgroupPaths {
        let oom_kills_at_start = oom_kill_counter(&layout);
        CgroupPaths {
            layout,
            oom_kills_at_start,
        }
    }

    /// OOM kills in the container's cgroup since creation; 0 when unreadable.
    pub fn oom_kills(&self) -> u64 {
        oom_kill_counter(&self.layout).saturating_sub(self.oom_kills_at_start)
    }

    /// The metrics containerd reports for the host's cgroup version; `None` when no cgroup is
    /// known.
    pub fn metrics(&self) -> Option<ContainerMetrics> {
        match &self.layout {
            Layout::Unknown => None,
            Layout::V1 { memory, cpuacct } => Some(ContainerMetrics::V1(v1_metrics(
                memory.as_deref(),
                cpuacct.as_deref(),
            ))),
            Layout::V2 { dir } => Some(ContainerMetrics::V2(v2_metrics(dir))),
        }
    }
}

fn oom_kill_counter(layout: &Layout) -> u64 {
    match layout {
        Layout::Unknown | Layout::V1 { memory: None, .. } => 0,
        Layout::V1 {
            memory: Some(dir), ..
        } => read_oom_control(dir).oom_kill,
        Layout::V2 { dir } => read_memory_events(dir).oom_kill,
    }
}

/// containerd's v1 message, partly filled: memory usage, limit, max, failcnt (+ memsw), a few
/// memory.stat fields, cpuacct usage and the OOM control counters.
fn v1_metrics(memory: Option<&Path>, cpuacct: Option<&Path>) -> v1::Metrics {
    let mut m = v1::Metrics::new();
    if let Some(dir) = memory {
        let entry = |prefix: &str| {
            let mut e = v1::MemoryEntry::new();
            e.usage = read_u64(&dir.join(format!("{prefix}usage_in_bytes")));
            e.limit = read_u64(&dir.join(format!("{prefix}limit_in_bytes")));
            e.max = read_u64(&dir.join(format!("{prefix}max_usage_in_bytes")));
            e.failcnt = read_u64(&dir.join(format!("{prefix}failcnt")));
            e
        };
        let mut mem = v1::MemoryStat::new();
        mem.usage = Some(entry("memory.")).into();
        if dir.join("memory.memsw.usage_in_bytes").exists() {
            mem.swap = Some(entry("memory.memsw.")).into();
        }
        let stat = read_string(&dir.join("memory.stat"));
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
    if let Some(dir) = cpuacct {
        let mut usage = v1::CPUUsage::new();
        usage.total = read_u64(&dir.join("cpuacct.usage"));
        usage.user = read_u64(&dir.join("cpuacct.usage_user"));
        usage.kernel = read_u64(&dir.join("cpuacct.usage_sys"));
        usage.per_cpu = read_string(&dir.join("cpuacct.usage_percpu"))
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let mut cpu = v1::CPUStat::new();
        cpu.usage = Some(usage).into();
        m.cpu = Some(cpu).into();
    }
    m
}

/// containerd's v2 message from the unified dir: pids, cpu.stat, memory (current, max, peak,
/// swap, memory.stat), memory.events and io.stat. A controller not enabled for the dir has no
/// files there and leaves its part unset; `max` limits read as `u64::MAX`, as containerd reads
/// them.
fn v2_metrics(dir: &Path) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    if dir.join("pids.current").exists() {
        let mut pids = v2::PidsStat::new();
        pids.current = read_u64(&dir.join("pids.current"));
        pids.limit = read_u64(&dir.join("pids.max"));
        m.pids = Some(pids).into();
    }
    if let Some(text) = read_existing(&dir.join("cpu.stat")) {
        let mut cpu = v2::CPUStat::new();
        for (key, value) in parse_flat_keyed(&text) {
            match key {
                "usage_usec" => cpu.usage_usec = value,
                "user_usec" => cpu.user_usec = value,
                "system_usec" => cpu.system_usec = value,
                "nr_periods" => cpu.nr_periods = value,
                "nr_throttled" => cpu.nr_throttled = value,
                "throttled_usec" => cpu.throttled_usec = value,
                "nr_bursts" => cpu.nr_bursts = value,
                "burst_usec" => cpu.burst_usec = value,
                _ => {}
            }
        }
        m.cpu = Some(cpu).into();
    }
    if dir.join("memory.current").exists() {
        m.memory = Some(v2_memory(dir)).into();
    }
    if dir.join("memory.events").exists() {
        m.memory_events = Some(read_memory_events(dir)).into();
    }
    if let Some(text) = read_existing(&dir.join("io.stat")) {
        let mut io = v2::IOStat::new();
        io.usage = parse_io_stat(&text);
        m.io = Some(io).into();
    }
    m
}

fn v2_memory(dir: &Path) -> v2::MemoryStat {
    let mut mem = v2::MemoryStat::new();
    mem.usage = read_u64(&dir.join("memory.current"));
    mem.usage_limit = read_u64(&dir.join("memory.max"));
    // memory.peak exists from kernel 5.19, the swap files only with swap accounting.
    mem.max_usage = read_u64(&dir.join("memory.peak"));
    mem.swap_usage = read_u64(&dir.join("memory.swap.current"));
    mem.swap_limit = read_u64(&dir.join("memory.swap.max"));
    mem.swap_max_usage = read_u64(&dir.join("memory.swap.peak"));
    for (key, value) in parse_flat_keyed(&read_string(&dir.join("memory.stat"))) {
        let field = match key {
            "anon" => &mut mem.anon,
            "file" => &mut mem.file,
            "kernel_stack" => &mut mem.kernel_stack,
            "slab" => &mut mem.slab,
            "sock" => &mut mem.sock,
            "shmem" => &mut mem.shmem,
            "file_mapped" => &mut mem.file_mapped,
            "file_dirty" => &mut mem.file_dirty,
            "file_writeback" => &mut mem.file_writeback,
            "anon_thp" => &mut mem.anon_thp,
            "inactive_anon" => &mut mem.inactive_anon,
            "active_anon" => &mut mem.active_anon,
            "inactive_file" => &mut mem.inactive_file,
            "active_file" => &mut mem.active_file,
            "unevictable" => &mut mem.unevictable,
            "slab_reclaimable" => &mut mem.slab_reclaimable,
            "slab_unreclaimable" => &mut mem.slab_unreclaimable,
            "pgfault" => &mut mem.pgfault,
            "pgmajfault" => &mut mem.pgmajfault,
            "workingset_refault" => &mut mem.workingset_refault,
            "workingset_activate" => &mut mem.workingset_activate,
            "workingset_nodereclaim" => &mut mem.workingset_nodereclaim,
            "pgrefill" => &mut mem.pgrefill,
            "pgscan" => &mut mem.pgscan,
            "pgsteal" => &mut mem.pgsteal,
            "pgactivate" => &mut mem.pgactivate,
            "pgdeactivate" => &mut mem.pgdeactivate,
            "pglazyfree" => &mut mem.pglazyfree,
            "pglazyfreed" => &mut mem.pglazyfreed,
            "thp_fault_alloc" => &mut mem.thp_fault_alloc,
            "thp_collapse_alloc" => &mut mem.thp_collapse_alloc,
            _ => continue,
        };
        *field = value;
    }
    mem
}

/// The cgroup mounts of `/proc/self/mountinfo` that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    v1: Vec<V1Mount>,
    /// The cgroup root of the cgroup2 mount at /sys/fs/cgroup (a v2 host), if there is one.
    unified_root: Option<String>,
}

/// A cgroup v1 hierarchy: its controllers, where it is mounted, and the cgroup at the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mount {
    controllers: Vec<String>,
    mount_point: PathBuf,
    root: String,
}

impl Mounts {
    /// Reads the text of `/proc/self/mountinfo`. A cgroup2 mount elsewhere than
    /// /sys/fs/cgroup (the hybrid layout's `unified`) holds no controllers and is ignored.
    pub fn parse(mountinfo: &str) -> Mounts {
        let mut mounts = Mounts::default();
        for line in mountinfo.lines() {
            // Fields: id parent major:minor root mount-point options ... - fstype source opts
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mut pre = pre.split(' ');
            let (Some(root), Some(mount_point)) = (pre.nth(3), pre.next()) else {
                continue;
            };
            let mut post = post.split(' ');
            match (post.next(), post.nth(1)) {
                (Some("cgroup2"), _) if mount_point == CGROUP_ROOT => {
                    mounts.unified_root = Some(root.to_string());
                }
                (Some("cgroup"), Some(options)) => mounts.v1.push(V1Mount {
                    controllers: options.split(',').map(str::to_string).collect(),
                    mount_point: PathBuf::from(mount_point),
                    root: root.to_string(),
                }),
                _ => {}
            }
        }
        mounts
    }
}

/// The container's cgroup from the text of `/proc/<pid>/cgroup` and of `/proc/self/mountinfo`.
pub fn locate(proc_cgroup: &str, mountinfo: &str) -> Layout {
    let mounts = Mounts::parse(mountinfo);
    match &mounts.unified_root {
        Some(root) => {
            unified_dir(proc_cgroup, root).map_or(Layout::Unknown, |dir| Layout::V2 { dir })
        }
        None => match v1_dirs(proc_cgroup, &mounts.v1) {
            (None, None) => Layout::Unknown,
            (memory, cpuacct) => Layout::V1 { memory, cpuacct },
        },
    }
}

/// The dir of the `0::<path>` line under /sys/fs/cgroup; `root` is the cgroup at the mount (not
/// `/` when the shim runs in a cgroup namespace of its own).
fn unified_dir(proc_cgroup: &str, root: &str) -> Option<PathBuf> {
    let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let rel = path.strip_prefix(root).unwrap_or(path);
    Some(Path::new(CGROUP_ROOT).join(rel.trim_start_matches('/')))
}

/// The memory and cpuacct dirs from the v1 lines of `/proc/<pid>/cgroup`, located through the
/// v1 mounts (or under `/sys/fs/cgroup/<controller list>` when no mount names the controller).
fn v1_dirs(proc_cgroup: &str, mounts: &[V1Mount]) -> (Option<PathBuf>, Option<PathBuf>) {
    let (mut memory, mut cpuacct) = (None, None);
    for line in proc_cgroup.lines() {
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
                "memory" => memory = Some(dir.clone()),
                "cpuacct" => cpuacct = Some(dir.clone()),
                _ => {}
            }
        }
    }
    (memory, cpuacct)
}

/// `key value` lines (memory.stat, cpu.stat, memory.events, memory.oom_control).
fn parse_flat_keyed(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|l| {
        let (k, v) = l.split_once(' ')?;
        Some((k, v.trim().parse().ok()?))
    })
}

/// `major:minor key=value ...` lines of io.stat.
fn parse_io_stat(text: &str) -> Vec<v2::IOEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (major, minor) = fields.next()?.split_once(':')?;
            let mut e = v2::IOEntry::new();
            e.major = major.parse().ok()?;
            e.minor = minor.parse().ok()?;
            for (k, v) in fields.filter_map(|f| f.split_once('=')) {
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

fn read_oom_control(dir: &Path) -> v1::MemoryOomControl {
    let mut c = v1::MemoryOomControl::new();
    for (k, v) in parse_flat_keyed(&read_string(&dir.join("memory.oom_control"))) {
        match k {
            "oom_kill_disable" => c.oom_kill_disable = v,
            "under_oom" => c.under_oom = v,
            "oom_kill" => c.oom_kill = v,
            _ => {}
        }
    }
    c
}

fn read_memory_events(dir: &Path) -> v2::MemoryEvents {
    let mut e = v2::MemoryEvents::new();
    for (k, v) in parse_flat_keyed(&read_string(&dir.join("memory.events"))) {
        match k {
            "low" => e.low = v,
            "high" => e.high = v,
            "max" => e.max = v,
            "oom" => e.oom = v,
            "oom_kill" => e.oom_kill = v,
            "oom_group_kill" => e.oom_group_kill = v,
            _ => {}
        }
    }
    e
}

fn read_existing(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn read_string(path: &Path) -> String {
    read_existing(path).unwrap_or_default()
}

/// A single-value file; v2's `max` (no limit) reads as `u64::MAX`, absent or garbled as 0.
fn read_u64(path: &Path) -> u64 {
    match read_string(path).trim() {
        "max" => u64::MAX,
        s => s.parse().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hybrid host: v1 controllers, a controller-less cgroup2 at /sys/fs/cgroup/unified.
    const MOUNTINFO_HYBRID: &str = "\
24 30 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:10 - cgroup cgroup rw,cpu,cpuacct
27 24 0:25 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory
28 24 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:12 - cgroup2 cgroup2 rw
";

    const MOUNTINFO_V2: &str = "\
22 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
26 23 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    fn write(dir: &Path, files: &[(&str, &str)]) {
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn only_a_cgroup2_mount_at_sys_fs_cgroup_makes_a_v2_host() {
        let hybrid = Mounts::parse(MOUNTINFO_HYBRID);
        assert_eq!(hybrid.unified_root, None);
        assert_eq!(hybrid.v1.len(), 2);
        assert_eq!(
            hybrid.v1[0].mount_point,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert!(hybrid.v1[0].controllers.contains(&"cpuacct".to_string()));
        let v2 = Mounts::parse(MOUNTINFO_V2);
        assert_eq!(v2.unified_root.as_deref(), Some("/"));
        assert!(v2.v1.is_empty());
    }

    #[test]
    fn proc_cgroup_v1_lines_give_memory_and_cpuacct_dirs() {
        let text = "12:pids:/berth/c1\n4:cpu,cpuacct:/berth/c1\n9:memory:/berth/c1\n0::/berth/c1\n";
        assert_eq!(
            locate(text, MOUNTINFO_HYBRID),
            Layout::V1 {
                memory: Some("/sys/fs/cgroup/memory/berth/c1".into()),
                cpuacct: Some("/sys/fs/cgroup/cpu,cpuacct/berth/c1".into()),
            },
            "hybrid: the 0:: line does not make it v2"
        );
    }

    #[test]
    fn separately_mounted_cpuacct_is_found_without_mountinfo() {
        assert_eq!(
            locate("2:cpuacct:/c\n", ""),
            Layout::V1 {
                memory: None,
                cpuacct: Some("/sys/fs/cgroup/cpuacct/c".into()),
            }
        );
    }

    #[test]
    fn a_hybrid_host_with_only_the_unified_line_has_no_cgroup() {
        assert_eq!(locate("0::/berth/c1\n", MOUNTINFO_HYBRID), Layout::Unknown);
        assert_eq!(locate("0::/\n", MOUNTINFO_HYBRID), Layout::Unknown);
    }

    #[test]
    fn proc_cgroup_v2_line_gives_the_unified_dir() {
        assert_eq!(
            locate("0::/kubepods/besteffort/pod1/c1\n", MOUNTINFO_V2),
            Layout::V2 {
                dir: "/sys/fs/cgroup/kubepods/besteffort/pod1/c1".into()
            }
        );
        assert_eq!(locate("", MOUNTINFO_V2), Layout::Unknown);
    }

    #[test]
    fn a_cgroup_namespace_root_is_stripped_from_the_v2_path() {
        let mountinfo = "26 23 0:24 /berth /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            locate("0::/berth/c1\n", mountinfo),
            Layout::V2 {
                dir: "/sys/fs/cgroup/c1".into()
            }
        );
    }

    fn v1_tree(root: &Path) -> Layout {
        let (memory, cpuacct) = (root.join("memory"), root.join("cpuacct"));
        std::fs::create_dir_all(&memory).unwrap();
        std::fs::create_dir_all(&cpuacct).unwrap();
        write(
            &memory,
            &[
                ("memory.usage_in_bytes", "1638400\n"),
                ("memory.limit_in_bytes", "67108864\n"),
                ("memory.max_usage_in_bytes", "2097152\n"),
                ("memory.failcnt", "0\n"),
                (
                    "memory.stat",
                    "cache 405504\nrss 135168\nmapped_file 0\ninactive_file 270336\n\
                     active_file 135168\nhierarchical_memory_limit 67108864\n\
                     total_cache 405504\ntotal_rss 135168\ntotal_inactive_file 270336\n\
                     total_active_file 135168\npgfault 1089\npgmajfault 0\n",
                ),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                ),
            ],
        );
        write(
            &cpuacct,
            &[
                ("cpuacct.usage", "30000000\n"),
                ("cpuacct.usage_user", "20000000\n"),
                ("cpuacct.usage_sys", "10000000\n"),
                ("cpuacct.usage_percpu", "25000000 5000000 \n"),
            ],
        );
        Layout::V1 {
            memory: Some(memory),
            cpuacct: Some(cpuacct),
        }
    }

    /// The files as a 6.x kernel writes them for a container with a 64 MiB limit.
    fn v2_tree(dir: &Path) -> Layout {
        write(
            dir,
            &[
                ("memory.current", "1638400\n"),
                ("memory.max", "67108864\n"),
                ("memory.peak", "2097152\n"),
                ("memory.swap.current", "4096\n"),
                ("memory.swap.max", "max\n"),
                (
                    "memory.stat",
                    "anon 135168\nfile 405504\nkernel 245760\nkernel_stack 16384\n\
                     pagetables 49152\nsec_pagetables 0\npercpu 1200\nsock 0\nvmalloc 0\n\
                     shmem 0\nzswap 0\nzswapped 0\nfile_mapped 8192\nfile_dirty 0\n\
                     file_writeback 0\nswapcached 0\nanon_thp 0\nfile_thp 0\nshmem_thp 0\n\
                     inactive_anon 131072\nactive_anon 4096\ninactive_file 270336\n\
                     active_file 135168\nunevictable 0\nslab_reclaimable 98304\n\
                     slab_unreclaimable 65536\nslab 163840\nworkingset_refault_anon 0\n\
                     workingset_refault_file 0\npgscan 0\npgsteal 0\npgactivate 33\n\
                     pgdeactivate 0\npglazyfree 0\npglazyfreed 0\nthp_fault_alloc 0\n\
                     thp_collapse_alloc 0\npgfault 1089\npgmajfault 2\n",
                ),
                (
                    "memory.events",
                    "low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\noom_group_kill 0\n",
                ),
                (
                    "cpu.stat",
                    "usage_usec 30000\nuser_usec 20000\nsystem_usec 10000\n\
                     core_sched.force_idle_usec 0\nnr_periods 50\nnr_throttled 3\n\
                     throttled_usec 1500\nnr_bursts 0\nburst_usec 0\n",
                ),
                ("pids.current", "3\n"),
                ("pids.max", "max\n"),
                (
                    "io.stat",
                    "253:0 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n",
                ),
            ],
        );
        Layout::V2 {
            dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn v1_metrics_come_from_the_memory_and_cpuacct_files() {
        let root = tempfile::tempdir().unwrap();
        let cg = CgroupPaths::new(v1_tree(root.path()));
        let Some(ContainerMetrics::V1(m)) = cg.metrics() else {
            panic!("not v1: {:?}", cg.metrics());
        };
        assert_eq!(m.memory.usage.usage, 1638400);
        assert_eq!(m.memory.usage.limit, 64 << 20);
        assert_eq!(m.memory.usage.max, 2097152);
        assert!(m.memory.swap.is_none());
        assert_eq!(m.memory.total_inactive_file, 270336);
        assert_eq!(m.memory.total_rss, 135168);
        assert_eq!(m.memory.total_cache, 405504);
        assert_eq!(m.cpu.usage.total, 30_000_000);
        assert_eq!(m.cpu.usage.kernel, 10_000_000);
        assert_eq!(m.cpu.usage.per_cpu, vec![25_000_000, 5_000_000]);
        assert_eq!(
            ContainerMetrics::V1(m).type_url(),
            "io.containerd.cgroups.v1.Metrics"
        );
    }

    #[test]
    fn v2_metrics_come_from_the_unified_files() {
        let dir = tempfile::tempdir().unwrap();
        let cg = CgroupPaths::new(v2_tree(dir.path()));
        let Some(ContainerMetrics::V2(m)) = cg.metrics() else {
            panic!("not v2: {:?}", cg.metrics());
        };
        let mem = &m.memory;
        assert_eq!(
            (mem.usage, mem.usage_limit, mem.max_usage),
            (1638400, 64 << 20, 2097152)
        );
        assert_eq!((mem.swap_usage, mem.swap_limit), (4096, u64::MAX));
        assert_eq!((mem.anon, mem.file), (135168, 405504));
        assert_eq!((mem.inactive_file, mem.active_file), (270336, 135168));
        assert_eq!(
            (mem.file_mapped, mem.slab, mem.kernel_stack),
            (8192, 163840, 16384)
        );
        assert_eq!((mem.pgfault, mem.pgmajfault), (1089, 2));
        assert_eq!((m.memory_events.max, m.memory_events.oom), (12, 1));
        let cpu = &m.cpu;
        assert_eq!(
            (cpu.usage_usec, cpu.user_usec, cpu.system_usec),
            (30000, 20000, 10000)
        );
        assert_eq!(
            (cpu.nr_periods, cpu.nr_throttled, cpu.throttled_usec),
            (50, 3, 1500)
        );
        assert_eq!((m.pids.current, m.pids.limit), (3, u64::MAX));
        assert_eq!(m.io.usage.len(), 1);
        let io = &m.io.usage[0];
        assert_eq!(
            (io.major, io.minor, io.rbytes, io.wios),
            (253, 0, 1459200, 353)
        );

        let encoded = ContainerMetrics::V2(m.clone());
        assert_eq!(encoded.type_url(), "io.containerd.cgroups.v2.Metrics");
        let bytes = encoded.write_to_bytes().unwrap();
        assert_eq!(v2::Metrics::parse_from_bytes(&bytes).unwrap(), m);
    }

    #[test]
    fn v2_controllers_not_enabled_leave_their_part_unset() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            &[("cpu.stat", "usage_usec 7\nuser_usec 5\nsystem_usec 2\n")],
        );
        let cg = CgroupPaths::new(Layout::V2 {
            dir: dir.path().to_path_buf(),
        });
        let Some(ContainerMetrics::V2(m)) = cg.metrics() else {
            panic!("not v2");
        };
        assert_eq!(m.cpu.usage_usec, 7);
        assert!(m.memory.is_none() && m.pids.is_none() && m.memory_events.is_none());
        assert_eq!(cg.oom_kills(), 0);
    }

    #[test]
    fn no_cgroup_gives_no_metrics() {
        assert_eq!(CgroupPaths::new(Layout::Unknown).metrics(), None);
        assert_eq!(CgroupPaths::default().oom_kills(), 0);
    }

    #[test]
    fn v1_oom_kills_count_from_creation() {
        let root = tempfile::tempdir().unwrap();
        let layout = v1_tree(root.path());
        let memory = root.path().join("memory");
        write(
            &memory,
            &[(
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
            )],
        );
        let cg = CgroupPaths::new(layout);
        assert_eq!(
            cg.oom_kills(),
            0,
            "a kill before creation is not the container's"
        );
        write(
            &memory,
            &[(
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 1\noom_kill 3\n",
            )],
        );
        assert_eq!(cg.oom_kills(), 2);
        let Some(ContainerMetrics::V1(m)) = cg.metrics() else {
            panic!("not v1");
        };
        assert_eq!(
            (
                m.memory_oom_control.oom_kill,
                m.memory_oom_control.under_oom
            ),
            (3, 1)
        );
    }

    #[test]
    fn v2_oom_kills_count_from_creation_in_memory_events() {
        let dir = tempfile::tempdir().unwrap();
        let cg = CgroupPaths::new(v2_tree(dir.path()));
        assert_eq!(cg.oom_kills(), 0, "an oom event without a kill is no kill");
        write(
            dir.path(),
            &[(
                "memory.events",
                "low 0\nhigh 0\nmax 40\noom 2\noom_kill 1\noom_group_kill 0\n",
            )],
        );
        assert_eq!(cg.oom_kills(), 1);
        std::fs::remove_dir_all(dir.path()).unwrap();
        assert_eq!(cg.oom_kills(), 0, "a removed cgroup reads as no kill");
    }
}
