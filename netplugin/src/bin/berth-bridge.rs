//! berth-bridge: berth's CNI plugin for bridge networks. See `berth_netplugin::bridge`.

use std::io::{Read, Write};
use std::process::ExitCode;

use berth_netplugin::bridge::link::NetlinkLinks;
use berth_netplugin::bridge::nat::Nft;
use berth_netplugin::bridge::{CniEnv, Plugin, PluginError, code, latest_version};

fn main() -> ExitCode {
    let env = CniEnv::from_env();
    let mut stdin = Vec::new();
    // VERSION may come without any input; every other command parses what is read.
    if env.command != "VERSION" && std::io::stdin().read_to_end(&mut stdin).is_err() {
        return print(
            &PluginError::new(code::IO, "cannot read the network config on stdin")
                .to_json(latest_version()),
            ExitCode::FAILURE,
        );
    }
    let plugin = Plugin {
        links: NetlinkLinks,
        nat: Nft,
    };
    match plugin.run(&env, &stdin) {
        Ok(Some(out)) => print(&out, ExitCode::SUCCESS),
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let version = serde_json::from_slice::<serde_json::Value>(&stdin)
                .ok()
                .and_then(|v| {
                    v.get("cniVersion")
                        .and_then(|v| v.as_str())
                        .map(String::from)
                })
                .unwrap_or_else(|| latest_version().to_string());
            print(&e.to_json(&version), ExitCode::FAILURE)
        }
    }
}

fn print(v: &serde_json::Value, code: ExitCode) -> ExitCode {
    let mut stdout = std::io::stdout();
    if writeln!(stdout, "{v}").is_err() {
        return ExitCode::FAILURE;
    }
    code
}
