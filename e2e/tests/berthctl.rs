//! berthctl against a real berthd: a pod with a sleeping container (critest's busybox from a
//! local registry, runc through berth-shim), then every berthctl command on it, in tables and
//! JSON, checked against /proc. Runs as root; needs berthd, berth-shim and berthctl side by
//! side in the cargo target dir (or BERTHD_BIN / BERTHCTL_BIN) and the pinned crictl.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_e2e::daemon::{BUSYBOX, Berthd, BerthdOptions, berthd_with_busybox};
use berth_e2e::fixtures::{path_str as s, wait_for, write_json};
use berth_e2e::registry::Registry;
use berth_e2e::tools;
use serde_json::{Value, json};

fn start() -> Result<(Berthd, Registry)> {
    tools::berthctl()?;
    let pid = std::process::id();
    berthd_with_busybox(
        BerthdOptions::default(),
        &format!("bctl{}", pid % 100_000),
        &format!("10.225.{}.0/24", pid % 250),
    )
}

/// berthctl on `socket`, with stdin closed.
fn berthctl(socket: &Path, args: &[&str]) -> Result<Output> {
    Command::new(tools::berthctl()?)
        .arg("--address")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run berthctl {}", args.join(" ")))
}

/// berthctl that must succeed; its stdout.
fn ctl_ok(berthd: &Berthd, args: &[&str]) -> Result<String> {
    let out = berthctl(&berthd.paths().socket, args)?;
    ensure!(
        out.status.success(),
        "berthctl {} failed ({}):\nstdout: {}\nstderr: {}\nberthd log:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        berthd.log_tail()
    );
    String::from_utf8(out.stdout).context("berthctl printed non-UTF-8")
}

/// `-o json` goes first: after `--` it would belong to an exec'd command.
fn ctl_json(berthd: &Berthd, args: &[&str]) -> Result<Value> {
    let mut all = vec!["-o", "json"];
    all.extend(args);
    let out = ctl_ok(berthd, &all)?;
    serde_json::from_str(&out).with_context(|| format!("berthctl {all:?} printed {out}"))
}

/// berthctl that must fail with exit status 1 and one line on stderr; that line.
fn ctl_err(berthd: &Berthd, args: &[&str]) -> Result<String> {
    let out = berthctl(&berthd.paths().socket, args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.code() == Some(1),
        "berthctl {} should fail with 1: {out:?}",
        args.join(" ")
    );
    ensure!(stderr.trim().lines().count() == 1, "{stderr}");
    Ok(stderr)
}

