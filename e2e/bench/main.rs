//! `mpm-bench`: benchmarks of the mpm-operator issues against the cluster in `KUBECONFIG`. Each
//! subcommand prints a table (figure, target, PASS/MISS); nothing asserts.
//!
//! ```text
//! cargo run --release -p mpm-e2e --bin mpm-bench -- <hubs|meters [--count N]|renewals [--count N]|netpol|tls|services|all>
//! ```
//!
//! `netpol` and `tls` run in-process and need no cluster; `services` runs `tls` and adds the pods'
//! idle memory when a cluster is reachable.

mod common;
mod hubs;
mod meters;
mod netpol;
mod pause;
mod renewals;
mod services;
mod tls;

use anyhow::{bail, Context as _};
use common::{print_table, Row};

const USAGE: &str = "usage: mpm-bench <hubs | meters [--count N] | renewals [--count N] | netpol | tls [--seconds N] [--rounds N] [--clients N] | services [same as tls] | all [--meters N] [--renewals N]>";

/// `--seconds`, `--rounds`, `--clients` of the mTLS/TLS comparison.
fn tls_options(args: &[String]) -> anyhow::Result<tls::TlsOptions> {
    let d = tls::TlsOptions::default();
    Ok(tls::TlsOptions {
        seconds: flag(args, "--seconds", d.seconds as usize)? as u64,
        rounds: flag(args, "--rounds", d.rounds)?,
        clients: flag(args, "--clients", d.clients)?,
    })
}

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
        "tls" => print_table(
            "services: device-hub mTLS vs TLS (issue 6)",
            &tls::tls(&tls_options(rest)?).await?,
        ),
        "services" => {
            let opts = tls_options(rest)?;
            print_table(
                "services (issue 6)",
                &services::run(mpm_e2e::client().await, &opts).await?,
            )
        }
        "all" => {
            let client = mpm_e2e::client().await?;
            let meters = flag(rest, "--meters", 10_000)?;
            let renewals = flag(rest, "--renewals", 1_000)?;
            let mut all: Vec<Row> = Vec::new();
            let sections: [(&str, anyhow::Result<Vec<Row>>); 5] = [
                ("netpol (issue 5)", netpol::run()),
                ("hubs (issue 3)", hubs::run(&client).await),
                ("renewals (issue 4)", renewals::run(&client, renewals).await),
                (
                    "services (issue 6)",
                    services::run(Ok(client.clone()), &tls::TlsOptions::default()).await,
                ),
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
