//! The container service: the life of a CRI container, from its record to its rootfs, spec and
//! task in the pod's shim, and back.
//!
//! # State machine
//!
//! ```text
//! create:  record(Creating) -> snapshot + rootfs mount -> config.json -> shim Create -> Created
//! start:   Created -> shim Start -> Running (a monitor awaits shim Wait and records the exit)
//! stop:    Running -> stop signal, SIGKILL after the timeout -> Exited
//! remove:  (stop) -> record(Removing) -> shim Delete, unmount, snapshot and dirs removed
//! update:  record(resources_update) -> shim Update -> record(resources, no resources_update)
//! ```
//!
//! The record is written (state `Creating`) before any side effect; a failed create undoes
//! what it did and deletes the record. The shim and the mounts are seams ([`Tasks`],
//! [`RootfsMounter`]).
//!
//! The record keeps the container's resources as applied (what ContainerStatus reports): those
//! of its spec from the moment it is Created, merged with each update the runtime accepted. An
//! update is recorded before the shim is asked and its result only once the shim answered, so
//! a refused update changes nothing; one a crash interrupted, whose outcome nobody knows, is
//! applied again when berthd recovers the container.
//!
//! # On disk
//!
//! ```text
//! <state>/containers/<id>/config.json     the OCI spec (the bundle handed to the shim)
//! <state>/containers/<id>/rootfs/         the overlay of the image snapshot + a writable layer
//! <state>/containers/<id>/exec/<exec id>/ stdout and stderr FIFOs of an ExecSync
//! <root>/snapshots/...                    the writable layer: snapshot key = container id
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_proto::cri::{ContainerConfig, LinuxContainerResources, NamespaceMode};
use berth_snapshotter::{SnapshotError, Snapshotter};
use berth_store::{ContainerRecord, ContainerState, SandboxState, Store, StoreError};
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::runtime::Handle;

use crate::containers::host::{Host, LinuxHost};
use crate::containers::resources;
use crate::containers::spec::{self, NodeFacts, PodContext, SpecError, SpecInput};
use crate::containers::tasks::{Exit, RootfsMounter, TaskError, TaskState, Tasks};
use crate::images::{ImageError, Images, chain_ids};
use crate::sandbox::namespaces::Namespace;
use crate::sandbox::service::{SandboxDirs, SandboxError, Sandboxes};

/// kubelet's cap on each of an ExecSync's outputs.
pub const MAX_EXEC_OUTPUT: usize = 16 * 1024 * 1024;
/// Under a container's bundle: where its image volumes are mounted, one directory per mount.
const IMAGE_VOLUMES_DIR: &str = "image-volumes";

/// The snapshot keys of the views behind a container's image volumes start with this.
fn image_volume_prefix(id: &str) -> String {
    format!("{id}-imgvol-")
}

/// The snapshot key of the view behind image volume `n` (the index of its CRI mount).
fn image_volume_key(id: &str, n: usize) -> String {
    format!("{}{n}", image_volume_prefix(id))
}

/// How long a SIGKILLed container may take to be reported exited.
const KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container config: {0}")]
    InvalidConfig(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container id prefix {0:?} matches more than one container")]
    Ambiguous(String),
    #[error("container name {name:?} is already used by container {id}")]
    NameInUse { name: String, id: String },
    #[error("pod sandbox {0} not found")]
    PodNotFound(String),
    #[error("pod sandbox {0} is not ready")]
    PodNotReady(String),
    #[error("image {0:?} not found: pull it first")]
    ImageNotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("timeout {0:?} exceeded")]
    Timeout(Duration),
    #[error("container {id}: {message}")]
    Task { id: String, message: String },
    #[error("container {id} rootfs: {message}")]
    Rootfs { id: String, message: String },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("container file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file of the image's rootfs that cannot be used (a symlink loop, a directory where a
    /// file belongs): the image is at fault.
    #[error("container {id}: image file: {source}")]
    ImageFile {
        id: String,
        #[source]
        source: berth_rootpath::Error,
    },
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    #[error("corrupt record of container {0}")]
    CorruptRecord(String),
    #[error("container task failed: {0}")]
    Join(String),
}

/// A container as the CRI layer reports it: the record and its decoded config.
#[derive(Debug, Clone)]
pub struct Container {
    pub record: ContainerRecord,
    pub config: ContainerConfig,
}

/// ExecSync's result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

