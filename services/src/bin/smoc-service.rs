//! smoc-service binary (see `mpm_services::smoc`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match mpm_services::server::main_entry(mpm_services::smoc::SERVICE, mpm_services::smoc::start)
        .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "smoc-service failed");
            eprintln!("smoc-service: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
