//! What berthctl prints: aligned tables, key/value lines and JSON for the task API's messages,
//! and the parsing of signals. Pure functions, so every format is unit-tested.

use berth_proto::tasks::{ProcessInfo, Shim, Task, TaskMetrics, TaskStatus, WaitTaskResponse};
use serde_json::{Value, json};

/// Characters of an id shown without `--no-trunc` (as crictl shows them).
const SHORT_ID: usize = 13;
/// Gap between table columns.
const GAP: &str = "   ";
/// A cgroup v1 memory limit at or above this is "no limit" (the kernel reports ~2^63).
const UNLIMITED: u64 = 1 << 60;

/// Rows under a header, each column as wide as its widest cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The header and the rows, left-aligned, no trailing spaces, one line each.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let line = |cells: Vec<&str>| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    out.push_str(GAP);
                }
                out.push_str(cell);
                if i + 1 < cells.len() {
                    let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count();
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            let mut out = out.trim_end().to_string();
            out.push('\n');
            out
        };
        let mut out = line(self.header.clone());
        for row in &self.rows {
            out.push_str(&line(row.iter().map(String::as_str).collect()));
        }
        out
    }
}

/// `key: value` lines with the values aligned.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:")))
        .collect()
}

/// The one line printed for a failed command: a gRPC refusal as berthd's message and its code.
pub fn error_line(e: &anyhow::Error) -> String {
    match e.downcast_ref::<tonic::Status>() {
        Some(s) => format!("{} ({:?})", s.message(), s.code()),
        None => format!("{e:#}"),
    }
}

/// A signal by name (`SIGTERM`, `TERM`, `term`) or number. Numbers are passed on as given:
/// berthd checks their range.
pub fn parse_signal(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .and_then(|sig| u32::try_from(sig as i32).ok())
}

fn short(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        id.to_string()
    } else {
        id.chars().take(SHORT_ID).collect()
    }
}

pub fn status_name(status: i32) -> &'static str {
    match TaskStatus::try_from(status).unwrap_or(TaskStatus::Unknown) {
        TaskStatus::Unknown => "UNKNOWN",
        TaskStatus::Created => "CREATED",
        TaskStatus::Running => "RUNNING",
        TaskStatus::Stopped => "STOPPED",
        TaskStatus::Paused => "PAUSED",
    }
}

/// Bytes in binary units with one decimal (`1.5 MiB`), plain below 1 KiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn dash_if_zero(n: u64) -> String {
    if n == 0 { "-".into() } else { n.to_string() }
}

