//! The sandbox service: the life of a pod sandbox, from its record to its namespaces, network
//! and shim, and back.
//!
//! # State machine
//!
//! ```text
//! run:     record(Creating) -> ns pinned -> files -> CNI ADD -> shim -> record(Ready)
//! stop:    Ready -> CNI DEL -> net ns unpinned -> shim shut down -> record(NotReady)
//! remove:  (stop) -> record(Removing) -> ipc/uts unpinned, dirs removed -> record deleted
//! recover: Creating -> rolled back; Removing -> removal finished; Ready -> shim reconnected
//! ```
//!
//! The record is written (state `Creating`) before any side effect, so a crash at any step leaves
//! a record that [`Sandboxes::recover`] rolls back. Every undo step is idempotent: it tolerates
//! what was never done. The side effects go through three seams ([`NamespacePinner`],
//! [`PodNetwork`], [`ShimLauncher`]) so that the state machine is tested with fakes.
//!
//! The service is synchronous (plugins, mounts and process starts block); the CRI layer calls it
//! from `spawn_blocking`.
//!
//! # On disk
//!
//! ```text
//! <state>/sandboxes/<id>/ns/{net,ipc,uts}        pinned namespaces
//! <state>/sandboxes/<id>/{hostname,hosts,resolv.conf}
//! <state>/shims/<id[..32]>/                      the shim's state dir (shim.sock, shim.log);
//!                                                a short name, as socket paths are limited
//! <state>/runc/                                  runc's --root for every shim
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::cri::{NamespaceMode, PodSandboxConfig};
use berth_store::{SandboxRecord, SandboxState, Store, StoreError};
use prost::Message;

use crate::containers::spec::SpecError;
use crate::sandbox::namespaces::{Namespace, NamespaceError};

/// Creates and removes pinned namespaces (`namespaces::pin_new` / `namespaces::remove`).
pub trait NamespacePinner: Send + Sync {
    fn pin(&self, ns: Namespace, path: &Path, hostname: Option<&str>)
    -> Result<(), NamespaceError>;
    /// Idempotent: a missing or unmounted file is fine.
    fn remove(&self, path: &Path) -> Result<(), NamespaceError>;
    /// Mounts the pod's `/dev/shm`: a tmpfs of `size` bytes at the directory `path`, which
    /// every container of the pod bind-mounts (POSIX shared memory is per pod, like its IPC
    /// namespace).
    fn mount_shm(&self, path: &Path, size: u64) -> Result<(), NamespaceError>;
    /// Idempotent: a missing or unmounted directory is fine.
    fn remove_shm(&self, path: &Path) -> Result<(), NamespaceError>;
}

/// The size of a pod's `/dev/shm`, containerd's default (Docker's too).
pub const POD_SHM_SIZE: u64 = 64 << 20;

/// What the network needs to know about a pod to attach or detach it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkAttachment {
    pub pod_id: String,
    pub netns: PathBuf,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// CNI `portMappings` capability entries (host ports only).
    pub port_mappings: Vec<serde_json::Value>,
    /// CNI `dns` capability argument, when the pod has a DNS config.
    pub dns: Option<serde_json::Value>,
    /// CNI `bandwidth` capability argument, from the pod's bandwidth annotations.
    pub bandwidth: Option<serde_json::Value>,
    /// The node's pod CIDRs (kubelet's UpdateRuntimeConfig), as the CNI `ipRanges`
    /// capability argument gives them to IPAM plugins that take it.
    pub ip_ranges: Vec<String>,
}

/// kubelet's pod annotations for traffic shaping, in bits per second.
const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

/// The CNI `bandwidth` capability argument for a pod's bandwidth annotations, as containerd
/// builds it: the rates from the annotations (Kubernetes quantities, bits per second) and no
/// limit on the bursts. `None` without either annotation.
pub fn bandwidth(
    annotations: &std::collections::HashMap<String, String>,
) -> Result<Option<serde_json::Value>, SandboxError> {
    let rate = |key: &str| -> Result<Option<u64>, SandboxError> {
        annotations
            .get(key)
            .map(|v| {
                parse_quantity(v).ok_or_else(|| {
                    SandboxError::InvalidConfig(format!(
                        "annotation {key}: {v:?} is not a bit rate (e.g. 10M, 1Gi)"
                    ))
                })
            })
            .transpose()
    };
    let (ingress, egress) = (rate(INGRESS_BANDWIDTH)?, rate(EGRESS_BANDWIDTH)?);
    if ingress.is_none() && egress.is_none() {
        return Ok(None);
    }
    let mut b = serde_json::Map::new();
    if let Some(r) = ingress {
        b.insert("ingressRate".into(), r.into());
        b.insert("ingressBurst".into(), u64::from(u32::MAX).into());
    }
    if let Some(r) = egress {
        b.insert("egressRate".into(), r.into());
        b.insert("egressBurst".into(), u64::from(u32::MAX).into());
    }
    Ok(Some(serde_json::Value::Object(b)))
}

