//! `ambishare-owner`: parses the command line and hands it to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ambishare_owner::cli::run(ambishare_owner::cli::Cli::parse())
}
