//! The OCI runtime spec (`config.json`) of a CRI container, built from the CRI config, the
//! image config and the pod, as containerd's CRI plugin builds it. Every field of the CRI
//! config is translated or refused with an error naming it; none is dropped.
//!
//! The rules are pure: the caller reads the rootfs' `/etc/passwd` and `/etc/group` and hands
//! their contents in, and everything read from the host goes through [`Host`], so the rules are
//! unit-tested without a rootfs or root.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use berth_proto::cri::security_profile::ProfileType;
use berth_proto::cri::{
    ContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, MountPropagation,
    NamespaceMode, NamespaceOption, SecurityProfile, SupplementalGroupsPolicy,
};
use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceBuilder,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, LinuxResourcesBuilder, LinuxSeccomp,
    Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
    get_default_maskedpaths, get_default_mounts, get_default_readonly_paths,
};

use crate::apparmor::{self, AppArmor};
use crate::containers::host::Host;
use crate::containers::seccomp::{self, SeccompError};
use crate::node::CgroupVersion;

/// Why a spec cannot be built. Bad input is InvalidArgument; what this host or berth cannot
/// do ([`SpecError::Unsupported`], [`SpecError::HostLacks`]) is FailedPrecondition.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("no command specified: the container config and the image give none")]
    NoCommand,
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
    #[error("run_as_group is set without run_as_user or run_as_username")]
    RunAsGroupWithoutUser,
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("a privileged container needs a privileged pod sandbox (pod {0})")]
    PrivilegedInUnprivilegedPod(String),
    #[error("mount of host path {path}: {reason}")]
    Mount { path: PathBuf, reason: String },
    #[error("device {path}: {reason}")]
    Device { path: PathBuf, reason: String },
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("sysctl {name:?}: {reason}")]
    Sysctl { name: String, reason: String },
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
    #[error("{0}")]
    HostLacks(String),
    #[error("{0}: not supported yet")]
    Unsupported(String),
    #[error(
        "the container asks for its pod's PID namespace (namespace_options.pid POD) but pod \
         {0} was created without one (by an older berthd); recreate the pod"
    )]
    NoPodPidNamespace(String),
    #[error(
        "{0} asks for a user namespace of its own (userns_options mode POD, hostUsers: false): \
         berth runs pods in the host's user namespace only (every runtime handler reports \
         user_namespaces false)"
    )]
    UserNamespace(String),
    #[error("building the OCI spec: {0}")]
    Build(String),
}

impl From<oci_spec::OciSpecError> for SpecError {
    fn from(e: oci_spec::OciSpecError) -> Self {
        SpecError::Build(e.to_string())
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> SpecError {
    SpecError::InvalidField {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// containerd's default capability set for CRI containers.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Capabilities by number, as the kernel numbers them (`CAP_CHOWN` is 0).
const KERNEL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// What the node and the pod's runtime handler can do, as far as the spec cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFacts {
    pub cgroup: CgroupVersion,
    /// The runtime handler accepts `rro` mounts.
    pub rro: bool,
    /// AppArmor in the kernel, and berth's default profile.
    pub apparmor: AppArmor,
    /// A hugetlb cgroup controller exists.
    pub hugetlb: bool,
    /// Memory+swap can be limited (v1 `memory.memsw.*`, v2 `memory.swap.max`).
    pub swap: bool,
    /// berthd's own bounding set (`CapBnd`, bit N = capability N): what "all capabilities"
    /// means here, as containerd gives a privileged container the capabilities it holds.
    pub bounding: u64,
}

impl Default for NodeFacts {
    fn default() -> Self {
        NodeFacts {
            cgroup: CgroupVersion::V1,
            rro: false,
            apparmor: AppArmor::Disabled,
            hugetlb: false,
            swap: false,
            bounding: (1 << KERNEL_CAPABILITIES.len()) - 1,
        }
    }
}

/// What the pod contributes to a container's spec.
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    /// Pinned namespace files; `None` means the host's namespace (host network / IPC).
    pub net_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    /// The pod's PID namespace (its holder's `/proc/<pid>/ns/pid`); `None` when the pod has
    /// none: it is on the host's ([`PodContext::host_pid`]), or was made by a berthd that gave
    /// holders only to pods in `POD` mode.
    pub pid_ns: Option<PathBuf>,
    /// The pod is on the host's PID namespace (`NODE` mode).
    pub host_pid: bool,
    /// The pod's `hostname`, `hosts` and `resolv.conf` files.
    pub files_dir: PathBuf,
    /// What the container's `/dev/shm` binds: the pod's shared tmpfs, or the host's
    /// `/dev/shm` for a pod on the host's IPC namespace; `None`: a tmpfs of its own.
    pub shm: Option<PathBuf>,
    /// The pod's cgroup parent (cgroupfs form); empty: `/berth/<pod id>`.
    pub cgroup_parent: String,
    /// The pod's security context allows privileged containers.
    pub privileged: bool,
    /// The pod's sysctls: no process holds the pod's namespaces, so every container sets them.
    pub sysctls: BTreeMap<String, String>,
}

/// The inputs of [`build`].
pub struct SpecInput<'a> {
    pub id: &'a str,
    pub config: &'a ContainerConfig,
    pub image: &'a ImageConfig,
    pub image_name: &'a str,
    pub pod: &'a PodContext,
    /// Contents of the rootfs' /etc/passwd and /etc/group (empty when absent).
    pub passwd: &'a str,
    pub group: &'a str,
    /// berthd's own oom_score_adj: the lowest a container may get.
    pub oom_score_adj_floor: i32,
    pub node: &'a NodeFacts,
    pub host: &'a dyn Host,
    /// The init pid of the container whose pid namespace this one joins (`TARGET` mode).
    pub target_pid: Option<u32>,
    /// The image's volumes, prepared (see [`crate::containers::volumes`]), as CRI mounts.
    pub volumes: &'a [berth_proto::cri::Mount],
}

/// Kubernetes' rules: `command` overrides the entrypoint, `args` the cmd; with a command and no
/// args the image's cmd is dropped.
pub fn process_args(
    command: &[String],
    args: &[String],
    image: &ImageConfig,
) -> Result<Vec<String>, SpecError> {
    let (command, args) = if command.is_empty() {
        let args = if args.is_empty() {
            image.cmd().clone().unwrap_or_default()
        } else {
            args.to_vec()
        };
        (image.entrypoint().clone().unwrap_or_default(), args)
    } else {
        (command.to_vec(), args.to_vec())
    };
    let all: Vec<String> = command.into_iter().chain(args).collect();
    if all.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(all)
}

/// Image env, then the CRI envs; a later value of the same key replaces the earlier one in place.
pub fn merge_env(image: &[String], cri: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut put = |entry: String| {
        let key = entry.split('=').next().unwrap_or("").to_string();
        match out
            .iter_mut()
            .find(|e| e.split('=').next().unwrap_or("") == key)
        {
            Some(slot) => *slot = entry,
            None => out.push(entry),
        }
    };
    for e in image {
        put(e.clone());
    }
    for (k, v) in cri {
        put(format!("{k}={v}"));
    }
    out
}

/// A resolved process user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        Some(PasswdEntry {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            gid: f.get(3)?.parse().ok()?,
        })
    })
}