/// A whole-number Kubernetes quantity (`10M`, `512Ki`, `1e6`-free forms), or `None`.
fn parse_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    n.checked_mul(mult).filter(|v| *v > 0)
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No usable network configuration: the NetworkReady condition's reason.
    #[error("{0}")]
    NotReady(String),
    /// A plugin failed: its message.
    #[error("{0}")]
    Plugin(String),
}

/// Attaches a pod's network namespace to the pod network (CNI ADD/DEL).
pub trait PodNetwork: Send + Sync {
    /// `Err(reason)` while no network configuration is usable.
    fn ready(&self) -> Result<(), NetworkError>;
    /// Attaches; returns the pod's IPs, primary first.
    fn setup(&self, pod: &NetworkAttachment) -> Result<Vec<IpAddr>, NetworkError>;
    /// Detaches. Idempotent: detaching what was never attached succeeds.
    fn teardown(&self, pod: &NetworkAttachment) -> Result<(), NetworkError>;
}

/// A running shim, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimProcess {
    pub address: String,
    pub pid: u32,
    /// The init of the pod's shared PID namespace; 0 when there is none.
    pub pid_holder: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("starting shim for pod {id}: {message}")]
    Start { id: String, message: String },
    #[error("connecting to shim of pod {id} at {address}: {message}")]
    Connect {
        id: String,
        address: String,
        message: String,
    },
    #[error("stopping shim of pod {id}: {message}")]
    Stop { id: String, message: String },
}

/// The pod's own cgroup: the parent of its containers' cgroups when kubelet names none. The
/// OCI runtime creates it with the first container; it goes with the pod.
pub trait PodCgroups: Send + Sync {
    /// Creates the pod's default cgroup with these limits (kubelet's pod resources plus the
    /// runtime class overhead), so that they bound the sum of its containers.
    fn create(&self, pod_id: &str, limits: &PodLimits) -> Result<(), String>;
    /// Removes the pod's default cgroup; one that does not exist is fine.
    fn remove(&self, pod_id: &str) -> Result<(), String>;
}

/// Limits of a pod's own cgroup; `None`: not limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodLimits {
    pub memory_bytes: Option<u64>,
    pub cpu_shares: Option<u64>,
    /// CFS quota and period in microseconds.
    pub cpu_quota: Option<(i64, u64)>,
}

