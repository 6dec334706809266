//! The OCI runtime spec (`config.json`) of a CRI container, built from the CRI config, the
//! image config and the pod, as containerd's CRI plugin builds it.
//!
//! Everything here is pure: the caller reads the rootfs' `/etc/passwd` and `/etc/group` and
//! hands their contents in, so the rules are unit-tested without a rootfs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_proto::cri::{ContainerConfig, LinuxContainerResources, MountPropagation, NamespaceMode};
use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder, get_default_maskedpaths, get_default_mounts, get_default_readonly_paths,
};

/// Why a spec cannot be built: invalid input, reported as InvalidArgument.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("no command specified: the container config and the image give none")]
    NoCommand,
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
    #[error("mount host path {0} does not exist")]
    MissingHostPath(PathBuf),
    #[error("{0}: not supported yet")]
    Unsupported(String),
    #[error(
        "the container asks for its pod's PID namespace (namespace_options.pid POD) but pod \
         {0} was created without a shared one"
    )]
    NoPodPidNamespace(String),
    #[error("building the OCI spec: {0}")]
    Build(String),
}

impl From<oci_spec::OciSpecError> for SpecError {
    fn from(e: oci_spec::OciSpecError) -> Self {
        SpecError::Build(e.to_string())
    }
}

/// containerd's default capability set for CRI containers.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

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
    /// The PID namespace the pod's containers share (its holder's `/proc/<pid>/ns/pid`);
    /// `None` when the pod has none.
    pub pid_ns: Option<PathBuf>,
    /// The pod's `hostname`, `hosts` and `resolv.conf` files.
    pub files_dir: PathBuf,
    /// The pod's cgroup parent (cgroupfs form); empty: `/berth/<pod id>`.
    pub cgroup_parent: String,
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
    /// Whether a host path exists (CRI mounts); a seam for tests.
    pub host_path_exists: &'a dyn Fn(&Path) -> bool,
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
/// passwd and group files. Additional gids: the groups listing the user, then the context's
/// supplemental groups.
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
    let (uid, mut gid) = match sc {
        Some(sc) if !sc.run_as_username.is_empty() => {
            let (u, g) = by_name(&sc.run_as_username)?;
            (u, g)
        }
        Some(sc) if sc.run_as_user.is_some() => {
            let uid = sc
                .run_as_user
                .as_ref()
                .map_or(0, |v| u32::try_from(v.value).unwrap_or(0));
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
        gid = u32::try_from(g.value).unwrap_or(0);
    }
    let name = passwd_entries(passwd)
        .find(|e| e.uid == uid)
        .map(|e| e.name.to_string());
    let mut additional: Vec<u32> = vec![gid];
    if let Some(name) = name {
        for (_, g, members) in group_entries(group) {
            if members.contains(&name.as_str()) && !additional.contains(&g) {
                additional.push(g);
            }
        }
    }
    for g in sc
        .map(|sc| sc.supplemental_groups.clone())
        .unwrap_or_default()
    {
        let g = u32::try_from(g).unwrap_or(0);
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

/// The OCI resources of CRI container resources (cpu, memory, cpuset); the oom_score_adj goes
/// to the process, not here.
pub fn linux_resources(r: &LinuxContainerResources) -> Result<LinuxResources, SpecError> {
    let mut cpu = LinuxCpuBuilder::default();
    if r.cpu_shares > 0 {
        cpu = cpu.shares(u64::try_from(r.cpu_shares).unwrap_or(0));
    }
    if r.cpu_quota != 0 {
        cpu = cpu.quota(r.cpu_quota);
    }
    if r.cpu_period > 0 {
        cpu = cpu.period(u64::try_from(r.cpu_period).unwrap_or(0));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(r.cpuset_cpus.clone());
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(r.cpuset_mems.clone());
    }
    let mut memory = LinuxMemoryBuilder::default();
    if r.memory_limit_in_bytes > 0 {
        memory = memory.limit(r.memory_limit_in_bytes);
    }
    if r.memory_swap_limit_in_bytes > 0 {
        memory = memory.swap(r.memory_swap_limit_in_bytes);
    }
    Ok(LinuxResourcesBuilder::default()
        .cpu(cpu.build()?)
        .memory(memory.build()?)
        .build()?)
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

/// Builds the container's `config.json`; `root.path` is `rootfs` (relative to the bundle).
pub fn build(input: &SpecInput<'_>) -> Result<Spec, SpecError> {
    let config = input.config;
    let image = input.image;
    let linux_config = config.linux.clone().unwrap_or_default();
    let sc = linux_config.security_context.clone().unwrap_or_default();
    let ns_options = sc.namespace_options.clone().unwrap_or_default();

    if sc.privileged {
        return Err(SpecError::Unsupported("privileged containers".into()));
    }
    if !config.devices.is_empty() {
        return Err(SpecError::Unsupported("container devices".into()));
    }
    let args = process_args(&config.command, &config.args, image)?;
    let envs: Vec<(String, String)> = config
        .envs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    let mut env = merge_env(&[format!("HOSTNAME={}", input.pod.hostname)], &[]);
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

    let mut caps: Vec<Capability> = DEFAULT_CAPABILITIES.to_vec();
    if let Some(c) = &sc.capabilities {
        // Parsed through serde: its names are the kernel's (`CAP_SYS_ADMIN`).
        let parse = |name: &str| {
            let name = name.to_uppercase();
            let name = if name.starts_with("CAP_") {
                name
            } else {
                format!("CAP_{name}")
            };
            serde_json::from_value::<Capability>(serde_json::Value::String(name)).ok()
        };
        if c.drop_capabilities
            .iter()
            .any(|d| d.eq_ignore_ascii_case("ALL"))
        {
            caps.clear();
        }
        for d in &c.drop_capabilities {
            if let Some(d) = parse(d) {
                caps.retain(|c| *c != d);
            }
        }
        for a in &c.add_capabilities {
            if let Some(a) = parse(a)
                && !caps.contains(&a)
            {
                caps.push(a);
            }
        }
    }
    let caps: oci_spec::runtime::Capabilities = caps.into_iter().collect();
    let process = ProcessBuilder::default()
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
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .build()?,
        )
        .no_new_privileges(sc.no_new_privs)
        .oom_score_adj(oom)
        .build()?;

    let mut namespaces = vec![
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Mount)
            .build()?,
    ];
    match NamespaceMode::try_from(ns_options.pid) {
        Ok(NamespaceMode::Node) => {}
        Ok(NamespaceMode::Target) => {
            return Err(SpecError::Unsupported(
                "sharing the pid namespace of a target container".into(),
            ));
        }
        Ok(NamespaceMode::Pod) => {
            let path = input
                .pod
                .pid_ns
                .as_ref()
                .ok_or_else(|| SpecError::NoPodPidNamespace(input.pod.id.clone()))?;
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Pid)
                    .path(path)
                    .build()?,
            );
        }
        _ => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .build()?,
        ),
    }
    for (typ, path) in [
        (LinuxNamespaceType::Network, &input.pod.net_ns),
        (LinuxNamespaceType::Ipc, &input.pod.ipc_ns),
        (LinuxNamespaceType::Uts, &input.pod.uts_ns),
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

    let mut mounts = get_default_mounts();
    let cri_destinations: Vec<&str> = config
        .mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    mounts.retain(|m| {
        !cri_destinations
            .iter()
            .any(|d| Path::new(d) == m.destination())
    });
    for (dest, file) in [
        ("/etc/hostname", "hostname"),
        ("/etc/hosts", "hosts"),
        ("/etc/resolv.conf", "resolv.conf"),
    ] {
        if !cri_destinations.contains(&dest) {
            mounts.push(bind(
                dest,
                &input.pod.files_dir.join(file),
                sc.readonly_rootfs && dest == "/etc/hostname",
                "rprivate",
            )?);
        }
    }
    for m in &config.mounts {
        let host = Path::new(&m.host_path);
        if !(input.host_path_exists)(host) {
            return Err(SpecError::MissingHostPath(host.to_path_buf()));
        }
        let propagation = match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationHostToContainer) => "rslave",
            Ok(MountPropagation::PropagationBidirectional) => "rshared",
            _ => "rprivate",
        };
        mounts.push(bind(&m.container_path, host, m.readonly, propagation)?);
    }

    let mut masked = get_default_maskedpaths();
    masked.push("/sys/devices/virtual/powercap".to_string());
    let masked = if sc.masked_paths.is_empty() {
        masked
    } else {
        sc.masked_paths.clone()
    };
    let readonly = if sc.readonly_paths.is_empty() {
        get_default_readonly_paths()
    } else {
        sc.readonly_paths.clone()
    };
    let mut oci_resources = linux_resources(&resources)?;
    oci_resources.set_devices(Some(vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()?,
    ]));
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(cgroups_path(input.pod, input.id)))
        .resources(oci_resources)
        .masked_paths(masked)
        .readonly_paths(readonly)
        .sysctl(HashMap::<String, String>::new())
        .build()?;

    let mut annotations: HashMap<String, String> = config.annotations.clone();
    let meta = config.metadata.clone().unwrap_or_default();
    for (k, v) in [
        ("io.kubernetes.cri.container-type", "container"),
        ("io.kubernetes.cri.container-name", meta.name.as_str()),
        ("io.kubernetes.cri.sandbox-id", input.pod.id.as_str()),
        ("io.kubernetes.cri.sandbox-name", input.pod.name.as_str()),
        (
            "io.kubernetes.cri.sandbox-namespace",
            input.pod.namespace.as_str(),
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
    spec.set_hostname(
        input
            .pod
            .uts_ns
            .as_ref()
            .map(|_| input.pod.hostname.clone()),
    );
    Ok(spec)
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
