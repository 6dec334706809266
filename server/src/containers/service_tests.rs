//! The container state machine with a fake shim, fake mounts and a fake snapshotter on the
//! in-memory store.

use std::collections::BTreeSet;

use berth_proto::cri::{ContainerMetadata, ImageSpec, PodSandboxConfig, PodSandboxMetadata};
use berth_snapshotter::{Info, Usage};
use berth_store::{ImageRecord, SandboxRecord};

use super::*;
use crate::config::RegistryConfig;
use crate::containers::tasks::{TaskState, WaitFuture};
use crate::sandbox::namespaces::NamespaceError;
use crate::sandbox::service::{
    NamespacePinner, NetworkAttachment, NetworkError, PodCgroups, PodLimits, PodNetwork, ShimError,
    ShimLauncher, ShimProcess,
};

struct NoNs;
impl NamespacePinner for NoNs {
    fn pin(&self, _: Namespace, _: &Path, _: Option<&str>) -> Result<(), NamespaceError> {
        Ok(())
    }
    fn remove(&self, _: &Path) -> Result<(), NamespaceError> {
        Ok(())
    }
    fn mount_shm(&self, _: &Path, _: u64) -> Result<(), NamespaceError> {
        Ok(())
    }
    fn remove_shm(&self, _: &Path) -> Result<(), NamespaceError> {
        Ok(())
    }
}
struct NoNet;
impl PodNetwork for NoNet {
    fn ready(&self) -> Result<(), NetworkError> {
        Ok(())
    }
    fn setup(&self, _: &NetworkAttachment) -> Result<Vec<std::net::IpAddr>, NetworkError> {
        Ok(Vec::new())
    }
    fn teardown(&self, _: &NetworkAttachment) -> Result<(), NetworkError> {
        Ok(())
    }
}
struct NoCgroups;
impl PodCgroups for NoCgroups {
    fn create(&self, _: &str, _: &PodLimits) -> Result<(), String> {
        Ok(())
    }
    fn remove(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
}
struct NoShims;
impl ShimLauncher for NoShims {
    fn start(&self, _: &str, _: &Path, _: bool) -> Result<ShimProcess, ShimError> {
        unreachable!()
    }
    fn alive(&self, _: &str, _: &ShimProcess) -> bool {
        true
    }
    fn reconnect(&self, _: &str, _: &ShimProcess) -> Result<(), ShimError> {
        Ok(())
    }
    fn stop(&self, _: &str, _: Option<u32>) -> Result<(), ShimError> {
        Ok(())
    }
}

#[derive(Default)]
struct FakeSnapshots {
    active: Mutex<BTreeSet<String>>,
}

impl Snapshotter for FakeSnapshots {
    fn stat(&self, key: &str) -> berth_snapshotter::Result<Info> {
        Err(SnapshotError::NotFound(key.into()))
    }
    fn usage(&self, _: &str) -> berth_snapshotter::Result<Usage> {
        Ok(Usage::default())
    }
    fn mounts(&self, key: &str) -> berth_snapshotter::Result<Vec<berth_snapshotter::Mount>> {
        Err(SnapshotError::NotFound(key.into()))
    }
    fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        _: BTreeMap<String, String>,
    ) -> berth_snapshotter::Result<Vec<berth_snapshotter::Mount>> {
        assert_eq!(parent, Some("sha256:layer"));
        self.active.lock().unwrap().insert(key.to_string());
        Ok(vec![berth_snapshotter::Mount {
            fs_type: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("upperdir=/snap/{key}")],
        }])
    }
    fn view(
        &self,
        key: &str,
        _: Option<&str>,
        _: BTreeMap<String, String>,
    ) -> berth_snapshotter::Result<Vec<berth_snapshotter::Mount>> {
        Err(SnapshotError::NotFound(key.into()))
    }
    fn commit(
        &self,
        _: &str,
        key: &str,
        _: BTreeMap<String, String>,
    ) -> berth_snapshotter::Result<()> {
        Err(SnapshotError::NotFound(key.into()))
    }
    fn remove(&self, key: &str) -> berth_snapshotter::Result<()> {
        self.active.lock().unwrap().remove(key);
        Ok(())
    }
    fn walk(&self, _: &mut dyn FnMut(&Info) -> bool) -> berth_snapshotter::Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct FakeMounts {
    mounted: Mutex<BTreeSet<PathBuf>>,
}