impl PodLimits {
    /// The pod's resources plus its overhead, as the CRI gives them (0 means unset). A part
    /// the resources leave unlimited stays unlimited, overhead or not.
    pub fn of(config: &PodSandboxConfig) -> PodLimits {
        let linux = config.linux.as_ref();
        let (Some(r), overhead) = (
            linux.and_then(|l| l.resources.as_ref()),
            linux.and_then(|l| l.overhead.as_ref()),
        ) else {
            return PodLimits::default();
        };
        let extra = |f: fn(&berth_proto::cri::LinuxContainerResources) -> i64| {
            overhead.map(f).filter(|v| *v > 0).unwrap_or(0)
        };
        let sum = |v: i64, add: i64| u64::try_from(v.saturating_add(add)).ok();
        let period = u64::try_from(r.cpu_period)
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or(100_000);
        PodLimits {
            memory_bytes: (r.memory_limit_in_bytes > 0)
                .then(|| sum(r.memory_limit_in_bytes, extra(|o| o.memory_limit_in_bytes)))
                .flatten(),
            cpu_shares: (r.cpu_shares > 0)
                .then(|| sum(r.cpu_shares, extra(|o| o.cpu_shares)))
                .flatten(),
            cpu_quota: (r.cpu_quota > 0).then(|| (r.cpu_quota + extra(|o| o.cpu_quota), period)),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == PodLimits::default()
    }
}

/// Starts, reconnects to and stops per-pod shims (`berth-shim`).
pub trait ShimLauncher: Send + Sync {
    /// Starts the pod's shim with the OCI runtime `runtime` and connects to it; with
    /// `share_pid`, the shim also starts the holder of a PID namespace of the pod.
    fn start(&self, id: &str, runtime: &Path, share_pid: bool) -> Result<ShimProcess, ShimError>;
    /// Whether the recorded shim process still runs.
    fn alive(&self, id: &str, shim: &ShimProcess) -> bool;
    /// Connects to a shim started by an earlier berthd.
    fn reconnect(&self, id: &str, shim: &ShimProcess) -> Result<(), ShimError>;
    /// Shuts the pod's shim down (`Shutdown{now}`), killing it by pid if it lingers; with no
    /// pid (a crash before it was recorded) the shim is found by its socket. Idempotent.
    fn stop(&self, id: &str, pid: Option<u32>) -> Result<(), ShimError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid pod sandbox config: {0}")]
    InvalidConfig(String),
    #[error("unknown runtime handler {handler:?} (configured: {configured})")]
    UnknownHandler { handler: String, configured: String },
    #[error("pod sandbox name {name:?} is already used by pod {id}")]
    NameInUse { name: String, id: String },
    #[error("pod sandbox {0} not found")]
    NotFound(String),
    #[error("pod sandbox id prefix {0:?} matches more than one pod")]
    Ambiguous(String),
    #[error("network is not ready: {0}")]
    NetworkNotReady(String),
    /// What berth cannot do yet (FailedPrecondition, as for containers).
    #[error("{0}")]
    Unsupported(String),
    #[error("setting up the network of pod {id}: {message}")]
    NetworkSetup { id: String, message: String },
    #[error("tearing down the network of pod {id}: {message}")]
    NetworkTeardown { id: String, message: String },
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Shim(#[from] ShimError),
    #[error("pod sandbox file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    #[error("corrupt config in the record of pod {0}")]
    CorruptRecord(String),
    #[error("{0}")]
    Cgroup(String),
    #[error("sandbox task failed: {0}")]
    Task(String),
}

/// Where the service keeps a pod's files, and the host files it copies.
#[derive(Debug, Clone)]
pub struct SandboxDirs {
    pub state: PathBuf,
    /// The host's resolv.conf, copied when a pod gives no DNS config.
    pub host_resolv_conf: PathBuf,
    /// The host's hosts file, copied for host-network pods.
    pub host_hosts: PathBuf,
}

impl SandboxDirs {
    pub fn new(state: PathBuf) -> SandboxDirs {
        SandboxDirs {
            state,
            host_resolv_conf: PathBuf::from("/etc/resolv.conf"),
            host_hosts: PathBuf::from("/etc/hosts"),
        }
    }

    pub fn sandbox(&self, id: &str) -> PathBuf {
        self.state.join("sandboxes").join(id)
    }

    pub fn ns(&self, id: &str, ns: Namespace) -> PathBuf {
        self.sandbox(id).join("ns").join(ns.name())
    }

    /// The pod's shared `/dev/shm` (a tmpfs), when the pod has its own IPC namespace.
    pub fn shm(&self, id: &str) -> PathBuf {
        self.sandbox(id).join("shm")
    }

