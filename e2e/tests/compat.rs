//! Requests that real clients send and critest does not: kubelet 1.33+'s user namespace mode
//! NODE on every pod, and a hand-written crictl config's PID modes (a container left at POD in a
//! pod in CONTAINER mode). berth must run them with containerd's meaning. Runs as root; needs
//! berthd and berth-shim in the cargo target dir and the pinned crictl.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use berth_e2e::daemon::{BUSYBOX, Berthd, BerthdOptions, berthd_with_busybox};
use berth_e2e::fixtures::{path_str as s, write_json};
use berth_e2e::registry::Registry;
use serde_json::{Value, json};

/// CRI NamespaceMode values.
const POD: i32 = 0;
const CONTAINER: i32 = 1;
const NODE: i32 = 2;

fn start(test: u8) -> Result<(Berthd, Registry)> {
    let pid = std::process::id();
    berthd_with_busybox(
        BerthdOptions::default(),
        &format!("bk{}t{test}", pid % 100_000),
        &format!("10.{}.{}.0/24", 230 + test, pid % 250),
    )
}

/// A pod config with the given namespace options, as kubelet or a crictl user writes it.
fn pod_config(dir: &Path, name: &str, namespace_options: Value) -> Result<PathBuf> {
    write_json(
        dir,
        &format!("{name}-pod.json"),
        &json!({
            "metadata": {"name": name, "namespace": "compat", "uid": format!("uid-{name}"), "attempt": 1},
            "log_directory": dir.join("logs").join(name),
            "linux": {"security_context": {"namespace_options": namespace_options}},
        }),
    )
}

fn container_config(
    dir: &Path,
    name: &str,
    command: &[&str],
    namespace_options: Value,
) -> Result<PathBuf> {
    write_json(
        dir,
        &format!("{name}-ctr.json"),
        &json!({
            "metadata": {"name": name},
            "image": {"image": BUSYBOX},
            "command": command,
            "log_path": format!("{name}/0.log"),
            "linux": {"security_context": {"namespace_options": namespace_options}},
        }),
    )
}

