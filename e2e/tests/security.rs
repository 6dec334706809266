//! Container security contexts, limits and mount propagation through crictl against a real
//! berthd: each container reports what it sees from the inside (/proc/self/status, id, its
//! cgroup, its mounts), and the host checks what comes back out. Runs as root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_e2e::daemon::{BUSYBOX, Berthd, BerthdOptions, berthd_with_busybox};
use berth_e2e::fixtures::{path_str as s, shared_mount, write_json};
use berth_e2e::image::{Compression, Image, ImageConfig, LayerBuilder, Meta, Platform};
use berth_e2e::registry::Registry;
use berth_e2e::testimages::{self, Content, catalog};
use nix::mount::{MsFlags, mount};
use serde_json::{Value, json};

/// containerd's default capability set as a CapBnd mask (bits 0-1, 3-8, 10, 13, 18, 27, 29, 31).
const DEFAULT_CAPS: &str = "00000000a80425fb";

fn start(test: u8) -> Result<(Berthd, Registry)> {
    let pid = std::process::id();
    berthd_with_busybox(
        BerthdOptions::default(),
        &format!("bs{}t{test}", pid % 100_000),
        &format!("10.{}.{}.0/24", 230 + test, pid % 250),
    )
}

fn pod(berthd: &Berthd, name: &str, linux: Value) -> Result<(String, PathBuf)> {
    let dir = berthd.paths().dir.clone();
    let cfg = write_json(
        &dir,
        &format!("{name}-pod.json"),
        &json!({
            "metadata": {"name": name, "namespace": "e2e", "uid": format!("uid-{name}"), "attempt": 1},
            "hostname": name,
            "log_directory": dir.join("logs").join(name),
            "linux": linux,
        }),
    )?;
    let id = berthd.crictl_ok(&["runp", s(&cfg)?])?.trim().to_string();
    Ok((id, cfg))
}

/// Creates and starts a `sleep` container with `linux` and `mounts`; the error is crictl's.
fn container(
    berthd: &Berthd,
    pod: &(String, PathBuf),
    name: &str,
    linux: Value,
    mounts: Value,
) -> Result<String> {
    let dir = berthd.paths().dir.clone();
    let cfg = write_json(
        &dir,
        &format!("{name}-ctr.json"),
        &json!({
            "metadata": {"name": name},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "1000"],
            "mounts": mounts,
            "linux": linux,
        }),
    )?;
    let id = berthd
        .crictl_ok(&["create", &pod.0, s(&cfg)?, s(&pod.1)?])?
        .trim()
        .to_string();
    berthd.crictl_ok(&["start", &id])?;
    Ok(id)
}

/// crictl create's stderr for a config that must be refused.
fn refused(berthd: &Berthd, pod: &(String, PathBuf), name: &str, linux: Value) -> Result<String> {
    let dir = berthd.paths().dir.clone();
    let cfg = write_json(
        &dir,
        &format!("{name}-ctr.json"),
        &json!({"metadata": {"name": name}, "image": {"image": BUSYBOX},
                "command": ["true"], "linux": linux}),
    )?;
    let out = berthd.crictl(&["create", &pod.0, s(&cfg)?, s(&pod.1)?])?;
    ensure!(!out.status.success(), "{name} was created: {out:?}");
    Ok(String::from_utf8_lossy(&out.stderr).to_string())
}

fn exec(berthd: &Berthd, id: &str, script: &str) -> Result<String> {
    berthd.crictl_ok(&["exec", "-s", id, "sh", "-c", script])
}

/// The value of a /proc/self/status field as the container's own process sees it.
fn status_field(berthd: &Berthd, id: &str, field: &str) -> Result<String> {
    let out = exec(berthd, id, &format!("grep '^{field}:' /proc/self/status"))?;
    Ok(out
        .split_once(':')
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default())
}