pub struct Containers {
    store: Store,
    state: PathBuf,
    sandbox_dirs: SandboxDirs,
    pub(super) sandboxes: Arc<Sandboxes>,
    images: Arc<Images>,
    snapshots: Arc<dyn Snapshotter>,
    mounts: Arc<dyn RootfsMounter>,
    pub(super) tasks: Arc<dyn Tasks>,
    oom_score_adj_floor: i32,
    /// What the spec reads from the host (host paths, mounts, devices, profiles).
    host: Arc<dyn Host + Send + Sync>,
    /// The node's facts per runtime handler, from what berthd probed at start.
    facts: BTreeMap<String, NodeFacts>,
    runtime: Handle,
    /// Held while a name is checked and reserved, and for every read-modify-write of a record.
    records: Mutex<()>,
    /// One lock per container id: start, stop and remove of one container never interleave
    /// (a start racing a remove would otherwise mark a deleted container running).
    ops: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn random_id() -> Result<String, ContainerError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 32];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(io_err(path))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>`.
fn container_name(name: &str, pod: &berth_store::SandboxRecord, attempt: u32) -> String {
    format!(
        "{name}_{}_{}_{}_{attempt}",
        pod.name, pod.namespace, pod.uid
    )
}

/// `dir/rel`, refusing anything that leaves `dir` (absolute paths, `..` past the top).
pub fn confined_join(dir: &Path, rel: &str) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    if parts.is_empty() {
        return None;
    }
    Some(parts.iter().fold(dir.to_path_buf(), |p, c| p.join(c)))
}

/// The CRI reason of an exit.
pub fn exit_reason(code: u32, oom: bool) -> &'static str {
    if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

/// A signal by name (`SIGTERM`, `TERM`) or number.
pub fn parse_signal(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let name = s.to_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .and_then(|s| u32::try_from(s as i32).ok())
}

/// What create has done so far, so that the undo undoes exactly that.
#[derive(Default)]
struct Progress {
    snapshot: bool,
    mounted: bool,
    task: bool,
}

impl Containers {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        state: PathBuf,
        sandboxes: Arc<Sandboxes>,
        images: Arc<Images>,
        snapshots: Arc<dyn Snapshotter>,
        mounts: Arc<dyn RootfsMounter>,
        tasks: Arc<dyn Tasks>,
        oom_score_adj_floor: i32,
        facts: BTreeMap<String, NodeFacts>,
        runtime: Handle,
    ) -> Containers {
        Containers {
            store,
            sandbox_dirs: SandboxDirs::new(state.clone()),
            state,
            sandboxes,
            images,
            snapshots,
            mounts,
            tasks,
            oom_score_adj_floor,
            host: Arc::new(LinuxHost),
            facts,
            runtime,
            records: Mutex::new(()),
            ops: Mutex::new(HashMap::new()),
        }
    }

    /// The node's facts as the spec of a container on runtime handler `handler` needs them.
    fn node_facts(&self, handler: &str) -> NodeFacts {
        if let Some(facts) = self.facts.get(handler) {
            return *facts;
        }
        // A handler no longer configured: the node is the same, its runtime unknown.
        match self.facts.values().next() {
            Some(any) => NodeFacts { rro: false, ..*any },
            None => LinuxHost::node_facts(false, crate::apparmor::AppArmor::Disabled),
        }
    }

    /// The init pid of the running container `target` that a `TARGET` pid namespace joins.
    fn target_pid(&self, config: &ContainerConfig) -> Result<Option<u32>, ContainerError> {
        let Some(opts) = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
            .filter(|o| o.pid == NamespaceMode::Target as i32)
        else {
            return Ok(None);
        };
        let target = self.find(&opts.target_id)?.ok_or_else(|| {
            ContainerError::InvalidConfig(format!(
                "namespace_options.target_id: container {:?} not found",
                opts.target_id
            ))
        })?;
        if target.state() != ContainerState::Running {
            return Err(ContainerError::FailedPrecondition(format!(
                "namespace_options.target_id: container {} is not running",
                target.id
            )));
        }
        let pid = self
            .tasks
            .state(&target.sandbox_id, &target.id, "")
            .map_err(Self::task_err(&target.id))?
            .pid;
        Ok(Some(pid).filter(|p| *p > 0))
    }

    pub(super) fn dir(&self, id: &str) -> PathBuf {
        self.state.join("containers").join(id)
    }

    fn task_err(id: &str) -> impl FnOnce(TaskError) -> ContainerError + '_ {
        move |e| ContainerError::Task {
            id: id.to_string(),
            message: e.to_string(),
        }
    }

    fn decode(&self, record: ContainerRecord) -> Result<Container, ContainerError> {
        let config = ContainerConfig::decode(record.config.as_slice())
            .map_err(|_| ContainerError::CorruptRecord(record.id.clone()))?;
        Ok(Container { record, config })
    }

    /// The record of `id`, or of the one container whose id starts with it.
    pub(super) fn find(&self, id: &str) -> Result<Option<ContainerRecord>, ContainerError> {
        if id.is_empty() {
            return Ok(None);
        }
        if let Some(r) = self.store.get::<ContainerRecord>(id)? {
            return Ok(Some(r));
        }
        let mut matches = self
            .store
            .list::<ContainerRecord>()?
            .into_iter()
            .filter(|r| r.id.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some(r), None) => Ok(Some(r)),
            (Some(_), Some(_)) => Err(ContainerError::Ambiguous(id.to_string())),
            _ => Ok(None),
        }
    }

    /// Read-modify-write of a record under the records lock; a deleted record stays deleted.
    fn update(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerRecord),
    ) -> Result<Option<ContainerRecord>, ContainerError> {
        let _g = lock(&self.records);
        let Some(mut r) = self.store.get::<ContainerRecord>(id)? else {
            return Ok(None);
        };
        f(&mut r);
        self.store.put(&r)?;
        Ok(Some(r))
    }

    /// CreateContainer: returns the new container's id once it is Created.
    pub fn create(&self, pod_id: &str, config: ContainerConfig) -> Result<String, ContainerError> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| ContainerError::InvalidConfig("metadata is required".into()))?;
        if meta.name.is_empty() {
            return Err(ContainerError::InvalidConfig(
                "metadata.name is required".into(),
            ));
        }
        let pod = match self.sandboxes.status(pod_id) {
            Ok(p) => p,
            Err(SandboxError::NotFound(_)) => {
                return Err(ContainerError::PodNotFound(pod_id.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        if pod.state() != SandboxState::Ready {
            return Err(ContainerError::PodNotReady(pod.record.id.clone()));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(ContainerError::InvalidConfig("image is required".into()));
        }
        let (image, image_config) = self.local_image(&image_name)?;
        let process_config = image_config.config().clone().unwrap_or_default();
        // Checked before any side effect: an empty command is bad input.
        spec::process_args(&config.command, &config.args, &process_config)?;
        // As containerd: a log path means something only below the pod's log directory; with
        // either missing the container runs without a log file.
        let log_path = if config.log_path.is_empty() || pod.record.log_directory.is_empty() {
            None
        } else {
            Some(
                confined_join(Path::new(&pod.record.log_directory), &config.log_path).ok_or_else(
                    || {
                        ContainerError::InvalidConfig(format!(
                            "log path {:?} leaves the pod's log directory {}",
                            config.log_path, pod.record.log_directory
                        ))
                    },
                )?,
            )
        };
        let image_volumes = self.image_volumes(&config)?;
        let name = container_name(&meta.name, &pod.record, meta.attempt);
        let record = {
            let _g = lock(&self.records);
            if let Some(other) = self.store.list::<ContainerRecord>()?.into_iter().find(|r| {
                r.sandbox_id == pod.record.id
                    && r.name == meta.name
                    && r.attempt == meta.attempt
                    && r.state() != ContainerState::Removing
            }) {
                return Err(ContainerError::NameInUse { name, id: other.id });
            }
            let id = random_id()?;
            let mut record = ContainerRecord {
                id,
                sandbox_id: pod.record.id.clone(),
                name: meta.name.clone(),
                attempt: meta.attempt,
                image_ref: image.id.clone(),
                created_at_ns: now_ns(),
                labels: config.labels.clone().into_iter().collect(),
                annotations: config.annotations.clone().into_iter().collect(),
                log_path: log_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                config: config.encode_to_vec(),
                ..Default::default()
            };
            record.set_state(ContainerState::Creating);
            self.store.put(&record)?;
            record
        };
        let id = record.id.clone();
        let diff_ids = image_config.rootfs().diff_ids().clone();
        let top = chain_ids(&diff_ids).pop();
        let mut progress = Progress::default();
        let ctx = self.pod_context(&pod);
        let facts = self.node_facts(&pod.record.runtime_handler);
        let result = self.target_pid(&config).and_then(|target_pid| {
            self.set_up(
                &record,
                &config,
                &process_config,
                &image_name,
                &ctx,
                top.as_deref(),
                &image_volumes,
                log_path.as_deref(),
                &mut progress,
                &facts,
                target_pid,
            )
        });
        match result {
            Ok(applied) => {
                self.update(&id, |r| {
                    r.set_state(ContainerState::Created);
                    r.resources = Some(applied.encode_to_vec());
                })?;
                tracing::info!(container.id = %id, pod.id = %pod.record.id, "container created");
                Ok(id)
            }
            Err(err) => {
                tracing::warn!(container.id = %id, error = %err, "container create failed; rolling back");
                if let Err(undo) = self.tear_down(&record, &progress) {
                    tracing::error!(container.id = %id, error = %undo, "rollback failed");
                }
                let _ = self.store.delete::<ContainerRecord>(&id);
                Err(err)
            }
        }
    }

    fn pod_context(&self, pod: &crate::sandbox::service::Sandbox) -> PodContext {
        let id = &pod.record.id;
        let opts = pod
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let node = NamespaceMode::Node as i32;
        let own_net = opts.network != node;
        let own_ipc = opts.ipc != node;
        let linux = pod.config.linux.clone().unwrap_or_default();
        PodContext {
            id: id.clone(),
            name: pod.record.name.clone(),
            namespace: pod.record.namespace.clone(),
            hostname: std::fs::read_to_string(self.sandbox_dirs.sandbox(id).join("hostname"))
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
            net_ns: own_net.then(|| self.sandbox_dirs.ns(id, Namespace::Net)),
            ipc_ns: own_ipc.then(|| self.sandbox_dirs.ns(id, Namespace::Ipc)),
            // Pods made before berth shared /dev/shm have no such directory: a tmpfs each.
            shm: if own_ipc {
                Some(self.sandbox_dirs.shm(id)).filter(|p| p.is_dir())
            } else {
                Some(PathBuf::from("/dev/shm"))
            },
            uts_ns: own_net.then(|| self.sandbox_dirs.ns(id, Namespace::Uts)),
            pid_ns: (pod.record.pid_holder_pid != 0)
                .then(|| PathBuf::from(format!("/proc/{}/ns/pid", pod.record.pid_holder_pid))),
            host_pid: opts.pid == node,
            files_dir: self.sandbox_dirs.sandbox(id),
            privileged: linux
                .security_context
                .as_ref()
                .is_some_and(|s| s.privileged),
            sysctls: linux.sysctls.into_iter().collect(),
            cgroup_parent: linux.cgroup_parent,
        }
    }

    /// Create's side effects, up to the task in the shim; returns the resources its spec
    /// applies.
    #[allow(clippy::too_many_arguments)]
    fn set_up(
        &self,
        record: &ContainerRecord,
        config: &ContainerConfig,
        image: &oci_spec::image::Config,
        image_name: &str,
        pod: &PodContext,
        top_layer: Option<&str>,
        image_volumes: &[(usize, String)],
        log_path: Option<&Path>,
        progress: &mut Progress,
        facts: &NodeFacts,
        target_pid: Option<u32>,
    ) -> Result<LinuxContainerResources, ContainerError> {
        let id = &record.id;
        let dir = self.dir(id);
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(io_err(&rootfs))?;
        progress.snapshot = true;
        let labels = BTreeMap::from([("berth.io/container".to_string(), id.clone())]);
        let mounts = self.snapshots.prepare(id, top_layer, labels)?;
        progress.mounted = true;
        self.mounts
            .mount(&mounts, &rootfs)
            .map_err(|message| ContainerError::Rootfs {
                id: id.clone(),
                message,
            })?;
        let image_root = berth_rootpath::Root::open(&rootfs)
            .map_err(|e| io_err(&rootfs)(std::io::Error::from(e)))?;
        refuse_symlinked_dev(&image_root, id)?;
        let mut volumes = Vec::new();
        for (n, path) in crate::containers::volumes::needed(image, config) {
            let vol = dir.join("volumes").join(n.to_string());
            crate::containers::volumes::prepare(&rootfs, &path, &vol).map_err(|e| match e {
                crate::containers::volumes::VolumeError::Image(source) => {
                    ContainerError::ImageFile {
                        id: id.clone(),
                        source,
                    }
                }
                crate::containers::volumes::VolumeError::Io(source) => ContainerError::Io {
                    path: vol.clone(),
                    source,
                },
            })?;
            volumes.push(crate::containers::volumes::mount(&path, &vol));
        }
        // Image volumes: a read-only view of the image's layers, mounted under the bundle and
        // bound into the container like a host path.
        let mut config = config.clone();
        for (n, top) in image_volumes {
            let target = dir.join(IMAGE_VOLUMES_DIR).join(n.to_string());
            std::fs::create_dir_all(&target).map_err(io_err(&target))?;
            let labels = BTreeMap::from([("berth.io/container".to_string(), id.clone())]);
            let mounts = self
                .snapshots
                .view(&image_volume_key(id, *n), Some(top), labels)?;
            self.mounts
                .mount(&mounts, &target)
                .map_err(|message| ContainerError::Rootfs {
                    id: id.clone(),
                    message,
                })?;
            if let Some(m) = config.mounts.get_mut(*n) {
                m.host_path = target.display().to_string();
                m.readonly = true;
                m.image = None;
            }
        }
        let config = &config;
        let in_image = |rel| {
            read_in_rootfs(&image_root, rel).map_err(|source| ContainerError::ImageFile {
                id: id.clone(),
                source,
            })
        };
        let passwd = in_image("etc/passwd")?;
        let group = in_image("etc/group")?;
        let spec = spec::build(&SpecInput {
            id,
            config,
            image,
            image_name,
            pod,
            passwd: &passwd,
            group: &group,
            oom_score_adj_floor: self.oom_score_adj_floor,
            node: facts,
            host: self.host.as_ref(),
            target_pid,
            volumes: &volumes,
        })?;
        let config_path = dir.join("config.json");
        let json = serde_json::to_vec_pretty(&spec)
            .map_err(|e| ContainerError::InvalidConfig(e.to_string()))?;
        std::fs::write(&config_path, json).map_err(io_err(&config_path))?;
        let log = match log_path {
            Some(p) => {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                p.to_path_buf()
            }
            None => PathBuf::new(),
        };
        progress.task = true;
        self.tasks
            .create(&record.sandbox_id, id, &dir, &log)
            .map_err(Self::task_err(id))?;
        Ok(resources::from_spec(&spec))
    }

    /// Undoes create's side effects (each step idempotent).
    fn tear_down(
        &self,
        record: &ContainerRecord,
        progress: &Progress,
    ) -> Result<(), ContainerError> {
        let id = &record.id;
        if progress.task {
            match self.tasks.delete(&record.sandbox_id, id, "") {
                Ok(()) | Err(TaskError::NotFound(_)) => {}
                Err(e) => tracing::warn!(container.id = %id, error = %e, "deleting task"),
            }
        }
        let dir = self.dir(id);
        self.remove_image_volumes(id, &dir)?;
        if progress.mounted {
            self.mounts
                .unmount(&dir.join("rootfs"))
                .map_err(|message| ContainerError::Rootfs {
                    id: id.clone(),
                    message,
                })?;
        }
        if progress.snapshot {
            self.snapshots.remove(id)?;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ContainerError::Io { path: dir, source }),
        }
    }

    /// A pulled image and its config; one that is not here is NotFound ("pull it first").
    fn local_image(
        &self,
        reference: &str,
    ) -> Result<
        (
            berth_store::ImageRecord,
            oci_spec::image::ImageConfiguration,
        ),
        ContainerError,
    > {
        let image = self
            .images
            .resolve(reference)
            .map_err(|e| match e {
                ImageError::InvalidReference { .. } => {
                    ContainerError::ImageNotFound(reference.to_string())
                }
                other => other.into(),
            })?
            .ok_or_else(|| ContainerError::ImageNotFound(reference.to_string()))?;
        let config = serde_json::from_slice(&image.config).map_err(|e| {
            ContainerError::InvalidConfig(format!(
                "image {} has an unreadable config: {e}",
                image.id
            ))
        })?;
        Ok((image, config))
    }

    /// The image volumes `config` asks for (`Mount.image`): each mount's index and the top
    /// layer of its image, which must be present. Checked before any side effect.
    fn image_volumes(
        &self,
        config: &ContainerConfig,
    ) -> Result<Vec<(usize, String)>, ContainerError> {
        let mut out = Vec::new();
        for (n, m) in config.mounts.iter().enumerate() {
            let Some(reference) = m
                .image
                .as_ref()
                .map(|i| i.image.as_str())
                .filter(|r| !r.is_empty())
            else {
                continue;
            };
            if !m.host_path.is_empty() {
                return Err(ContainerError::InvalidConfig(format!(
                    "mount at {}: host_path and image are exclusive",
                    m.container_path
                )));
            }
            // An image's layers are shared by every container of that image: kubelet always
            // asks for them read-only, and so does critest's contract.
            if !m.readonly {
                return Err(ContainerError::InvalidConfig(format!(
                    "mount at {}: an image volume is read-only; set readonly: true",
                    m.container_path
                )));
            }
            let (_, config) = self.local_image(reference)?;
            let top = chain_ids(config.rootfs().diff_ids()).pop().ok_or_else(|| {
                ContainerError::InvalidConfig(format!(
                    "mount at {}: image {reference} has no layers",
                    m.container_path
                ))
            })?;
            out.push((n, top));
        }
        Ok(out)
    }

    /// Unmounts and drops the container's image volumes (whatever a create got to).
    fn remove_image_volumes(&self, id: &str, dir: &Path) -> Result<(), ContainerError> {
        let volumes = dir.join(IMAGE_VOLUMES_DIR);
        for entry in std::fs::read_dir(&volumes).into_iter().flatten().flatten() {
            self.mounts
                .unmount(&entry.path())
                .map_err(|message| ContainerError::Rootfs {
                    id: id.to_string(),
                    message,
                })?;
        }
        let prefix = image_volume_prefix(id);
        let mut keys = Vec::new();
        self.snapshots.walk(&mut |info| {
            if info.key.starts_with(&prefix) {
                keys.push(info.key.clone());
            }
            true
        })?;
        for key in keys {
            self.snapshots.remove(&key)?;
        }
        Ok(())
    }

    /// StartContainer: the container must be Created.
    pub fn start(self: &Arc<Self>, id: &str) -> Result<(), ContainerError> {
        let record = self
            .find(id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        let op = self.op_lock(&record.id);
        let _op = lock(&op);
        // Read again under the lock: a remove or stop may have finished meanwhile.
        let record = self
            .find(&record.id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if record.state() != ContainerState::Created {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {} is {:?}, not created",
                record.id,
                record.state()
            )));
        }
        let id = record.id.clone();
        let pod = record.sandbox_id.clone();
        self.tasks
            .start(&pod, &id, "")
            .map_err(Self::task_err(&id))?;
        self.update(&id, |r| {
            if r.state() == ContainerState::Created {
                r.set_state(ContainerState::Running);
                r.started_at_ns = now_ns();
            }
        })?;
        self.monitor(&pod, &id);
        tracing::info!(container.id = %id, "container started");
        Ok(())
    }

    /// Awaits the container's exit in the background and records it.
    fn monitor(self: &Arc<Self>, pod: &str, id: &str) {
        let wait = self.tasks.wait(pod, id, "");
        let this = Arc::clone(self);
        let (pod, id) = (pod.to_string(), id.to_string());
        self.runtime.spawn(async move {
            match wait.await {
                Ok(exit) => {
                    let _ = tokio::task::spawn_blocking(move || this.record_exit(&pod, &id, exit))
                        .await;
                }
                Err(e) => tracing::debug!(container.id = %id, error = %e, "waiting for container"),
            }
        });
    }

    fn record_exit(&self, pod: &str, id: &str, exit: Exit) {
        let oom = self
            .tasks
            .state(pod, id, "")
            .map(|s| s.oom_killed)
            .unwrap_or(false);
        let result = self.update(id, |r| {
            if r.state() == ContainerState::Running || r.state() == ContainerState::Created {
                r.set_state(ContainerState::Exited);
                r.exit_code = i32::try_from(exit.status).unwrap_or(i32::MAX);
                r.finished_at_ns = if exit.at_ns > 0 { exit.at_ns } else { now_ns() };
                r.reason = exit_reason(exit.status, oom).to_string();
            }
        });
        match result {
            Ok(_) => tracing::info!(container.id = %id, exit = exit.status, "container exited"),
            Err(e) => tracing::error!(container.id = %id, error = %e, "recording container exit"),
        }
    }

    fn stop_signal(&self, record: &ContainerRecord) -> u32 {
        self.store
            .get::<berth_store::ImageRecord>(&record.image_ref)
            .ok()
            .flatten()
            .and_then(|i| serde_json::from_slice::<serde_json::Value>(&i.config).ok())
            .and_then(|v| {
                v.pointer("/config/StopSignal")
                    .and_then(|s| s.as_str())
                    .and_then(parse_signal)
            })
            .unwrap_or(libc_sigterm())
    }

    /// Waits up to `timeout` for the container's exit.
    fn wait_exit(&self, pod: &str, id: &str, timeout: Duration) -> Option<Exit> {
        let wait = self.tasks.wait(pod, id, "");
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, wait).await })
            .ok()
            .and_then(Result::ok)
    }

    /// StopContainer: the stop signal, SIGKILL after `timeout`; idempotent.
    pub fn stop(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let Some(record) = self.find(id)? else {
            return Ok(());
        };
        let op = self.op_lock(&record.id);
        let _op = lock(&op);
        let Some(record) = self.find(&record.id)? else {
            return Ok(());
        };
        self.stop_record(&record, timeout)
    }

    /// The operation lock of container `id` (a full id).
    fn op_lock(&self, id: &str) -> Arc<Mutex<()>> {
        lock(&self.ops)
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone()
    }

    fn stop_record(
        &self,
        record: &ContainerRecord,
        timeout: Duration,
    ) -> Result<(), ContainerError> {
        if record.state() != ContainerState::Running {
            return Ok(());
        }
        let (pod, id) = (record.sandbox_id.as_str(), record.id.as_str());
        let mut exit = None;
        if !timeout.is_zero() {
            let signal = self.stop_signal(record);
            match self.tasks.kill(pod, id, "", signal, false) {
                Ok(()) => exit = self.wait_exit(pod, id, timeout),
                Err(TaskError::NotFound(_)) => exit = self.wait_exit(pod, id, KILL_WAIT),
                Err(e) => return Err(Self::task_err(id)(e)),
            }
        }
        if exit.is_none() {
            match self.tasks.kill(pod, id, "", 9, true) {
                Ok(()) | Err(TaskError::NotFound(_)) => {}
                Err(e) => return Err(Self::task_err(id)(e)),
            }
            exit = self.wait_exit(pod, id, KILL_WAIT);
        }
        match exit {
            Some(exit) => self.record_exit(pod, id, exit),
            None => {
                // The shim is gone or does not answer: the container cannot be running.
                self.update(id, |r| {
                    if r.state() == ContainerState::Running {
                        r.set_state(ContainerState::Exited);
                        r.finished_at_ns = now_ns();
                        r.exit_code = 255;
                        r.reason = "Unknown".into();
                        r.message = "the container's exit could not be observed".into();
                    }
                })?;
            }
        }
        tracing::info!(container.id = %id, "container stopped");
        Ok(())
    }

    /// RemoveContainer: force-stops and removes everything the container owned; idempotent.
    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let Some(record) = self.find(id)? else {
            return Ok(());
        };
        let op = self.op_lock(&record.id);
        let guard = lock(&op);
        let Some(record) = self.find(&record.id)? else {
            return Ok(());
        };
        let full = record.id.clone();
        self.remove_record(record)?;
        drop(guard);
        lock(&self.ops).remove(&full);
        Ok(())
    }

    fn remove_record(&self, record: ContainerRecord) -> Result<(), ContainerError> {
        self.stop_record(&record, Duration::ZERO)?;
        let id = record.id.clone();
        self.update(&id, |r| r.set_state(ContainerState::Removing))?;
        let all = Progress {
            snapshot: true,
            mounted: true,
            task: true,
        };
        self.tear_down(&record, &all)?;
        self.store.delete::<ContainerRecord>(&id)?;
        tracing::info!(container.id = %id, "container removed");
        Ok(())
    }

    /// Stops every container of pod `pod_id` and deletes their tasks (the shim goes next);
    /// with `remove`, removes them too.
    pub fn stop_pod(&self, pod_id: &str, remove: bool) -> Result<(), ContainerError> {
        let pod_id = match self.sandboxes.status(pod_id) {
            Ok(p) => p.record.id,
            Err(SandboxError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let records: Vec<ContainerRecord> = self
            .store
            .list::<ContainerRecord>()?
            .into_iter()
            .filter(|r| r.sandbox_id == pod_id)
            .collect();
        for record in records {
            let op = self.op_lock(&record.id);
            let _op = lock(&op);
            if remove {
                let full = record.id.clone();
                self.remove_record(record)?;
                lock(&self.ops).remove(&full);
            } else {
                self.stop_record(&record, Duration::ZERO)?;
                match self.tasks.delete(&pod_id, &record.id, "") {
                    Ok(()) | Err(TaskError::NotFound(_)) => {}
                    Err(e) => return Err(Self::task_err(&record.id)(e)),
                }
            }
        }
        Ok(())
    }

    /// At start, after the pods' shims are reconnected: containers a crash left in creation
    /// are rolled back, interrupted removals finished; created and running ones are reconciled
    /// with their shim (still running: watched again; exited while berthd was down: the real
    /// exit; gone with its shim: exited with a reason, its rootfs unmounted), and resource
    /// updates a crash interrupted applied again or dropped. Errors are logged per container,
    /// never fatal.
    pub fn recover(self: &Arc<Self>) -> Result<(), ContainerError> {
        let mut live = Vec::new();
        for record in self.store.list::<ContainerRecord>()? {
            let id = record.id.clone();
            let result = match record.state() {
                ContainerState::Creating => {
                    tracing::info!(container.id = %id, "rolling back a container left in creation");
                    let all = Progress {
                        snapshot: true,
                        mounted: true,
                        task: true,
                    };
                    self.tear_down(&record, &all)
                        .and_then(|()| Ok(self.store.delete::<ContainerRecord>(&id)?))
                }
                ContainerState::Removing => self.remove_record(record),
                ContainerState::Created | ContainerState::Running => {
                    live.push(record);
                    Ok(())
                }
                ContainerState::Exited | ContainerState::Unknown => {
                    self.finish_resources_update(&record, false)
                }
            };
            if let Err(e) = result {
                tracing::error!(container.id = %id, error = %e, "recovering container");
            }
        }
        crate::parallel::for_each(&live, crate::parallel::RECOVERY_WORKERS, |record| {
            if let Err(e) = self.reconcile(record) {
                tracing::error!(container.id = %record.id, error = %e, "recovering container");
            }
        });
        Ok(())
    }

    /// Brings a created or running container's record in line with what its shim knows.
    fn reconcile(self: &Arc<Self>, record: &ContainerRecord) -> Result<(), ContainerError> {
        let (pod, id) = (&record.sandbox_id, &record.id);
        match self.tasks.state(pod, id, "") {
            Ok(TaskState {
                exit: Some(exit), ..
            }) => {
                self.record_exit(pod, id, exit);
                self.finish_resources_update(record, false)
            }
            Ok(_) => {
                if record.state() == ContainerState::Running {
                    self.monitor(pod, id);
                }
                self.finish_resources_update(record, true)
            }
            Err(e) => {
                tracing::warn!(container.id = %id, error = %e, "container's task is gone");
                // Without its shim the container's processes may still run, reparented:
                // delete it with the runtime so that they and its cgroup go.
                if let Err(e) = self.tasks.delete(pod, id, "") {
                    tracing::warn!(container.id = %id, error = %e, "deleting an orphaned container");
                }
                self.update(id, |r| {
                    r.set_state(ContainerState::Exited);
                    r.finished_at_ns = now_ns();
                    r.exit_code = 255;
                    r.reason = "Unknown".into();
                    r.message = format!("the container's shim is gone: {e}");
                    r.resources_update = None;
                })?;
                self.mounts
                    .unmount(&self.dir(id).join("rootfs"))
                    .map_err(|message| ContainerError::Rootfs {
                        id: id.clone(),
                        message,
                    })
            }
        }
    }

    /// ContainerStatus: the container, or NotFound.
    pub fn status(&self, id: &str) -> Result<Container, ContainerError> {
        let record = self
            .find(id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        self.decode(record)
    }

    /// The container's Linux resources as applied: from its record, or for a record written
    /// before berth kept them, from its bundle's spec; `None` when neither says.
    pub fn resources(
        &self,
        record: &ContainerRecord,
    ) -> Result<Option<LinuxContainerResources>, ContainerError> {
        match &record.resources {
            Some(bytes) => LinuxContainerResources::decode(bytes.as_slice())
                .map(Some)
                .map_err(|_| ContainerError::CorruptRecord(record.id.clone())),
            None => Ok(self.bundle_resources(&record.id)),
        }
    }

    fn bundle_resources(&self, id: &str) -> Option<LinuxContainerResources> {
        let path = self.dir(id).join("config.json");
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice::<oci_spec::runtime::Spec>(&bytes) {
            Ok(spec) => Some(resources::from_spec(&spec)),
            Err(e) => {
                tracing::warn!(container.id = %id, path = %path.display(), error = %e, "unreadable spec");
                None
            }
        }
    }

    /// The init pid of a running container (0 otherwise) and its bundle.
    pub fn runtime_info(&self, c: &Container) -> (u32, PathBuf) {
        let pid = if c.record.state() == ContainerState::Running {
            self.tasks
                .state(&c.record.sandbox_id, &c.record.id, "")
                .map(|s| s.pid)
                .unwrap_or(0)
        } else {
            0
        };
        (pid, self.dir(&c.record.id))
    }

    /// The uid, gid and supplementary groups the container's process runs with, as its
    /// bundle says (`None` before the bundle is written or after it is removed).
    pub fn process_user(&self, c: &Container) -> Option<(u32, u32, Vec<u32>)> {
        let spec: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.dir(&c.record.id).join("config.json")).ok()?,
        )
        .ok()?;
        let user = &spec["process"]["user"];
        let id = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        let groups = user["additionalGids"]
            .as_array()
            .map(|a| a.iter().filter_map(id).collect())
            .unwrap_or_default();
        Some((id(&user["uid"])?, id(&user["gid"])?, groups))
    }

    /// Every container, in id order; containers being created or removed are left out.
    pub fn list(&self) -> Result<Vec<Container>, ContainerError> {
        self.store
            .list::<ContainerRecord>()?
            .into_iter()
            .filter(|r| {
                !matches!(
                    r.state(),
                    ContainerState::Creating | ContainerState::Removing
                )
            })
            .map(|r| self.decode(r))
            .collect()
    }

    fn running(&self, id: &str) -> Result<ContainerRecord, ContainerError> {
        let record = self
            .find(id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if record.state() != ContainerState::Running {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {} is not running",
                record.id
            )));
        }
        Ok(record)
    }

    /// ReopenContainerLog: the shim reopens the log file at its path.
    pub fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let record = self.running(id)?;
        let annotations = HashMap::from([("berth.reopen-log".to_string(), "1".to_string())]);
        self.tasks
            .update(&record.sandbox_id, &record.id, Vec::new(), annotations)
            .map_err(Self::task_err(&record.id))
    }

    /// UpdateContainerResources: `runc update` through the shim, then the record's resources
    /// merged with what was applied. The request is recorded first (a crash leaves it for
    /// [`Containers::recover`]); a refused update leaves the recorded resources as they were.
    pub fn update_resources(
        &self,
        id: &str,
        update: &LinuxContainerResources,
    ) -> Result<(), ContainerError> {
        let record = self
            .find(id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        // One update at a time per container, none racing its start, stop or removal: the
        // recorded merge must follow the order the runtime applied them in.
        let op = self.op_lock(&record.id);
        let _op = lock(&op);
        let record = self
            .find(&record.id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if !matches!(
            record.state(),
            ContainerState::Running | ContainerState::Created
        ) {
            return Err(ContainerError::FailedPrecondition(format!(
                "container {} is not running",
                record.id
            )));
        }
        let (json, applied) = self.plan_update(&record, update)?;
        let id = record.id.as_str();
        self.update(id, |r| r.resources_update = Some(update.encode_to_vec()))?;
        let result = self
            .tasks
            .update(&record.sandbox_id, id, json, HashMap::new())
            .map_err(Self::task_err(id));
        self.update(id, |r| {
            r.resources_update = None;
            if result.is_ok() {
                r.resources = Some(applied.encode_to_vec());
            }
        })?;
        result
    }

    /// What an update of `record`'s container sends to its shim (OCI resources, as JSON), and
    /// the container's resources once the runtime applied it.
    fn plan_update(
        &self,
        record: &ContainerRecord,
        update: &LinuxContainerResources,
    ) -> Result<(Vec<u8>, LinuxContainerResources), ContainerError> {
        let handler = self
            .sandboxes
            .status(&record.sandbox_id)
            .map(|p| p.record.runtime_handler)
            .unwrap_or_default();
        let oci = spec::linux_resources(update, &self.node_facts(&handler))?;
        let json =
            serde_json::to_vec(&oci).map_err(|e| ContainerError::InvalidConfig(e.to_string()))?;
        let mut applied = self.resources(record)?.unwrap_or_default();
        resources::apply(&mut applied, &oci);
        Ok((json, applied))
    }

    /// At recovery: an update a crash interrupted is applied again while the container lives
    /// (the runtime may or may not have applied it), and dropped otherwise.
    fn finish_resources_update(
        &self,
        record: &ContainerRecord,
        alive: bool,
    ) -> Result<(), ContainerError> {
        let Some(bytes) = record.resources_update.as_ref().filter(|_| alive) else {
            if record.resources_update.is_some() {
                self.update(&record.id, |r| r.resources_update = None)?;
            }
            return Ok(());
        };
        let id = record.id.as_str();
        let reapplied = LinuxContainerResources::decode(bytes.as_slice())
            .map_err(|_| ContainerError::CorruptRecord(id.to_string()))
            .and_then(|update| {
                let (json, applied) = self.plan_update(record, &update)?;
                self.tasks
                    .update(&record.sandbox_id, id, json, HashMap::new())
                    .map_err(Self::task_err(id))?;
                Ok(applied)
            });
        match &reapplied {
            Ok(_) => tracing::info!(container.id = %id, "interrupted resource update applied"),
            Err(e) => {
                tracing::warn!(container.id = %id, error = %e, "interrupted resource update dropped")
            }
        }
        self.update(id, |r| {
            r.resources_update = None;
            if let Ok(applied) = &reapplied {
                r.resources = Some(applied.encode_to_vec());
            }
        })?;
        Ok(())
    }

    /// ExecSync: runs `cmd` in the container and collects its output. Blocking; call from a
    /// blocking thread.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutput, ContainerError> {
        if cmd.is_empty() {
            return Err(ContainerError::InvalidConfig(
                "exec command is empty".into(),
            ));
        }
        let record = self.running(id)?;
        let (pod, id) = (record.sandbox_id.clone(), record.id.clone());
        let exec_id = random_id()?.chars().take(16).collect::<String>();
        let dir = self.dir(&id).join("exec").join(&exec_id);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let result = self.exec_in(&pod, &id, &exec_id, &dir, cmd, timeout);
        match self.tasks.delete(&pod, &id, &exec_id) {
            Ok(()) | Err(TaskError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(container.id = %id, exec.id = %exec_id, error = %e, "deleting exec")
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn exec_in(
        &self,
        pod: &str,
        id: &str,
        exec_id: &str,
        dir: &Path,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutput, ContainerError> {
        let config_path = self.dir(id).join("config.json");
        let spec: serde_json::Value = std::fs::read(&config_path)
            .map_err(io_err(&config_path))
            .and_then(|b| {
                serde_json::from_slice(&b)
                    .map_err(|_| ContainerError::CorruptRecord(id.to_string()))
            })?;
        let mut process = spec
            .get("process")
            .cloned()
            .ok_or_else(|| ContainerError::CorruptRecord(id.to_string()))?;
        process["args"] = serde_json::json!(cmd);
        process["terminal"] = serde_json::Value::Bool(false);
        let process = serde_json::to_vec(&process)
            .map_err(|e| ContainerError::InvalidConfig(e.to_string()))?;
        let stdout = dir.join("stdout");
        let stderr = dir.join("stderr");
        for fifo in [&stdout, &stderr] {
            nix::unistd::mkfifo(
                fifo.as_path(),
                nix::sys::stat::Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| ContainerError::Io {
                path: fifo.clone(),
                source: e.into(),
            })?;
        }
        let tasks = Arc::clone(&self.tasks);
        let task_err = Self::task_err(id);
        let (pod, id, exec_id) = (pod.to_string(), id.to_string(), exec_id.to_string());
        self.runtime.block_on(async move {
            let open = |p: &Path| {
                tokio::net::unix::pipe::OpenOptions::new()
                    .read_write(true)
                    .open_receiver(p)
                    .map_err(io_err(p))
            };
            // Opened before Start (the shim opens them too, read-write, so nothing blocks).
            let out_rx = open(&stdout)?;
            let err_rx = open(&stderr)?;
            {
                let tasks = Arc::clone(&tasks);
                let (pod, id, exec_id) = (pod.clone(), id.clone(), exec_id.clone());
                let stdout = stdout.clone();
                let stderr = stderr.clone();
                tokio::task::spawn_blocking(move || {
                    tasks.exec(&pod, &id, &exec_id, process, &stdout, &stderr)?;
                    tasks.start(&pod, &id, &exec_id)
                })
                .await
                .map_err(|e| ContainerError::Join(e.to_string()))?
                .map_err(task_err)?;
            }
            let (done_tx, done_rx) = tokio::sync::watch::channel(false);
            let out = tokio::spawn(read_capped(out_rx, done_rx.clone()));
            let err = tokio::spawn(read_capped(err_rx, done_rx));
            let wait = tasks.wait(&pod, &id, &exec_id);
            let exit = if timeout.is_zero() {
                Some(wait.await)
            } else {
                tokio::time::timeout(timeout, wait).await.ok()
            };
            let exit = match exit {
                Some(Ok(exit)) => Ok(exit),
                Some(Err(e)) => Err(ContainerError::Task {
                    id: id.clone(),
                    message: e.to_string(),
                }),
                None => {
                    let (tasks2, pod2, id2, exec2) =
                        (Arc::clone(&tasks), pod.clone(), id.clone(), exec_id.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        tasks2.kill(&pod2, &id2, &exec2, 9, false)
                    })
                    .await;
                    let _ = tokio::time::timeout(KILL_WAIT, tasks.wait(&pod, &id, &exec_id)).await;
                    Err(ContainerError::Timeout(timeout))
                }
            };
            let _ = done_tx.send(true);
            let stdout = out.await.unwrap_or_default();
            let stderr = err.await.unwrap_or_default();
            let exit = exit?;
            Ok(ExecOutput {
                exit_code: i32::try_from(exit.status).unwrap_or(i32::MAX),
                stdout,
                stderr,
            })
        })
    }
}

/// Reads a FIFO until `done`, keeping at most [`MAX_EXEC_OUTPUT`] bytes.
async fn read_capped(
    mut rx: tokio::net::unix::pipe::Receiver,
    mut done: tokio::sync::watch::Receiver<bool>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            biased;
            n = rx.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_EXEC_OUTPUT.saturating_sub(out.len());
                    out.extend_from_slice(&buf[..n.min(room)]);
                }
            },
            _ = done.wait_for(|d| *d) => {
                // The process has exited, so all it wrote is in the pipe already: take what
                // is there and stop. Never wait for EOF: berthd holds a write end (the FIFO is
                // opened read-write), and a background child may hold another one for ever.
                loop {
                    match rx.try_read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let room = MAX_EXEC_OUTPUT.saturating_sub(out.len());
                            out.extend_from_slice(&buf[..n.min(room)]);
                        }
                    }
                }
                break;
            }
        }
    }
    out
}

fn libc_sigterm() -> u32 {
    nix::sys::signal::Signal::SIGTERM as u32
}

/// runc (1.1) mounts a tmpfs on `/dev`, resolved inside the rootfs, but then makes `/dev/fd`,
/// `/dev/stdin`, `/dev/ptmx` and the like by a plain join under the rootfs: an image whose
/// `/dev` is a symlink would have those made wherever it points, on the host. A `/dev` the image
/// lacks is fine (runc makes the directory).
fn refuse_symlinked_dev(root: &berth_rootpath::Root, id: &str) -> Result<(), ContainerError> {
    match root.lstat(Path::new("dev")) {
        Ok(st) if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK => {
            Err(ContainerError::FailedPrecondition(format!(
                "container {id}: the image's /dev is a symlink; the runtime mounts /dev itself \
                 and would follow it out of the rootfs"
            )))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ContainerError::ImageFile {
            id: id.to_string(),
            source,
        }),
    }
}

/// Bounds what berthd reads of an image's account files into memory.
const MAX_ACCOUNT_FILE: u64 = 16 << 20;

/// A file of the image's rootfs (every component resolved inside it); empty if absent.
fn read_in_rootfs(root: &berth_rootpath::Root, rel: &str) -> Result<String, berth_rootpath::Error> {
    match root.read_to_string(Path::new(rel), MAX_ACCOUNT_FILE) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        r => r,
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod service_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_stay_inside_the_log_directory() {
        let dir = Path::new("/var/log/pods/p");
        assert_eq!(
            confined_join(dir, "c/0.log"),
            Some(PathBuf::from("/var/log/pods/p/c/0.log"))
        );
        assert_eq!(
            confined_join(dir, "./c/../d.log"),
            Some(PathBuf::from("/var/log/pods/p/d.log"))
        );
        assert_eq!(confined_join(dir, "../other/x.log"), None);
        assert_eq!(confined_join(dir, "/etc/passwd"), None);
        assert_eq!(confined_join(dir, "."), None);
    }

    #[test]
    fn exit_reasons_follow_containerd() {
        assert_eq!(exit_reason(0, false), "Completed");
        assert_eq!(exit_reason(3, false), "Error");
        assert_eq!(exit_reason(137, true), "OOMKilled");
    }

    #[test]
    fn stop_signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGQUIT"), Some(3));
        assert_eq!(parse_signal("term"), Some(15));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGBOGUS"), None);
    }

    #[test]
    fn account_files_are_read_inside_the_rootfs() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("passwd"), "u:x:4242:4242::/:/bin/sh\n").unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(host.path(), rootfs.path().join("etc")).unwrap();
        let root = berth_rootpath::Root::open(rootfs.path()).unwrap();
        assert_eq!(read_in_rootfs(&root, "etc/passwd").unwrap(), "");

        let inside = rootfs.path().join(host.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::write(inside.join("passwd"), "u:x:1234:1234::/:/bin/sh\n").unwrap();
        assert_eq!(
            read_in_rootfs(&root, "etc/passwd").unwrap(),
            "u:x:1234:1234::/:/bin/sh\n"
        );
        std::fs::remove_file(inside.join("passwd")).unwrap();
        std::os::unix::fs::symlink("passwd", inside.join("passwd")).unwrap();
        let err = read_in_rootfs(&root, "etc/passwd").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(nix::libc::ELOOP));
    }

    #[test]
    fn a_symlinked_dev_is_refused_and_a_missing_one_is_not() {
        let rootfs = tempfile::tempdir().unwrap();
        let root = berth_rootpath::Root::open(rootfs.path()).unwrap();
        refuse_symlinked_dev(&root, "c1").unwrap();
        std::fs::create_dir(rootfs.path().join("dev")).unwrap();
        refuse_symlinked_dev(&root, "c1").unwrap();
        std::fs::remove_dir(rootfs.path().join("dev")).unwrap();
        std::os::unix::fs::symlink("/tmp", rootfs.path().join("dev")).unwrap();
        let err = refuse_symlinked_dev(&root, "c1").unwrap_err();
        assert!(
            matches!(&err, ContainerError::FailedPrecondition(m) if m.contains("c1") && m.contains("/dev is a symlink")),
            "{err}"
        );
    }
}