/// Unix nanoseconds as RFC 3339 UTC to the second; `-` for 0 (never).
pub fn rfc3339(ns: i64) -> String {
    if ns == 0 {
        return "-".into();
    }
    let secs = ns.div_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn exit_cell(t: &Task) -> String {
    if t.status == TaskStatus::Stopped as i32 {
        t.exit_status.to_string()
    } else {
        "-".into()
    }
}

pub fn tasks_table(tasks: &[Task], no_trunc: bool) -> Table {
    let mut table = Table::new(vec![
        "TASK", "POD", "NAME", "PID", "STATUS", "EXIT", "RUNTIME",
    ]);
    for t in tasks {
        table.row(vec![
            short(&t.id, no_trunc),
            short(&t.sandbox_id, no_trunc),
            t.name.clone(),
            dash_if_zero(u64::from(t.pid)),
            status_name(t.status).into(),
            exit_cell(t),
            t.runtime_handler.clone(),
        ]);
    }
    table
}

pub fn task_json(t: &Task) -> Value {
    json!({
        "id": t.id,
        "sandbox_id": t.sandbox_id,
        "name": t.name,
        "pid": t.pid,
        "status": status_name(t.status),
        "exit_status": t.exit_status,
        "exited_at_ns": t.exited_at_ns,
        "reason": t.reason,
        "runtime_handler": t.runtime_handler,
        "bundle": t.bundle,
        "image_ref": t.image_ref,
        "created_at_ns": t.created_at_ns,
        "started_at_ns": t.started_at_ns,
    })
}

pub fn task_details(t: &Task) -> String {
    let stopped = t.status == TaskStatus::Stopped as i32;
    let mut pairs = vec![
        ("ID", t.id.clone()),
        ("Pod", t.sandbox_id.clone()),
        ("Name", t.name.clone()),
        ("Status", status_name(t.status).to_string()),
        ("PID", dash_if_zero(u64::from(t.pid))),
        ("Runtime", t.runtime_handler.clone()),
        ("Bundle", t.bundle.clone()),
        ("Image", t.image_ref.clone()),
        ("Created", rfc3339(t.created_at_ns)),
        ("Started", rfc3339(t.started_at_ns)),
    ];
    if stopped {
        pairs.push(("Exited", rfc3339(t.exited_at_ns)));
        pairs.push(("Exit status", t.exit_status.to_string()));
        pairs.push(("Reason", t.reason.clone()));
    }
    key_values(&pairs)
}

pub fn pids_table(processes: &[ProcessInfo]) -> Table {
    let mut table = Table::new(vec!["PID", "EXEC", "COMMAND"]);
    for p in processes {
        let exec = if p.exec_id.is_empty() {
            "-".to_string()
        } else {
            p.exec_id.clone()
        };
        table.row(vec![p.pid.to_string(), exec, p.command.clone()]);
    }
    table
}

pub fn pids_json(processes: &[ProcessInfo]) -> Value {
    json!({
        "processes": processes
            .iter()
            .map(|p| json!({"pid": p.pid, "exec_id": p.exec_id, "command": p.command}))
            .collect::<Vec<_>>()
    })
}

pub fn wait_table(id: &str, exit: &WaitTaskResponse) -> Table {
    let mut table = Table::new(vec!["TASK", "EXIT STATUS", "EXITED AT"]);
    table.row(vec![
        id.to_string(),
        exit.exit_status.to_string(),
        rfc3339(exit.exited_at_ns),
    ]);
    table
}

pub fn wait_json(id: &str, exit: &WaitTaskResponse) -> Value {
    json!({"id": id, "exit_status": exit.exit_status, "exited_at_ns": exit.exited_at_ns})
}

fn limit(n: u64) -> String {
    if n == 0 || n >= UNLIMITED {
        "unlimited".into()
    } else {
        bytes(n)
    }
}

pub fn metrics_table(metrics: &[TaskMetrics]) -> Table {
    let mut table = Table::new(vec![
        "TASK",
        "CPU",
        "MEMORY",
        "WORKING SET",
        "LIMIT",
        "PIDS",
        "OOM KILLS",
    ]);
    for m in metrics {
        table.row(vec![
            short(&m.id, false),
            format!("{:.3}s", m.cpu_usage_ns as f64 / 1e9),
            bytes(m.memory_usage_bytes),
            bytes(m.memory_working_set_bytes),
            limit(m.memory_limit_bytes),
            m.pids.to_string(),
            m.oom_kills.to_string(),
        ]);
    }
    table
}

pub fn metrics_json(metrics: &[TaskMetrics]) -> Value {
    json!({
        "metrics": metrics
            .iter()
            .map(|m| json!({
                "id": m.id,
                "timestamp_ns": m.timestamp_ns,
                "cpu_usage_ns": m.cpu_usage_ns,
                "cpu_user_ns": m.cpu_user_ns,
                "cpu_kernel_ns": m.cpu_kernel_ns,
                "memory_usage_bytes": m.memory_usage_bytes,
                "memory_working_set_bytes": m.memory_working_set_bytes,
                "memory_limit_bytes": m.memory_limit_bytes,
                "memory_rss_bytes": m.memory_rss_bytes,
                "memory_cache_bytes": m.memory_cache_bytes,
                "pids": m.pids,
                "oom_kills": m.oom_kills,
            }))
            .collect::<Vec<_>>()
    })
}

fn yes_no(b: bool) -> String {
    if b { "yes".into() } else { "no".into() }
}

pub fn shims_table(shims: &[Shim], no_trunc: bool) -> Table {
    let mut table = Table::new(vec![
        "POD",
        "NAME",
        "PID",
        "ALIVE",
        "CONNECTED",
        "TASKS",
        "RSS",
        "PSS",
        "RUNTIME",
        "ADDRESS",
    ]);
    for s in shims {
        let mem = |n: u64| if s.alive { bytes(n) } else { "-".into() };
        table.row(vec![
            short(&s.sandbox_id, no_trunc),
            format!("{}/{}", s.sandbox_namespace, s.sandbox_name),
            dash_if_zero(u64::from(s.pid)),
            yes_no(s.alive),
            yes_no(s.connected),
            s.tasks.to_string(),
            mem(s.rss_bytes),
            mem(s.pss_bytes),
            s.runtime_handler.clone(),
            s.address.clone(),
        ]);
    }
    table
}

pub fn shims_json(shims: &[Shim]) -> Value {
    json!({
        "shims": shims
            .iter()
            .map(|s| json!({
                "sandbox_id": s.sandbox_id,
                "sandbox_name": s.sandbox_name,
                "sandbox_namespace": s.sandbox_namespace,
                "pid": s.pid,
                "address": s.address,
                "runtime_handler": s.runtime_handler,
                "alive": s.alive,
                "connected": s.connected,
                "tasks": s.tasks,
                "rss_bytes": s.rss_bytes,
                "pss_bytes": s.pss_bytes,
            }))
            .collect::<Vec<_>>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, status: TaskStatus, pid: u32, exit: u32) -> Task {
        Task {
            id: id.into(),
            sandbox_id: "f".repeat(64),
            name: "web".into(),
            pid,
            status: status as i32,
            exit_status: exit,
            runtime_handler: "runc".into(),
            ..Default::default()
        }
    }

    #[test]
    fn tables_align_columns_and_trim_the_last() {
        let mut t = Table::new(vec!["A", "LONGER", "C"]);
        t.row(vec!["wide cell".into(), "x".into(), "end".into()]);
        t.row(vec!["y".into(), "".into(), "".into()]);
        assert_eq!(
            t.render(),
            "A           LONGER   C\n\
             wide cell   x        end\n\
             y\n"
        );
    }

    #[test]
    fn task_rows_show_short_ids_status_and_the_exit_of_stopped_tasks() {
        let tasks = [
            task(&"a".repeat(64), TaskStatus::Running, 4242, 0),
            task(&"b".repeat(64), TaskStatus::Stopped, 0, 137),
        ];
        let out = tasks_table(&tasks, false).render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "TASK            POD             NAME   PID    STATUS    EXIT   RUNTIME"
        );
        assert_eq!(
            lines[1],
            "aaaaaaaaaaaaa   fffffffffffff   web    4242   RUNNING   -      runc"
        );
        assert_eq!(
            lines[2],
            "bbbbbbbbbbbbb   fffffffffffff   web    -      STOPPED   137    runc"
        );
        assert!(tasks_table(&tasks, true).render().contains(&"a".repeat(64)));
    }

    #[test]
    fn task_json_names_the_status() {
        let v = task_json(&task("c1", TaskStatus::Running, 7, 0));
        assert_eq!(v["status"], "RUNNING");
        assert_eq!(v["pid"], 7);
        assert_eq!(v["id"], "c1");
        assert_eq!(status_name(99), "UNKNOWN");
    }

    #[test]
    fn details_show_the_exit_only_once_stopped() {
        let running = task_details(&task("c1", TaskStatus::Running, 7, 0));
        assert!(running.contains("Status:  RUNNING\n"), "{running}");
        assert!(!running.contains("Exit status"), "{running}");
        let stopped = task_details(&task("c1", TaskStatus::Stopped, 0, 143));
        assert!(stopped.contains("Exit status: 143\n"), "{stopped}");
    }

    #[test]
    fn signals_parse_by_name_in_any_case_or_by_number() {
        assert_eq!(parse_signal("SIGKILL"), Some(9));
        assert_eq!(parse_signal("term"), Some(15));
        assert_eq!(parse_signal("Hup"), Some(1));
        assert_eq!(parse_signal("15"), Some(15));
        assert_eq!(
            parse_signal("99"),
            Some(99),
            "the range is berthd's to check"
        );
        assert_eq!(parse_signal("SIGBOGUS"), None);
        assert_eq!(parse_signal(""), None);
    }

    #[test]
    fn byte_counts_use_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(limit(u64::MAX - 4095), "unlimited");
        assert_eq!(limit(64 << 20), "64.0 MiB");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "-");
        assert_eq!(rfc3339(1), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123_456_789), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400 * 1_000_000_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn shim_rows_hide_memory_of_dead_shims() {
        let shims = [
            Shim {
                sandbox_id: "p".repeat(64),
                sandbox_name: "app".into(),
                sandbox_namespace: "default".into(),
                pid: 100,
                alive: true,
                connected: true,
                tasks: 2,
                rss_bytes: 2 << 20,
                pss_bytes: 700 << 10,
                runtime_handler: "runc".into(),
                address: "unix:///run/berth/shims/p/shim.sock".into(),
            },
            Shim {
                sandbox_id: "q".into(),
                pid: 101,
                alive: false,
                ..Default::default()
            },
        ];
        let out = shims_table(&shims, false).render();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[1].starts_with("ppppppppppppp   default/app   100   yes     yes         2       2.0 MiB   700.0 KiB   runc"), "{out}");
        assert!(lines[2].contains("   no      no   "), "{out}");
        assert!(lines[2].contains(" -  "), "{out}");
        let v = shims_json(&shims);
        assert_eq!(v["shims"][0]["pss_bytes"], 700 << 10);
        assert_eq!(v["shims"][1]["alive"], false);
    }

    #[test]
    fn refusals_print_the_message_and_code() {
        let e = anyhow::Error::new(tonic::Status::not_found("container x not found"));
        assert_eq!(error_line(&e), "container x not found (NotFound)");
        let e = anyhow::anyhow!("cannot connect to berthd at /s");
        assert_eq!(error_line(&e), "cannot connect to berthd at /s");
    }
}
