//! berth-bridge: berth's CNI plugin for bridge networks.
//!
//! It answers VERSION today. ADD, DEL, CHECK, STATUS and GC report a CNI error until the
//! bridge, veth, IPAM and NAT parts land, so a runtime never mistakes it for a working plugin.

use std::io::Write;
use std::process::ExitCode;

use berth_netplugin::SUPPORTED_CNI_VERSIONS;

/// CNI error code for errors specific to this plugin (the spec reserves 100 and up).
const ERR_NOT_SUPPORTED_YET: u32 = 100;
/// CNI error code for invalid environment variables.
const ERR_INVALID_ENV: u32 = 4;

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let latest = SUPPORTED_CNI_VERSIONS.last().copied().unwrap_or("1.1.0");
    let (out, code) = match command.as_str() {
        "VERSION" => (
            serde_json::json!({"cniVersion": latest, "supportedVersions": SUPPORTED_CNI_VERSIONS}),
            ExitCode::SUCCESS,
        ),
        "ADD" | "DEL" | "CHECK" | "STATUS" | "GC" => (
            cni_error(
                latest,
                ERR_NOT_SUPPORTED_YET,
                &format!("berth-bridge: {command} is not implemented yet"),
            ),
            ExitCode::FAILURE,
        ),
        "" => (
            cni_error(latest, ERR_INVALID_ENV, "CNI_COMMAND is not set"),
            ExitCode::FAILURE,
        ),
        other => (
            cni_error(
                latest,
                ERR_INVALID_ENV,
                &format!("unknown CNI_COMMAND {other:?}"),
            ),
            ExitCode::FAILURE,
        ),
    };
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "{out}").is_err() {
        return ExitCode::FAILURE;
    }
    code
}

fn cni_error(version: &str, code: u32, msg: &str) -> serde_json::Value {
    serde_json::json!({"cniVersion": version, "code": code, "msg": msg})
}
