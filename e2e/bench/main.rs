//! `mpm-bench`: benchmarks of the mpm-operator issues against the cluster in `KUBECONFIG`. Each
//! subcommand prints a table (figure, target, PASS/MISS); nothing asserts.
//!
//! ```text
//! cargo run --release -p mpm-e2e --bin mpm-bench -- <hubs|meters [--count N]|renewals [--count N]|netpol|services|all>
//! ```

mod common;
mod hubs;
mod meters;
mod netpol;
mod renewals;
mod services;

use anyhow::{bail, Context as _};
use common::{print_table, Row};

const USAGE: &str = "usage: mpm-bench <hubs | meters [--count N] | renewals [--count N] | netpol | services | all [--meters N] [--renewals N]>";

fn flag(args: &[String], name: &str, default: usize) -> anyhow::Result<usize> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .context(USAGE)?
            .parse()
            .with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(sub) = args.first().cloned() else {
        bail!(USAGE)
    };
    let rest = &args[1..];
    match sub.as_str() {
        "netpol" => print_table("netpol (issue 5)", &netpol::run()?),
        "hubs" => print_table(
            "hubs (issue 3)",
            &hubs::run(&mpm_e2e::client().await?).await?,
        ),
        "meters" => {
            let count = flag(rest, "--count", 10_000)?;
            print_table(
                "meters (issue 7)",
                &meters::run(&mpm_e2e::client().await?, count).await?,
            );
        }
        "renewals" => {
            let count = flag(rest, "--count", 1_000)?;
            print_table(
                "renewals (issue 4)",
                &renewals::run(&mpm_e2e::client().await?, count).await?,
            );
        }
        "services" => print_table(
            "services (issue 6)",
            &services::run(&mpm_e2e::client().await?).await?,
        ),
        "all" => {
            let client = mpm_e2e::client().await?;
            let meters = flag(rest, "--meters", 10_000)?;
            let renewals = flag(rest, "--renewals", 1_000)?;
            let mut all: Vec<Row> = Vec::new();
            let sections: [(&str, anyhow::Result<Vec<Row>>); 5] = [
                ("netpol (issue 5)", netpol::run()),
                ("hubs (issue 3)", hubs::run(&client).await),
                ("renewals (issue 4)", renewals::run(&client, renewals).await),
                ("services (issue 6)", services::run(&client).await),
                ("meters (issue 7)", meters::run(&client, meters).await),
            ];
            for (title, result) in sections {
                match result {
                    Ok(rows) => {
                        print_table(title, &rows);
                        all.extend(rows);
                    }
                    Err(e) => {
                        let row = Row::new(title, format!("FAILED: {e:#}"), "-", Some(false));
                        print_table(title, std::slice::from_ref(&row));
                        all.push(row);
                    }
                }
            }
            all.retain(|r| {
                r.pass.is_some() || r.bench.ends_with("p95 (20 hubs)") || r.bench.contains("NOTE")
            });
            print_table("summary", &all);
        }
        _ => bail!(USAGE),
    }
    Ok(())
}
