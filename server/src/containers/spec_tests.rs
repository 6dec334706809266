use std::cell::RefCell;
use std::collections::BTreeMap;

use berth_proto::cri::{
    Capability as CriCapability, ContainerMetadata, Device as CriDevice, HugepageLimit, Int64Value,
    KeyValue, LinuxContainerConfig, LinuxContainerSecurityContext, Mount as CriMount,
    NamespaceOption, UserNamespace,
};
use oci_spec::image::ConfigBuilder;
use oci_spec::runtime::LinuxNamespaceType;

use super::*;
use crate::containers::host::{HostDevice, MountPoint};

/// A host with a private root, a shared mount at /shared, a slave mount at /slave, a
/// symlink /link -> /srv/real, two device nodes and one seccomp profile file.
#[derive(Default)]
struct FakeHost {
    created: RefCell<Vec<PathBuf>>,
}

impl Host for FakeHost {
    fn prepare_host_path(&self, path: &Path) -> Result<PathBuf, String> {
        if path.starts_with("/link") {
            return Ok(Path::new("/srv/real").join(path.strip_prefix("/link").unwrap()));
        }
        if path.starts_with("/new") {
            self.created.borrow_mut().push(path.to_path_buf());
        }
        if path.starts_with("/forbidden") {
            return Err(format!(
                "creating missing host path {}: permission denied",
                path.display()
            ));
        }
        Ok(path.to_path_buf())
    }

    fn mount_of(&self, path: &Path) -> Result<MountPoint, String> {
        let (mount_point, optional) = if path.starts_with("/shared") {
            ("/shared", vec!["shared:7".to_string()])
        } else if path.starts_with("/slave") {
            ("/slave", vec!["master:3".to_string()])
        } else {
            ("/", vec![])
        };
        Ok(MountPoint {
            mount_point: mount_point.into(),
            optional,
        })
    }

    fn devices(&self, path: &Path) -> Result<Vec<HostDevice>, String> {
        let null = HostDevice {
            path: "/dev/null".into(),
            relative: "".into(),
            kind: 'c',
            major: 1,
            minor: 3,
            mode: 0o666,
        };
        let sda = HostDevice {
            path: "/dev/sda".into(),
            relative: "".into(),
            kind: 'b',
            major: 8,
            minor: 0,
            mode: 0o660,
        };
        let console = HostDevice {
            path: "/dev/console".into(),
            relative: "console".into(),
            kind: 'c',
            major: 5,
            minor: 1,
            mode: 0o600,
        };
        let pts = HostDevice {
            path: "/dev/pts/0".into(),
            relative: "pts/0".into(),
            kind: 'c',
            major: 136,
            minor: 0,
            mode: 0o620,
        };
        match path.to_str().unwrap() {
            "/dev/null" => Ok(vec![null]),
            "/dev/sda" => Ok(vec![sda]),
            "/dev" => {
                let below = |d: &HostDevice| HostDevice {
                    relative: d.path.strip_prefix("/dev").unwrap().to_path_buf(),
                    ..d.clone()
                };
                Ok(vec![below(&null), below(&sda), console, pts])
            }
            "/dev/disks" => Ok(vec![HostDevice {
                path: "/dev/disks/by-id/a".into(),
                relative: "by-id/a".into(),
                ..sda
            }]),
            other => Err(format!("{other} is not a device node")),
        }
    }

    fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        match path.to_str().unwrap() {
            crate::apparmor::PROFILES_FILE => Ok("my-profile (enforce)\n".into()),
            "/profiles/block-chmod.json" => Ok(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod","fchmodat"],"action":"SCMP_ACT_ERRNO"}]}"#.into()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        }
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
    ConfigBuilder::default()
        .entrypoint(s(entrypoint))
        .cmd(s(cmd))
        .env(s(&["PATH=/bin", "A=image"]))
        .build()
        .unwrap()
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n";
const GROUP: &str = "root:x:0:\nwww:x:33:\nbob:x:1000:\nwheel:x:10:bob,alice\naudio:x:29:bob\n";

fn pod() -> PodContext {
    PodContext {
        id: "pod1".into(),
        name: "web".into(),
        namespace: "ns".into(),
        hostname: "web-host".into(),
        net_ns: Some("/run/berth/sandboxes/pod1/ns/net".into()),
        ipc_ns: Some("/run/berth/sandboxes/pod1/ns/ipc".into()),
        uts_ns: Some("/run/berth/sandboxes/pod1/ns/uts".into()),
        pid_ns: Some("/proc/4242/ns/pid".into()),
        host_pid: false,
        files_dir: "/run/berth/sandboxes/pod1".into(),
        shm: Some("/run/berth/sandboxes/pod1/shm".into()),
        cgroup_parent: String::new(),
        privileged: false,
        sysctls: BTreeMap::new(),
    }
}

fn config() -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

fn with_security(sc: LinuxContainerSecurityContext) -> ContainerConfig {
    ContainerConfig {
        linux: Some(LinuxContainerConfig {
            security_context: Some(sc),
            ..Default::default()
        }),
        ..config()
    }
}

fn build_with(
    config: &ContainerConfig,
    img: &ImageConfig,
    pod: &PodContext,
) -> Result<Spec, SpecError> {
    build_on(config, img, pod, &NodeFacts::default())
}

fn build_on(
    config: &ContainerConfig,
    img: &ImageConfig,
    pod: &PodContext,
    node: &NodeFacts,
) -> Result<Spec, SpecError> {
    build(&SpecInput {
        id: "ctr1",
        config,
        image: img,
        image_name: "busybox",
        pod,
        passwd: PASSWD,
        group: GROUP,
        oom_score_adj_floor: -500,
        node,
        host: &FakeHost::default(),
        target_pid: Some(4242),
        volumes: &[],
    })
}

#[test]
fn command_overrides_entrypoint_and_drops_image_cmd() {
    let img = image(&["/entry"], &["default"]);
    assert_eq!(
        process_args(&[], &[], &img).unwrap(),
        s(&["/entry", "default"])
    );
    assert_eq!(
        process_args(&[], &s(&["mine"]), &img).unwrap(),
        s(&["/entry", "mine"])
    );
    assert_eq!(
        process_args(&s(&["/bin/sh"]), &[], &img).unwrap(),
        s(&["/bin/sh"])
    );
    assert_eq!(
        process_args(&s(&["/bin/sh"]), &s(&["-c", "x"]), &img).unwrap(),
        s(&["/bin/sh", "-c", "x"])
    );
    let empty = image(&[], &[]);
    assert_eq!(process_args(&[], &[], &empty), Err(SpecError::NoCommand));
}

#[test]
fn cri_env_follows_and_overrides_image_env() {
    let env = merge_env(
        &s(&["PATH=/bin", "A=image"]),
        &[("A".into(), "cri".into()), ("B".into(), "x=y".into())],
    );
    assert_eq!(env, s(&["PATH=/bin", "A=cri", "B=x=y"]));
}

#[test]
fn image_user_resolves_against_passwd_and_group() {
    let c = config();
    let u = resolve_user(&c, "", PASSWD, GROUP).unwrap();
    assert_eq!((u.uid, u.gid, u.additional_gids), (0, 0, vec![0]));
    let u = resolve_user(&c, "bob", PASSWD, GROUP).unwrap();
    assert_eq!((u.uid, u.gid), (1000, 1000));
    assert_eq!(u.additional_gids, vec![1000, 10, 29]);
    let u = resolve_user(&c, "www:wheel", PASSWD, GROUP).unwrap();
    assert_eq!((u.uid, u.gid), (33, 10));
    let u = resolve_user(&c, "1003:1004", PASSWD, GROUP).unwrap();
    assert_eq!((u.uid, u.gid), (1003, 1004));
    assert_eq!(
        resolve_user(&c, "nobody", PASSWD, GROUP),
        Err(SpecError::UnknownUser("nobody".into()))
    );
    assert_eq!(
        resolve_user(&c, "bob:nogroup", PASSWD, GROUP),
        Err(SpecError::UnknownGroup("nogroup".into()))
    );
}

#[test]
fn security_context_user_overrides_the_image() {
    let c = with_security(LinuxContainerSecurityContext {
        run_as_user: Some(Int64Value { value: 33 }),
        run_as_group: Some(Int64Value { value: 7 }),
        supplemental_groups: vec![500],
        ..Default::default()
    });
    let u = resolve_user(&c, "bob", PASSWD, GROUP).unwrap();
    assert_eq!((u.uid, u.gid), (33, 7));
    assert_eq!(u.additional_gids, vec![7, 500]);
    let c = with_security(LinuxContainerSecurityContext {
        run_as_username: "ghost".into(),
        ..Default::default()
    });
    let err = resolve_user(&c, "", PASSWD, GROUP).unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
}

#[test]
fn spec_joins_pod_namespaces_and_gets_own_pid_and_mount() {
    let spec = build_with(&config(), &image(&["/entry"], &[]), &pod()).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let nss = linux.namespaces().as_ref().unwrap();
    let find = |t: LinuxNamespaceType| nss.iter().find(|n| n.typ() == t);
    // POD, the default mode: the pod's shared PID namespace.
    assert_eq!(
        find(LinuxNamespaceType::Pid).unwrap().path().as_deref(),
        Some(Path::new("/proc/4242/ns/pid"))
    );
    assert!(find(LinuxNamespaceType::Mount).unwrap().path().is_none());
    assert_eq!(
        find(LinuxNamespaceType::Network).unwrap().path().as_deref(),
        Some(Path::new("/run/berth/sandboxes/pod1/ns/net"))
    );
    assert!(find(LinuxNamespaceType::Uts).unwrap().path().is_some());
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/berth/pod1/ctr1"))
    );
    assert_eq!(spec.hostname().as_deref(), Some("web-host"));

    let host = PodContext {
        net_ns: None,
        uts_ns: None,
        ipc_ns: None,
        cgroup_parent: "/kubepods/pod1/".into(),
        ..pod()
    };
    let spec = build_with(&config(), &image(&["/entry"], &[]), &host).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let nss = linux.namespaces().as_ref().unwrap();
    assert!(nss.iter().all(|n| n.typ() != LinuxNamespaceType::Network));
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/kubepods/pod1/ctr1"))
    );
    assert_eq!(
        spec.hostname(),
        &None,
        "no hostname in the host's UTS namespace: runc refuses it"
    );

    // CONTAINER: a PID namespace of its own.
    let own = with_security(LinuxContainerSecurityContext {
        namespace_options: Some(NamespaceOption {
            pid: NamespaceMode::Container as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let spec = build_with(&own, &image(&["/entry"], &[]), &pod()).unwrap();
    let nss = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    let pid = nss.iter().find(|n| n.typ() == LinuxNamespaceType::Pid);
    assert!(pid.unwrap().path().is_none());
    // POD in a pod made without a shared one is refused, not quietly given its own.
    let lone = PodContext {
        pid_ns: None,
        ..pod()
    };
    let err = build_with(&config(), &image(&["/entry"], &[]), &lone).unwrap_err();
    assert!(err.to_string().contains("pod pod1"), "{err}");

    let target = with_security(LinuxContainerSecurityContext {
        namespace_options: Some(NamespaceOption {
            pid: NamespaceMode::Target as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let spec = build_with(&target, &image(&["/entry"], &[]), &pod()).unwrap();
    let nss = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    let pid = nss
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Pid)
        .unwrap();
    assert_eq!(pid.path().as_deref(), Some(Path::new("/proc/4242/ns/pid")));

    let node_pid = with_security(LinuxContainerSecurityContext {
        namespace_options: Some(NamespaceOption {
            pid: NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let spec = build_with(&node_pid, &image(&["/entry"], &[]), &pod()).unwrap();
    let nss = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    assert!(nss.iter().all(|n| n.typ() != LinuxNamespaceType::Pid));
}

#[test]
fn spec_mounts_pod_files_and_cri_binds() {
    let mut c = config();
    c.mounts = vec![CriMount {
        container_path: "/data".into(),
        host_path: "/srv/data".into(),
        readonly: true,
        ..Default::default()
    }];
    let spec = build_with(&c, &image(&["/entry"], &[]), &pod()).unwrap();
    let mounts = spec.mounts().as_ref().unwrap();
    let find = |d: &str| mounts.iter().find(|m| m.destination() == Path::new(d));
    for d in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ] {
        assert!(find(d).is_some(), "{d} missing");
    }
    assert_eq!(
        find("/etc/resolv.conf").unwrap().source().as_deref(),
        Some(Path::new("/run/berth/sandboxes/pod1/resolv.conf"))
    );
    assert!(find("/etc/hosts").is_some() && find("/etc/hostname").is_some());
    // /dev/shm is the pod's shared tmpfs, bound in.
    let shm = find("/dev/shm").unwrap();
    assert_eq!(
        (shm.typ().as_deref(), shm.source().as_deref()),
        (
            Some("bind"),
            Some(Path::new("/run/berth/sandboxes/pod1/shm"))
        )
    );
    assert!(
        shm.options()
            .as_ref()
            .unwrap()
            .contains(&"noexec".to_string())
    );
    // Without one (a pod made before berth shared it), a tmpfs of the container's own.
    let own = PodContext { shm: None, ..pod() };
    let spec = build_with(&c, &image(&["/entry"], &[]), &own).unwrap();
    let shm = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new("/dev/shm"))
        .unwrap();
    assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
    let data = find("/data").unwrap();
    assert!(data.options().as_ref().unwrap().contains(&"ro".to_string()));

    c.mounts[0].host_path = "/forbidden/x".into();
    let err = build_with(&c, &image(&["/entry"], &[]), &pod()).unwrap_err();
    assert!(err.to_string().contains("/forbidden/x"), "{err}");
}

#[test]
fn spec_process_env_cwd_caps_and_clamped_oom() {
    let mut c = with_security(LinuxContainerSecurityContext {
        capabilities: Some(CriCapability {
            add_capabilities: s(&["SYS_ADMIN"]),
            drop_capabilities: s(&["NET_RAW"]),
            ..Default::default()
        }),
        ..Default::default()
    });
    c.envs = vec![KeyValue {
        key: "A".into(),
        value: "cri".into(),
    }];
    c.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        oom_score_adj: -998,
        memory_limit_in_bytes: 1 << 20,
        ..Default::default()
    });
    let spec = build_with(&c, &image(&["/entry"], &[]), &pod()).unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.oom_score_adj(), Some(-500));
    assert_eq!(p.cwd(), Path::new("/"));
    let env = p.env().as_ref().unwrap();
    assert!(env.contains(&"A=cri".to_string()) && env.contains(&"PATH=/bin".to_string()));
    assert!(env.contains(&"HOSTNAME=web-host".to_string()));
    let caps = p
        .capabilities()
        .as_ref()
        .unwrap()
        .bounding()
        .as_ref()
        .unwrap();
    assert!(caps.contains(&Capability::SysAdmin));
    assert!(!caps.contains(&Capability::NetRaw));
    assert!(caps.contains(&Capability::Chown));
    let linux = spec.linux().as_ref().unwrap();
    let mem = linux
        .resources()
        .as_ref()
        .unwrap()
        .memory()
        .as_ref()
        .unwrap();
    assert_eq!(mem.limit(), Some(1 << 20));
    assert!(
        linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string())
    );
    assert!(
        linux
            .readonly_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/sys".to_string())
    );
}

fn privileged_pod() -> PodContext {
    PodContext {
        privileged: true,
        ..pod()
    }
}

fn caps_of(spec: &Spec) -> (Vec<Capability>, Vec<Capability>) {
    let c = spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    let set = |s: &Option<oci_spec::runtime::Capabilities>| {
        let mut v: Vec<Capability> = s.clone().unwrap_or_default().into_iter().collect();
        v.sort_by_key(|c| format!("{c:?}"));
        v
    };
    assert_eq!(set(c.bounding()), set(c.effective()));
    assert_eq!(set(c.bounding()), set(c.permitted()));
    assert_eq!(set(c.inheritable()), set(c.ambient()));
    (set(c.bounding()), set(c.ambient()))
}

fn caps_config(add: &[&str], drop: &[&str]) -> ContainerConfig {
    with_security(LinuxContainerSecurityContext {
        capabilities: Some(CriCapability {
            add_capabilities: s(add),
            drop_capabilities: s(drop),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[test]
fn privileged_container_gets_everything_and_needs_a_privileged_pod() {
    let c = with_security(LinuxContainerSecurityContext {
        privileged: true,
        seccomp: Some(SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: "/profiles/block-chmod.json".into(),
        }),
        ..Default::default()
    });
    let err = build_with(&c, &image(&["/entry"], &[]), &pod()).unwrap_err();
    assert_eq!(err, SpecError::PrivilegedInUnprivilegedPod("pod1".into()));

    let mut with_device = c.clone();
    with_device.devices = vec![CriDevice {
        host_path: "/dev/sda".into(),
        container_path: "/dev/xvda".into(),
        permissions: "r".into(),
    }];
    let spec = build_with(&with_device, &image(&["/entry"], &[]), &privileged_pod()).unwrap();
    let devices = spec.linux().as_ref().unwrap().devices().clone().unwrap();
    let paths: Vec<&Path> = devices.iter().map(|d| d.path().as_path()).collect();
    assert_eq!(
        paths,
        vec![
            Path::new("/dev/null"),
            Path::new("/dev/sda"),
            Path::new("/dev/xvda")
        ],
        "a requested device is not dropped for a privileged container"
    );
    let spec = build_with(&c, &image(&["/entry"], &[]), &privileged_pod()).unwrap();
    let (caps, ambient) = caps_of(&spec);
    assert_eq!(caps.len(), 41, "every capability berthd holds");
    let without_sys_resource = NodeFacts {
        bounding: NodeFacts::default().bounding & !(1 << 24),
        ..NodeFacts::default()
    };
    let spec = build_on(
        &c,
        &image(&["/entry"], &[]),
        &privileged_pod(),
        &without_sys_resource,
    )
    .unwrap();
    assert!(!caps_of(&spec).0.contains(&Capability::SysResource));
    assert_eq!(caps_of(&spec).0.len(), 40);
    let spec = build_with(&c, &image(&["/entry"], &[]), &privileged_pod()).unwrap();
    assert!(ambient.is_empty());
    let linux = spec.linux().as_ref().unwrap();
    assert!(
        linux.seccomp().is_none(),
        "a profile is ignored when privileged"
    );
    assert!(linux.masked_paths().as_ref().unwrap().is_empty());
    assert!(linux.readonly_paths().as_ref().unwrap().is_empty());
    let devices = linux.devices().as_ref().unwrap();
    let paths: Vec<&Path> = devices.iter().map(|d| d.path().as_path()).collect();
    assert_eq!(paths, vec![Path::new("/dev/null"), Path::new("/dev/sda")]);
    let rules = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow() && rules[0].access().as_deref() == Some("rwm"));
    for dest in ["/sys", "/sys/fs/cgroup"] {
        let m = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new(dest))
            .unwrap();
        let opts = m.options().clone().unwrap();
        assert!(opts.contains(&"rw".to_string()) && !opts.contains(&"ro".to_string()));
    }
}

#[test]
fn capabilities_add_drop_and_all_in_both_spellings() {
    let img = image(&["/entry"], &[]);
    let spec = build_with(&caps_config(&[], &["ALL"]), &img, &pod()).unwrap();
    assert!(
        caps_of(&spec).0.is_empty(),
        "drop ALL leaves nothing, not even defaults"
    );
    let spec = build_with(&caps_config(&["CAP_ALL"], &[]), &img, &pod()).unwrap();
    assert_eq!(caps_of(&spec).0.len(), 41);
    // ALL first, then the named ones: all but CHOWN; nothing but NET_ADMIN.
    let spec = build_with(&caps_config(&["ALL"], &["chown"]), &img, &pod()).unwrap();
    let caps = caps_of(&spec).0;
    assert_eq!(caps.len(), 40);
    assert!(!caps.contains(&Capability::Chown));
    let spec = build_with(&caps_config(&["cap_net_admin"], &["all"]), &img, &pod()).unwrap();
    assert_eq!(caps_of(&spec).0, vec![Capability::NetAdmin]);
    let spec = build_with(&config(), &img, &pod()).unwrap();
    assert_eq!(caps_of(&spec).0.len(), DEFAULT_CAPABILITIES.len());
    assert!(
        caps_of(&spec).1.is_empty(),
        "no ambient capabilities by default"
    );

    let err = build_with(&caps_config(&["SYS_BOGUS"], &[]), &img, &pod()).unwrap_err();
    assert_eq!(err, SpecError::UnknownCapability("SYS_BOGUS".into()));
    assert!(err.to_string().contains("SYS_BOGUS"));
    let err = build_with(&caps_config(&[], &["CAP_NOPE"]), &img, &pod()).unwrap_err();
    assert_eq!(err, SpecError::UnknownCapability("CAP_NOPE".into()));

    let mut c = caps_config(&["NET_ADMIN"], &[]);
    let cc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    cc.capabilities.as_mut().unwrap().add_ambient_capabilities = s(&["NET_ADMIN"]);
    let spec = build_with(&c, &img, &pod()).unwrap();
    assert_eq!(caps_of(&spec).1, vec![Capability::NetAdmin]);
    let cc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    cc.capabilities.as_mut().unwrap().add_ambient_capabilities = s(&["SYS_TIME"]);
    assert!(build_with(&c, &img, &pod()).is_err());
}

#[test]
fn run_as_group_needs_a_user_and_groups_follow_the_policy() {
    let c = with_security(LinuxContainerSecurityContext {
        run_as_group: Some(Int64Value { value: 1002 }),
        ..Default::default()
    });
    assert_eq!(
        resolve_user(&c, "bob", PASSWD, GROUP),
        Err(SpecError::RunAsGroupWithoutUser)
    );
    let c = with_security(LinuxContainerSecurityContext {
        run_as_username: "bob".into(),
        run_as_group: Some(Int64Value { value: 1002 }),
        ..Default::default()
    });
    let u = resolve_user(&c, "", PASSWD, GROUP).unwrap();
    assert_eq!((u.uid, u.gid), (1000, 1002));

    let merge = with_security(LinuxContainerSecurityContext {
        run_as_user: Some(Int64Value { value: 1000 }),
        supplemental_groups: vec![5000],
        supplemental_groups_policy: SupplementalGroupsPolicy::Merge as i32,
        ..Default::default()
    });
    let u = resolve_user(&merge, "", PASSWD, GROUP).unwrap();
    assert_eq!(u.additional_gids, vec![1000, 10, 29, 5000]);
    let strict = with_security(LinuxContainerSecurityContext {
        supplemental_groups_policy: SupplementalGroupsPolicy::Strict as i32,
        ..merge.linux.clone().unwrap().security_context.unwrap()
    });
    let u = resolve_user(&strict, "", PASSWD, GROUP).unwrap();
    assert_eq!(
        u.additional_gids,
        vec![1000, 5000],
        "the image's groups are left out"
    );
    let bad = with_security(LinuxContainerSecurityContext {
        supplemental_groups_policy: 7,
        ..Default::default()
    });
    let err = resolve_user(&bad, "", PASSWD, GROUP).unwrap_err();
    assert!(
        err.to_string().contains("supplemental_groups_policy"),
        "{err}"
    );
    let negative = with_security(LinuxContainerSecurityContext {
        run_as_user: Some(Int64Value { value: -1 }),
        ..Default::default()
    });
    assert!(resolve_user(&negative, "", PASSWD, GROUP).is_err());
}

#[test]
fn readonly_rootfs_no_new_privs_and_path_overrides() {
    let c = with_security(LinuxContainerSecurityContext {
        readonly_rootfs: true,
        no_new_privs: true,
        masked_paths: s(&["/proc/secret"]),
        readonly_paths: s(&["/proc/ro"]),
        ..Default::default()
    });
    let spec = build_with(&c, &image(&["/entry"], &[]), &pod()).unwrap();
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(
        spec.process().as_ref().unwrap().no_new_privileges(),
        Some(true)
    );
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.masked_paths().clone().unwrap(), s(&["/proc/secret"]));
    assert_eq!(linux.readonly_paths().clone().unwrap(), s(&["/proc/ro"]));
}

fn seccomp_config(profile: Option<SecurityProfile>) -> ContainerConfig {
    with_security(LinuxContainerSecurityContext {
        seccomp: profile,
        ..Default::default()
    })
}

#[test]
fn seccomp_runtime_default_localhost_unconfined_and_none() {
    let img = image(&["/entry"], &[]);
    let profile = |t: ProfileType, r: &str| {
        Some(SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        })
    };
    let seccomp = |c: &ContainerConfig| {
        build_with(c, &img, &pod()).map(|s| s.linux().as_ref().unwrap().seccomp().clone())
    };
    assert_eq!(
        seccomp(&seccomp_config(None)).unwrap(),
        None,
        "nil is unconfined"
    );
    assert_eq!(
        seccomp(&seccomp_config(profile(ProfileType::Unconfined, ""))).unwrap(),
        None
    );
    let default = seccomp(&seccomp_config(profile(ProfileType::RuntimeDefault, "")))
        .unwrap()
        .unwrap();
    assert_eq!(
        default.default_action(),
        oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
    );
    assert!(default.syscalls().as_ref().unwrap().len() > 5);
    let local = seccomp(&seccomp_config(profile(
        ProfileType::Localhost,
        "/profiles/block-chmod.json",
    )))
    .unwrap()
    .unwrap();
    assert_eq!(
        local.default_action(),
        oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
    );
    let err = seccomp(&seccomp_config(profile(
        ProfileType::Localhost,
        "/profiles/gone.json",
    )))
    .unwrap_err();
    assert!(err.to_string().contains("/profiles/gone.json"), "{err}");
    let err = seccomp(&seccomp_config(profile(ProfileType::RuntimeDefault, "/x"))).unwrap_err();
    assert!(err.to_string().contains("localhost_ref"), "{err}");

    // The deprecated path form.
    #[allow(deprecated)]
    let old = with_security(LinuxContainerSecurityContext {
        seccomp_profile_path: "localhost//profiles/block-chmod.json".into(),
        ..Default::default()
    });
    assert!(seccomp(&old).unwrap().is_some());
    #[allow(deprecated)]
    let old = with_security(LinuxContainerSecurityContext {
        seccomp_profile_path: "runtime/default".into(),
        ..Default::default()
    });
    assert!(seccomp(&old).unwrap().is_some());
}

#[test]
fn apparmor_without_apparmor_on_the_host() {
    let img = image(&["/entry"], &[]);
    let with = |t: ProfileType, r: &str| {
        with_security(LinuxContainerSecurityContext {
            apparmor: Some(SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            ..Default::default()
        })
    };
    for ok in [
        with(ProfileType::Unconfined, ""),
        with(ProfileType::RuntimeDefault, ""),
    ] {
        let spec = build_with(&ok, &img, &pod()).unwrap();
        assert_eq!(spec.process().as_ref().unwrap().apparmor_profile(), &None);
    }
    let err = build_with(&with(ProfileType::Localhost, "my-profile"), &img, &pod()).unwrap_err();
    assert!(matches!(err, SpecError::HostLacks(_)), "{err}");
    assert!(err.to_string().contains("my-profile"), "{err}");
    let apparmor_host = NodeFacts {
        apparmor: AppArmor::Enabled {
            default_profile: true,
        },
        ..NodeFacts::default()
    };
    let spec = build_on(
        &with(ProfileType::Localhost, "my-profile"),
        &img,
        &pod(),
        &apparmor_host,
    )
    .unwrap();
    assert_eq!(apparmor_of(&spec), Some("my-profile"));
}

fn apparmor_of(spec: &Spec) -> Option<&str> {
    spec.process()
        .as_ref()
        .unwrap()
        .apparmor_profile()
        .as_deref()
}

#[test]
fn apparmor_on_an_apparmor_host() {
    let img = image(&["/entry"], &[]);
    let node = |default_profile| NodeFacts {
        apparmor: AppArmor::Enabled { default_profile },
        ..NodeFacts::default()
    };
    let sc = |t: Option<ProfileType>, r: &str, privileged: bool| {
        with_security(LinuxContainerSecurityContext {
            apparmor: t.map(|t| SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            privileged,
            ..Default::default()
        })
    };
    let mut privileged_pod = pod();
    privileged_pod.privileged = true;

    // RuntimeDefault, and no request at all, mean berth's default profile, as containerd's.
    for asked in [None, Some(ProfileType::RuntimeDefault)] {
        let spec = build_on(&sc(asked, "", false), &img, &pod(), &node(true)).unwrap();
        assert_eq!(apparmor_of(&spec), Some(crate::apparmor::DEFAULT_PROFILE));
        let spec = build_on(&sc(asked, "", true), &img, &privileged_pod, &node(true)).unwrap();
        assert_eq!(apparmor_of(&spec), None, "privileged: unconfined");
    }
    let spec = build_on(
        &sc(Some(ProfileType::Unconfined), "", false),
        &img,
        &pod(),
        &node(true),
    )
    .unwrap();
    assert_eq!(apparmor_of(&spec), None);
    // The deprecated field says the same.
    #[allow(deprecated)]
    let old = with_security(LinuxContainerSecurityContext {
        apparmor_profile: "runtime/default".into(),
        ..Default::default()
    });
    let spec = build_on(&old, &img, &pod(), &node(true)).unwrap();
    assert_eq!(apparmor_of(&spec), Some(crate::apparmor::DEFAULT_PROFILE));

    // The default profile failed to load: asking for it is refused, not asking runs without.
    let err = build_on(
        &sc(Some(ProfileType::RuntimeDefault), "", false),
        &img,
        &pod(),
        &node(false),
    )
    .unwrap_err();
    assert!(matches!(err, SpecError::HostLacks(_)), "{err}");
    assert!(err.to_string().contains("berth-default"), "{err}");
    let spec = build_on(&sc(None, "", false), &img, &pod(), &node(false)).unwrap();
    assert_eq!(apparmor_of(&spec), None);

    // A named profile must be loaded.
    let err = build_on(
        &sc(Some(ProfileType::Localhost), "not-loaded", false),
        &img,
        &pod(),
        &node(true),
    )
    .unwrap_err();
    assert!(matches!(err, SpecError::HostLacks(_)), "{err}");
    assert!(
        err.to_string().contains("\"not-loaded\" is not loaded"),
        "{err}"
    );
    let spec = build_on(
        &sc(Some(ProfileType::Localhost), "localhost/my-profile", false),
        &img,
        &pod(),
        &node(true),
    )
    .unwrap();
    assert_eq!(apparmor_of(&spec), Some("my-profile"));
}

fn resources(r: LinuxContainerResources, node: &NodeFacts) -> Result<LinuxResources, SpecError> {
    linux_resources(&r, node)
}

#[test]
fn resources_translate_on_both_cgroup_versions() {
    let v1 = NodeFacts {
        swap: true,
        hugetlb: true,
        ..NodeFacts::default()
    };
    let v2 = NodeFacts {
        cgroup: CgroupVersion::V2,
        ..v1
    };
    let r = LinuxContainerResources {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        cpuset_cpus: "0-1".into(),
        cpuset_mems: "0".into(),
        memory_limit_in_bytes: 64 << 20,
        hugepage_limits: vec![HugepageLimit {
            page_size: "2MB".into(),
            limit: 4 << 20,
        }],
        ..Default::default()
    };
    for node in [&v1, &v2] {
        let out = resources(r.clone(), node).unwrap();
        let cpu = out.cpu().clone().unwrap();
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(50_000), Some(100_000))
        );
        assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
        assert_eq!(cpu.mems().as_deref(), Some("0"));
        let mem = out.memory().unwrap();
        assert_eq!(mem.limit(), Some(64 << 20));
        assert_eq!(
            mem.swap(),
            Some(64 << 20),
            "no swap beyond the limit by default"
        );
        let huge = out.hugepage_limits().clone().unwrap();
        assert_eq!(
            (huge[0].page_size().as_str(), huge[0].limit()),
            ("2MB", 4 << 20)
        );
    }
    let swap = LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        memory_swap_limit_in_bytes: 128 << 20,
        ..Default::default()
    };
    let mem = resources(swap.clone(), &v1).unwrap().memory().unwrap();
    assert_eq!(mem.swap(), Some(128 << 20));
    let no_swap = NodeFacts { swap: false, ..v1 };
    let kubelet_default = LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        memory_swap_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    let mem = resources(kubelet_default, &no_swap)
        .unwrap()
        .memory()
        .unwrap();
    assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), None));
    assert!(matches!(
        resources(swap, &no_swap),
        Err(SpecError::HostLacks(_))
    ));
    let no_huge = NodeFacts {
        hugetlb: false,
        ..v1
    };
    assert!(matches!(
        resources(r, &no_huge),
        Err(SpecError::HostLacks(_))
    ));
    let zero = LinuxContainerResources {
        hugepage_limits: vec![HugepageLimit {
            page_size: "2MB".into(),
            limit: 0,
        }],
        ..Default::default()
    };
    assert!(
        resources(zero, &no_huge)
            .unwrap()
            .hugepage_limits()
            .is_none()
    );

    let unified = LinuxContainerResources {
        unified: HashMap::from([("memory.high".to_string(), "1000000".to_string())]),
        ..Default::default()
    };
    let out = resources(unified.clone(), &v2).unwrap();
    assert_eq!(out.unified().clone().unwrap()["memory.high"], "1000000");
    let err = resources(unified, &v1).unwrap_err();
    assert!(err.to_string().contains("memory.high") && err.to_string().contains("cgroup v2"));
    let negative = LinuxContainerResources {
        cpu_shares: -2,
        ..Default::default()
    };
    assert!(
        resources(negative, &v1)
            .unwrap_err()
            .to_string()
            .contains("cpu_shares")
    );
}

fn mount(host: &str, dest: &str, propagation: MountPropagation) -> CriMount {
    CriMount {
        host_path: host.into(),
        container_path: dest.into(),
        propagation: propagation as i32,
        ..Default::default()
    }
}

fn with_mounts(mounts: Vec<CriMount>) -> ContainerConfig {
    ContainerConfig { mounts, ..config() }
}

fn find_mount_in<'a>(spec: &'a Spec, dest: &str) -> &'a Mount {
    spec.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new(dest))
        .unwrap()
}

