//! iec61968-connector binary (see `mpm_services::connector`).

use mpm_services::connector;
use mpm_services::server::ServerError;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let r = async {
        let ingest = connector::ingest_addr_from_env()?;
        mpm_services::server::main_entry(connector::SERVICE, move |ctx| {
            connector::start(ctx, ingest)
        })
        .await
    }
    .await;
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let e: ServerError = e;
            tracing::error!(error = %e, "iec61968-connector failed");
            eprintln!("iec61968-connector: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