/// `berthctl tasks wait ID -o json` in the background.
fn spawn_wait(berthd: &Berthd, id: &str) -> Result<Child> {
    Command::new(tools::berthctl()?)
        .arg("--address")
        .arg(&berthd.paths().socket)
        .args(["-o", "json", "tasks", "wait", id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run berthctl tasks wait")
}

fn proc_exists(pid: u64) -> bool {
    pid > 0 && Path::new("/proc").join(pid.to_string()).exists()
}

#[test]
fn berthctl_lists_inspects_signals_and_waits_for_tasks() -> Result<()> {
    let (mut berthd, _registry) = start()?;
    let dir = berthd.paths().dir.clone();
    let pod_cfg = write_json(
        &dir,
        "pod.json",
        &json!({
            "metadata": {"name": "tools", "namespace": "e2e", "uid": "uid-tools", "attempt": 1},
            "log_directory": dir.join("logs"),
            "linux": {},
        }),
    )?;
    let ctr_cfg = write_json(
        &dir,
        "ctr.json",
        &json!({
            "metadata": {"name": "sleeper"},
            "image": {"image": BUSYBOX},
            "command": ["sleep", "1000"],
            "log_path": "sleeper/0.log",
            "linux": {},
        }),
    )?;
    let pod = berthd
        .crictl_ok(&["runp", s(&pod_cfg)?])?
        .trim()
        .to_string();
    let id = berthd
        .crictl_ok(&["create", &pod, s(&ctr_cfg)?, s(&pod_cfg)?])?
        .trim()
        .to_string();
    berthd.crictl_ok(&["start", &id])?;

    // tasks ls: a table and JSON, RUNNING with a live pid.
    let table = ctl_ok(&berthd, &["tasks", "ls"])?;
    println!("berthctl tasks ls:\n{table}");
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    ensure!(
        header.split_whitespace().collect::<Vec<_>>()
            == ["TASK", "POD", "NAME", "PID", "STATUS", "EXIT", "RUNTIME"],
        "{table}"
    );
    let row = lines
        .find(|l| l.starts_with(&id[..13]))
        .with_context(|| format!("no row for {id}:\n{table}"))?;
    ensure!(
        row.contains("RUNNING") && row.contains("sleeper") && row.contains(&pod[..13]),
        "{table}"
    );
    let listed = ctl_json(&berthd, &["tasks", "ls"])?;
    let task = listed["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["id"] == id.as_str()))
        .with_context(|| format!("{id} not in {listed}"))?
        .clone();
    ensure!(task["status"] == "RUNNING", "{task}");
    ensure!(task["sandbox_id"] == pod.as_str(), "{task}");
    let pid = task["pid"].as_u64().unwrap_or(0);
    ensure!(proc_exists(pid), "pid {pid} of {task} is not in /proc");
    ensure!(task["runtime_handler"] == "runc", "{task}");
    let by_pod = ctl_json(&berthd, &["tasks", "ls", "--pod", &pod[..12]])?;
    ensure!(
        by_pod["tasks"].as_array().map(Vec::len) == Some(1),
        "{by_pod}"
    );

    // tasks get, by a prefix.
    let got = ctl_json(&berthd, &["tasks", "get", &id[..12]])?;
    ensure!(
        got["id"] == id.as_str() && got["pid"] == pid && got["name"] == "sleeper",
        "{got}"
    );
    let details = ctl_ok(&berthd, &["tasks", "get", &id])?;
    println!("berthctl tasks get:\n{details}");
    ensure!(
        details.contains("RUNNING") && details.contains(&pod),
        "{details}"
    );

    // tasks ps: the init's pid and command.
    let ps = ctl_json(&berthd, &["tasks", "ps", &id])?;
    let procs = ps["processes"].as_array().cloned().unwrap_or_default();
    ensure!(
        procs
            .iter()
            .any(|p| p["pid"] == pid && p["command"].as_str().is_some_and(|c| c.contains("sleep"))),
        "{ps}"
    );
    let ps_table = ctl_ok(&berthd, &["tasks", "ps", &id])?;
    println!("berthctl tasks ps:\n{ps_table}");
    ensure!(
        ps_table.starts_with("PID") && ps_table.contains(&pid.to_string()),
        "{ps_table}"
    );

    // tasks metrics: memory in use, one process.
    let metrics = ctl_json(&berthd, &["tasks", "metrics", &id])?;
    let m = &metrics["metrics"][0];
    ensure!(m["id"] == id.as_str(), "{metrics}");
    ensure!(
        m["memory_usage_bytes"].as_u64().unwrap_or(0) > 0,
        "{metrics}"
    );
    ensure!(m["pids"].as_u64().unwrap_or(0) >= 1, "{metrics}");
    let all = ctl_json(&berthd, &["tasks", "metrics"])?;
    ensure!(all["metrics"].as_array().map(Vec::len) == Some(1), "{all}");
    let metrics_table = ctl_ok(&berthd, &["tasks", "metrics", &id])?;
    ensure!(metrics_table.contains("WORKING SET"), "{metrics_table}");
    println!("berthctl tasks metrics:\n{metrics_table}");

    // tasks exec: output and the exit status, as berthctl's own.
    let exec = berthctl(
        &berthd.paths().socket,
        &[
            "tasks",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo hi; echo err >&2; exit 3",
        ],
    )?;
    ensure!(exec.status.code() == Some(3), "{exec:?}");
    ensure!(String::from_utf8_lossy(&exec.stdout) == "hi\n", "{exec:?}");
    ensure!(String::from_utf8_lossy(&exec.stderr) == "err\n", "{exec:?}");
    let exec_json = ctl_json(&berthd, &["tasks", "exec", &id, "--", "echo", "json"])?;
    ensure!(
        exec_json["exit_status"] == 0 && exec_json["stdout"] == "json\n",
        "{exec_json}"
    );

    // shims ls: the pod's shim, alive, connected, with its memory.
    let shims = ctl_json(&berthd, &["shims", "ls"])?;
    let shim = shims["shims"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["sandbox_id"] == pod.as_str()))
        .with_context(|| format!("no shim of {pod} in {shims}"))?;
    let shim_pid = shim["pid"].as_u64().unwrap_or(0);
    ensure!(proc_exists(shim_pid), "shim pid {shim_pid} not in /proc");
    ensure!(
        shim["alive"] == true && shim["connected"] == true && shim["tasks"] == 1,
        "{shim}"
    );
    ensure!(shim["pss_bytes"].as_u64().unwrap_or(0) > 0, "{shim}");
    println!(
        "shim: RSS {} KiB, PSS {} KiB",
        shim["rss_bytes"].as_u64().unwrap_or(0) / 1024,
        shim["pss_bytes"].as_u64().unwrap_or(0) / 1024
    );
    let shims_table = ctl_ok(&berthd, &["shims", "ls"])?;
    println!("berthctl shims ls:\n{shims_table}");
    ensure!(
        shims_table.lines().any(|l| l.starts_with(&pod[..13])
            && l.contains("e2e/tools")
            && l.contains(&shim_pid.to_string())),
        "{shims_table}"
    );

    let version = ctl_ok(&berthd, &["version"])?;
    ensure!(
        version.contains("RuntimeName:") && version.contains("berth"),
        "{version}"
    );

    // Bad input: an out-of-range signal, an unknown id.
    let err = ctl_err(&berthd, &["tasks", "kill", &id, "--signal", "99"])?;
    ensure!(
        err.contains("InvalidArgument") && err.contains("99"),
        "{err}"
    );
    let err = ctl_err(&berthd, &["tasks", "kill", &id, "--signal", "SIGNOPE"])?;
    ensure!(err.contains("SIGNOPE"), "{err}");
    let err = ctl_err(&berthd, &["tasks", "get", "nosuchtask"])?;
    ensure!(
        err.contains("NotFound") && err.contains("nosuchtask"),
        "{err}"
    );

    // A pending wait does not hold berthd's shutdown; after a restart the task is still there.
    let waiter = spawn_wait(&berthd, &id)?;
    let before = ctl_json(&berthd, &["shims", "ls"])?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(berthd.pid())?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    ensure!(
        wait_for(Duration::from_secs(15), || berthd.exited().is_some()),
        "berthd did not exit on SIGTERM with a wait pending; log:\n{}",
        berthd.log_tail()
    );
    let waited = waiter.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&waited.stderr);
    ensure!(
        waited.status.code() == Some(1) && stderr.contains("Unavailable"),
        "{waited:?}"
    );
    berthd.restart()?;
    let after = ctl_json(&berthd, &["tasks", "get", &id])?;
    ensure!(
        after["status"] == "RUNNING" && after["pid"] == pid,
        "{after}"
    );
    let shims = ctl_json(&berthd, &["shims", "ls"])?;
    ensure!(
        shims["shims"][0]["connected"] == true
            && shims["shims"][0]["pid"] == before["shims"][0]["pid"],
        "before: {before}\nafter: {shims}"
    );

    // tasks wait blocks until tasks kill; the exit is SIGKILL's.
    let waiter = spawn_wait(&berthd, &id)?;
    ctl_ok(&berthd, &["tasks", "kill", &id, "--signal", "KILL"])?;
    let waited = waiter.wait_with_output()?;
    ensure!(waited.status.success(), "{waited:?}");
    let exit: Value = serde_json::from_slice(&waited.stdout)?;
    ensure!(exit["exit_status"] == 137, "{exit}");
    ensure!(exit["exited_at_ns"].as_i64().unwrap_or(0) > 0, "{exit}");
    let again = ctl_json(&berthd, &["tasks", "wait", &id])?;
    ensure!(again["exit_status"] == 137, "{again}");
    let table = ctl_ok(&berthd, &["tasks", "wait", &id])?;
    println!("berthctl tasks wait:\n{table}");
    ensure!(table.contains("137"), "{table}");

    let stopped = ctl_json(&berthd, &["tasks", "get", &id])?;
    ensure!(
        stopped["status"] == "STOPPED" && stopped["exit_status"] == 137,
        "{stopped}"
    );
    ensure!(!proc_exists(pid), "pid {pid} still runs");

    // A stopped task cannot be signalled or exec'd into.
    let err = ctl_err(&berthd, &["tasks", "kill", &id])?;
    ensure!(err.contains("FailedPrecondition"), "{err}");
    let err = ctl_err(&berthd, &["tasks", "exec", &id, "--", "true"])?;
    ensure!(err.contains("FailedPrecondition"), "{err}");
    let ps = ctl_json(&berthd, &["tasks", "ps", &id])?;
    ensure!(
        ps["processes"].as_array().is_some_and(Vec::is_empty),
        "{ps}"
    );

    berthd.crictl_ok(&["rmp", "-f", &pod])?;
    let shims = ctl_json(&berthd, &["shims", "ls"])?;
    ensure!(
        shims["shims"].as_array().is_some_and(Vec::is_empty),
        "{shims}"
    );
    Ok(())
}

#[test]
fn berthctl_names_the_socket_when_berthd_is_not_running() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("berthd.sock");
    let out = berthctl(&socket, &["tasks", "ls"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "{out:?}");
    ensure!(
        stderr.trim().lines().count() == 1 && stderr.contains(&socket.display().to_string()),
        "{stderr}"
    );
    Ok(())
}
