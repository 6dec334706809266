//! Container and pod stats through crictl (`stats`, `statsp`) against a real berthd: a container
//! that burns CPU, holds memory in the pod's /dev/shm and writes to its rootfs; the numbers come
//! back from its cgroup, its writable layer and the pod's network namespace. Runs as root.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_e2e::daemon::{BUSYBOX, Berthd, BerthdOptions, berthd_with_busybox};
use berth_e2e::fixtures::{path_str as s, wait_for, write_json};
use berth_e2e::registry::Registry;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

fn start() -> Result<(Berthd, Registry)> {
    let pid = std::process::id();
    berthd_with_busybox(
        BerthdOptions::default(),
        &format!("bst{}", pid % 100_000),
        &format!("10.227.{}.0/24", pid % 250),
    )
}

fn json_of(berthd: &Berthd, args: &[&str]) -> Result<Value> {
    let out = berthd.crictl_ok(args)?;
    serde_json::from_str(&out).with_context(|| format!("crictl {args:?} printed {out}"))
}

/// A UInt64Value as crictl prints it (`{"value": "123"}`, the number as a string).
fn num(v: &Value) -> u64 {
    match &v["value"] {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn container_stats(berthd: &Berthd, id: &str) -> Result<Value> {
    let all = json_of(berthd, &["stats", "-o", "json", "--id", id])?;
    let list = all["stats"].as_array().cloned().unwrap_or_default();
    ensure!(list.len() == 1, "one container asked for: {all}");
    Ok(list[0].clone())
}

#[test]
fn stats_report_cpu_memory_disk_and_network_of_containers_and_pods() -> Result<()> {
    let (berthd, _registry) = start()?;
    let dir = berthd.paths().dir.clone();
    let pod_cfg = write_json(
        &dir,
        "pod.json",
        &json!({
            "metadata": {"name": "busy", "namespace": "e2e", "uid": "uid-busy", "attempt": 1},
            "labels": {"team": "stats"},
            "log_directory": dir.join("logs"),
            "linux": {},
        }),
    )?;
    let pod = berthd
        .crictl_ok(&["runp", s(&pod_cfg)?])?
        .trim()
        .to_string();
    let ctr_cfg = write_json(
        &dir,
        "ctr.json",
        &json!({
            "metadata": {"name": "burner"},
            "image": {"image": BUSYBOX},
            "command": ["/bin/sh", "-c",
                "head -c 24m /dev/zero > /dev/shm/held && \
                 head -c 6m /dev/zero > /written && touch /ready && \
                 while :; do :; done"],
            "labels": {"role": "burner"},
            "log_path": "burner.log",
            "linux": {"resources": {"memory_limit_in_bytes": 256 * MIB}},
        }),
    )?;
    let ctr = berthd
        .crictl_ok(&["create", &pod, s(&ctr_cfg)?, s(&pod_cfg)?])?
        .trim()
        .to_string();
    berthd.crictl_ok(&["start", &ctr])?;
    ensure!(
        wait_for(Duration::from_secs(10), || berthd
            .crictl_ok(&["exec", "-s", &ctr, "test", "-e", "/ready"])
            .is_ok()),
        "the container never got ready"
    );

    let first = container_stats(&berthd, &ctr)?;
    ensure!(first["attributes"]["id"] == ctr.as_str(), "{first}");
    ensure!(
        first["attributes"]["metadata"]["name"] == "burner"
            && first["attributes"]["labels"]["role"] == "burner",
        "{first}"
    );
    ensure!(num(&first["cpu"]["usageCoreNanoSeconds"]) > 0, "{first}");
    let working_set = num(&first["memory"]["workingSetBytes"]);
    ensure!(
        (24 * MIB..256 * MIB).contains(&working_set),
        "the 24 MiB held in /dev/shm is in the working set: {first}"
    );
    let available = num(&first["memory"]["availableBytes"]);
    ensure!(
        available > 0 && available + working_set == 256 * MIB,
        "available = limit - working set: {first}"
    );
    let layer = num(&first["writableLayer"]["usedBytes"]);
    ensure!(
        (6 * MIB..64 * MIB).contains(&layer),
        "the 6 MiB file is in the writable layer: {first}"
    );
    ensure!(num(&first["writableLayer"]["inodesUsed"]) >= 2, "{first}");
    ensure!(
        first["writableLayer"]["fsId"]["mountpoint"]
            .as_str()
            .is_some_and(|m| m.ends_with("/snapshots")),
        "{first}"
    );

    // A second reading gives the rate since the first: the loop keeps most of a core busy.
    std::thread::sleep(Duration::from_millis(500));
    let second = container_stats(&berthd, &ctr)?;
    let nano_cores = num(&second["cpu"]["usageNanoCores"]);
    ensure!(
        nano_cores > 100_000_000,
        "a busy loop uses more than a tenth of a core: {second}"
    );
    ensure!(
        num(&second["cpu"]["usageCoreNanoSeconds"]) > num(&first["cpu"]["usageCoreNanoSeconds"]),
        "{second}"
    );

    // Filters: by pod and label; a label no container has gives nothing.
    let by_label = json_of(
        &berthd,
        &[
            "stats",
            "-o",
            "json",
            "--label",
            "role=burner",
            "--pod",
            &pod,
        ],
    )?;
    ensure!(
        by_label["stats"].as_array().map(Vec::len) == Some(1),
        "{by_label}"
    );
    let none = json_of(&berthd, &["stats", "-o", "json", "--label", "role=other"])?;
    ensure!(none["stats"].as_array().is_none_or(Vec::is_empty), "{none}");

    // The pod: its cgroup, its processes, its network namespace.
    let pods = json_of(&berthd, &["statsp", "-o", "json", "--id", &pod])?;
    let list = pods["stats"].as_array().cloned().unwrap_or_default();
    ensure!(list.len() == 1, "{pods}");
    let p = &list[0];
    ensure!(
        p["attributes"]["id"] == pod.as_str() && p["attributes"]["labels"]["team"] == "stats",
        "{p}"
    );
    let linux = &p["linux"];
    ensure!(num(&linux["cpu"]["usageCoreNanoSeconds"]) > 0, "{p}");
    ensure!(
        num(&linux["memory"]["workingSetBytes"]) >= 24 * MIB,
        "the pod's cgroup holds its container's memory: {p}"
    );
    ensure!(num(&linux["process"]["processCount"]) >= 1, "{p}");
    ensure!(
        linux["network"]["defaultInterface"]["name"] == "eth0",
        "the pod's eth0 is its default interface: {p}"
    );
    let containers = linux["containers"].as_array().cloned().unwrap_or_default();
    ensure!(
        containers.len() == 1 && containers[0]["attributes"]["id"] == ctr.as_str(),
        "{p}"
    );

    // A stopped container still reports its writable layer, but no CPU or memory.
    berthd.crictl_ok(&["stop", "-t", "0", &ctr])?;
    let stopped = container_stats(&berthd, &ctr)?;
    ensure!(
        stopped["cpu"].is_null() && stopped["memory"].is_null(),
        "{stopped}"
    );
    ensure!(
        num(&stopped["writableLayer"]["usedBytes"]) >= 6 * MIB,
        "{stopped}"
    );

    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    let after = json_of(&berthd, &["stats", "-o", "json"])?;
    ensure!(
        after["stats"].as_array().is_none_or(Vec::is_empty),
        "{after}"
    );
    Ok(())
}