#[test]
fn a_container_sees_its_security_context_and_limits_from_the_inside() -> Result<()> {
    let (berthd, _registry) = start(1)?;
    let p = pod(
        &berthd,
        "secure",
        json!({"sysctls": {"kernel.shm_rmid_forced": "1"}}),
    )?;

    let locked = container(
        &berthd,
        &p,
        "locked",
        json!({
            "security_context": {
                "run_as_user": {"value": 1000},
                "run_as_group": {"value": 2000},
                "supplemental_groups": [3000],
                "readonly_rootfs": true,
                "no_new_privs": true,
                "capabilities": {"drop_capabilities": ["ALL"], "add_capabilities": ["NET_BIND_SERVICE"]},
                "seccomp": {"profile_type": 0},
            },
            "resources": {"memory_limit_in_bytes": 64 << 20},
        }),
        json!([]),
    )?;
    // A non-root process keeps the bounding set only: NET_BIND_SERVICE is bit 10.
    ensure!(
        status_field(&berthd, &locked, "CapBnd")? == "0000000000000400",
        "CapBnd {}",
        status_field(&berthd, &locked, "CapBnd")?
    );
    ensure!(status_field(&berthd, &locked, "CapEff")? == "0000000000000000");
    ensure!(
        status_field(&berthd, &locked, "Seccomp")? == "2",
        "seccomp filter mode"
    );
    ensure!(status_field(&berthd, &locked, "NoNewPrivs")? == "1");
    let ids = exec(&berthd, &locked, "echo $(id -u) $(id -g) $(id -G)")?;
    ensure!(ids.trim() == "1000 2000 2000 3000", "id: {ids:?}");
    let status: Value =
        serde_json::from_str(&berthd.crictl_ok(&["inspect", "-o", "json", &locked])?)?;
    let user = &status["status"]["user"]["linux"];
    ensure!(
        user["uid"] == "1000" || user["uid"] == 1000,
        "ContainerStatus.user: {status}"
    );
    ensure!(
        user["supplementalGroups"].as_array().map(Vec::len) == Some(2),
        "ContainerStatus.user: {user}"
    );
    let write = berthd.crictl(&["exec", "-s", &locked, "sh", "-c", "echo x > /file"])?;
    ensure!(!write.status.success(), "the rootfs is writable: {write:?}");
    ensure!(
        String::from_utf8_lossy(&write.stdout).contains("Read-only file system")
            || String::from_utf8_lossy(&write.stderr).contains("Read-only file system"),
        "{write:?}"
    );
    let limit = exec(
        &berthd,
        &locked,
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
    )?;
    ensure!(
        limit.trim() == (64u64 << 20).to_string(),
        "memory limit {limit:?}"
    );
    // UpdateContainerResources applies live.
    berthd.crictl_ok(&[
        "update",
        "--memory",
        &(128u64 << 20).to_string(),
        "--cpu-quota",
        "50000",
        "--cpu-period",
        "100000",
        &locked,
    ])?;
    let limits = exec(
        &berthd,
        &locked,
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us \
         2>/dev/null || (cat /sys/fs/cgroup/memory.max; cut -d' ' -f1 /sys/fs/cgroup/cpu.max)",
    )?;
    let want = [(128u64 << 20).to_string(), "50000".to_string()];
    ensure!(
        limits.split_whitespace().collect::<Vec<_>>() == want,
        "after update: {limits:?}"
    );
    // Masked: a file reads as /dev/null, a directory is an empty read-only tmpfs.
    let masked = exec(
        &berthd,
        &locked,
        "wc -c < /proc/timer_list; ls -A /sys/firmware | wc -l",
    )?;
    ensure!(
        masked.split_whitespace().collect::<Vec<_>>() == ["0", "0"],
        "masked paths show {masked:?}"
    );
    let sysctl = exec(&berthd, &locked, "cat /proc/sys/kernel/shm_rmid_forced")?;
    ensure!(sysctl.trim() == "1", "pod sysctl: {sysctl:?}");

    // Defaults: root, containerd's capability set, no seccomp filter without a profile.
    let plain = container(&berthd, &p, "plain", json!({}), json!([]))?;
    ensure!(status_field(&berthd, &plain, "CapEff")? == DEFAULT_CAPS);
    ensure!(status_field(&berthd, &plain, "Seccomp")? == "0");
    let ids = exec(&berthd, &plain, "echo $(id -u) $(id -g)")?;
    ensure!(ids.trim() == "0 0", "id: {ids:?}");
    exec(&berthd, &plain, "echo x > /file")?;

    // Pid namespaces: by default (POD) the pod's, whose init is berth's holder; CONTAINER is
    // the container's own; TARGET joins another container's; NODE is the host's.
    let init = exec(&berthd, &plain, "cat /proc/1/comm")?;
    ensure!(init.trim() == "berth-pidns", "the pod's pid 1: {init:?}");
    let solo = container(
        &berthd,
        &p,
        "solo",
        json!({"security_context": {"namespace_options": {"pid": 1}}}),
        json!([]),
    )?;
    let joined = container(
        &berthd,
        &p,
        "joined",
        json!({"security_context": {"namespace_options": {"pid": 3, "target_id": solo}}}),
        json!([]),
    )?;
    let procs = exec(&berthd, &joined, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")?;
    ensure!(
        procs.matches("sleep 1000").count() == 2,
        "the target's process and its own, nothing else: {procs:?}"
    );
    let mine = exec(&berthd, &solo, "cat /proc/1/cmdline | tr '\\0' ' '")?;
    ensure!(
        mine.trim() == "sleep 1000",
        "the target's own pid 1: {mine:?}"
    );
    let host_pid = container(
        &berthd,
        &p,
        "hostpid",
        json!({"security_context": {"namespace_options": {"pid": 2}}}),
        json!([]),
    )?;
    let own = std::process::id().to_string();
    let seen = exec(
        &berthd,
        &host_pid,
        &format!("test -d /proc/{own} && echo yes"),
    )?;
    ensure!(
        seen.trim() == "yes",
        "host pid namespace: the test's pid {own} is not visible"
    );

    // Refused with the field named.
    let err = refused(
        &berthd,
        &p,
        "group-only",
        json!({"security_context": {"run_as_group": {"value": 1002}}}),
    )?;
    ensure!(
        err.contains("InvalidArgument") && err.contains("run_as_group"),
        "{err}"
    );
    let err = refused(
        &berthd,
        &p,
        "bogus-cap",
        json!({"security_context": {"capabilities": {"add_capabilities": ["BOGUS"]}}}),
    )?;
    ensure!(
        err.contains("InvalidArgument") && err.contains("BOGUS"),
        "{err}"
    );
    let err = refused(
        &berthd,
        &p,
        "privileged",
        json!({"security_context": {"privileged": true}}),
    )?;
    ensure!(err.contains("privileged pod"), "{err}");
    let err = refused(
        &berthd,
        &p,
        "gone-profile",
        json!({"security_context": {"seccomp": {"profile_type": 2, "localhost_ref": "/nonexistent/profile.json"}}}),
    )?;
    ensure!(err.contains("/nonexistent/profile.json"), "{err}");

    let dir = berthd.paths().dir.clone();
    let bad_pod = write_json(
        &dir,
        "panic-pod.json",
        &json!({"metadata": {"name": "panic", "namespace": "e2e", "uid": "uid-panic", "attempt": 1},
                "linux": {"sysctls": {"kernel.panic": "1"}}}),
    )?;
    let out = berthd.crictl(&["runp", s(&bad_pod)?])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("kernel.panic") && err.contains("InvalidArgument"),
        "{out:?}"
    );

    berthd.crictl_ok(&["rmp", "-f", &p.0])?;
    Ok(())
}

