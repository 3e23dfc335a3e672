//! The `resnet-train` binary: parses the command line and maps errors to exit codes.

use clap::Parser;
use resnet_train::{cli, error::Error, runtime};

fn main() -> std::process::ExitCode {
    runtime::init();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(match e {
                Error::Usage(_) => 2,
                Error::Diverged(_) => 3,
                Error::Interrupted { signal, .. } => (128 + signal).clamp(0, 255) as u8,
                _ => 1,
            })
        }
    }
}
