use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use berth_proto::shim::cgroups::metrics::{CPUStat, CPUUsage, MemoryEntry, MemoryStat, PidsStat};

use super::*;

/// A host whose clock, layer walks and readings the test sets.
#[derive(Default)]
struct FakeSource {
    now: AtomicI64,
    walks: AtomicU64,
    layer_bytes: AtomicU64,
}

impl UsageSource for FakeSource {
    fn container(&self, _pod: &str, _id: &str) -> Result<CgroupUsage, String> {
        Err("unused".into())
    }
    fn writable_layer(&self, id: &str) -> Result<(u64, u64), String> {
        if id == "gone" {
            return Err("snapshot gone not found".into());
        }
        self.walks.fetch_add(1, Ordering::SeqCst);
        Ok((self.layer_bytes.load(Ordering::SeqCst), 7))
    }
    fn layer_mountpoint(&self) -> PathBuf {
        "/var/lib/berth/snapshots".into()
    }
    fn cgroup_file(&self, _c: &str, _rel: &str, _file: &str) -> io::Result<String> {
        Err(io::ErrorKind::NotFound.into())
    }
    fn net_dev(&self, _pid: u32) -> io::Result<String> {
        Err(io::ErrorKind::NotFound.into())
    }
    fn now_ns(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }
}

fn cache() -> (Arc<FakeSource>, UsageCache) {
    let source = Arc::new(FakeSource::default());
    (source.clone(), UsageCache::new(source))
}

fn reading(cpu_ns: u64, usage: u64, limit: Option<u64>) -> CgroupUsage {
    CgroupUsage {
        cpu_ns,
        memory_usage: usage,
        memory_limit: limit,
        inactive_file: 100,
        rss: 300,
        page_faults: 9,
        major_page_faults: 1,
        processes: Some(2),
    }
}

#[test]
fn cpu_rate_comes_from_the_previous_reading_of_the_same_id() {
    let (source, cache) = cache();
    source.now.store(1_000_000_000, Ordering::SeqCst);
    let first = cache.usage("c1", &reading(5_000_000_000, 1000, None));
    assert_eq!(first.cpu.total_ns, 5_000_000_000);
    assert_eq!(first.cpu.nano_cores, None, "one reading gives no rate");
    assert_eq!(first.timestamp_ns, 1_000_000_000);

    // Half a core over two seconds.
    source.now.store(3_000_000_000, Ordering::SeqCst);
    let second = cache.usage("c1", &reading(6_000_000_000, 1000, None));
    assert_eq!(second.cpu.nano_cores, Some(500_000_000));
    // Another id has its own history.
    assert_eq!(cache.usage("c2", &reading(1, 1, None)).cpu.nano_cores, None);
    // A counter that went back (a restarted cgroup) gives no rate, nor does no time passing.
    source.now.store(4_000_000_000, Ordering::SeqCst);
    assert_eq!(cache.usage("c1", &reading(1, 1, None)).cpu.nano_cores, None);
    assert_eq!(cache.usage("c1", &reading(2, 1, None)).cpu.nano_cores, None);
    source.now.store(5_000_000_000, Ordering::SeqCst);
    assert_eq!(
        cache
            .usage("c1", &reading(250_000_002, 1, None))
            .cpu
            .nano_cores,
        Some(250_000_000)
    );
}

#[test]
fn working_set_leaves_out_inactive_page_cache() {
    let (_, cache) = cache();
    let m = cache.usage("c1", &reading(0, 1000, Some(4096))).memory;
    assert_eq!(
        m,
        MemoryUsage {
            working_set: 900,
            available: Some(3196),
            usage: 1000,
            rss: 300,
            page_faults: 9,
            major_page_faults: 1,
        }
    );
    let unlimited = cache.usage("c1", &reading(0, 50, None)).memory;
    assert_eq!(unlimited.working_set, 0, "saturates");
    assert_eq!(unlimited.available, None);
}

#[test]
fn a_layer_is_walked_at_most_once_per_ttl_and_forgotten_with_its_container() {
    let (source, cache) = cache();
    source.layer_bytes.store(4096, Ordering::SeqCst);
    source.now.store(42, Ordering::SeqCst);
    let first = cache.layer("c1").unwrap();
    assert_eq!(
        first,
        LayerUsage {
            timestamp_ns: 42,
            mountpoint: "/var/lib/berth/snapshots".into(),
            bytes: 4096,
            inodes: 7,
        }
    );
    source.layer_bytes.store(8192, Ordering::SeqCst);
    assert_eq!(cache.layer("c1").unwrap().bytes, 4096, "cached");
    assert_eq!(source.walks.load(Ordering::SeqCst), 1);
    assert!(cache.layer("gone").is_none());

    cache.forget_all_but(["other"].into_iter(), false);
    assert_eq!(cache.layer("c1").unwrap().bytes, 8192, "measured again");
    assert_eq!(source.walks.load(Ordering::SeqCst), 2);
}