fn host_sees(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    path.exists()
}

#[test]
fn mounts_propagate_between_host_and_container_as_asked() -> Result<()> {
    let (berthd, _registry) = start(2)?;
    let dir = berthd.paths().dir.clone();
    let shared = dir.join("shared");
    let private = dir.join("private");
    std::fs::create_dir_all(shared.join("from-host"))?;
    std::fs::create_dir_all(shared.join("from-both"))?;
    std::fs::create_dir_all(shared.join("from-slave"))?;
    std::fs::create_dir_all(&private)?;
    // The source must be a shared mount for rshared and rslave.
    let _guard = shared_mount(&shared)?;

    let p = pod(
        &berthd,
        "prop",
        json!({"security_context": {"privileged": true}}),
    )?;
    let privileged = json!({"security_context": {"privileged": true}});
    let both = container(
        &berthd,
        &p,
        "both",
        privileged.clone(),
        json!([{"container_path": "/mnt/shared", "host_path": shared, "propagation": 2}]),
    )?;
    let slave = container(
        &berthd,
        &p,
        "slave",
        privileged.clone(),
        json!([{"container_path": "/mnt/shared", "host_path": shared, "propagation": 1}]),
    )?;
    // A privileged container holds every capability berthd has, without seccomp.
    ensure!(status_field(&berthd, &both, "Seccomp")? == "0");
    ensure!(status_field(&berthd, &both, "CapEff")? != DEFAULT_CAPS);

    // Host to containers: both see a tmpfs the host mounts after they started.
    mount(
        Some("tmpfs"),
        &shared.join("from-host"),
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    std::fs::write(shared.join("from-host/flag"), "host")?;
    for id in [&both, &slave] {
        let seen = exec(&berthd, id, "cat /mnt/shared/from-host/flag")?;
        ensure!(seen.trim() == "host", "container {id} sees {seen:?}");
    }

    // Container to host: only the rshared one propagates back.
    exec(
        &berthd,
        &both,
        "mount -t tmpfs none /mnt/shared/from-both && echo both > /mnt/shared/from-both/flag",
    )?;
    ensure!(
        host_sees(&shared.join("from-both/flag")),
        "an rshared mount made in the container did not reach the host"
    );
    exec(
        &berthd,
        &slave,
        "mount -t tmpfs none /mnt/shared/from-slave && echo slave > /mnt/shared/from-slave/flag",
    )?;
    ensure!(
        !shared.join("from-slave/flag").exists(),
        "an rslave mount made in the container reached the host"
    );

    // rshared needs a shared source; a private one is refused, naming it.
    let dir_cfg = write_json(
        &dir,
        "private-ctr.json",
        &json!({"metadata": {"name": "private"}, "image": {"image": BUSYBOX},
                "command": ["true"], "linux": privileged,
                "mounts": [{"container_path": "/mnt/p", "host_path": private, "propagation": 2}]}),
    )?;
    let out = berthd.crictl(&["create", &p.0, s(&dir_cfg)?, s(&p.1)?])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("not shared") && err.contains(s(&private)?),
        "{out:?}"
    );

    berthd.crictl_ok(&["rmp", "-f", &p.0])?;
    Ok(())
}

