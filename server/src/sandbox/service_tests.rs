//! The sandbox state machine with fake namespaces, network and shims on the in-memory store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use berth_proto::cri::{
    DnsConfig, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption,
    PodSandboxMetadata, PortMapping, UserNamespace,
};

use super::*;

#[derive(Default)]
struct FakeNs {
    pinned: Mutex<BTreeMap<PathBuf, Option<String>>>,
    fail: Mutex<Option<Namespace>>,
}

impl NamespacePinner for FakeNs {
    fn pin(
        &self,
        ns: Namespace,
        path: &Path,
        hostname: Option<&str>,
    ) -> Result<(), NamespaceError> {
        if *self.fail.lock().unwrap() == Some(ns) {
            return Err(NamespaceError::Thread {
                ns: ns.name(),
                path: path.to_path_buf(),
            });
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "").unwrap();
        self.pinned
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), hostname.map(String::from));
        Ok(())
    }

    fn remove(&self, path: &Path) -> Result<(), NamespaceError> {
        self.pinned.lock().unwrap().remove(path);
        let _ = std::fs::remove_file(path);
        Ok(())
    }

    /// A pod's shm counts as pinned, with its size as the "hostname".
    fn mount_shm(&self, path: &Path, size: u64) -> Result<(), NamespaceError> {
        std::fs::create_dir_all(path).unwrap();
        self.pinned
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), Some(size.to_string()));
        Ok(())
    }

    fn remove_shm(&self, path: &Path) -> Result<(), NamespaceError> {
        self.pinned.lock().unwrap().remove(path);
        let _ = std::fs::remove_dir(path);
        Ok(())
    }
}

#[derive(Default)]
struct FakeNet {
    not_ready: Mutex<Option<String>>,
    fail_setup: Mutex<Option<String>>,
    fail_teardown: Mutex<bool>,
    attached: Mutex<BTreeMap<String, NetworkAttachment>>,
    next_ip: Mutex<u8>,
}

impl PodNetwork for FakeNet {
    fn ready(&self) -> Result<(), NetworkError> {
        match &*self.not_ready.lock().unwrap() {
            Some(reason) => Err(NetworkError::NotReady(reason.clone())),
            None => Ok(()),
        }
    }

    fn setup(&self, pod: &NetworkAttachment) -> Result<Vec<IpAddr>, NetworkError> {
        // Like a real plugin: a failed ADD may leave something behind for DEL to release.
        self.attached
            .lock()
            .unwrap()
            .insert(pod.pod_id.clone(), pod.clone());
        if let Some(msg) = &*self.fail_setup.lock().unwrap() {
            return Err(NetworkError::Plugin(msg.clone()));
        }
        let mut n = self.next_ip.lock().unwrap();
        *n += 1;
        Ok(vec![format!("10.9.0.{}", *n + 1).parse().unwrap()])
    }

    fn teardown(&self, pod: &NetworkAttachment) -> Result<(), NetworkError> {
        if *self.fail_teardown.lock().unwrap() {
            return Err(NetworkError::Plugin("plugin \"gone\" not found".into()));
        }
        self.attached.lock().unwrap().remove(&pod.pod_id);
        Ok(())
    }
}

#[derive(Default)]
struct FakeShims {
    running: Mutex<BTreeMap<String, u32>>,
    fail_start: Mutex<bool>,
    reconnected: Mutex<BTreeSet<String>>,
    next_pid: Mutex<u32>,
}

impl ShimLauncher for FakeShims {
    fn start(&self, id: &str, _runtime: &Path, share_pid: bool) -> Result<ShimProcess, ShimError> {
        let mut pid = self.next_pid.lock().unwrap();
        *pid += 1;
        // Started, then failed (say, to connect): it must still be stopped by id.
        self.running.lock().unwrap().insert(id.to_string(), *pid);
        if *self.fail_start.lock().unwrap() {
            return Err(ShimError::Start {
                id: id.to_string(),
                message: "no address".into(),
            });
        }
        Ok(ShimProcess {
            address: format!("unix:///shims/{id}/shim.sock"),
            pid: *pid,
            pid_holder: if share_pid { *pid + 1000 } else { 0 },
        })
    }

    fn alive(&self, id: &str, shim: &ShimProcess) -> bool {
        self.running.lock().unwrap().get(id) == Some(&shim.pid)
    }

    fn reconnect(&self, id: &str, _shim: &ShimProcess) -> Result<(), ShimError> {
        self.reconnected.lock().unwrap().insert(id.to_string());
        Ok(())
    }