/// (name, gid, members) of each /etc/group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((*f.first()?, f.get(2)?.parse().ok()?, members))
    })
}

/// The process user: the CRI security context (run_as_username, run_as_user, run_as_group)
/// over the image's `USER` (`user[:group]`, names or numbers), resolved against the image's
/// passwd and group files. Additional gids: the primary gid, with policy Merge the image's
/// groups listing the user, then the context's supplemental groups.
pub fn resolve_user(
    config: &ContainerConfig,
    image_user: &str,
    passwd: &str,
    group: &str,
) -> Result<ResolvedUser, SpecError> {
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    if let Some(sc) = sc
        && sc.run_as_group.is_some()
        && sc.run_as_user.is_none()
        && sc.run_as_username.is_empty()
    {
        return Err(SpecError::RunAsGroupWithoutUser);
    }
    let policy = match sc.map(|sc| sc.supplemental_groups_policy) {
        None => SupplementalGroupsPolicy::Merge,
        Some(p) => SupplementalGroupsPolicy::try_from(p)
            .map_err(|_| invalid("supplemental_groups_policy", format!("unknown policy {p}")))?,
    };
    let by_name = |name: &str| {
        passwd_entries(passwd)
            .find(|e| e.name == name)
            .map(|e| (e.uid, e.gid))
            .ok_or_else(|| SpecError::UnknownUser(name.to_string()))
    };
    let by_uid = |uid: u32| {
        passwd_entries(passwd)
            .find(|e| e.uid == uid)
            .map_or(0, |e| e.gid)
    };
    let id = |field: &str, v: i64| {
        u32::try_from(v).map_err(|_| invalid(field, format!("{v} is not a valid id")))
    };
    let (uid, mut gid) = match sc {
        Some(sc) if !sc.run_as_username.is_empty() => by_name(&sc.run_as_username)?,
        Some(LinuxContainerSecurityContext {
            run_as_user: Some(u),
            ..
        }) => {
            let uid = id("run_as_user", u.value)?;
            (uid, by_uid(uid))
        }
        _ => {
            let (user, grp) = match image_user.split_once(':') {
                Some((u, g)) => (u, Some(g)),
                None => (image_user, None),
            };
            let (uid, gid) = if user.is_empty() {
                (0, by_uid(0))
            } else if let Ok(uid) = user.parse::<u32>() {
                (uid, by_uid(uid))
            } else {
                by_name(user)?
            };
            match grp {
                Some(g) if !g.is_empty() => {
                    let gid = match g.parse::<u32>() {
                        Ok(gid) => gid,
                        Err(_) => group_entries(group)
                            .find(|(name, _, _)| *name == g)
                            .map(|(_, gid, _)| gid)
                            .ok_or_else(|| SpecError::UnknownGroup(g.to_string()))?,
                    };
                    (uid, gid)
                }
                _ => (uid, gid),
            }
        }
    };
    if let Some(g) = sc.and_then(|sc| sc.run_as_group.as_ref()) {
        gid = id("run_as_group", g.value)?;
    }
    let mut additional: Vec<u32> = vec![gid];
    if policy == SupplementalGroupsPolicy::Merge
        && let Some(name) = passwd_entries(passwd)
            .find(|e| e.uid == uid)
            .map(|e| e.name.to_string())
    {
        for (_, g, members) in group_entries(group) {
            if members.contains(&name.as_str()) && !additional.contains(&g) {
                additional.push(g);
            }
        }
    }
    for g in sc
        .map(|sc| sc.supplemental_groups.as_slice())
        .unwrap_or_default()
    {
        let g = id("supplemental_groups", *g)?;
        if !additional.contains(&g) {
            additional.push(g);
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: additional,
    })
}