impl RootfsMounter for FakeMounts {
    fn mount(&self, _: &[berth_snapshotter::Mount], target: &Path) -> Result<(), String> {
        self.mounted.lock().unwrap().insert(target.to_path_buf());
        Ok(())
    }
    fn unmount(&self, target: &Path) -> Result<(), String> {
        self.mounted.lock().unwrap().remove(target);
        Ok(())
    }
}

/// A shim whose processes exit when killed with SIGKILL, or with SIGTERM unless told to ignore
/// it; execs exit 0 at once.
#[derive(Default)]
struct FakeTasks {
    calls: Mutex<Vec<String>>,
    fail_create: Mutex<bool>,
    fail_update: Mutex<bool>,
    ignore_term: Mutex<bool>,
    exits: Mutex<HashMap<String, tokio::sync::watch::Sender<Option<Exit>>>>,
}

impl FakeTasks {
    fn call(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn sender(&self, key: &str) -> tokio::sync::watch::Sender<Option<Exit>> {
        self.exits
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_insert_with(|| tokio::sync::watch::Sender::new(None))
            .clone()
    }
    fn exit(&self, key: &str, status: u32) {
        self.sender(key)
            .send_replace(Some(Exit { status, at_ns: 42 }));
    }
}

impl Tasks for FakeTasks {
    fn create(&self, _: &str, id: &str, bundle: &Path, log: &Path) -> Result<u32, TaskError> {
        assert!(bundle.join("config.json").is_file());
        self.call(format!("create {id} {}", log.display()));
        if *self.fail_create.lock().unwrap() {
            return Err(TaskError::Failed("runc create failed: boom".into()));
        }
        Ok(7)
    }
    fn start(&self, _: &str, id: &str, exec_id: &str) -> Result<u32, TaskError> {
        self.call(format!("start {id} {exec_id}"));
        if !exec_id.is_empty() {
            self.exit(&format!("{id}/{exec_id}"), 0);
        }
        Ok(7)
    }
    fn state(&self, _: &str, id: &str, _: &str) -> Result<TaskState, TaskError> {
        let exit = *self.sender(id).borrow();
        Ok(TaskState {
            pid: 7,
            running: exit.is_none(),
            exit,
            oom_killed: false,
        })
    }
    fn kill(&self, _: &str, id: &str, _: &str, signal: u32, _: bool) -> Result<(), TaskError> {
        self.call(format!("kill {id} {signal}"));
        if signal == 9 || !*self.ignore_term.lock().unwrap() {
            self.exit(id, 128 + signal);
        }
        Ok(())
    }
    fn delete(&self, _: &str, id: &str, exec_id: &str) -> Result<(), TaskError> {
        self.call(format!("delete {id} {exec_id}"));
        Ok(())
    }
    fn exec(
        &self,
        _: &str,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        _: &Path,
        _: &Path,
    ) -> Result<(), TaskError> {
        let p: serde_json::Value = serde_json::from_slice(&process).unwrap();
        self.call(format!("exec {id} {}", p["args"]));
        let _ = exec_id;
        Ok(())
    }
    fn update(
        &self,
        _: &str,
        id: &str,
        _: Vec<u8>,
        annotations: HashMap<String, String>,
    ) -> Result<(), TaskError> {
        self.call(format!("update {id} {annotations:?}"));
        if *self.fail_update.lock().unwrap() {
            return Err(TaskError::Failed("runc update failed: no".into()));
        }
        Ok(())
    }
    fn wait(&self, _: &str, id: &str, exec_id: &str) -> WaitFuture {
        let key = if exec_id.is_empty() {
            id.to_string()
        } else {
            format!("{id}/{exec_id}")
        };
        let mut rx = self.sender(&key).subscribe();
        Box::pin(async move {
            let exit = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|e| TaskError::Failed(e.to_string()))?;
            exit.ok_or_else(|| TaskError::Failed("no exit".into()))
        })
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    store: Store,
    tasks: Arc<FakeTasks>,
    mounts: Arc<FakeMounts>,
    snapshots: Arc<FakeSnapshots>,
    containers: Arc<Containers>,
}

const POD: &str = "pod0000000000000000000000000000000000000000000000000000000000001";
const IMAGE: &str = "docker.io/library/busybox:1";

fn fixture() -> Fixture {
    fixture_with(BTreeMap::new())
}

/// A fixture whose node has `facts` (by runtime handler; the pod's is `""`).
fn fixture_with(facts: BTreeMap<String, NodeFacts>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::in_memory();
    let tasks = Arc::new(FakeTasks::default());
    let mounts = Arc::new(FakeMounts::default());
    let snapshots = Arc::new(FakeSnapshots::default());
    let containers = service(
        dir.path(),
        &store,
        &rt,
        (tasks.clone(), mounts.clone(), snapshots.clone()),
        facts,
    );
    Fixture {
        dir,
        rt,
        store,
        tasks,
        mounts,
        snapshots,
        containers,
    }
}

/// A container service on `store` and the state under `dir`, as berthd makes one at start; the
/// pod and the image are put in the store if they are not there.
fn service(
    dir: &Path,
    store: &Store,
    rt: &tokio::runtime::Runtime,
    (tasks, mounts, snapshots): (Arc<FakeTasks>, Arc<FakeMounts>, Arc<FakeSnapshots>),
    facts: BTreeMap<String, NodeFacts>,
) -> Arc<Containers> {
    let store = store.clone();
    let state = dir.join("state");
    let sandboxes = Arc::new(Sandboxes::new(
        store.clone(),
        SandboxDirs::new(state.clone()),
        BTreeMap::new(),
        "runc".into(),
        Arc::new(NoNs),
        Arc::new(NoNet),
        Arc::new(NoShims),
        Arc::new(NoCgroups),
    ));
    let images = Images::open(
        &dir.join("root"),
        store.clone(),
        RegistryConfig::default(),
        None,
    )
    .unwrap();
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            namespace: "ns".into(),
            uid: "u1".into(),
            attempt: 0,
        }),
        log_directory: dir.join("logs").display().to_string(),
        ..Default::default()
    };
    let mut pod = SandboxRecord {
        id: POD.into(),
        name: "web".into(),
        namespace: "ns".into(),
        uid: "u1".into(),
        log_directory: pod_config.log_directory.clone(),
        config: pod_config.encode_to_vec(),
        pid_holder_pid: 4242,
        ..Default::default()
    };
    pod.set_state(SandboxState::Ready);
    if store.get::<SandboxRecord>(POD).unwrap().is_none() {
        store.put(&pod).unwrap();
    }
    let image_config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sh"], "Env": ["PATH=/bin"], "StopSignal": "SIGQUIT"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:layer"]},
    });
    store
        .put(&ImageRecord {
            id: "sha256:img".into(),
            repo_tags: vec![IMAGE.into()],
            config: serde_json::to_vec(&image_config).unwrap(),
            ..Default::default()
        })
        .unwrap();
    Arc::new(Containers::new(
        store,
        state,
        sandboxes,
        images,
        snapshots,
        mounts,
        tasks,
        -500,
        facts,
        rt.handle().clone(),
    ))
}