    pub fn shim(&self, id: &str) -> PathBuf {
        crate::shims::shim_dir(&self.state, id)
    }
}

/// A pod sandbox as the CRI layer reports it: the record and its decoded config.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub record: SandboxRecord,
    pub config: PodSandboxConfig,
}

impl Sandbox {
    pub fn state(&self) -> SandboxState {
        self.record.state()
    }
}

pub struct Sandboxes {
    store: Store,
    dirs: SandboxDirs,
    /// Runtime handler name to OCI runtime binary.
    runtimes: BTreeMap<String, PathBuf>,
    default_runtime: String,
    ns: Arc<dyn NamespacePinner>,
    net: Arc<dyn PodNetwork>,
    shims: Arc<dyn ShimLauncher>,
    cgroups: Arc<dyn PodCgroups>,
    /// The node's pod CIDRs, from kubelet's UpdateRuntimeConfig (none until it calls).
    pod_cidrs: std::sync::RwLock<Vec<String>>,
    /// Held while a name is checked and reserved by writing the record.
    names: Mutex<()>,
    /// One lock per pod id: run, stop and remove of one pod never interleave.
    pods: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// Which of the pod's namespaces are its own (not the host's).
#[derive(Debug, Clone, Copy)]
struct OwnNamespaces {
    net: bool,
    ipc: bool,
    /// A PID namespace of the pod's, held by a process of its own: shared by the containers
    /// in `POD` mode (kubelet's shareProcessNamespace). A pod in `CONTAINER` mode has one too,
    /// as containerd's pause container has: a container that asks for `POD` mode there shares
    /// it with nothing but the holder (and other such containers).
    pid: bool,
}

fn own_namespaces(config: &PodSandboxConfig) -> OwnNamespaces {
    let opts = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let node = NamespaceMode::Node as i32;
    OwnNamespaces {
        net: opts.is_none_or(|o| o.network != node),
        ipc: opts.is_none_or(|o| o.ipc != node),
        pid: opts.is_none_or(|o| o.pid != node),
    }
}

/// `<name>_<namespace>_<uid>_<attempt>`: unique among the sandboxes berthd knows.
fn pod_name(name: &str, namespace: &str, uid: &str, attempt: u32) -> String {
    format!("{name}_{namespace}_{uid}_{attempt}")
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// 64 random hex digits from the kernel's generator.
fn random_id() -> Result<String, SandboxError> {
    let mut bytes = [0u8; 32];
    let path = Path::new("/dev/urandom");
    std::io::Read::read_exact(
        &mut std::fs::File::open(path).map_err(|source| SandboxError::Io {
            path: path.to_path_buf(),
            source,
        })?,
        &mut bytes,
    )
    .map_err(|source| SandboxError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a failed run has done so far, so that the rollback undoes exactly that.
#[derive(Default)]
struct Progress {
    network: bool,
    shim: bool,
}

impl Sandboxes {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        dirs: SandboxDirs,
        runtimes: BTreeMap<String, PathBuf>,
        default_runtime: String,
        ns: Arc<dyn NamespacePinner>,
        net: Arc<dyn PodNetwork>,
        shims: Arc<dyn ShimLauncher>,
        cgroups: Arc<dyn PodCgroups>,
    ) -> Sandboxes {
        Sandboxes {
            store,
            dirs,
            runtimes,
            default_runtime,
            ns,
            net,
            shims,
            cgroups,
            pod_cidrs: std::sync::RwLock::new(Vec::new()),
            names: Mutex::new(()),
            pods: Mutex::new(HashMap::new()),
        }
    }

    fn pod_lock(&self, id: &str) -> Arc<Mutex<()>> {
        lock(&self.pods)
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone()
    }

    fn forget_lock(&self, id: &str) {
        lock(&self.pods).remove(id);
    }

    /// RunPodSandbox: returns the new pod's id once it is Ready. On failure everything done so
    /// far is undone and the record deleted.
    pub fn run(&self, config: PodSandboxConfig, handler: &str) -> Result<String, SandboxError> {
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| SandboxError::InvalidConfig("metadata is required".into()))?;
        for (field, value) in [
            ("name", &meta.name),
            ("namespace", &meta.namespace),
            ("uid", &meta.uid),
        ] {
            if value.is_empty() {
                return Err(SandboxError::InvalidConfig(format!(
                    "metadata.{field} is required"
                )));
            }
        }
        let handler = if handler.is_empty() {
            self.default_runtime.as_str()
        } else {
            handler
        };
        let runtime = self
            .runtimes
            .get(handler)
            .ok_or_else(|| SandboxError::UnknownHandler {
                handler: handler.to_string(),
                configured: self.runtimes.keys().cloned().collect::<Vec<_>>().join(", "),
            })?
            .clone();
        let own = own_namespaces(&config);
        bandwidth(&config.annotations)?;
        if let Some(opts) = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref())
        {
            let who = format!("pod {}/{}", meta.namespace, meta.name);
            crate::containers::spec::check_user_namespace(opts, &who).map_err(|e| match e {
                SpecError::UserNamespace(_) => SandboxError::Unsupported(e.to_string()),
                other => SandboxError::InvalidConfig(other.to_string()),
            })?;
        }
        if let Some(linux) = &config.linux {
            crate::containers::spec::check_sysctls(&linux.sysctls, !own.net, !own.ipc)
                .map_err(|e| SandboxError::InvalidConfig(e.to_string()))?;
        }
        if own.net {
            self.net.ready().map_err(|e| match e {
                NetworkError::NotReady(reason) | NetworkError::Plugin(reason) => {
                    SandboxError::NetworkNotReady(reason)
                }
            })?;
        }

        let name = pod_name(&meta.name, &meta.namespace, &meta.uid, meta.attempt);
        let mut record = {
            let _names = lock(&self.names);
            if let Some(other) = self.store.list::<SandboxRecord>()?.into_iter().find(|r| {
                pod_name(&r.name, &r.namespace, &r.uid, r.attempt) == name
                    && r.state() != SandboxState::Removing
            }) {
                return Err(SandboxError::NameInUse { name, id: other.id });
            }
            let id = random_id()?;
            let mut record = SandboxRecord {
                id: id.clone(),
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                attempt: meta.attempt,
                created_at_ns: now_ns(),
                labels: config.labels.clone().into_iter().collect(),
                annotations: config.annotations.clone().into_iter().collect(),
                runtime_handler: handler.to_string(),
                netns_path: if own.net {
                    self.dirs.ns(&id, Namespace::Net).display().to_string()
                } else {
                    String::new()
                },
                log_directory: config.log_directory.clone(),
                config: config.encode_to_vec(),
                ..Default::default()
            };
            record.set_state(SandboxState::Creating);
            // Intent first: from here on a crash leaves a record that recovery rolls back.
            self.store.put(&record)?;
            record
        };
        let id = record.id.clone();
        let pod_lock = self.pod_lock(&id);
        let _pod = lock(&pod_lock);
        let mut progress = Progress::default();
        match self.set_up(&mut record, &config, own, &runtime, &mut progress) {
            Ok(()) => Ok(id),
            Err(err) => {
                tracing::warn!(pod.id = %id, error = %err, "pod sandbox start failed; rolling back");
                if let Err(undo) = self.roll_back(&record, &config, own, &progress) {
                    // The record stays in Creating: the next start retries the rollback.
                    tracing::error!(pod.id = %id, error = %undo, "rollback failed");
                } else {
                    self.forget_lock(&id);
                }
                Err(err)
            }
        }
    }

    fn set_up(
        &self,
        record: &mut SandboxRecord,
        config: &PodSandboxConfig,
        own: OwnNamespaces,
        runtime: &Path,
        progress: &mut Progress,
    ) -> Result<(), SandboxError> {
        let id = record.id.clone();
        // No hostname asked for: the node's, as containerd does (a pod name may also be too
        // long for sethostname(2), which takes at most 64 bytes).
        let hostname = if config.hostname.is_empty() {
            node_hostname()
        } else {
            config.hostname.clone()
        };
        let dir = self.dirs.sandbox(&id);
        create_dir(&dir)?;
        if own.net {
            self.ns
                .pin(Namespace::Net, &self.dirs.ns(&id, Namespace::Net), None)?;
            // UTS follows the network: a host-network pod keeps the host's name.
            self.ns.pin(
                Namespace::Uts,
                &self.dirs.ns(&id, Namespace::Uts),
                Some(&hostname),
            )?;
        }
        if own.ipc {
            self.ns
                .pin(Namespace::Ipc, &self.dirs.ns(&id, Namespace::Ipc), None)?;
            self.ns.mount_shm(&self.dirs.shm(&id), POD_SHM_SIZE)?;
        }
        // Pod-level limits go on the pod's own cgroup; under a cgroup parent kubelet names,
        // kubelet sets them itself.
        let limits = PodLimits::of(config);
        let parent_given = config
            .linux
            .as_ref()
            .is_some_and(|l| !l.cgroup_parent.is_empty());
        if !limits.is_empty() && !parent_given {
            self.cgroups
                .create(&id, &limits)
                .map_err(SandboxError::Cgroup)?;
        }
        // The shim starts while the network is set up: neither needs the other, and each is
        // a few execs long (the shim and its holder; the CNI plugins).
        progress.network = own.net;
        progress.shim = true;
        let attachment = own.net.then(|| self.attachment(record, config));
        let (ips, shim) = std::thread::scope(|s| {
            let shim = s.spawn(|| self.shims.start(&id, runtime, own.pid));
            let ips = match &attachment {
                Some(a) => self.net.setup(a).map_err(|e| SandboxError::NetworkSetup {
                    id: id.clone(),
                    message: e.to_string(),
                }),
                None => Ok(Vec::new()),
            };
            let shim = shim.join().unwrap_or_else(|_| {
                Err(ShimError::Start {
                    id: id.clone(),
                    message: "the thread starting the shim panicked".into(),
                })
            });
            (ips, shim)
        });
        let ips = ips?;
        let shim = shim?;
        self.write_files(&dir, config, own, &hostname, ips.first())?;
        record.ips = ips.iter().map(ToString::to_string).collect();
        record.shim_address = shim.address;
        record.shim_pid = shim.pid;
        record.pid_holder_pid = shim.pid_holder;
        record.set_state(SandboxState::Ready);
        self.store.put(record)?;
        tracing::info!(pod.id = %id, ips = ?record.ips, shim.pid = record.shim_pid, "pod sandbox ready");
        Ok(())
    }

    fn write_files(
        &self,
        dir: &Path,
        config: &PodSandboxConfig,
        own: OwnNamespaces,
        hostname: &str,
        ip: Option<&IpAddr>,
    ) -> Result<(), SandboxError> {
        let hostname_file = if own.net {
            format!("{hostname}\n")
        } else {
            format!("{}\n", node_hostname())
        };
        write_file(&dir.join("hostname"), hostname_file.as_bytes())?;
        let hosts = if own.net {
            hosts_file(hostname, ip)
        } else {
            read_file(&self.dirs.host_hosts)?
        };
        write_file(&dir.join("hosts"), &hosts)?;
        let resolv = match config.dns_config.as_ref() {
            Some(dns) if !(dns.servers.is_empty() && dns.searches.is_empty()) => {
                resolv_conf(&dns.servers, &dns.searches, &dns.options).into_bytes()
            }
            _ => read_file(&self.dirs.host_resolv_conf)?,
        };
        write_file(&dir.join("resolv.conf"), &resolv)
    }

    fn attachment(&self, record: &SandboxRecord, config: &PodSandboxConfig) -> NetworkAttachment {
        let port_mappings = config
            .port_mappings
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| {
                let protocol = match p.protocol {
                    1 => "udp",
                    2 => "sctp",
                    _ => "tcp",
                };
                let mut m = serde_json::json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": protocol,
                });
                if !p.host_ip.is_empty() {
                    m["hostIP"] = serde_json::Value::String(p.host_ip.clone());
                }
                m
            })
            .collect();
        let dns = config.dns_config.as_ref().map(|d| {
            serde_json::json!({
                "servers": d.servers,
                "searches": d.searches,
                "options": d.options,
            })
        });
        NetworkAttachment {
            pod_id: record.id.clone(),
            netns: PathBuf::from(&record.netns_path),
            name: record.name.clone(),
            namespace: record.namespace.clone(),
            uid: record.uid.clone(),
            port_mappings,
            dns,
            // Checked when the pod was run.
            bandwidth: bandwidth(&config.annotations).ok().flatten(),
            ip_ranges: self
                .pod_cidrs
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// UpdateRuntimeConfig: the node's pod CIDRs (comma-separated, one per family), handed to
    /// the network of every pod started from now on. An empty string clears them.
    pub fn set_pod_cidrs(&self, pod_cidr: &str) -> Result<(), SandboxError> {
        let cidrs: Vec<String> = pod_cidr
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        for cidr in &cidrs {
            let valid = cidr.split_once('/').is_some_and(|(ip, len)| {
                ip.parse::<IpAddr>().is_ok_and(|ip| {
                    len.parse::<u8>()
                        .is_ok_and(|l| l <= if ip.is_ipv4() { 32 } else { 128 })
                })
            });
            if !valid {
                return Err(SandboxError::InvalidConfig(format!(
                    "network_config.pod_cidr: {cidr:?} is not a CIDR"
                )));
            }
        }
        tracing::info!(?cidrs, "pod CIDRs");
        *self
            .pod_cidrs
            .write()
            .unwrap_or_else(PoisonError::into_inner) = cidrs;
        Ok(())
    }

    /// Undoes a failed or interrupted run and deletes the record.
    fn roll_back(
        &self,
        record: &SandboxRecord,
        config: &PodSandboxConfig,
        own: OwnNamespaces,
        progress: &Progress,
    ) -> Result<(), SandboxError> {
        // Each step runs even when an earlier one failed; on any failure the record stays (in
        // Creating) with what is left, and the next start tries again.
        let shim = if progress.shim {
            self.shims.stop(&record.id, non_zero(record.shim_pid))
        } else {
            Ok(())
        };
        if progress.network && own.net {
            self.net
                .teardown(&self.attachment(record, config))
                .map_err(|e| SandboxError::NetworkTeardown {
                    id: record.id.clone(),
                    message: e.to_string(),
                })?;
        }
        shim?;
        self.remove_files(&record.id)?;
        self.store.delete::<SandboxRecord>(&record.id)?;
        Ok(())
    }

    fn remove_files(&self, id: &str) -> Result<(), SandboxError> {
        self.cgroups.remove(id).map_err(SandboxError::Cgroup)?;
        for ns in [Namespace::Net, Namespace::Ipc, Namespace::Uts] {
            self.ns.remove(&self.dirs.ns(id, ns))?;
        }
        self.ns.remove_shm(&self.dirs.shm(id))?;
        remove_dir(&self.dirs.sandbox(id))?;
        remove_dir(&self.dirs.shim(id))
    }

    fn decode(&self, record: SandboxRecord) -> Result<Sandbox, SandboxError> {
        let config = PodSandboxConfig::decode(record.config.as_slice())
            .map_err(|_| SandboxError::CorruptRecord(record.id.clone()))?;
        Ok(Sandbox { record, config })
    }

    /// The record of `id`, or of the one pod whose id starts with it.
    fn find(&self, id: &str) -> Result<Option<SandboxRecord>, SandboxError> {
        if id.is_empty() {
            return Ok(None);
        }
        if let Some(r) = self.store.get::<SandboxRecord>(id)? {
            return Ok(Some(r));
        }
        let mut matches = self
            .store
            .list::<SandboxRecord>()?
            .into_iter()
            .filter(|r| r.id.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some(r), None) => Ok(Some(r)),
            (Some(_), Some(_)) => Err(SandboxError::Ambiguous(id.to_string())),
            _ => Ok(None),
        }
    }

