//! The `herald-tui` binary: flags, an optional log file, then the dashboard.

use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use clap::Parser;

use herald_tui::config::Config;

/// `EX_USAGE`: the flags or environment are wrong.
const EXIT_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let config = Config::parse();
    let problems = config.problems();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("herald-tui: {p}");
        }
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    init_logging(&config)?;
    herald_tui::run(config).await?;
    Ok(ExitCode::SUCCESS)
}

/// Logs go to the file named by `--log-file`, or nowhere: the terminal belongs
/// to the dashboard.
fn init_logging(config: &Config) -> anyhow::Result<()> {
    let Some(path) = &config.log_file else {
        return Ok(());
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open log file {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .with_context(|| format!("bad log filter {:?}", config.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .init();
    Ok(())
}