/// A CRI capability name (`SYS_ADMIN`, `CAP_SYS_ADMIN`, any case) as the kernel names it.
fn capability_name(name: &str) -> Result<String, SpecError> {
    let upper = name.to_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if KERNEL_CAPABILITIES.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(SpecError::UnknownCapability(name.to_string()))
    }
}

/// Every capability berthd holds.
fn all_capabilities(node: &NodeFacts) -> Vec<String> {
    KERNEL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| node.bounding & (1u64 << bit) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// The bounding (= effective = permitted) set and the ambient set, as containerd computes
/// them: privileged gets all; otherwise the defaults, then `ALL` in add or drop, then the
/// named adds and drops.
pub fn capabilities(
    sc: &LinuxContainerSecurityContext,
    node: &NodeFacts,
) -> Result<(Vec<String>, Vec<String>), SpecError> {
    if sc.privileged {
        return Ok((all_capabilities(node), Vec::new()));
    }
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    let Some(c) = &sc.capabilities else {
        return Ok((caps, Vec::new()));
    };
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL") || n.eq_ignore_ascii_case("CAP_ALL");
    if c.add_capabilities.iter().any(is_all) {
        caps = all_capabilities(node);
    }
    if c.drop_capabilities.iter().any(is_all) {
        caps.clear();
    }
    for a in c.add_capabilities.iter().filter(|n| !is_all(n)) {
        let a = capability_name(a)?;
        if !caps.contains(&a) {
            caps.push(a);
        }
    }
    for d in c.drop_capabilities.iter().filter(|n| !is_all(n)) {
        let d = capability_name(d)?;
        caps.retain(|c| *c != d);
    }
    let mut ambient = Vec::new();
    for a in &c.add_ambient_capabilities {
        let a = capability_name(a)?;
        if !caps.contains(&a) {
            return Err(invalid(
                "add_ambient_capabilities",
                format!("{a} is not in the container's capability set"),
            ));
        }
        ambient.push(a);
    }
    Ok((caps, ambient))
}

fn oci_capabilities(names: &[String]) -> Result<oci_spec::runtime::Capabilities, SpecError> {
    names
        .iter()
        .map(|n| {
            serde_json::from_value::<Capability>(serde_json::Value::String(n.clone()))
                .map_err(|_| SpecError::UnknownCapability(n.clone()))
        })
        .collect()
}

/// The OCI resources of CRI container resources (cpu, memory, cpuset, hugepages, unified);
/// the oom_score_adj goes to the process, not here.
pub fn linux_resources(
    r: &LinuxContainerResources,
    node: &NodeFacts,
) -> Result<LinuxResources, SpecError> {
    let positive = |field: &str, v: i64| {
        u64::try_from(v).map_err(|_| invalid(field, format!("{v} is negative")))
    };
    let mut cpu = LinuxCpuBuilder::default();
    if r.cpu_shares != 0 {
        cpu = cpu.shares(positive("cpu_shares", r.cpu_shares)?);
    }
    if r.cpu_quota != 0 {
        cpu = cpu.quota(r.cpu_quota);
    }
    if r.cpu_period != 0 {
        cpu = cpu.period(positive("cpu_period", r.cpu_period)?);
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(r.cpuset_cpus.clone());
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(r.cpuset_mems.clone());
    }
    let mut memory = LinuxMemoryBuilder::default();
    if r.memory_limit_in_bytes != 0 {
        memory = memory.limit(r.memory_limit_in_bytes);
        // As containerd: no swap beyond the memory limit unless asked for.
        if r.memory_swap_limit_in_bytes == 0 && node.swap {
            memory = memory.swap(r.memory_limit_in_bytes);
        }
    }
    if r.memory_swap_limit_in_bytes != 0 {
        // Without swap accounting a swap limit can be honoured only when it asks for no swap
        // beyond the memory limit (kubelet's default) or for unlimited swap (-1): there is no
        // controller to write it to, and nothing to enforce.
        let nothing_to_limit = r.memory_swap_limit_in_bytes == r.memory_limit_in_bytes
            || r.memory_swap_limit_in_bytes == -1;
        if node.swap {
            memory = memory.swap(r.memory_swap_limit_in_bytes);
        } else if !nothing_to_limit {
            return Err(SpecError::HostLacks(format!(
                "memory_swap_limit_in_bytes {}: this node has no swap accounting cgroup controller",
                r.memory_swap_limit_in_bytes
            )));
        }
    }
    let mut out = LinuxResourcesBuilder::default()
        .cpu(cpu.build()?)
        .memory(memory.build()?);
    if !node.hugetlb && !r.hugepage_limits.is_empty() {
        // kubelet sends a zero limit for every page size the kernel knows, controller or not
        // (containerd tolerates a missing controller by default); a real limit is refused.
        if let Some(h) = r.hugepage_limits.iter().find(|h| h.limit != 0) {
            return Err(SpecError::HostLacks(format!(
                "hugepage_limits {}={}: this node has no hugetlb cgroup controller",
                h.page_size, h.limit
            )));
        }
        tracing::warn!("hugetlb cgroup controller absent: zero hugepage limits not applied");
    } else if !r.hugepage_limits.is_empty() {
        let limits = r
            .hugepage_limits
            .iter()
            .map(|h| {
                Ok(LinuxHugepageLimitBuilder::default()
                    .page_size(h.page_size.clone())
                    .limit(i64::try_from(h.limit).unwrap_or(i64::MAX))
                    .build()?)
            })
            .collect::<Result<Vec<_>, SpecError>>()?;
        out = out.hugepage_limits(limits);
    }
    if !r.unified.is_empty() {
        if node.cgroup != CgroupVersion::V2 {
            let mut keys: Vec<&String> = r.unified.keys().collect();
            keys.sort();
            return Err(invalid(
                "unified",
                format!("{keys:?}: unified resources need cgroup v2; this node runs cgroup v1"),
            ));
        }
        out = out.unified(r.unified.clone());
    }
    Ok(out.build()?)
}

fn bind(
    destination: &str,
    source: &Path,
    readonly: bool,
    propagation: &str,
) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".to_string(),
            propagation.to_string(),
            if readonly { "ro" } else { "rw" }.to_string(),
        ])
        .build()?)
}

