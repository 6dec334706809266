//! Small edits to OCI JSON the shim makes before handing it to runc.

use serde_json::Value;

/// Raises `oomScoreAdj` of an OCI process object to `floor` when below it.
///
/// Without CAP_SYS_RESOURCE a process may not lower its oom_score_adj, and runc then fails with
/// "can't get final child's PID from pipe"; berthd clamps too, the shim does it defensively.
/// Returns whether the value changed.
pub fn clamp_oom_score_adj(process: &mut Value, floor: i64) -> bool {
    match process.get("oomScoreAdj").and_then(Value::as_i64) {
        Some(v) if v < floor => {
            process["oomScoreAdj"] = Value::from(floor);
            true
        }
        _ => false,
    }
}

/// Whether an OCI spec gives the container a new pid namespace (a `pid` entry without `path`).
pub fn has_own_pid_namespace(spec: &Value) -> bool {
    spec.pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .is_some_and(|nss| {
            nss.iter()
                .any(|ns| ns["type"] == "pid" && ns.get("path").is_none())
        })
}

/// The shim's own oom_score_adj: the lowest value its children may get.
pub fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pid_namespace_is_own_only_without_a_path() {
        assert!(has_own_pid_namespace(
            &json!({"linux": {"namespaces": [{"type": "pid"}]}})
        ));
        let joined = json!({"linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}});
        assert!(!has_own_pid_namespace(&joined));
        assert!(!has_own_pid_namespace(
            &json!({"linux": {"namespaces": [{"type": "ipc"}]}})
        ));
        assert!(!has_own_pid_namespace(&json!({})));
    }

    #[test]
    fn oom_score_adj_below_floor_is_raised() {
        let mut p = json!({"args": ["sh"], "oomScoreAdj": -998});
        assert!(clamp_oom_score_adj(&mut p, -500));
        assert_eq!(p["oomScoreAdj"], -500);
    }

    #[test]
    fn oom_score_adj_at_or_above_floor_or_absent_is_kept() {
        let mut p = json!({"oomScoreAdj": 100});
        assert!(!clamp_oom_score_adj(&mut p, 0));
        assert_eq!(p["oomScoreAdj"], 100);
        let mut p = json!({"args": ["sh"]});
        assert!(!clamp_oom_score_adj(&mut p, 0));
        assert!(p.get("oomScoreAdj").is_none());
    }
}
