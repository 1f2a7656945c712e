use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

// pull allocates small strings on every core and frees them on another;
// glibc's allocator spent ~40% of a pull on that, mimalloc a fraction.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = promptloop::cli::Cli::parse();
    // A server logs each request at info level.
    let default = match cli.verbose.saturating_add(u8::from(cli.is_server())) {
        0 => "promptloop=warn",
        1 => "promptloop=info",
        _ => "promptloop=debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("PROMPTLOOP_LOG").unwrap_or_else(|_| EnvFilter::new(default)))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(promptloop::cli::run(cli));
    // A stopped server may leave a generation running for a client that went
    // away; the embedded model cannot be interrupted, so do not wait for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