/// The cgroupfs path of the container: `<pod cgroup parent or /berth/<pod id>>/<container id>`.
pub fn cgroups_path(pod: &PodContext, id: &str) -> String {
    let parent = if pod.cgroup_parent.is_empty() {
        format!("/berth/{}", pod.id)
    } else {
        pod.cgroup_parent.trim_end_matches('/').to_string()
    };
    format!("{parent}/{id}")
}

/// The CRI mounts as OCI binds, shallowest first (so that a parent never shadows a child),
/// and the rootfs propagation they need.
fn cri_mounts(
    mounts: &[&berth_proto::cri::Mount],
    node: &NodeFacts,
    host: &dyn Host,
) -> Result<(Vec<Mount>, Option<&'static str>), SpecError> {
    let mut cri: Vec<&berth_proto::cri::Mount> = mounts.to_vec();
    cri.sort_by_key(|m| Path::new(&m.container_path).components().count());
    let mut rootfs_propagation: Option<&'static str> = None;
    let mut out = Vec::new();
    for m in cri {
        let path = PathBuf::from(&m.host_path);
        let err = |reason: String| SpecError::Mount {
            path: path.clone(),
            reason,
        };
        if m.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
            // The container service mounts image volumes and passes them as host paths.
            return Err(err(format!(
                "image volume at {} was not prepared",
                m.container_path
            )));
        }
        if m.host_path.is_empty() || !path.is_absolute() {
            return Err(err("host_path must be an absolute path".into()));
        }
        if !Path::new(&m.container_path).is_absolute() {
            return Err(err(format!(
                "container_path {:?} must be an absolute path",
                m.container_path
            )));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(SpecError::Unsupported(format!(
                "id-mapped mount of {}",
                path.display()
            )));
        }
        let propagation = MountPropagation::try_from(m.propagation)
            .map_err(|_| err(format!("unknown propagation {}", m.propagation)))?;
        if m.recursive_read_only {
            if !m.readonly {
                return Err(err(
                    "recursive read-only needs readonly: true (it conflicts with a read-write mount)"
                        .into(),
                ));
            }
            if propagation != MountPropagation::PropagationPrivate {
                return Err(err(format!(
                    "recursive read-only needs propagation PROPAGATION_PRIVATE, got {}",
                    propagation.as_str_name()
                )));
            }
            if !node.rro {
                return Err(err(
                    "recursive read-only: the runtime handler does not support rro mounts".into(),
                ));
            }
        }
        let src = host.prepare_host_path(&path).map_err(&err)?;
        let option = match propagation {
            MountPropagation::PropagationPrivate => "rprivate",
            MountPropagation::PropagationBidirectional => {
                let mp = host.mount_of(&src).map_err(&err)?;
                if !mp.shared() {
                    return Err(err(format!(
                        "PROPAGATION_BIDIRECTIONAL needs a shared mount, but {} is mounted on {} which is not shared",
                        src.display(),
                        mp.mount_point.display()
                    )));
                }
                rootfs_propagation = Some("rshared");
                "rshared"
            }
            MountPropagation::PropagationHostToContainer => {
                let mp = host.mount_of(&src).map_err(&err)?;
                if !mp.shared() && !mp.slave() {
                    return Err(err(format!(
                        "PROPAGATION_HOST_TO_CONTAINER needs a shared or slave mount, but {} is mounted on {} which is private",
                        src.display(),
                        mp.mount_point.display()
                    )));
                }
                if rootfs_propagation.is_none() {
                    rootfs_propagation = Some("rslave");
                }
                "rslave"
            }
        };
        let access = match (m.readonly, m.recursive_read_only) {
            (true, true) => "rro",
            (true, false) => "ro",
            _ => "rw",
        };
        out.push(
            MountBuilder::default()
                .destination(&m.container_path)
                .typ("bind")
                .source(src)
                .options(vec![
                    "rbind".to_string(),
                    option.to_string(),
                    access.to_string(),
                ])
                .build()?,
        );
    }
    Ok((out, rootfs_propagation))
}