    fn stop(&self, id: &str, _pid: Option<u32>) -> Result<(), ShimError> {
        self.running.lock().unwrap().remove(id);
        Ok(())
    }
}

/// Records the pod cgroups removed; pods in `busy` still hold processes.
#[derive(Default)]
struct FakeCgroups {
    created: Mutex<Vec<(String, PodLimits)>>,
    removed: Mutex<Vec<String>>,
    busy: Mutex<BTreeSet<String>>,
}

impl PodCgroups for FakeCgroups {
    fn create(&self, pod_id: &str, limits: &PodLimits) -> Result<(), String> {
        self.created
            .lock()
            .unwrap()
            .push((pod_id.to_string(), *limits));
        Ok(())
    }

    fn remove(&self, pod_id: &str) -> Result<(), String> {
        if self.busy.lock().unwrap().contains(pod_id) {
            return Err(format!("removing cgroup berth/{pod_id}: busy"));
        }
        self.removed.lock().unwrap().push(pod_id.to_string());
        Ok(())
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    ns: Arc<FakeNs>,
    net: Arc<FakeNet>,
    shims: Arc<FakeShims>,
    cgroups: Arc<FakeCgroups>,
    svc: Sandboxes,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::in_memory();
    let ns = Arc::new(FakeNs::default());
    let net = Arc::new(FakeNet::default());
    let shims = Arc::new(FakeShims::default());
    let cgroups = Arc::new(FakeCgroups::default());
    std::fs::write(dir.path().join("host-resolv"), "nameserver 192.0.2.53\n").unwrap();
    std::fs::write(dir.path().join("host-hosts"), "127.0.0.1 localhost host\n").unwrap();
    let svc = service(dir.path(), &store, &ns, &net, &shims, &cgroups);
    Fixture {
        dir,
        store,
        ns,
        net,
        shims,
        cgroups,
        svc,
    }
}

fn service(
    dir: &Path,
    store: &Store,
    ns: &Arc<FakeNs>,
    net: &Arc<FakeNet>,
    shims: &Arc<FakeShims>,
    cgroups: &Arc<FakeCgroups>,
) -> Sandboxes {
    let mut dirs = SandboxDirs::new(dir.join("state"));
    dirs.host_resolv_conf = dir.join("host-resolv");
    dirs.host_hosts = dir.join("host-hosts");
    let mut runtimes = BTreeMap::new();
    runtimes.insert("runc".to_string(), PathBuf::from("/usr/sbin/runc"));
    Sandboxes::new(
        store.clone(),
        dirs,
        runtimes,
        "runc".into(),
        ns.clone(),
        net.clone(),
        shims.clone(),
        cgroups.clone(),
    )
}

fn config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: format!("uid-{name}"),
            attempt: 1,
        }),
        labels: [("app".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

fn host_network(mut c: PodSandboxConfig) -> PodSandboxConfig {
    c.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

impl Fixture {
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Nothing of any pod is left: no record, namespace, attachment, shim or directory.
    fn assert_nothing_left(&self) {
        assert!(self.store.list::<SandboxRecord>().unwrap().is_empty());
        assert!(self.ns.pinned.lock().unwrap().is_empty());
        assert!(self.net.attached.lock().unwrap().is_empty());
        assert!(self.shims.running.lock().unwrap().is_empty());
        for sub in ["sandboxes", "shims"] {
            let d = self.state().join(sub);
            let left: Vec<_> = std::fs::read_dir(&d)
                .map(|r| r.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "left in {}: {left:?}", d.display());
        }
    }
}

#[test]
fn run_makes_a_ready_pod_with_namespaces_files_network_and_shim() {
    let f = fixture();
    let mut c = config("web");
    c.hostname = "web-host".into();
    c.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    c.port_mappings = vec![
        PortMapping {
            protocol: 0,
            container_port: 80,
            host_port: 8080,
            host_ip: "127.0.0.1".into(),
        },
        PortMapping {
            container_port: 81,
            ..Default::default()
        },
    ];
    let id = f.svc.run(c, "").unwrap();
    assert_eq!(id.len(), 64);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));

    let pod = f.svc.status(&id).unwrap();
    assert_eq!(pod.state(), SandboxState::Ready);
    assert_eq!(pod.record.runtime_handler, "runc");
    assert_eq!(pod.record.ips, vec!["10.9.0.2".to_string()]);
    assert_eq!(pod.record.shim_pid, 1);
    assert!(pod.record.created_at_ns > 0);
    assert_eq!(pod.record.labels["app"], "web");

    let pinned = f.ns.pinned.lock().unwrap().clone();
    let sandbox = f.state().join("sandboxes").join(&id);
    assert_eq!(pinned.len(), 4, "net, uts, ipc and shm: {pinned:?}");
    assert_eq!(pinned[&sandbox.join("ns/uts")].as_deref(), Some("web-host"));
    let shm_size = POD_SHM_SIZE.to_string();
    assert_eq!(
        pinned[&sandbox.join("shm")].as_deref(),
        Some(shm_size.as_str())
    );
    assert_eq!(
        pod.record.netns_path,
        sandbox.join("ns/net").display().to_string()
    );

    let attached = f.net.attached.lock().unwrap()[&id].clone();
    assert_eq!(
        (attached.name.as_str(), attached.namespace.as_str()),
        ("web", "default")
    );
    assert_eq!(attached.port_mappings.len(), 1, "host ports only");
    assert_eq!(attached.port_mappings[0]["hostPort"], 8080);
    assert_eq!(attached.port_mappings[0]["hostIP"], "127.0.0.1");
    assert_eq!(attached.dns.unwrap()["servers"][0], "10.96.0.10");

    let read = |name: &str| std::fs::read_to_string(sandbox.join(name)).unwrap();
    assert_eq!(read("hostname"), "web-host\n");
    assert_eq!(
        read("resolv.conf"),
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    assert!(read("hosts").contains("127.0.0.1\tlocalhost\n"));
    assert!(read("hosts").contains("10.9.0.2\tweb-host\n"));
    assert_eq!(f.svc.list().unwrap().len(), 1);
}

#[test]
fn without_dns_config_the_host_resolv_conf_is_used_and_hostname_is_the_nodes() {
    let f = fixture();
    let id = f.svc.run(config("db"), "runc").unwrap();
    let sandbox = f.state().join("sandboxes").join(&id);
    let read = |name: &str| std::fs::read_to_string(sandbox.join(name)).unwrap();
    assert_eq!(read("resolv.conf"), "nameserver 192.0.2.53\n");
    let node = nix::unistd::gethostname().unwrap();
    assert_eq!(read("hostname"), format!("{}\n", node.to_string_lossy()));
}

#[test]
fn host_network_pod_gets_no_network_namespace_and_no_cni() {
    let f = fixture();
    *f.net.not_ready.lock().unwrap() = Some("no network config".into());
    let id = f.svc.run(host_network(config("h")), "").unwrap();
    let pod = f.svc.status(&id).unwrap();
    assert_eq!(pod.state(), SandboxState::Ready);
    assert!(pod.record.ips.is_empty() && pod.record.netns_path.is_empty());
    let pinned: Vec<PathBuf> = f.ns.pinned.lock().unwrap().keys().cloned().collect();
    assert_eq!(pinned.len(), 2, "IPC and its shm only: {pinned:?}");
    assert!(pinned[0].ends_with("ns/ipc") && pinned[1].ends_with("shm"));
    assert!(f.net.attached.lock().unwrap().is_empty());
    let hosts = std::fs::read_to_string(f.state().join("sandboxes").join(&id).join("hosts"));
    assert_eq!(hosts.unwrap(), "127.0.0.1 localhost host\n");
    f.svc.remove(&id).unwrap();
    f.assert_nothing_left();
}

#[test]
fn invalid_requests_are_refused_before_any_record_is_written() {
    let f = fixture();
    let mut c = config("x");
    c.metadata.as_mut().unwrap().uid.clear();
    let err = f.svc.run(c, "").unwrap_err();
    assert!(matches!(err, SandboxError::InvalidConfig(_)), "{err}");
    assert!(err.to_string().contains("metadata.uid"), "{err}");

    let err = f.svc.run(config("x"), "kata").unwrap_err();
    assert!(matches!(err, SandboxError::UnknownHandler { .. }), "{err}");
    assert!(err.to_string().contains("\"kata\""), "{err}");

    *f.net.not_ready.lock().unwrap() = Some("no network config found in /etc/cni/net.d".into());
    let err = f.svc.run(config("x"), "").unwrap_err();
    assert!(matches!(err, SandboxError::NetworkNotReady(_)), "{err}");
    assert!(err.to_string().contains("/etc/cni/net.d"), "{err}");
    f.assert_nothing_left();
}

#[test]
fn same_name_twice_is_refused_naming_the_other_pod() {
    let f = fixture();
    let first = f.svc.run(config("web"), "").unwrap();
    let err = f.svc.run(config("web"), "").unwrap_err();
    assert!(matches!(err, SandboxError::NameInUse { .. }), "{err}");
    assert!(err.to_string().contains(&first), "{err}");
    let mut next = config("web");
    next.metadata.as_mut().unwrap().attempt = 2;
    f.svc.run(next, "").unwrap();
    assert_eq!(f.svc.list().unwrap().len(), 2);
}

#[test]
fn every_failure_point_rolls_back_everything() {
    type Inject = fn(&Fixture);
    let points: [(&str, Inject); 5] = [
        ("net namespace", |f| {
            *f.ns.fail.lock().unwrap() = Some(Namespace::Net)
        }),
        ("uts namespace", |f| {
            *f.ns.fail.lock().unwrap() = Some(Namespace::Uts)
        }),
        ("ipc namespace", |f| {
            *f.ns.fail.lock().unwrap() = Some(Namespace::Ipc)
        }),
        ("CNI ADD", |f| {
            *f.net.fail_setup.lock().unwrap() = Some("failed to allocate for range 0".into())
        }),
        ("shim", |f| *f.shims.fail_start.lock().unwrap() = true),
    ];
    for (point, inject) in points {
        let f = fixture();
        inject(&f);
        let err = f.svc.run(config("p"), "").unwrap_err();
        if point == "CNI ADD" {
            assert!(
                err.to_string().contains("failed to allocate for range 0"),
                "the plugin's message: {err}"
            );
        }
        f.assert_nothing_left();
        // The name is free again.
        *f.ns.fail.lock().unwrap() = None;
        *f.net.fail_setup.lock().unwrap() = None;
        *f.shims.fail_start.lock().unwrap() = false;
        f.svc
            .run(config("p"), "")
            .unwrap_or_else(|e| panic!("after a failure at {point}: {e}"));
    }
}

#[test]
fn stop_and_remove_are_idempotent_and_unknown_ids_succeed() {
    let f = fixture();
    f.svc.stop("nosuch").unwrap();
    f.svc.remove("nosuch").unwrap();
    let err = f.svc.status("nosuch").unwrap_err();
    assert!(matches!(err, SandboxError::NotFound(_)), "{err}");

    let id = f.svc.run(config("web"), "").unwrap();
    f.svc.stop(&id[..12]).unwrap();
    let pod = f.svc.status(&id).unwrap();
    assert_eq!(pod.state(), SandboxState::NotReady);
    assert_eq!(
        (pod.record.shim_pid, pod.record.shim_address.as_str()),
        (0, "")
    );
    assert!(f.net.attached.lock().unwrap().is_empty());
    assert!(f.shims.running.lock().unwrap().is_empty());
    let pinned = f.ns.pinned.lock().unwrap().clone();
    assert!(!pinned.keys().any(|p| p.ends_with("ns/net")), "{pinned:?}");
    f.svc.stop(&id).unwrap();

    f.svc.remove(&id).unwrap();
    f.svc.remove(&id).unwrap();
    f.assert_nothing_left();
}

#[test]
fn remove_of_a_ready_pod_stops_it_first() {
    let f = fixture();
    let id = f.svc.run(config("web"), "").unwrap();
    f.svc.remove(&id).unwrap();
    f.assert_nothing_left();
    assert_eq!(*f.cgroups.removed.lock().unwrap(), [id]);
}

#[test]
fn pod_resources_and_overhead_limit_the_pods_own_cgroup() {
    use berth_proto::cri::LinuxContainerResources;
    let f = fixture();
    let mut c = config("limited");
    c.linux = Some(LinuxPodSandboxConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 256 << 20,
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            ..Default::default()
        }),
        overhead: Some(LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            cpu_shares: 10,
            cpu_quota: 5_000,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = f.svc.run(c.clone(), "").unwrap();
    let created = f.cgroups.created.lock().unwrap().clone();
    assert_eq!(
        created,
        [(
            id,
            PodLimits {
                memory_bytes: Some(288 << 20),
                cpu_shares: Some(522),
                cpu_quota: Some((55_000, 100_000)),
            }
        )]
    );
    // Under kubelet's cgroup parent kubelet sets them; without resources nothing is made.
    let mut kubelet = c;
    kubelet.metadata.as_mut().unwrap().name = "kubelet".into();
    kubelet.linux.as_mut().unwrap().cgroup_parent = "/kubepods/podX".into();
    f.svc.run(kubelet, "").unwrap();
    f.svc.run(config("plain"), "").unwrap();
    assert_eq!(f.cgroups.created.lock().unwrap().len(), 1);
}

#[test]
fn a_pod_whose_cgroup_still_holds_processes_is_not_forgotten() {
    let f = fixture();
    let id = f.svc.run(config("web"), "").unwrap();
    f.cgroups.busy.lock().unwrap().insert(id.clone());
    let err = f.svc.remove(&id).unwrap_err();
    assert!(matches!(err, SandboxError::Cgroup(_)), "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
    // Still listed, so that kubelet retries the removal, which then completes.
    assert!(f.svc.status(&id).is_ok());
    f.cgroups.busy.lock().unwrap().clear();
    f.svc.remove(&id).unwrap();
    f.assert_nothing_left();
}

#[test]
fn restart_rolls_back_a_creating_record_and_reconnects_ready_pods() {
    let f = fixture();
    let ready = f.svc.run(config("ready"), "").unwrap();
    let dead = f.svc.run(config("dead"), "").unwrap();
    // The shim of "dead" died while berthd was down.
    f.shims.running.lock().unwrap().remove(&dead);

    // A crash in the middle of a run: namespaces pinned and the network attached, the record
    // still in Creating and the shim started but not recorded.
    let c = config("crashed");
    let id = "c".repeat(64);
    let mut record = SandboxRecord {
        id: id.clone(),
        name: "crashed".into(),
        namespace: "default".into(),
        uid: "uid-crashed".into(),
        attempt: 1,
        netns_path: f.svc.dirs.ns(&id, Namespace::Net).display().to_string(),
        config: c.encode_to_vec(),
        ..Default::default()
    };
    record.set_state(SandboxState::Creating);
    f.store.put(&record).unwrap();
    f.ns.pin(Namespace::Net, &f.svc.dirs.ns(&id, Namespace::Net), None)
        .unwrap();
    f.net.setup(&f.svc.attachment(&record, &c)).unwrap();
    f.shims.start(&id, Path::new("/r"), false).unwrap();

    // A new berthd on the same store and host.
    let svc = service(f.dir.path(), &f.store, &f.ns, &f.net, &f.shims, &f.cgroups);
    svc.recover().unwrap();
    assert!(f.store.get::<SandboxRecord>(&id).unwrap().is_none());
    assert!(!f.net.attached.lock().unwrap().contains_key(&id));
    assert!(!f.shims.running.lock().unwrap().contains_key(&id));
    assert!(!f.state().join("sandboxes").join(&id).exists());

    assert_eq!(
        f.shims
            .reconnected
            .lock()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        vec![&ready]
    );
    let listed: BTreeSet<String> = svc
        .list()
        .unwrap()
        .into_iter()
        .map(|p| p.record.id)
        .collect();
    assert_eq!(listed, [ready.clone(), dead.clone()].into());
    assert_eq!(svc.status(&dead).unwrap().state(), SandboxState::Ready);
    for pod in [&ready, &dead] {
        svc.stop(pod).unwrap();
        svc.remove(pod).unwrap();
    }
    f.assert_nothing_left();
}

#[test]
fn pods_being_created_are_not_listed() {
    let f = fixture();
    let mut record = SandboxRecord {
        id: "a".repeat(64),
        config: config("c").encode_to_vec(),
        ..Default::default()
    };
    record.set_state(SandboxState::Creating);
    f.store.put(&record).unwrap();
    assert!(f.svc.list().unwrap().is_empty());
}

#[test]
fn a_failed_rollback_keeps_the_record_for_the_next_start_to_finish() {
    let f = fixture();
    *f.shims.fail_start.lock().unwrap() = true;
    *f.net.fail_teardown.lock().unwrap() = true;
    let err = f.svc.run(config("p"), "").unwrap_err();
    assert!(
        matches!(err, SandboxError::Shim(_)),
        "the first error is returned: {err}"
    );
    let left = f.store.list::<SandboxRecord>().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].state(), SandboxState::Creating);
    assert!(
        f.shims.running.lock().unwrap().is_empty(),
        "the shim is stopped anyway"
    );
    assert!(
        f.svc.list().unwrap().is_empty(),
        "a pod in creation is not listed"
    );

    *f.net.fail_teardown.lock().unwrap() = false;
    let svc = service(f.dir.path(), &f.store, &f.ns, &f.net, &f.shims, &f.cgroups);
    svc.recover().unwrap();
    f.assert_nothing_left();
}

#[test]
fn bandwidth_annotations_become_the_cni_bandwidth_argument() {
    let f = fixture();
    let mut c = config("shaped");
    c.annotations.insert(INGRESS_BANDWIDTH.into(), "10M".into());
    c.annotations.insert(EGRESS_BANDWIDTH.into(), "1Mi".into());
    let id = f.svc.run(c, "").unwrap();
    let attached = f.net.attached.lock().unwrap()[&id].clone();
    assert_eq!(
        attached.bandwidth,
        Some(serde_json::json!({
            "ingressRate": 10_000_000u64, "ingressBurst": 4_294_967_295u64,
            "egressRate": 1_048_576u64, "egressBurst": 4_294_967_295u64,
        }))
    );
    let plain = f.svc.run(config("plain"), "").unwrap();
    assert_eq!(f.net.attached.lock().unwrap()[&plain].bandwidth, None);

    let mut bad = config("bad");
    bad.annotations
        .insert(INGRESS_BANDWIDTH.into(), "fast".into());
    let err = f.svc.run(bad, "").unwrap_err();
    assert!(
        matches!(&err, SandboxError::InvalidConfig(m) if m.contains(INGRESS_BANDWIDTH) && m.contains("fast")),
        "{err}"
    );
    assert_eq!(
        f.net.attached.lock().unwrap().len(),
        2,
        "nothing made for the bad one"
    );
}

#[test]
fn pod_cidrs_reach_the_network_of_later_pods_and_bad_ones_are_refused() {
    let f = fixture();
    f.svc
        .set_pod_cidrs("10.244.1.0/24, fd00:10:244:1::/64")
        .unwrap();
    let id = f.svc.run(config("ranged"), "").unwrap();
    assert_eq!(
        f.net.attached.lock().unwrap()[&id].ip_ranges,
        ["10.244.1.0/24", "fd00:10:244:1::/64"]
    );
    for bad in ["10.244.1.0", "10.244.1.0/33", "nonsense/24"] {
        let err = f.svc.set_pod_cidrs(bad).unwrap_err();
        assert!(
            matches!(&err, SandboxError::InvalidConfig(m) if m.contains("pod_cidr") && m.contains(bad)),
            "{bad}: {err}"
        );
    }
    f.svc.set_pod_cidrs("").unwrap();
    let plain = f.svc.run(config("plain"), "").unwrap();
    assert!(f.net.attached.lock().unwrap()[&plain].ip_ranges.is_empty());
}

fn with_namespaces(mut c: PodSandboxConfig, opts: NamespaceOption) -> PodSandboxConfig {
    c.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(opts),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

#[test]
fn every_pod_but_a_host_pid_one_gets_a_pid_namespace_holder() {
    let f = fixture();
    for (name, mode, holder) in [
        ("shared", NamespaceMode::Pod, true),
        ("own", NamespaceMode::Container, true),
        ("host", NamespaceMode::Node, false),
    ] {
        let c = with_namespaces(
            config(name),
            NamespaceOption {
                pid: mode as i32,
                ..Default::default()
            },
        );
        let id = f.svc.run(c, "").unwrap();
        let record = f.svc.status(&id).unwrap().record;
        assert_eq!(record.pid_holder_pid != 0, holder, "{name}");
    }
}

#[test]
fn user_namespace_node_mode_runs_and_pod_mode_is_refused_before_anything_is_made() {
    let f = fixture();
    let userns = |name: &str, mode: NamespaceMode| {
        with_namespaces(
            config(name),
            NamespaceOption {
                userns_options: Some(UserNamespace {
                    mode: mode as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    };
    let id = f
        .svc
        .run(userns("kubelet", NamespaceMode::Node), "")
        .unwrap();
    f.svc.stop(&id).unwrap();
    f.svc.remove(&id).unwrap();

    let err = f
        .svc
        .run(userns("nohost", NamespaceMode::Pod), "")
        .unwrap_err();
    assert!(matches!(err, SandboxError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("pod default/nohost"), "{err}");
    let err = f
        .svc
        .run(userns("odd", NamespaceMode::Container), "")
        .unwrap_err();
    assert!(matches!(err, SandboxError::InvalidConfig(_)), "{err}");
    f.assert_nothing_left();
}