/// crictl's failure text (its stderr carries berthd's gRPC status).
fn crictl_err(berthd: &Berthd, args: &[&str]) -> Result<String> {
    let out = berthd.crictl(args)?;
    ensure!(
        !out.status.success(),
        "crictl {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn kubelet_pods_with_user_namespace_mode_node_run_and_mode_pod_is_refused() -> Result<()> {
    let (berthd, _registry) = start(1)?;
    let dir = berthd.paths().dir.clone();
    // What kubelet 1.34 sends for a pod without hostUsers: false.
    let userns_node = json!({"pid": CONTAINER, "userns_options": {"mode": NODE}});
    let pod_cfg = pod_config(&dir, "kubelet", userns_node.clone())?;
    let pod = berthd
        .crictl_ok(&["runp", s(&pod_cfg)?])?
        .trim()
        .to_string();
    let ctr_cfg = container_config(&dir, "app", &["sleep", "1000"], userns_node)?;
    let ctr = berthd.run_container(&pod, &ctr_cfg, &pod_cfg)?;
    let state = berthd.crictl_json(&["inspect", &ctr])?;
    ensure!(state["status"]["state"] == "CONTAINER_RUNNING", "{state}");
    // The host's user namespace: the container's root is the host's root.
    let pid = state["info"]["pid"].as_u64().context("no pid")?;
    ensure!(
        std::fs::read_link(format!("/proc/{pid}/ns/user"))?
            == std::fs::read_link("/proc/self/ns/user")?,
        "the container is not in the host's user namespace"
    );
    let uid_map = berthd.crictl_ok(&["exec", "-s", &ctr, "cat", "/proc/self/uid_map"])?;
    ensure!(
        uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"],
        "{uid_map}"
    );

    // hostUsers: false asks for a user namespace of the pod's: refused with the pod's name,
    // leaving nothing behind.
    let userns_pod = json!({"userns_options": {"mode": POD}});
    let own_cfg = pod_config(&dir, "ownusers", userns_pod.clone())?;
    let err = crictl_err(&berthd, &["runp", s(&own_cfg)?])?;
    ensure!(
        err.contains("FailedPrecondition") && err.contains("compat/ownusers"),
        "{err}"
    );
    let pods = berthd.crictl_ok(&["pods", "-q"])?;
    ensure!(pods.trim() == pod, "pods after the refusal: {pods}");
    let ctr_cfg = container_config(&dir, "own", &["true"], userns_pod)?;
    let err = crictl_err(&berthd, &["create", &pod, s(&ctr_cfg)?, s(&pod_cfg)?])?;
    ensure!(
        err.contains("FailedPrecondition") && err.contains("hostUsers: false"),
        "{err}"
    );

    // So kubelet refuses such pods at admission: no handler claims user namespaces.
    let info = berthd.crictl_json(&["info"])?;
    let handlers = info["runtimeHandlers"]
        .as_array()
        .with_context(|| format!("no runtimeHandlers in crictl info: {info}"))?;
    ensure!(!handlers.is_empty(), "{info}");
    for h in handlers {
        ensure!(
            h["features"]["user_namespaces"] != true,
            "handler claims user namespaces: {h}"
        );
    }
    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    Ok(())
}

#[test]
fn pod_mode_containers_in_a_container_mode_pod_share_the_pods_own_pid_namespace() -> Result<()> {
    let (berthd, _registry) = start(2)?;
    let dir = berthd.paths().dir.clone();
    let pod_cfg = pod_config(&dir, "pidmodes", json!({"pid": CONTAINER}))?;
    let pod = berthd
        .crictl_ok(&["runp", s(&pod_cfg)?])?
        .trim()
        .to_string();

    // Containers left at the proto default, PID mode POD, as hand-written configs are.
    let a_cfg = container_config(&dir, "a", &["sleep", "1001"], json!({"pid": POD}))?;
    let a = berthd.run_container(&pod, &a_cfg, &pod_cfg)?;
    let b_cfg = container_config(&dir, "b", &["sleep", "1002"], json!({}))?;
    let b = berthd.run_container(&pod, &b_cfg, &pod_cfg)?;
    // As under containerd's pause: pid 1 is the pod's holder, and the two see each other.
    let init = berthd.crictl_ok(&["exec", "-s", &a, "cat", "/proc/1/comm"])?;
    ensure!(init.trim() == "berth-pidns", "pid 1 is {init:?}");
    let ps = berthd.crictl_ok(&["exec", "-s", &b, "ps", "-o", "args"])?;
    ensure!(
        ps.contains("sleep 1001") && ps.contains("sleep 1002"),
        "{ps}"
    );

    // A CONTAINER-mode container there (kubelet's default) is its own pid 1, alone.
    let c_cfg = container_config(&dir, "c", &["sleep", "1003"], json!({"pid": CONTAINER}))?;
    let c = berthd.run_container(&pod, &c_cfg, &pod_cfg)?;
    let init = berthd.crictl_ok(&["exec", "-s", &c, "cat", "/proc/1/cmdline"])?;
    ensure!(init.starts_with("sleep\u{0}1003"), "pid 1 is {init:?}");
    let ps = berthd.crictl_ok(&["exec", "-s", &c, "ps", "-o", "args"])?;
    ensure!(!ps.contains("sleep 1001"), "{ps}");
    berthd.crictl_ok(&["rmp", "-f", &pod])?;

    // In a host-PID pod a POD-mode container is on the host's PID namespace, as containerd's.
    let host_cfg = pod_config(&dir, "hostpid", json!({"pid": NODE}))?;
    let host_pod = berthd
        .crictl_ok(&["runp", s(&host_cfg)?])?
        .trim()
        .to_string();
    let h_cfg = container_config(&dir, "h", &["sleep", "1004"], json!({"pid": POD}))?;
    let h = berthd.run_container(&host_pod, &h_cfg, &host_cfg)?;
    let pid = berthd.crictl_json(&["inspect", &h])?["info"]["pid"]
        .as_u64()
        .context("no pid")?;
    ensure!(
        std::fs::read_link(format!("/proc/{pid}/ns/pid"))?
            == std::fs::read_link("/proc/self/ns/pid")?,
        "the container is not on the host's PID namespace"
    );
    berthd.crictl_ok(&["rmp", "-f", &host_pod])?;
    Ok(())
}

#[test]
fn a_log_path_without_a_pod_log_directory_runs_without_a_log_file() -> Result<()> {
    let (berthd, _registry) = start(3)?;
    let dir = berthd.paths().dir.clone();
    let pod_cfg = write_json(
        &dir,
        "nologs-pod.json",
        &json!({
            "metadata": {"name": "nologs", "namespace": "compat", "uid": "uid-nologs", "attempt": 1},
            "linux": {},
        }),
    )?;
    let pod = berthd
        .crictl_ok(&["runp", s(&pod_cfg)?])?
        .trim()
        .to_string();
    let ctr_cfg = container_config(
        &dir,
        "quiet",
        &["sh", "-c", "echo hi; sleep 1000"],
        json!({}),
    )?;
    let ctr = berthd.run_container(&pod, &ctr_cfg, &pod_cfg)?;
    let state = berthd.crictl_json(&["inspect", &ctr])?;
    ensure!(state["status"]["state"] == "CONTAINER_RUNNING", "{state}");
    ensure!(state["status"]["logPath"] == "", "{state}");
    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    Ok(())
}