fn device_type(kind: char) -> LinuxDeviceType {
    if kind == 'b' {
        LinuxDeviceType::B
    } else {
        LinuxDeviceType::C
    }
}

/// The CRI devices as OCI device nodes and cgroup allow rules (a host directory brings every
/// node below it).
fn cri_devices(
    config: &ContainerConfig,
    host: &dyn Host,
) -> Result<
    (
        Vec<oci_spec::runtime::LinuxDevice>,
        Vec<oci_spec::runtime::LinuxDeviceCgroup>,
    ),
    SpecError,
> {
    let mut devices = Vec::new();
    let mut rules = Vec::new();
    for d in &config.devices {
        let path = PathBuf::from(&d.host_path);
        let err = |reason: String| SpecError::Device {
            path: path.clone(),
            reason,
        };
        let access = if d.permissions.is_empty() {
            "rwm".to_string()
        } else {
            d.permissions.clone()
        };
        if !access.chars().all(|c| "rwm".contains(c)) {
            return Err(err(format!(
                "permissions {:?}: only r, w and m are allowed",
                d.permissions
            )));
        }
        if !Path::new(&d.container_path).is_absolute() {
            return Err(err(format!(
                "container_path {:?} must be an absolute path",
                d.container_path
            )));
        }
        let found = host.devices(&path).map_err(&err)?;
        for dev in &found {
            // Below a directory: the same relative path below container_path.
            let container_path = Path::new(&d.container_path).join(&dev.relative);
            devices.push(
                LinuxDeviceBuilder::default()
                    .path(container_path)
                    .typ(device_type(dev.kind))
                    .major(dev.major)
                    .minor(dev.minor)
                    .file_mode(dev.mode)
                    .uid(0u32)
                    .gid(0u32)
                    .build()?,
            );
            rules.push(
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(device_type(dev.kind))
                    .major(dev.major)
                    .minor(dev.minor)
                    .access(access.clone())
                    .build()?,
            );
        }
    }
    Ok((devices, rules))
}

/// Every device node of the host's /dev for a privileged container, as containerd's
/// `WithHostDevices`: not the per-namespace ones (pts, shm, mqueue) nor the console.
fn host_devices(host: &dyn Host) -> Result<Vec<oci_spec::runtime::LinuxDevice>, SpecError> {
    let found = host
        .devices(Path::new("/dev"))
        .map_err(|reason| SpecError::Device {
            path: PathBuf::from("/dev"),
            reason,
        })?;
    let skip = [
        "/dev/pts/",
        "/dev/shm/",
        "/dev/mqueue/",
        "/dev/fd/",
        "/dev/.lxc",
        "/dev/.udev",
    ];
    found
        .into_iter()
        .filter(|d| {
            let p = d.path.to_string_lossy();
            p != "/dev/console" && !skip.iter().any(|s| p.starts_with(s))
        })
        .map(|d| {
            Ok(LinuxDeviceBuilder::default()
                .path(d.path)
                .typ(device_type(d.kind))
                .major(d.major)
                .minor(d.minor)
                .file_mode(d.mode)
                .uid(0u32)
                .gid(0u32)
                .build()?)
        })
        .collect()
}

/// The seccomp profile the container asks for: the `seccomp` field, or the deprecated
/// `seccomp_profile_path` (`runtime/default`, `unconfined`, `localhost/<path>`).
fn requested_profile(
    field: &str,
    profile: Option<&SecurityProfile>,
    deprecated: &str,
) -> Result<Option<(ProfileType, String)>, SpecError> {
    if let Some(p) = profile {
        let kind = ProfileType::try_from(p.profile_type)
            .map_err(|_| invalid(field, format!("unknown profile type {}", p.profile_type)))?;
        if kind != ProfileType::Localhost && !p.localhost_ref.is_empty() {
            return Err(invalid(
                field,
                "localhost_ref is only allowed with profile type Localhost",
            ));
        }
        let reference = p
            .localhost_ref
            .strip_prefix("localhost/")
            .unwrap_or(&p.localhost_ref)
            .to_string();
        if kind == ProfileType::Localhost && reference.is_empty() {
            return Err(invalid(
                field,
                "profile type Localhost needs a localhost_ref",
            ));
        }
        return Ok(Some((kind, reference)));
    }
    match deprecated {
        "" => Ok(None),
        "unconfined" => Ok(Some((ProfileType::Unconfined, String::new()))),
        "runtime/default" | "docker/default" => {
            Ok(Some((ProfileType::RuntimeDefault, String::new())))
        }
        other => match other.strip_prefix("localhost/") {
            Some(r) if !r.is_empty() => Ok(Some((ProfileType::Localhost, r.to_string()))),
            _ => Err(invalid(field, format!("unknown profile {other:?}"))),
        },
    }
}

