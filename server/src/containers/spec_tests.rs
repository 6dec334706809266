use berth_proto::cri::{
    Capability as CriCapability, ContainerMetadata, Int64Value, KeyValue, LinuxContainerConfig,
    LinuxContainerSecurityContext, Mount as CriMount, NamespaceOption,
};
use oci_spec::image::ConfigBuilder;
use oci_spec::runtime::LinuxNamespaceType;

use super::*;

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
        files_dir: "/run/berth/sandboxes/pod1".into(),
        cgroup_parent: String::new(),
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
    build(&SpecInput {
        id: "ctr1",
        config,
        image: img,
        image_name: "busybox",
        pod,
        passwd: PASSWD,
        group: GROUP,
        oom_score_adj_floor: -500,
        host_path_exists: &|p: &Path| p != Path::new("/missing"),
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
    assert!(matches!(
        build_with(&target, &image(&["/entry"], &[]), &pod()),
        Err(SpecError::Unsupported(_))
    ));
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
    let data = find("/data").unwrap();
    assert!(data.options().as_ref().unwrap().contains(&"ro".to_string()));

    c.mounts[0].host_path = "/missing".into();
    let err = build_with(&c, &image(&["/entry"], &[]), &pod()).unwrap_err();
    assert!(err.to_string().contains("/missing"), "{err}");
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

#[test]
fn privileged_containers_are_refused_not_silently_confined() {
    let c = with_security(LinuxContainerSecurityContext {
        privileged: true,
        ..Default::default()
    });
    let err = build_with(&c, &image(&["/entry"], &[]), &pod()).unwrap_err();
    assert_eq!(err, SpecError::Unsupported("privileged containers".into()));
    assert_eq!(err.to_string(), "privileged containers: not supported yet");
}
