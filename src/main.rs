//! `premium-operator`: argument parsing and wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "premium-operator",
    version,
    about = "Runs a platform's premium features as one self-healing system"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(Box<premium_operator::controller::RunArgs>),
    /// Print the CustomResourceDefinitions (what crds/ holds).
    Crd,
    /// Validate manifests offline: schema and CEL rules, cycles, missing dependencies,
    /// infeasible budgets; prints the start-up plan. Exits 1 on any error.
    Check {
        /// Files or folders of (multi-document) YAML.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the dependency graph of manifests.
    Graph {
        /// Files or folders of (multi-document) YAML.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Text,
    Dot,
    Mermaid,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match premium_operator::cli::crd::render_crds() {
            Ok(s) => {
                print!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRDs: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { paths } => premium_operator::cli::check::main(&paths),
        Command::Graph { paths, format } => {
            let format = match format {
                GraphFormat::Text => premium_operator::cli::graph::Format::Text,
                GraphFormat::Dot => premium_operator::cli::graph::Format::Dot,
                GraphFormat::Mermaid => premium_operator::cli::graph::Format::Mermaid,
            };
            premium_operator::cli::graph::main(&paths, format)
        }
        Command::Run(args) => premium_operator::controller::main(*args),
    }
}
