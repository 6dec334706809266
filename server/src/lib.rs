//! berthd: the berth daemon. It serves CRI v1 (RuntimeService, ImageService) and berth's task
//! API on one unix socket.
//!
//! Wiring lives in [`daemon`]; [`cri`] translates CRI requests; [`config`] and [`cli`] define
//! the configuration; [`node`] holds facts probed from the host at start.

pub mod apparmor;
pub mod cgroups;
pub mod cli;
pub mod config;
pub mod containers;
pub mod cri;
pub mod daemon;
pub mod deadline;
pub mod error;
pub mod images;
pub mod node;
pub mod parallel;
pub mod sandbox;
pub mod shims;
pub mod stats;
pub mod tasks;

use std::io::IsTerminal;

use config::{Config, LogFormat};

/// Installs the global tracing subscriber. `BERTH_LOG` (an env-filter directive) overrides the
/// configured level, for example `BERTH_LOG=berth_server=trace,h2=info`.
pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config.log_level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
