//! `mpm-operator`: the operator binary and its SRE tools.

use clap::{Parser, Subcommand};

use mpm_operator::cli::acl_graph::{run_graph, AclGraphArgs};
use mpm_operator::cli::explain::{run_crd_reference, run_explain, CrdReferenceArgs, ExplainArgs};
use mpm_operator::cli::netpol::{run_matrix, NetpolMatrixArgs};
use mpm_operator::cli::status::{run_acl_matrix, run_status, AclMatrixArgs, StatusArgs};
use mpm_operator::run::{run, RunArgs};

#[derive(Parser, Debug)]
#[command(
    name = "mpm-operator",
    version,
    about = "Kubernetes operator for meter park management"
)]
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
    /// Hubs, services, readiness and certificate expiry, read from the cluster.
    Status(StatusArgs),
    /// Why a call between two services of a hub is allowed or denied (ACL rule, mTLS identity,
    /// NetworkPolicies), read from the cluster.
    Explain(ExplainArgs),
    /// Documentation generators.
    Docs {
        #[command(subcommand)]
        command: DocsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum DocsCommand {
    /// Markdown reference of every CRD field, generated from the schemas (docs/crd-reference.md).
    CrdReference(CrdReferenceArgs),
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
    /// Effective reachability matrix and violations from the ServiceACLs' status (cluster), or
    /// the hubs' ACL graphs with --dot/--mermaid.
    Matrix(AclMatrixArgs),
}

/// Runs a cluster-reading command on a small runtime.
fn block_on<F: std::future::Future<Output = anyhow::Result<String>>>(f: F) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(f).map(|out| print!("{out}"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            mpm_operator::telemetry::init_json_logs();
            match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
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
        Command::Acl {
            command: AclCommand::Matrix(args),
        } => block_on(run_acl_matrix(&args)),
        Command::Status(args) => block_on(run_status(&args)),
        Command::Explain(args) => block_on(run_explain(&args)),
        Command::Docs {
            command: DocsCommand::CrdReference(args),
        } => run_crd_reference(&args).map(|out| print!("{out}")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
