//! `ambishare-client`: parses the command line and hands it to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ambishare_client::cli::run(ambishare_client::cli::Cli::parse())
}