/// containerd's rule: no seccomp for a privileged container, nor without a profile; the
/// default profile for RuntimeDefault; the file for Localhost.
fn seccomp_for(
    sc: &LinuxContainerSecurityContext,
    caps: &[String],
    host: &dyn Host,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    #[allow(deprecated)]
    let requested = requested_profile("seccomp", sc.seccomp.as_ref(), &sc.seccomp_profile_path)?;
    if sc.privileged {
        return Ok(None);
    }
    let arch = seccomp::native_arch();
    let json = match requested {
        None | Some((ProfileType::Unconfined, _)) => return Ok(None),
        Some((ProfileType::RuntimeDefault, _)) => seccomp::default_profile(arch, caps),
        Some((ProfileType::Localhost, path)) => {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(invalid(
                    "seccomp",
                    format!(
                        "localhost profile {} must be an absolute path",
                        path.display()
                    ),
                ));
            }
            let text = host.read_to_string(&path);
            seccomp::localhost_profile(path, text, arch, caps)?
        }
    };
    serde_json::from_value(json).map_err(|e| SpecError::Build(format!("seccomp profile: {e}")))
}

/// The AppArmor profile of the process, as containerd decides it. Without AppArmor in the
/// kernel there is none, and a named profile is an error. With it, RuntimeDefault and no
/// request at all mean berth's default profile (none for a privileged container), and a named
/// profile must be loaded.
fn apparmor_for(
    sc: &LinuxContainerSecurityContext,
    node: &NodeFacts,
    host: &dyn Host,
) -> Result<Option<String>, SpecError> {
    #[allow(deprecated)]
    let requested = requested_profile("apparmor", sc.apparmor.as_ref(), &sc.apparmor_profile)?;
    let AppArmor::Enabled { default_profile } = node.apparmor else {
        return match requested {
            Some((ProfileType::Localhost, name)) => Err(SpecError::HostLacks(format!(
                "apparmor profile {name:?} requested but AppArmor is not enabled on this host"
            ))),
            _ => Ok(None),
        };
    };
    match requested {
        Some((ProfileType::Unconfined, _)) => Ok(None),
        None | Some((ProfileType::RuntimeDefault, _)) if sc.privileged => Ok(None),
        None | Some((ProfileType::RuntimeDefault, _)) if default_profile => {
            Ok(Some(apparmor::DEFAULT_PROFILE.to_string()))
        }
        // Nothing asked for, and nothing berth can give: as on a host without the parser.
        None => Ok(None),
        Some((ProfileType::RuntimeDefault, _)) => Err(SpecError::HostLacks(format!(
            "the RuntimeDefault AppArmor profile {} could not be loaded when berthd started \
             (see its log; apparmor_parser comes with the apparmor package)",
            apparmor::DEFAULT_PROFILE
        ))),
        Some((ProfileType::Localhost, name)) => {
            // An unreadable listing leaves the check to the runtime.
            match host.read_to_string(Path::new(apparmor::PROFILES_FILE)) {
                Ok(listing) if !apparmor::profile_loaded(&listing, &name) => {
                    Err(SpecError::HostLacks(format!(
                        "apparmor profile {name:?} is not loaded (load it with apparmor_parser)"
                    )))
                }
                _ => Ok(Some(name)),
            }
        }
    }
}

/// A sysctl name in dotted form (`net/ipv4/ip_forward` is accepted too).
fn sysctl_name(name: &str) -> String {
    if name.contains('/') {
        name.replace('/', ".")
    } else {
        name.to_string()
    }
}

/// Checks a pod's sysctls: only namespaced ones, and only for a namespace the pod owns.
pub fn check_sysctls(
    sysctls: &HashMap<String, String>,
    host_network: bool,
    host_ipc: bool,
) -> Result<(), SpecError> {
    let mut names: Vec<&String> = sysctls.keys().collect();
    names.sort();
    for raw in names {
        let name = sysctl_name(raw);
        let err = |reason: &str| SpecError::Sysctl {
            name: raw.clone(),
            reason: reason.to_string(),
        };
        let ipc = [
            "kernel.shmmax",
            "kernel.shmall",
            "kernel.shmmni",
            "kernel.shm_rmid_forced",
        ]
        .contains(&name.as_str())
            || [
                "kernel.msgmax",
                "kernel.msgmnb",
                "kernel.msgmni",
                "kernel.sem",
            ]
            .contains(&name.as_str())
            || name.starts_with("fs.mqueue.");
        if name.starts_with("net.") {
            if host_network {
                return Err(err(
                    "a net.* sysctl cannot be set in a pod on the host network",
                ));
            }
        } else if ipc {
            if host_ipc {
                return Err(err(
                    "an IPC sysctl cannot be set in a pod on the host IPC namespace",
                ));
            }
        } else {
            return Err(err(
                "not a namespaced sysctl (allowed: net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)",
            ));
        }
    }
    Ok(())
}