fn config(name: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        args: vec!["-c".into(), "sleep 1000".into()],
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn create_writes_the_bundle_and_creates_the_task_with_the_log_path() {
    let f = fixture();
    let id = f.containers.create(POD, config("app")).unwrap();
    let c = f.containers.status(&id).unwrap();
    assert_eq!(c.record.state(), ContainerState::Created);
    assert_eq!(c.record.image_ref, "sha256:img");
    let log = f.dir.path().join("logs/app/0.log");
    assert_eq!(c.record.log_path, log.display().to_string());
    assert!(log.parent().unwrap().is_dir());
    assert_eq!(
        f.tasks.calls(),
        vec![format!("create {id} {}", log.display())]
    );
    let bundle = f.dir.path().join("state/containers").join(&id);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        spec["process"]["args"],
        serde_json::json!(["/bin/sh", "-c", "sleep 1000"])
    );
    assert!(
        f.mounts
            .mounted
            .lock()
            .unwrap()
            .contains(&bundle.join("rootfs"))
    );
    assert!(f.snapshots.active.lock().unwrap().contains(&id));

    let err = f.containers.create(POD, config("app")).unwrap_err();
    assert!(matches!(err, ContainerError::NameInUse { .. }), "{err}");
    assert!(err.to_string().contains(&id), "{err}");
}