/// busybox plus `/data/seed` (owned by 1000, mode 0750), declaring `VOLUME /data`.
fn push_volume_image(registry: &Registry) -> Result<String> {
    let entry = catalog()
        .iter()
        .find(|e| e.content == Content::Busybox && e.repository == "e2e-test-images/busybox")
        .context("busybox in the catalog")?;
    let busybox = testimages::artifact(entry)?
        .image_for(&Platform::linux_amd64())
        .context("busybox has an amd64 image")?;
    let mut data = LayerBuilder::new();
    data.dir("data", Meta::mode(0o750).owner(1000, 1000)).file(
        "data/seed",
        0o644,
        "from the image",
    );
    let mut layers = busybox.layers.clone();
    layers.push(data.build(Compression::Gzip)?);
    let config = ImageConfig {
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
        cmd: vec!["sleep".into(), "1000".into()],
        volumes: ["/data".to_string()].into(),
        ..ImageConfig::default()
    };
    let image = Image::build(Platform::linux_amd64(), &config, layers)?;
    registry
        .client()
        .push_image("volume/busybox", "v1", &image)?;
    Ok(format!("{}/volume/busybox:v1", registry.host()))
}

#[test]
fn an_image_volume_is_a_fresh_seeded_directory_per_container() -> Result<()> {
    let (berthd, registry) = start(3)?;
    let image = push_volume_image(&registry)?;
    berthd.crictl_ok(&["pull", &image])?;
    let p = pod(&berthd, "vol", json!({}))?;
    let dir = berthd.paths().dir.clone();
    let make = |name: &str| -> Result<String> {
        let cfg = write_json(
            &dir,
            &format!("{name}-ctr.json"),
            &json!({"metadata": {"name": name}, "image": {"image": image}, "linux": {}}),
        )?;
        let id = berthd
            .crictl_ok(&["create", &p.0, s(&cfg)?, s(&p.1)?])?
            .trim()
            .to_string();
        berthd.crictl_ok(&["start", &id])?;
        Ok(id)
    };
    let a = make("a")?;
    let b = make("b")?;
    let seen = exec(
        &berthd,
        &a,
        "cat /data/seed; stat -c '%u %a' /data; grep ' /data ' /proc/mounts",
    )?;
    ensure!(seen.contains("from the image"), "{seen}");
    ensure!(seen.contains("1000 750"), "owner and mode kept: {seen}");
    ensure!(
        seen.contains(" /data "),
        "/data is a mount of its own: {seen}"
    );
    exec(&berthd, &a, "echo mine > /data/a-only")?;
    let other = exec(&berthd, &b, "ls /data")?;
    ensure!(
        other.contains("seed") && !other.contains("a-only"),
        "each container has its own volume: {other}"
    );
    let volume = berthd
        .paths()
        .state
        .join("containers")
        .join(&a)
        .join("volumes/0");
    ensure!(volume.join("a-only").exists(), "{}", volume.display());
    berthd.crictl_ok(&["rm", "-f", &a])?;
    ensure!(!volume.exists(), "the volume goes with its container");
    berthd.crictl_ok(&["rmp", "-f", &p.0])?;
    Ok(())
}