#[test]
fn mount_propagation_needs_a_matching_source_mount() {
    let img = image(&["/entry"], &[]);
    let spec = build_with(
        &with_mounts(vec![mount(
            "/data",
            "/data",
            MountPropagation::PropagationPrivate,
        )]),
        &img,
        &pod(),
    )
    .unwrap();
    assert_eq!(
        find_mount_in(&spec, "/data").options().clone().unwrap(),
        s(&["rbind", "rprivate", "rw"])
    );
    assert_eq!(spec.linux().as_ref().unwrap().rootfs_propagation(), &None);

    let spec = build_with(
        &with_mounts(vec![
            mount(
                "/slave/a",
                "/a",
                MountPropagation::PropagationHostToContainer,
            ),
            mount(
                "/shared/b",
                "/b",
                MountPropagation::PropagationBidirectional,
            ),
        ]),
        &img,
        &pod(),
    )
    .unwrap();
    assert!(
        find_mount_in(&spec, "/a")
            .options()
            .clone()
            .unwrap()
            .contains(&"rslave".into())
    );
    assert!(
        find_mount_in(&spec, "/b")
            .options()
            .clone()
            .unwrap()
            .contains(&"rshared".into())
    );
    assert_eq!(
        spec.linux()
            .as_ref()
            .unwrap()
            .rootfs_propagation()
            .as_deref(),
        Some("rshared")
    );
    let spec = build_with(
        &with_mounts(vec![mount(
            "/shared/a",
            "/a",
            MountPropagation::PropagationHostToContainer,
        )]),
        &img,
        &pod(),
    )
    .unwrap();
    assert_eq!(
        spec.linux()
            .as_ref()
            .unwrap()
            .rootfs_propagation()
            .as_deref(),
        Some("rslave")
    );

    let err = build_with(
        &with_mounts(vec![mount(
            "/private",
            "/p",
            MountPropagation::PropagationBidirectional,
        )]),
        &img,
        &pod(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/private") && err.to_string().contains("not shared"));
    let err = build_with(
        &with_mounts(vec![mount(
            "/slave/x",
            "/p",
            MountPropagation::PropagationBidirectional,
        )]),
        &img,
        &pod(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("not shared"),
        "a slave is not enough: {err}"
    );
    let err = build_with(
        &with_mounts(vec![mount(
            "/private",
            "/p",
            MountPropagation::PropagationHostToContainer,
        )]),
        &img,
        &pod(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("private"), "{err}");
}

#[test]
fn recursive_read_only_mounts_and_their_rejections() {
    let img = image(&["/entry"], &[]);
    let rro_node = NodeFacts {
        rro: true,
        ..NodeFacts::default()
    };
    let rro = |readonly: bool, propagation: MountPropagation| {
        with_mounts(vec![CriMount {
            readonly,
            recursive_read_only: true,
            selinux_relabel: true,
            ..mount("/data", "/mnt", propagation)
        }])
    };
    let spec = build_on(
        &rro(true, MountPropagation::PropagationPrivate),
        &img,
        &pod(),
        &rro_node,
    )
    .unwrap();
    assert_eq!(
        find_mount_in(&spec, "/mnt").options().clone().unwrap(),
        s(&["rbind", "rprivate", "rro"])
    );
    for (c, why) in [
        (rro(false, MountPropagation::PropagationPrivate), "readonly"),
        (
            rro(true, MountPropagation::PropagationHostToContainer),
            "PROPAGATION_PRIVATE",
        ),
        (
            rro(true, MountPropagation::PropagationBidirectional),
            "PROPAGATION_PRIVATE",
        ),
    ] {
        let err = build_on(&c, &img, &pod(), &rro_node).unwrap_err();
        assert!(matches!(err, SpecError::Mount { .. }), "{err}");
        assert!(
            err.to_string().contains(why) && err.to_string().contains("/data"),
            "{err}"
        );
    }
    let err = build_with(
        &rro(true, MountPropagation::PropagationPrivate),
        &img,
        &pod(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not support rro"), "{err}");
}

#[test]
fn host_paths_resolve_symlinks_are_created_when_missing_and_sort_shallow_first() {
    let img = image(&["/entry"], &[]);
    let mut c = with_mounts(vec![
        mount(
            "/new/inner",
            "/data/inner",
            MountPropagation::PropagationPrivate,
        ),
        mount("/link/sub", "/data", MountPropagation::PropagationPrivate),
    ]);
    c.mounts[0].readonly = true;
    let spec = build_with(&c, &img, &pod()).unwrap();
    let mounts = spec.mounts().as_ref().unwrap();
    let data = mounts
        .iter()
        .position(|m| m.destination() == Path::new("/data"))
        .unwrap();
    let inner = mounts
        .iter()
        .position(|m| m.destination() == Path::new("/data/inner"))
        .unwrap();
    assert!(data < inner, "a parent mount must not shadow its child");
    assert_eq!(
        mounts[data].source().as_deref(),
        Some(Path::new("/srv/real/sub"))
    );
    assert!(
        mounts[inner]
            .options()
            .clone()
            .unwrap()
            .contains(&"ro".into())
    );

    let mut img_mount = with_mounts(vec![mount(
        "",
        "/img",
        MountPropagation::PropagationPrivate,
    )]);
    img_mount.mounts[0].image = Some(berth_proto::cri::ImageSpec {
        image: "busybox".into(),
        ..Default::default()
    });
    // The container service turns image volumes into host paths first; one that reaches the
    // spec as such was not prepared.
    assert!(matches!(
        build_with(&img_mount, &img, &pod()),
        Err(SpecError::Mount { .. })
    ));
    let relative = with_mounts(vec![mount(
        "data",
        "/d",
        MountPropagation::PropagationPrivate,
    )]);
    assert!(matches!(
        build_with(&relative, &img, &pod()),
        Err(SpecError::Mount { .. })
    ));
}

#[test]
fn devices_become_nodes_and_cgroup_rules() {
    let img = image(&["/entry"], &[]);
    let mut c = config();
    c.devices = vec![CriDevice {
        host_path: "/dev/sda".into(),
        container_path: "/dev/xvda".into(),
        permissions: "rw".into(),
    }];
    let spec = build_with(&c, &img, &pod()).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let d = &linux.devices().as_ref().unwrap()[0];
    assert_eq!(d.path(), Path::new("/dev/xvda"));
    assert_eq!((d.typ(), d.major(), d.minor()), (LinuxDeviceType::B, 8, 0));
    assert_eq!(d.file_mode(), Some(0o660));
    let rules = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert!(!rules[0].allow(), "deny all first");
    assert!(rules[1].allow());
    assert_eq!((rules[1].major(), rules[1].minor()), (Some(8), Some(0)));
    assert_eq!(rules[1].access().as_deref(), Some("rw"));

    c.devices[0].host_path = "/dev/disks".into();
    c.devices[0].container_path = "/dev/mine".into();
    let spec = build_with(&c, &img, &pod()).unwrap();
    let d = &spec.linux().as_ref().unwrap().devices().as_ref().unwrap()[0];
    assert_eq!(
        d.path(),
        Path::new("/dev/mine/by-id/a"),
        "a directory's nodes keep their place"
    );
    c.devices[0].host_path = "/dev/sda".into();
    c.devices[0].permissions = "rwx".into();
    let err = build_with(&c, &img, &pod()).unwrap_err();
    assert!(err.to_string().contains("rwx"), "{err}");
    c.devices[0].permissions = "r".into();
    c.devices[0].host_path = "/etc/passwd".into();
    let err = build_with(&c, &img, &pod()).unwrap_err();
    assert!(err.to_string().contains("/etc/passwd"), "{err}");
}

#[test]
fn pod_sysctls_go_to_every_container_and_only_namespaced_ones_pass() {
    let img = image(&["/entry"], &[]);
    let p = PodContext {
        sysctls: BTreeMap::from([
            ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
            (
                "net/ipv4/ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            ),
        ]),
        ..pod()
    };
    let spec = build_with(&config(), &img, &p).unwrap();
    let sysctl = spec.linux().as_ref().unwrap().sysctl().clone().unwrap();
    assert_eq!(sysctl["kernel.shm_rmid_forced"], "1");
    assert_eq!(sysctl["net.ipv4.ip_unprivileged_port_start"], "0");

    let map = |k: &str| HashMap::from([(k.to_string(), "1".to_string())]);
    for ok in [
        "net.ipv4.ip_forward",
        "kernel.msgmax",
        "kernel.sem",
        "fs.mqueue.msg_max",
    ] {
        assert!(check_sysctls(&map(ok), false, false).is_ok(), "{ok}");
    }
    let err = check_sysctls(&map("kernel.panic"), false, false).unwrap_err();
    assert!(err.to_string().contains("kernel.panic") && err.to_string().contains("namespaced"));
    let err = check_sysctls(&map("net.ipv4.ip_forward"), true, false).unwrap_err();
    assert!(err.to_string().contains("host network"), "{err}");
    let err = check_sysctls(&map("fs.mqueue.msg_max"), false, true).unwrap_err();
    assert!(err.to_string().contains("host IPC"), "{err}");
    assert!(check_sysctls(&map("kernel.shm_rmid_forced"), true, false).is_ok());
}

#[test]
fn image_volumes_are_private_rw_binds_of_their_prepared_directories() {
    let vol = crate::containers::volumes::mount("/var/lib/data", Path::new("/state/c/volumes/0"));
    let spec = build(&SpecInput {
        id: "ctr1",
        config: &config(),
        image: &image(&["/entry"], &[]),
        image_name: "busybox",
        pod: &pod(),
        passwd: PASSWD,
        group: GROUP,
        oom_score_adj_floor: -500,
        node: &NodeFacts::default(),
        host: &FakeHost::default(),
        target_pid: None,
        volumes: std::slice::from_ref(&vol),
    })
    .unwrap();
    let m = find_mount_in(&spec, "/var/lib/data");
    assert_eq!(m.source().as_deref(), Some(Path::new("/state/c/volumes/0")));
    assert_eq!(
        m.options().clone().unwrap(),
        s(&["rbind", "rprivate", "rw"])
    );
}

fn with_userns(mode: NamespaceMode) -> ContainerConfig {
    with_security(LinuxContainerSecurityContext {
        namespace_options: Some(NamespaceOption {
            userns_options: Some(UserNamespace {
                mode: mode as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

#[test]
fn user_namespace_node_mode_as_kubelet_sends_it_runs_in_the_host_user_namespace() {
    let spec = build_with(
        &with_userns(NamespaceMode::Node),
        &image(&["/entry"], &[]),
        &pod(),
    )
    .unwrap();
    let nss = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    assert!(nss.iter().all(|n| n.typ() != LinuxNamespaceType::User));
    assert!(spec.linux().as_ref().unwrap().uid_mappings().is_none());
}

#[test]
fn user_namespace_pod_mode_is_refused_naming_the_pod_and_other_modes_are_invalid() {
    let err = build_with(
        &with_userns(NamespaceMode::Pod),
        &image(&["/entry"], &[]),
        &pod(),
    )
    .unwrap_err();
    assert!(matches!(err, SpecError::UserNamespace(_)), "{err}");
    assert!(err.to_string().contains("pod pod1"), "{err}");
    assert!(err.to_string().contains("hostUsers: false"), "{err}");

    let err = build_with(
        &with_userns(NamespaceMode::Target),
        &image(&["/entry"], &[]),
        &pod(),
    )
    .unwrap_err();
    assert!(matches!(err, SpecError::InvalidField { .. }), "{err}");
    assert!(err.to_string().contains("userns_options.mode"), "{err}");
}

#[test]
fn pod_pid_mode_in_a_host_pid_pod_is_the_hosts_pid_namespace() {
    // crictl's hand-written configs leave the container's PID mode at POD (the proto default)
    // whatever the pod's mode; containerd's container then shares the pause container's.
    let host_pid = PodContext {
        pid_ns: None,
        host_pid: true,
        ..pod()
    };
    let spec = build_with(&config(), &image(&["/entry"], &[]), &host_pid).unwrap();
    let nss = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    assert!(nss.iter().all(|n| n.typ() != LinuxNamespaceType::Pid));
}
