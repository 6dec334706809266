//! berthctl: berth's command line for what runs below the CRI. It speaks berthd's task API
//! (`berth.tasks.v1`, see `proto/berth/tasks/v1/tasks.proto`) and, for `version`, the CRI, on
//! berthd's unix socket. Every command prints an aligned table (or key/value lines for one
//! object) and, with `-o json`, JSON instead.
//!
//! Exit status: 0 on success; 1 with one line on stderr when berthd is unreachable or refuses
//! the request; `tasks exec` (table output) exits with the exec'd command's status.

mod client;
mod output;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use berth_proto::cri::VersionRequest;
use berth_proto::cri::runtime_service_client::RuntimeServiceClient;
use berth_proto::tasks::tasks_client::TasksClient;
use berth_proto::tasks::{
    ExecProcessRequest, GetTaskRequest, KillTaskRequest, ListPidsRequest, ListShimsRequest,
    ListTasksRequest, MetricsRequest, WaitTaskRequest,
};
use clap::{Parser, Subcommand, ValueEnum};
use tonic::transport::Channel;

/// berthd's default socket (its `--socket`).
const DEFAULT_ADDRESS: &str = "/run/berth/berthd.sock";

#[derive(Parser)]
#[command(
    name = "berthctl",
    version,
    about = "Inspect and act on berth's tasks (containers' processes) and per-pod shims"
)]
struct Cli {
    /// berthd's socket: a path or a unix:// URL.
    #[arg(long, global = true, env = "BERTH_ADDRESS", default_value = DEFAULT_ADDRESS)]
    address: String,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Tasks: the containers' init processes and what runs in them.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// The per-pod shims.
    #[command(subcommand)]
    Shims(ShimsCommand),
    /// berthd's version (CRI Version).
    Version,
}

#[derive(Subcommand)]
enum TasksCommand {
    /// Lists tasks.
    #[command(alias = "list")]
    Ls {
        /// Only the tasks of this pod (id or unique prefix).
        #[arg(long)]
        pod: Option<String>,
        /// Show full ids.
        #[arg(long)]
        no_trunc: bool,
    },
    /// Shows one task.
    Get { id: String },
    /// Signals a task's init process (or all its processes, or one exec process).
    Kill {
        id: String,
        /// A signal name (SIGKILL, KILL) or number.
        #[arg(short, long, default_value = "SIGTERM")]
        signal: String,
        /// Every process of the task, not just its init.
        #[arg(short, long)]
        all: bool,
        /// The exec process to signal instead of the init.
        #[arg(long)]
        exec_id: Option<String>,
    },
    /// Lists a task's processes.
    Ps { id: String },
    /// Runs a command in a running task to completion and prints its output.
    Exec {
        id: String,
        /// Seconds before the command is killed (0: none).
        #[arg(long, default_value_t = 0)]
        timeout: u32,
        /// The command and its arguments, after `--`.
        #[arg(required = true, last = true)]
        cmd: Vec<String>,
    },
    /// Waits for a task (or an exec process) to exit and prints its exit status.
    Wait {
        id: String,
        #[arg(long)]
        exec_id: Option<String>,
    },
    /// Shows cgroup usage of running tasks (all of them when no id is given).
    Metrics { ids: Vec<String> },
}

