//! `premium-operator`: argument parsing and wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use premium_operator::cli::output::emit_report;
use premium_operator::cli::plugin::{GraphOutput, Output};

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
    /// Print the dependency graph of manifests, or with --cluster the live graph with each
    /// feature's phase and what blocks it.
    Graph(GraphArgs),
    /// Explain what keeps a PremiumFeature from being Ready, down to the root cause.
    Why(WhyArgs),
    /// Write docs/api.md (the API reference generated from the CRD schema) to stdout.
    ApiDocs,
    /// Print a shell completion script, e.g. `premium-operator completion bash >
    /// /etc/bash_completion.d/premium-operator`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args)]
struct GraphArgs {
    /// Files or folders of (multi-document) YAML.
    #[arg(required_unless_present = "cluster", conflicts_with = "cluster")]
    paths: Vec<PathBuf>,
    /// Read the features from the cluster of the current kubeconfig context instead.
    #[arg(long)]
    cluster: bool,
    /// With --cluster: every namespace.
    #[arg(short = 'A', long, requires = "cluster")]
    all_namespaces: bool,
    #[command(flatten)]
    target: premium_operator::cli::plugin::ClusterArgs,
    /// Output format; json and yaml need --cluster.
    #[arg(short = 'o', long = "output", visible_alias = "format", value_enum, default_value_t = GraphFormat::Text)]
    format: GraphFormat,
}

#[derive(clap::Args)]
struct WhyArgs {
    /// Name of the PremiumFeature.
    name: String,
    #[command(flatten)]
    target: premium_operator::cli::plugin::ClusterArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// `kubectl premium …`: the same binary installed as `kubectl-premium` on the PATH.
#[derive(Parser)]
#[command(
    name = "kubectl premium",
    version,
    about = "Premium features on the cluster of the current kubeconfig context"
)]
struct PluginCli {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// The live dependency graph with each feature's phase and what blocks it.
    Graph {
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[command(flatten)]
        target: premium_operator::cli::plugin::ClusterArgs,
        /// Output format.
        #[arg(short = 'o', long = "output", visible_alias = "format", value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
    /// Explain what keeps a PremiumFeature from being Ready, down to the root cause.
    Why(WhyArgs),
    /// Print a shell completion script for `kubectl-premium`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Text,
    Dot,
    Mermaid,
    Json,
    Yaml,
}

impl From<GraphFormat> for GraphOutput {
    fn from(format: GraphFormat) -> Self {
        use premium_operator::cli::graph::Format;
        match format {
            GraphFormat::Text => Self::Drawing(Format::Text),
            GraphFormat::Dot => Self::Drawing(Format::Dot),
            GraphFormat::Mermaid => Self::Drawing(Format::Mermaid),
            GraphFormat::Json => Self::Data(Output::Json),
            GraphFormat::Yaml => Self::Data(Output::Yaml),
        }
    }
}

/// Writes the completion script of `command` (named `name`) for `shell` to stdout.
fn completion(mut command: clap::Command, name: &str, shell: clap_complete::Shell) -> ExitCode {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    emit_report(&String::from_utf8_lossy(&script), ExitCode::SUCCESS)
}

/// Whether the binary was started as the kubectl plugin (`kubectl-premium`, any extension).
fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .is_some_and(|stem| stem == "kubectl-premium")
}

fn plugin_main() -> ExitCode {
    use premium_operator::cli::plugin;
    match PluginCli::parse().command {
        PluginCommand::Graph {
            all_namespaces,
            target,
            format,
        } => plugin::graph_main(&target, all_namespaces, format.into()),
        PluginCommand::Why(args) => plugin::why_main(&args.target, &args.name, args.output),
        PluginCommand::Completion { shell } => {
            completion(PluginCli::command(), "kubectl-premium", shell)
        }
    }
}

fn main() -> ExitCode {
    if invoked_as_plugin() {
        return plugin_main();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match premium_operator::cli::crd::render_crds() {
            Ok(s) => emit_report(&s, ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("error: cannot render the CRDs: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { paths } => premium_operator::cli::check::main(&paths),
        Command::Graph(args) if args.cluster => premium_operator::cli::plugin::graph_main(
            &args.target,
            args.all_namespaces,
            args.format.into(),
        ),
        Command::Graph(args) => match GraphOutput::from(args.format) {
            GraphOutput::Drawing(format) => premium_operator::cli::graph::main(&args.paths, format),
            GraphOutput::Data(_) => {
                eprintln!("error: -o json|yaml reads the live graph: add --cluster");
                ExitCode::from(2)
            }
        },
        Command::Why(args) => {
            premium_operator::cli::plugin::why_main(&args.target, &args.name, args.output)
        }
        Command::Completion { shell } => completion(Cli::command(), "premium-operator", shell),
        Command::ApiDocs => match premium_operator::cli::docs::render_api_docs() {
            Ok(s) => emit_report(&s, ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("error: cannot render the API reference: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => premium_operator::controller::main(*args, Some(trim_heap)),
    }
}

/// Hands the pages of freed heap back to the operating system (glibc keeps them for reuse
/// otherwise); the operator calls it when it goes quiet.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own arenas, under their
    // locks, and releases free pages in them.
    unsafe {
        libc::malloc_trim(0);
    }
}