#[test]
fn a_failed_create_undoes_everything() {
    let f = fixture();
    *f.tasks.fail_create.lock().unwrap() = true;
    let err = f.containers.create(POD, config("app")).unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    assert!(f.store.list::<ContainerRecord>().unwrap().is_empty());
    assert!(f.mounts.mounted.lock().unwrap().is_empty());
    assert!(f.snapshots.active.lock().unwrap().is_empty());
    let dirs = std::fs::read_dir(f.dir.path().join("state/containers")).unwrap();
    assert_eq!(dirs.count(), 0);
}

#[test]
fn bad_input_is_refused_before_any_side_effect() {
    let f = fixture();
    assert!(matches!(
        f.containers.create("nosuchpod", config("a")),
        Err(ContainerError::PodNotFound(_))
    ));
    let mut c = config("a");
    c.image = Some(ImageSpec {
        image: "docker.io/library/missing:1".into(),
        ..Default::default()
    });
    let err = f.containers.create(POD, c).unwrap_err();
    assert!(matches!(err, ContainerError::ImageNotFound(_)) && err.to_string().contains("pull"));
    let mut c = config("a");
    c.log_path = "../../etc/x.log".into();
    assert!(matches!(
        f.containers.create(POD, c),
        Err(ContainerError::InvalidConfig(_))
    ));
    assert!(f.tasks.calls().is_empty());
    assert!(f.store.list::<ContainerRecord>().unwrap().is_empty());

    let mut pod = f.store.get::<SandboxRecord>(POD).unwrap().unwrap();
    pod.set_state(SandboxState::NotReady);
    f.store.put(&pod).unwrap();
    assert!(matches!(
        f.containers.create(POD, config("a")),
        Err(ContainerError::PodNotReady(_))
    ));
}

#[test]
fn exit_is_recorded_with_its_reason() {
    let f = fixture();
    let id = f.containers.create(POD, config("app")).unwrap();
    f.containers.start(&id).unwrap();
    assert_eq!(
        f.containers.status(&id).unwrap().record.state(),
        ContainerState::Running
    );
    f.tasks.exit(&id, 3);
    assert!(wait_until(|| f
        .containers
        .status(&id)
        .unwrap()
        .record
        .state()
        == ContainerState::Exited));
    let r = f.containers.status(&id).unwrap().record;
    assert_eq!(
        (r.exit_code, r.reason.as_str(), r.finished_at_ns),
        (3, "Error", 42)
    );
    let err = f
        .containers
        .exec_sync(&id, vec!["true".into()], Duration::ZERO);
    assert!(matches!(err, Err(ContainerError::FailedPrecondition(_))));
}

#[test]
fn stop_sends_the_image_stop_signal_then_sigkill_and_remove_cleans_up() {
    let f = fixture();
    let id = f.containers.create(POD, config("app")).unwrap();
    f.containers.start(&id).unwrap();
    *f.tasks.ignore_term.lock().unwrap() = true;
    f.containers.stop(&id, Duration::from_millis(100)).unwrap();
    let calls = f.tasks.calls();
    assert!(calls.contains(&format!("kill {id} 3")), "{calls:?}");
    assert!(calls.contains(&format!("kill {id} 9")), "{calls:?}");
    let r = f.containers.status(&id).unwrap().record;
    assert_eq!((r.state(), r.exit_code), (ContainerState::Exited, 137));
    f.containers.stop(&id, Duration::from_secs(1)).unwrap();
    f.containers.stop("nosuch", Duration::from_secs(1)).unwrap();

    f.containers.remove(&id).unwrap();
    assert!(f.store.get::<ContainerRecord>(&id).unwrap().is_none());
    assert!(f.mounts.mounted.lock().unwrap().is_empty());
    assert!(f.snapshots.active.lock().unwrap().is_empty());
    assert!(!f.dir.path().join("state/containers").join(&id).exists());
    f.containers.remove(&id).unwrap();
}

