//! `mpm-operator`: the operator binary and its SRE tools.

use clap::{Parser, Subcommand};

use mpm_operator::cli::acl_graph::{run_graph, AclGraphArgs};
use mpm_operator::cli::netpol::{run_matrix, NetpolMatrixArgs};
use mpm_operator::run::{run, RunArgs};

#[derive(Parser, Debug)]
#[command(name = "mpm-operator", version, about = "Kubernetes operator for meter park management")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator (controllers for DeviceHub, ServiceACL and Meter).
    Run(RunArgs),
    /// Print every CustomResourceDefinition as YAML (what crds/ holds).
    Crds,
    /// NetworkPolicy tools.
    Netpol {
        #[command(subcommand)]
        command: NetpolCommand,
    },
    /// ServiceACL tools.
    Acl {
        #[command(subcommand)]
        command: AclCommand,
    },
}

#[derive(Subcommand, Debug)]
enum NetpolCommand {
    /// Reachability matrix of the workloads and NetworkPolicies in YAML/JSON files.
    Matrix(NetpolMatrixArgs),
}

#[derive(Subcommand, Debug)]
enum AclCommand {
    /// A hub's ACL as a Graphviz DOT or Mermaid graph, denied edges marked.
    Graph(AclGraphArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            mpm_operator::telemetry::init_json_logs();
            match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt.block_on(run(args)),
                Err(e) => Err(e.into()),
            }
        }
        Command::Crds => mpm_operator::crd::to_yaml()
            .map(|y| print!("{y}"))
            .map_err(Into::into),
        Command::Netpol {
            command: NetpolCommand::Matrix(args),
        } => run_matrix(&args).map(|out| print!("{out}")),
        Command::Acl {
            command: AclCommand::Graph(args),
        } => run_graph(&args).map(|out| print!("{out}")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
