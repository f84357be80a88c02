//! The `layerlens` command line: a thin layer over the `layerlens` library,
//! one module per command under `commands/`.

mod commands;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use commands::{cam, demo, explore, extract, report, show, summary, train};

#[derive(Parser)]
#[command(
    name = "layerlens",
    version,
    about = "Every intermediate layer of a CNN as a first-class output"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Demo(demo::Args),
    Summary(summary::Args),
    Train(train::Args),
    Show(show::Args),
    Cam(cam::Args),
    Report(report::Args),
    Explore(explore::Args),
    Extract(extract::Args),
}

/// The version line: the crate version and the kernels' instruction-set path
/// (what `LAYERLENS_ISA` chose, or the best the CPU has).
fn version() -> String {
    use layerlens::kernels::isa::{self, Isa};
    format!(
        "{} (kernels: {}; CPU supports: {})",
        env!("CARGO_PKG_VERSION"),
        isa::process_isa(),
        Isa::supported()
            .iter()
            .map(|i| i.name())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn main() {
    // A kernel path the CPU lacks (or a typo) is refused before anything runs.
    if let Err(e) = layerlens::kernels::isa::Isa::from_env() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    // clap takes a 'static version string; this one is built once per process.
    let version: &'static str = Box::leak(version().into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let r = match &cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Summary(a) => summary::run(a),
        Command::Train(a) => train::run(a),
        Command::Show(a) => show::run(a),
        Command::Cam(a) => cam::run(a),
        Command::Report(a) => report::run(a),
        Command::Explore(a) => explore::run(a),
        Command::Extract(a) => extract::run(a),
    };
    if let Err(e) = r {
        // One line, the whole chain of causes.
        eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}