#[test]
fn removing_the_pod_removes_its_running_containers() {
    let f = fixture();
    let id = f.containers.create(POD, config("app")).unwrap();
    f.containers.start(&id).unwrap();
    f.containers.stop_pod(POD, false).unwrap();
    let r = f.containers.status(&id).unwrap().record;
    assert_eq!(r.state(), ContainerState::Exited);
    assert!(f.tasks.calls().contains(&format!("delete {id} ")));
    f.containers.stop_pod(POD, true).unwrap();
    assert!(f.store.list::<ContainerRecord>().unwrap().is_empty());
}

#[test]
fn exec_sync_runs_the_command_and_reopen_log_asks_the_shim() {
    let f = fixture();
    let id = f.containers.create(POD, config("app")).unwrap();
    f.containers.start(&id).unwrap();
    let out = f
        .containers
        .exec_sync(
            &id,
            vec!["echo".into(), "hi".into()],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(out.exit_code, 0);
    let calls = f.tasks.calls();
    assert!(
        calls
            .iter()
            .any(|c| c == &format!("exec {id} [\"echo\",\"hi\"]")),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with(&format!("delete {id} ")) && c.len() > id.len() + 8)
    );
    f.containers.reopen_log(&id).unwrap();
    assert!(
        f.tasks
            .calls()
            .iter()
            .any(|c| c.contains("berth.reopen-log"))
    );
    drop(f.rt);
}

#[test]
fn update_resources_sends_oci_resources_to_the_shim() {
    let f = fixture();
    let id = f.containers.create(POD, config("app")).unwrap();
    f.containers.start(&id).unwrap();
    let r = LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_shares: 512,
        ..Default::default()
    };
    f.containers.update_resources(&id, &r).unwrap();
    assert!(
        f.tasks
            .calls()
            .iter()
            .any(|c| c.starts_with(&format!("update {id}")))
    );
    assert!(matches!(
        f.containers.update_resources("nosuch", &r),
        Err(ContainerError::NotFound(_))
    ));
}

#[test]
fn start_stop_and_remove_of_one_container_never_interleave() {
    let f = fixture();
    for round in 0..20 {
        let id = f
            .containers
            .create(POD, config(&format!("race{round}")))
            .unwrap();
        let (start, _, _) = std::thread::scope(|s| {
            let start = s.spawn(|| f.containers.start(&id));
            let stop = s.spawn(|| f.containers.stop(&id, Duration::ZERO));
            let remove = s.spawn(|| f.containers.remove(&id));
            (
                start.join().unwrap(),
                stop.join().unwrap(),
                remove.join().unwrap().unwrap(),
            )
        });
        assert!(f.store.get::<ContainerRecord>(&id).unwrap().is_none());
        let calls = f.tasks.calls();
        let pos = |what: &str| {
            calls
                .iter()
                .position(|c| c.starts_with(&format!("{what} {id}")))
        };
        match start {
            // The start went first: the task was started before the removal deleted it.
            Ok(()) => assert!(pos("start") < pos("delete"), "{calls:?}"),
            // The removal went first: nothing was started.
            Err(e) => {
                assert!(matches!(e, ContainerError::NotFound(_)), "{e}");
                assert_eq!(pos("start"), None, "{calls:?}");
            }
        }
    }
    assert!(f.mounts.mounted.lock().unwrap().is_empty());
    assert!(f.snapshots.active.lock().unwrap().is_empty());
}

