use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = promptloop::cli::Cli::parse();
    let default = match cli.verbose {
        0 => "promptloop=warn",
        1 => "promptloop=info",
        _ => "promptloop=debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("PROMPTLOOP_LOG").unwrap_or_else(|_| EnvFilter::new(default)))
        .with_writer(std::io::stderr)
        .init();
    match promptloop::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