#[test]
fn cpu_history_of_pods_goes_only_with_a_pod_listing() {
    let (source, cache) = cache();
    source.now.store(1, Ordering::SeqCst);
    cache.usage("pod1", &reading(10, 0, None));
    cache.forget_all_but(["c1"].into_iter(), false);
    source.now.store(11, Ordering::SeqCst);
    assert!(
        cache
            .usage("pod1", &reading(20, 0, None))
            .cpu
            .nano_cores
            .is_some(),
        "a container listing keeps pod history"
    );
    cache.forget_all_but(["c1"].into_iter(), true);
    assert!(
        cache
            .usage("pod1", &reading(30, 0, None))
            .cpu
            .nano_cores
            .is_none()
    );
}

#[test]
fn shim_metrics_map_to_a_reading() {
    let mut m = Metrics::new();
    let mut cpu = CPUStat::new();
    let mut cpu_usage = CPUUsage::new();
    cpu_usage.total = 123;
    cpu.usage = Some(cpu_usage).into();
    m.cpu = Some(cpu).into();
    let mut mem = MemoryStat::new();
    let mut entry = MemoryEntry::new();
    entry.usage = 2048;
    entry.limit = 9_223_372_036_854_771_712; // v1's "unlimited"
    mem.usage = Some(entry).into();
    mem.total_inactive_file = 512;
    mem.total_rss = 1024;
    mem.total_pg_fault = 5;
    mem.total_pg_maj_fault = 2;
    m.memory = Some(mem).into();
    let mut pids = PidsStat::new();
    pids.current = 3;
    m.pids = Some(pids).into();
    assert_eq!(
        CgroupUsage::from_metrics(&m),
        CgroupUsage {
            cpu_ns: 123,
            memory_usage: 2048,
            memory_limit: None,
            inactive_file: 512,
            rss: 1024,
            page_faults: 5,
            major_page_faults: 2,
            processes: Some(3),
        }
    );
    assert_eq!(
        CgroupUsage::from_metrics(&Metrics::new()),
        CgroupUsage::default()
    );
}

fn files(
    map: &'static [(&'static str, &'static str)],
) -> impl Fn(&str, &str) -> io::Result<String> {
    move |_controller, file| {
        map.iter()
            .find(|(f, _)| *f == file)
            .map(|(_, v)| v.to_string())
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }
}

#[test]
fn a_v1_pod_cgroup_is_read_from_its_hierarchies() {
    let read = files(&[
        ("cpuacct.usage", "987654321\n"),
        ("memory.usage_in_bytes", "1048576\n"),
        ("memory.limit_in_bytes", "67108864\n"),
        (
            "memory.stat",
            "cache 10\nrss 20\ntotal_cache 4096\ntotal_rss 8192\ntotal_inactive_file 4096\ntotal_pgfault 77\ntotal_pgmajfault 3\n",
        ),
        ("pids.current", "4\n"),
    ]);
    assert_eq!(
        cgroup_v1(read).unwrap(),
        CgroupUsage {
            cpu_ns: 987_654_321,
            memory_usage: 1_048_576,
            memory_limit: Some(67_108_864),
            inactive_file: 4096,
            rss: 8192,
            page_faults: 77,
            major_page_faults: 3,
            processes: Some(4),
        }
    );
    let no_memory = files(&[("cpuacct.usage", "1\n")]);
    assert!(cgroup_v1(no_memory).is_err());
}

#[test]
fn a_v2_pod_cgroup_is_read_from_its_directory() {
    let read = files(&[
        (
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        ),
        ("memory.current", "2097152\n"),
        ("memory.max", "max\n"),
        (
            "memory.stat",
            "anon 1024\nfile 4096\ninactive_file 2048\npgfault 12\npgmajfault 1\n",
        ),
    ]);
    assert_eq!(
        cgroup_v2(read).unwrap(),
        CgroupUsage {
            cpu_ns: 1_500_000,
            memory_usage: 2_097_152,
            memory_limit: None,
            inactive_file: 2048,
            rss: 1024,
            page_faults: 12,
            major_page_faults: 1,
            processes: None,
        }
    );
}

#[test]
fn net_dev_gives_every_interface_but_loopback() {
    let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:    5000      40    1    0    0     0          0         0     3000      30    2    0    0     0       0          0
  net1:      10       1    0    0    0     0          0         0       20       2    0    0    0     0       0          0
";
    let usage = network_usage(text, 9);
    assert_eq!(usage.timestamp_ns, 9);
    assert_eq!(
        usage.default_interface,
        Some(InterfaceUsage {
            name: "eth0".into(),
            rx_bytes: 5000,
            rx_errors: 1,
            tx_bytes: 3000,
            tx_errors: 2,
        })
    );
    let names: Vec<&str> = usage.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["eth0", "net1"]);
    assert_eq!(network_usage("", 0).default_interface, None);
}
