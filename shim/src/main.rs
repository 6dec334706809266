//! berth-shim: one long-lived process per pod serving the containerd shim v2 task API.
//!
//! Only `--version` works today; the task service lands with pods and containers, and until
//! then every other invocation fails loudly rather than pretending to run anything.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-v") {
        println!("berth-shim {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!("berth-shim: the shim task service is not implemented yet");
    ExitCode::FAILURE
}