#[test]
fn a_writable_image_volume_is_refused_before_anything_is_made() {
    let f = fixture();
    let mut c = config("imgvol");
    c.mounts = vec![berth_proto::cri::Mount {
        container_path: "/img".into(),
        image: Some(ImageSpec {
            image: IMAGE.into(),
            ..Default::default()
        }),
        readonly: false,
        ..Default::default()
    }];
    let err = f.containers.create(POD, c).unwrap_err();
    assert!(matches!(err, ContainerError::InvalidConfig(_)), "{err}");
    assert!(err.to_string().contains("/img"), "{err}");
    assert!(f.store.list::<ContainerRecord>().unwrap().is_empty());
}

/// A node with swap accounting and cgroup v2, without hugetlb: what the resource tests assume
/// instead of what the test host has.
fn resource_facts() -> BTreeMap<String, NodeFacts> {
    BTreeMap::from([(
        String::new(),
        NodeFacts {
            cgroup: crate::node::CgroupVersion::V2,
            swap: true,
            ..NodeFacts::default()
        },
    )])
}

fn limited(name: &str) -> ContainerConfig {
    let mut c = config(name);
    c.linux = Some(berth_proto::cri::LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            // Below berthd's floor (-500 here): clamped, and reported clamped.
            oom_score_adj: -900,
            cpuset_cpus: "0".into(),
            unified: [("memory.high".to_string(), "60000000".to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// What `limited` applies on `resource_facts`' node.
fn limited_applied() -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        memory_swap_limit_in_bytes: 64 << 20,
        oom_score_adj: -500,
        cpuset_cpus: "0".into(),
        unified: [("memory.high".to_string(), "60000000".to_string())].into(),
        ..Default::default()
    }
}

fn reported(f: &Fixture, id: &str) -> Option<LinuxContainerResources> {
    let c = f.containers.status(id).unwrap();
    f.containers.resources(&c.record).unwrap()
}

fn resize() -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_quota: 20_000,
        memory_limit_in_bytes: 128 << 20,
        // crictl update sends it; an update never changes a running process's score.
        oom_score_adj: 100,
        ..Default::default()
    }
}

fn resized() -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_quota: 20_000,
        memory_limit_in_bytes: 128 << 20,
        memory_swap_limit_in_bytes: 128 << 20,
        ..limited_applied()
    }
}

