use std::process::ExitCode;

use berth_server::cli::{Cli, Command, ConfigAction};
use berth_server::config::DEFAULT_CONFIG_TOML;
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let action = cli.command.map(|Command::Config { action }| action);
    if let Some(ConfigAction::Default) = action {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    let config = match cli.flags.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(ConfigAction::Show) = action {
        return match toml::to_string(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("berthd: cannot print config: {e}");
                ExitCode::FAILURE
            }
        };
    }
    berth_server::init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(berth_server::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "berthd failed");
            eprintln!("berthd: {e}");
            ExitCode::FAILURE
        }
    }
}
