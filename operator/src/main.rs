#![recursion_limit = "256"]

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// aenv-operator runs short-lived sandbox environments ("env instances") for AI agents on a Docker host or a
/// Kubernetes cluster, behind the AEnvironment REST API: create one with POST /env-instance, read it, list it, delete it; it is
/// removed by itself when its TTL runs out.
#[derive(Parser, Debug)]
#[command(name = "aenv-operator", version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "AENV_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: the store (embedded or Kubernetes), the reconcile loop over the engine (Docker or
    /// Kubernetes), and the REST API.
    Serve(Box<aenv_operator::Config>),
    /// Print the EnvInstance and Environment CRDs as YAML (what crds/ holds), or write one file per CRD.
    Crds {
        /// Write `<crd name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn print_crds(out_dir: Option<PathBuf>) -> Result<(), String> {
    let Some(dir) = out_dir else {
        print!("{}", aenv_operator::crds::render().map_err(|e| e.to_string())?);
        return Ok(());
    };
    for (file, yaml) in aenv_operator::crds::files().map_err(|e| e.to_string())? {
        let path = dir.join(file);
        std::fs::write(&path, yaml).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    match cli.command {
        Command::Crds { out_dir } => match print_crds(out_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("aenv-operator: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(config) => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("aenv-operator: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(aenv_operator::serve(*config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("aenv-operator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