#[test]
fn status_after_create_reports_the_resources_the_spec_applies() {
    let f = fixture_with(resource_facts());
    let id = f.containers.create(POD, limited("app")).unwrap();
    assert_eq!(reported(&f, &id), Some(limited_applied()));
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            f.dir
                .path()
                .join("state/containers")
                .join(&id)
                .join("config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(spec["process"]["oomScoreAdj"], -500);
    assert_eq!(spec["linux"]["resources"]["memory"]["swap"], 64 << 20);
}

#[test]
fn status_after_an_update_reports_the_merged_resources() {
    let f = fixture_with(resource_facts());
    let id = f.containers.create(POD, limited("app")).unwrap();
    f.containers.start(&id).unwrap();
    f.containers.update_resources(&id, &resize()).unwrap();
    assert_eq!(reported(&f, &id), Some(resized()));
    let record = f.store.get::<ContainerRecord>(&id).unwrap().unwrap();
    assert_eq!(record.resources_update, None);
    assert!(
        f.tasks
            .calls()
            .iter()
            .any(|c| c.starts_with(&format!("update {id}")))
    );

    // A second update changes only what it sets, on top of the first.
    let shares = LinuxContainerResources {
        cpu_shares: 1024,
        ..Default::default()
    };
    f.containers.update_resources(&id, &shares).unwrap();
    assert_eq!(
        reported(&f, &id),
        Some(LinuxContainerResources {
            cpu_shares: 1024,
            ..resized()
        })
    );
}

#[test]
fn a_failed_update_leaves_the_reported_resources() {
    let f = fixture_with(resource_facts());
    let id = f.containers.create(POD, limited("app")).unwrap();
    f.containers.start(&id).unwrap();
    *f.tasks.fail_update.lock().unwrap() = true;
    let err = f.containers.update_resources(&id, &resize()).unwrap_err();
    assert!(err.to_string().contains("runc update failed"), "{err}");
    assert_eq!(reported(&f, &id), Some(limited_applied()));
    let record = f.store.get::<ContainerRecord>(&id).unwrap().unwrap();
    assert_eq!(record.resources_update, None);

    // Refused before the shim is asked: nothing recorded either.
    *f.tasks.fail_update.lock().unwrap() = false;
    let calls = f.tasks.calls().len();
    let bad = LinuxContainerResources {
        cpu_shares: -1,
        ..Default::default()
    };
    let err = f.containers.update_resources(&id, &bad).unwrap_err();
    assert!(err.to_string().contains("cpu_shares"), "{err}");
    assert_eq!(f.tasks.calls().len(), calls);
    assert_eq!(reported(&f, &id), Some(limited_applied()));
}

#[test]
fn resources_are_kept_across_a_restart() {
    let f = fixture_with(resource_facts());
    let id = f.containers.create(POD, limited("app")).unwrap();
    f.containers.start(&id).unwrap();
    f.containers.update_resources(&id, &resize()).unwrap();

    let parts = (f.tasks.clone(), f.mounts.clone(), f.snapshots.clone());
    let again = service(f.dir.path(), &f.store, &f.rt, parts, resource_facts());
    again.recover().unwrap();
    let c = again.status(&id).unwrap();
    assert_eq!(c.record.state(), ContainerState::Running);
    assert_eq!(again.resources(&c.record).unwrap(), Some(resized()));
}

#[test]
fn a_record_without_resources_reports_those_of_its_bundle() {
    let f = fixture_with(resource_facts());
    let id = f.containers.create(POD, limited("app")).unwrap();
    // What a berthd before the field wrote.
    let mut record = f.store.get::<ContainerRecord>(&id).unwrap().unwrap();
    record.resources = None;
    f.store.put(&record).unwrap();
    assert_eq!(reported(&f, &id), Some(limited_applied()));

    // An update merges onto the bundle's and records the result.
    f.containers.update_resources(&id, &resize()).unwrap();
    let record = f.store.get::<ContainerRecord>(&id).unwrap().unwrap();
    assert!(record.resources.is_some());
    assert_eq!(reported(&f, &id), Some(resized()));

    // Without a bundle there is nothing to report.
    let mut record = f.store.get::<ContainerRecord>(&id).unwrap().unwrap();
    record.resources = None;
    f.store.put(&record).unwrap();
    std::fs::remove_file(
        f.dir
            .path()
            .join("state/containers")
            .join(&id)
            .join("config.json"),
    )
    .unwrap();
    assert_eq!(reported(&f, &id), None);
}

#[test]
fn an_update_a_crash_interrupted_is_applied_again_at_recovery() {
    let f = fixture_with(resource_facts());
    let running = f.containers.create(POD, limited("running")).unwrap();
    f.containers.start(&running).unwrap();
    let exited = f.containers.create(POD, limited("exited")).unwrap();
    f.containers.start(&exited).unwrap();
    // Crashed between recording the update and the shim's answer.
    for id in [&running, &exited] {
        let mut record = f.store.get::<ContainerRecord>(id).unwrap().unwrap();
        record.resources_update = Some(resize().encode_to_vec());
        f.store.put(&record).unwrap();
    }
    // The second container's task exited while berthd was down.
    f.tasks.exit(&exited, 0);

    let parts = (f.tasks.clone(), f.mounts.clone(), f.snapshots.clone());
    let again = service(f.dir.path(), &f.store, &f.rt, parts, resource_facts());
    again.recover().unwrap();

    let r = f.store.get::<ContainerRecord>(&running).unwrap().unwrap();
    assert_eq!(r.resources_update, None);
    assert_eq!(again.resources(&r).unwrap(), Some(resized()));
    assert!(
        f.tasks
            .calls()
            .iter()
            .any(|c| c.starts_with(&format!("update {running}")))
    );

    let r = f.store.get::<ContainerRecord>(&exited).unwrap().unwrap();
    assert_eq!(r.state(), ContainerState::Exited);
    assert_eq!(r.resources_update, None);
    assert_eq!(again.resources(&r).unwrap(), Some(limited_applied()));
    assert!(
        !f.tasks
            .calls()
            .iter()
            .any(|c| c.starts_with(&format!("update {exited}")))
    );
}