#[derive(Subcommand)]
enum ShimsCommand {
    /// Lists the shims of ready pods.
    #[command(alias = "list")]
    Ls {
        /// Show full ids.
        #[arg(long)]
        no_trunc: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthctl: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berthctl: {}", output::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Prints `text` on stdout; a closed pipe (`| head`) is not an error.
fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    print(&format!("{}\n", serde_json::to_string_pretty(value)?))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let channel = client::connect(&cli.address).await?;
    let json = cli.output == Format::Json;
    match cli.command {
        Command::Version => version(channel, json).await?,
        Command::Shims(ShimsCommand::Ls { no_trunc }) => {
            let shims = TasksClient::new(channel)
                .list_shims(ListShimsRequest {})
                .await?
                .into_inner()
                .shims;
            if json {
                print_json(&output::shims_json(&shims))?;
            } else {
                print(&output::shims_table(&shims, no_trunc).render())?;
            }
        }
        Command::Tasks(cmd) => return tasks(TasksClient::new(channel), cmd, json).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn version(channel: Channel, json: bool) -> Result<()> {
    let v = RuntimeServiceClient::new(channel)
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await?
        .into_inner();
    if json {
        print_json(&serde_json::json!({
            "client_version": env!("CARGO_PKG_VERSION"),
            "version": v.version,
            "runtime_name": v.runtime_name,
            "runtime_version": v.runtime_version,
            "runtime_api_version": v.runtime_api_version,
        }))
    } else {
        print(&output::key_values(&[
            ("Client", format!("berthctl {}", env!("CARGO_PKG_VERSION"))),
            ("Version", v.version),
            ("RuntimeName", v.runtime_name),
            ("RuntimeVersion", v.runtime_version),
            ("RuntimeApiVersion", v.runtime_api_version),
        ]))
    }
}

async fn tasks(
    mut client: TasksClient<Channel>,
    cmd: TasksCommand,
    json: bool,
) -> Result<ExitCode> {
    match cmd {
        TasksCommand::Ls { pod, no_trunc } => {
            let tasks = client
                .list(ListTasksRequest {
                    sandbox_id: pod.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .tasks;
            if json {
                print_json(&serde_json::json!({
                    "tasks": tasks.iter().map(output::task_json).collect::<Vec<_>>()
                }))?;
            } else {
                print(&output::tasks_table(&tasks, no_trunc).render())?;
            }
        }
        TasksCommand::Get { id } => {
            let task = client
                .get(GetTaskRequest { id: id.clone() })
                .await?
                .into_inner()
                .task
                .with_context(|| format!("berthd returned no task for {id}"))?;
            if json {
                print_json(&output::task_json(&task))?;
            } else {
                print(&output::task_details(&task))?;
            }
        }
        TasksCommand::Kill {
            id,
            signal,
            all,
            exec_id,
        } => {
            let Some(signal) = output::parse_signal(&signal) else {
                bail!(
                    "invalid signal {signal:?}: give a name such as SIGTERM or KILL, or a number"
                );
            };
            client
                .kill(KillTaskRequest {
                    id,
                    exec_id: exec_id.unwrap_or_default(),
                    signal,
                    all,
                })
                .await?;
        }
        TasksCommand::Ps { id } => {
            let processes = client
                .list_pids(ListPidsRequest { id })
                .await?
                .into_inner()
                .processes;
            if json {
                print_json(&output::pids_json(&processes))?;
            } else {
                print(&output::pids_table(&processes).render())?;
            }
        }
        TasksCommand::Exec { id, timeout, cmd } => {
            let out = client
                .exec(ExecProcessRequest {
                    id,
                    args: cmd,
                    timeout_seconds: timeout,
                })
                .await?
                .into_inner();
            if json {
                print_json(&serde_json::json!({
                    "exit_status": out.exit_status,
                    "stdout": String::from_utf8_lossy(&out.stdout),
                    "stderr": String::from_utf8_lossy(&out.stderr),
                }))?;
            } else {
                std::io::stdout().write_all(&out.stdout)?;
                std::io::stderr().write_all(&out.stderr)?;
                return Ok(ExitCode::from(
                    u8::try_from(out.exit_status.clamp(0, 255)).unwrap_or(u8::MAX),
                ));
            }
        }
        TasksCommand::Wait { id, exec_id } => {
            let exit = client
                .wait(WaitTaskRequest {
                    id: id.clone(),
                    exec_id: exec_id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if json {
                print_json(&output::wait_json(&id, &exit))?;
            } else {
                print(&output::wait_table(&id, &exit).render())?;
            }
        }
        TasksCommand::Metrics { ids } => {
            let metrics = client
                .metrics(MetricsRequest { ids })
                .await?
                .into_inner()
                .metrics;
            if json {
                print_json(&output::metrics_json(&metrics))?;
            } else {
                print(&output::metrics_table(&metrics).render())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