/// Whether a pod's or container's user namespace request can be honoured; `who` names the pod.
/// kubelet 1.33+ sends mode NODE for every pod without `hostUsers: false`: the host's user
/// namespace, which is what every container gets anyway.
pub fn check_user_namespace(opts: &NamespaceOption, who: &str) -> Result<(), SpecError> {
    let Some(userns) = &opts.userns_options else {
        return Ok(());
    };
    match NamespaceMode::try_from(userns.mode) {
        Ok(NamespaceMode::Node) => Ok(()),
        Ok(NamespaceMode::Pod) => Err(SpecError::UserNamespace(who.to_string())),
        Ok(other) => Err(invalid(
            "namespace_options.userns_options.mode",
            format!(
                "{} is not a user namespace mode (POD or NODE)",
                other.as_str_name()
            ),
        )),
        Err(_) => Err(invalid(
            "namespace_options.userns_options.mode",
            format!("unknown mode {}", userns.mode),
        )),
    }
}

/// Builds the container's `config.json`; `root.path` is `rootfs` (relative to the bundle).
pub fn build(input: &SpecInput<'_>) -> Result<Spec, SpecError> {
    let config = input.config;
    let image = input.image;
    let pod = input.pod;
    let node = input.node;
    let linux_config = config.linux.clone().unwrap_or_default();
    let sc = linux_config.security_context.clone().unwrap_or_default();
    let ns_options = sc.namespace_options.clone().unwrap_or_default();

    if sc.privileged && !pod.privileged {
        return Err(SpecError::PrivilegedInUnprivilegedPod(pod.id.clone()));
    }
    if !config.cdi_devices.is_empty() {
        return Err(SpecError::Unsupported("CDI devices".into()));
    }
    check_user_namespace(&ns_options, &format!("pod {}", pod.id))?;
    let args = process_args(&config.command, &config.args, image)?;
    let envs: Vec<(String, String)> = config
        .envs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    let mut env = merge_env(&[format!("HOSTNAME={}", pod.hostname)], &[]);
    env = merge_env(
        &env.into_iter()
            .chain(image.env().clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        &envs,
    );
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else {
        image
            .working_dir()
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_string())
    };
    let user = resolve_user(
        config,
        image.user().as_deref().unwrap_or(""),
        input.passwd,
        input.group,
    )?;
    let resources = linux_config.resources.clone().unwrap_or_default();
    let oom = crate::node::clamp_oom_score_adj(
        i32::try_from(resources.oom_score_adj).unwrap_or(0),
        input.oom_score_adj_floor,
    );

    let (caps, ambient) = capabilities(&sc, node)?;
    let seccomp = seccomp_for(&sc, &caps, input.host)?;
    let apparmor = apparmor_for(&sc, node, input.host)?;
    let bounding = oci_capabilities(&caps)?;
    let ambient_set = oci_capabilities(&ambient)?;
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .args(args)
        .env(env)
        .cwd(cwd)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids)
                .build()?,
        )
        .capabilities(
            // Inheritable and ambient are set explicitly: oci-spec's defaults would hand
            // capabilities outside the bounding set to runc, which refuses them.
            LinuxCapabilitiesBuilder::default()
                .bounding(bounding.clone())
                .effective(bounding.clone())
                .permitted(bounding)
                .inheritable(ambient_set.clone())
                .ambient(ambient_set)
                .build()?,
        )
        .no_new_privileges(sc.no_new_privs)
        .oom_score_adj(oom)
        .build()?;
    process.set_apparmor_profile(apparmor);

    let mut namespaces = vec![
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Mount)
            .build()?,
    ];
    let pid_mode = NamespaceMode::try_from(ns_options.pid).map_err(|_| {
        invalid(
            "namespace_options.pid",
            format!("unknown mode {}", ns_options.pid),
        )
    })?;
    match pid_mode {
        NamespaceMode::Node => {}
        NamespaceMode::Target => {
            let pid = input.target_pid.ok_or_else(|| {
                invalid(
                    "namespace_options.target_id",
                    format!(
                        "target container {:?} has no running process",
                        ns_options.target_id
                    ),
                )
            })?;
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Pid)
                    .path(format!("/proc/{pid}/ns/pid"))
                    .build()?,
            );
        }
        // The pod's namespace, whatever the pod's own mode: containerd's containers in POD mode
        // join the pause container's, which is the host's in a host-PID pod.
        NamespaceMode::Pod => match (&input.pod.pid_ns, input.pod.host_pid) {
            (Some(path), _) => namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Pid)
                    .path(path)
                    .build()?,
            ),
            (None, true) => {}
            (None, false) => return Err(SpecError::NoPodPidNamespace(input.pod.id.clone())),
        },
        NamespaceMode::Container => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .build()?,
        ),
    }
    for (typ, path) in [
        (LinuxNamespaceType::Network, &pod.net_ns),
        (LinuxNamespaceType::Ipc, &pod.ipc_ns),
        (LinuxNamespaceType::Uts, &pod.uts_ns),
    ] {
        if let Some(path) = path {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(typ)
                    .path(path)
                    .build()?,
            );
        }
    }

    let all_mounts: Vec<&berth_proto::cri::Mount> =
        config.mounts.iter().chain(input.volumes).collect();
    let (cri_binds, rootfs_propagation) = cri_mounts(&all_mounts, node, input.host)?;
    let cri_destinations: Vec<PathBuf> = all_mounts
        .iter()
        .map(|m| PathBuf::from(&m.container_path))
        .collect();
    let overrides_dev = cri_destinations.iter().any(|d| d == Path::new("/dev"));
    let mut mounts: Vec<Mount> = get_default_mounts()
        .into_iter()
        .filter(|m| {
            let replaced = cri_destinations.iter().any(|d| d == m.destination());
            let under_dev = overrides_dev && m.destination().starts_with("/dev");
            !replaced && !under_dev
        })
        .collect();
    if sc.privileged {
        // Writable sysfs and cgroupfs, as containerd gives privileged containers.
        for m in mounts.iter_mut().filter(|m| {
            m.destination() == Path::new("/sys") || m.destination() == Path::new("/sys/fs/cgroup")
        }) {
            let options = m
                .options()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|o| if o == "ro" { "rw".to_string() } else { o })
                .collect();
            m.set_options(Some(options));
        }
    }
    // The pod's /dev/shm, shared by its containers like their IPC namespace (containerd's
    // sandbox shm), unless the container mounts something there itself.
    if let Some(shm) = &pod.shm
        && let Some(m) = mounts
            .iter_mut()
            .find(|m| m.destination() == Path::new("/dev/shm"))
    {
        let mut shared = bind("/dev/shm", shm, false, "rprivate")?;
        let mut options = shared.options().clone().unwrap_or_default();
        options.extend(["nosuid", "nodev", "noexec"].map(String::from));
        shared.set_options(Some(options));
        *m = shared;
    }
    for (dest, file) in [
        ("/etc/hostname", "hostname"),
        ("/etc/hosts", "hosts"),
        ("/etc/resolv.conf", "resolv.conf"),
    ] {
        if !cri_destinations.iter().any(|d| d == Path::new(dest)) {
            mounts.push(bind(
                dest,
                &pod.files_dir.join(file),
                sc.readonly_rootfs && dest == "/etc/hostname",
                "rprivate",
            )?);
        }
    }
    mounts.extend(cri_binds);

    let (masked, readonly) = if sc.privileged {
        (Vec::new(), Vec::new())
    } else {
        let mut masked = get_default_maskedpaths();
        masked.push("/sys/devices/virtual/powercap".to_string());
        (
            if sc.masked_paths.is_empty() {
                masked
            } else {
                sc.masked_paths.clone()
            },
            if sc.readonly_paths.is_empty() {
                get_default_readonly_paths()
            } else {
                sc.readonly_paths.clone()
            },
        )
    };

    let mut oci_resources = linux_resources(&resources, node)?;
    let (mut devices, mut device_rules) = cri_devices(config, input.host)?;
    if sc.privileged {
        // Every host device, and the requested ones at their container paths on top.
        let mut all = host_devices(input.host)?;
        all.retain(|h| !devices.iter().any(|d| d.path() == h.path()));
        all.append(&mut devices);
        devices = all;
        device_rules = vec![
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .access("rwm")
                .build()?,
        ];
    } else {
        device_rules.insert(
            0,
            LinuxDeviceCgroupBuilder::default()
                .allow(false)
                .access("rwm")
                .build()?,
        );
    }
    oci_resources.set_devices(Some(device_rules));

    let sysctls: HashMap<String, String> = pod.sysctls.clone().into_iter().collect();
    check_sysctls(&sysctls, pod.net_ns.is_none(), pod.ipc_ns.is_none())?;
    let sysctls: HashMap<String, String> = sysctls
        .into_iter()
        .map(|(k, v)| (sysctl_name(&k), v))
        .collect();

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(cgroups_path(pod, input.id)))
        .resources(oci_resources)
        .masked_paths(masked)
        .readonly_paths(readonly)
        .sysctl(sysctls)
        .devices(devices)
        .build()?;
    linux.set_seccomp(seccomp);
    linux.set_rootfs_propagation(rootfs_propagation.map(str::to_string));

    let mut annotations: HashMap<String, String> = config.annotations.clone();
    let meta = config.metadata.clone().unwrap_or_default();
    for (k, v) in [
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.container-name", meta.name.as_str()),
        ("io.kubernetes.cri.sandbox-id", pod.id.as_str()),
        ("io.kubernetes.cri.sandbox-name", pod.name.as_str()),
        (
            "io.kubernetes.cri.sandbox-namespace",
            pod.namespace.as_str(),
        ),
        ("io.kubernetes.cri.image-name", input.image_name),
    ] {
        annotations.insert(k.to_string(), v.to_string());
    }

    let mut spec = SpecBuilder::default()
        .version("1.0.2-dev")
        .process(process)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(sc.readonly_rootfs)
                .build()?,
        )
        .mounts(mounts)
        .annotations(annotations)
        .linux(linux)
        .build()?;
    // A hostname can only be set in a UTS namespace of the pod's own; runc refuses it in the
    // host's (host-network pods). Set either way: oci-spec's default spec carries one.
    spec.set_hostname(pod.uts_ns.as_ref().map(|_| pod.hostname.clone()));
    Ok(spec)
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