    /// StopPodSandbox: detaches the network, unpins the network namespace and stops the shim.
    /// Idempotent; an unknown id is success.
    pub fn stop(&self, id: &str) -> Result<(), SandboxError> {
        let Some(record) = self.find(id)? else {
            return Ok(());
        };
        let pod_lock = self.pod_lock(&record.id);
        let _pod = lock(&pod_lock);
        // Re-read under the pod's lock: a concurrent call may have changed it.
        let Some(record) = self.store.get::<SandboxRecord>(&record.id)? else {
            return Ok(());
        };
        self.stop_locked(record)
    }

    fn stop_locked(&self, mut record: SandboxRecord) -> Result<(), SandboxError> {
        // Creating is only seen after a failed rollback; recovery and remove handle it.
        if matches!(
            record.state(),
            SandboxState::Creating | SandboxState::NotReady | SandboxState::Removing
        ) {
            return Ok(());
        }
        let sandbox = self.decode(record.clone())?;
        let own = own_namespaces(&sandbox.config);
        if own.net {
            self.net
                .teardown(&self.attachment(&record, &sandbox.config))
                .map_err(|e| SandboxError::NetworkTeardown {
                    id: record.id.clone(),
                    message: e.to_string(),
                })?;
            self.ns.remove(&self.dirs.ns(&record.id, Namespace::Net))?;
        }
        self.shims.stop(&record.id, non_zero(record.shim_pid))?;
        record.shim_address.clear();
        record.shim_pid = 0;
        record.set_state(SandboxState::NotReady);
        self.store.put(&record)?;
        tracing::info!(pod.id = %record.id, "pod sandbox stopped");
        Ok(())
    }

    /// RemovePodSandbox: stops the pod if needed and removes everything it owned. Idempotent.
    pub fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let Some(record) = self.find(id)? else {
            return Ok(());
        };
        let pod_lock = self.pod_lock(&record.id);
        let _pod = lock(&pod_lock);
        let Some(record) = self.store.get::<SandboxRecord>(&record.id)? else {
            return Ok(());
        };
        let id = record.id.clone();
        self.remove_locked(record)?;
        drop(_pod);
        self.forget_lock(&id);
        Ok(())
    }

    fn remove_locked(&self, record: SandboxRecord) -> Result<(), SandboxError> {
        let id = record.id.clone();
        if record.state() == SandboxState::Creating {
            // Only recovery sees this: a run in progress holds the pod's lock.
            let sandbox = self.decode(record)?;
            let own = own_namespaces(&sandbox.config);
            let all = Progress {
                network: true,
                shim: true,
            };
            return self.roll_back(&sandbox.record, &sandbox.config, own, &all);
        }
        self.stop_locked(record.clone())?;
        let mut record = self.store.get::<SandboxRecord>(&id)?.unwrap_or(record);
        if record.state() != SandboxState::Removing {
            record.set_state(SandboxState::Removing);
            self.store.put(&record)?;
        }
        self.remove_files(&id)?;
        self.store.delete::<SandboxRecord>(&id)?;
        tracing::info!(pod.id = %id, "pod sandbox removed");
        Ok(())
    }

    /// PodSandboxStatus: the pod, or NotFound.
    pub fn status(&self, id: &str) -> Result<Sandbox, SandboxError> {
        let record = self
            .find(id)?
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        self.decode(record)
    }

    /// Every pod sandbox berthd knows, in id order; pods being created are left out.
    pub fn list(&self) -> Result<Vec<Sandbox>, SandboxError> {
        self.store
            .list::<SandboxRecord>()?
            .into_iter()
            .filter(|r| r.state() != SandboxState::Creating)
            .map(|r| self.decode(r))
            .collect()
    }

    /// At start: rolls back runs a crash interrupted, finishes interrupted removals, and
    /// reconnects to the shims of Ready pods, several at a time so that a hung shim costs one
    /// timeout, not one per pod. A Ready pod whose shim died stays listed (Stop and Remove
    /// still work on it). Errors are logged per pod, never fatal.
    pub fn recover(&self) -> Result<(), SandboxError> {
        let mut ready = Vec::new();
        for record in self.store.list::<SandboxRecord>()? {
            let id = record.id.clone();
            let result = match record.state() {
                SandboxState::Creating => {
                    tracing::info!(pod.id = %id, "rolling back a pod sandbox left in creation");
                    self.remove_locked(record)
                }
                SandboxState::Removing => self.remove_locked(record),
                SandboxState::Ready => {
                    ready.push(record);
                    Ok(())
                }
                SandboxState::NotReady => Ok(()),
            };
            if let Err(e) = result {
                tracing::error!(pod.id = %id, error = %e, "recovering pod sandbox");
            }
        }
        crate::parallel::for_each(&ready, crate::parallel::RECOVERY_WORKERS, |record| {
            let id = &record.id;
            let shim = ShimProcess {
                address: record.shim_address.clone(),
                pid: record.shim_pid,
                pid_holder: record.pid_holder_pid,
            };
            if !self.shims.alive(id, &shim) {
                tracing::warn!(pod.id = %id, shim.pid = shim.pid, "shim of a ready pod is gone");
            } else if let Err(e) = self.shims.reconnect(id, &shim) {
                tracing::error!(pod.id = %id, error = %e, "reconnecting to the pod's shim");
            }
        });
        Ok(())
    }
}

fn non_zero(pid: u32) -> Option<u32> {
    (pid != 0).then_some(pid)
}

fn node_hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn hosts_file(hostname: &str, ip: Option<&IpAddr>) -> Vec<u8> {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    match ip {
        Some(ip) => s.push_str(&format!("{ip}\t{hostname}\n")),
        None => s.push_str(&format!("127.0.1.1\t{hostname}\n")),
    }
    s.into_bytes()
}

fn resolv_conf(servers: &[String], searches: &[String], options: &[String]) -> String {
    let mut s = String::new();
    if !searches.is_empty() {
        s.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for server in servers {
        s.push_str(&format!("nameserver {server}\n"));
    }
    if !options.is_empty() {
        s.push_str(&format!("options {}\n", options.join(" ")));
    }
    s
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn create_dir(path: &Path) -> Result<(), SandboxError> {
    std::fs::create_dir_all(path).map_err(io_err(path))
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), SandboxError> {
    std::fs::write(path, data).map_err(io_err(path))
}

fn read_file(path: &Path) -> Result<Vec<u8>, SandboxError> {
    match std::fs::read(path) {
        Ok(data) => Ok(data),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(SandboxError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn remove_dir(path: &Path) -> Result<(), SandboxError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SandboxError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
