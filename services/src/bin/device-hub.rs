//! device-hub binary (see `mpm_services::device_hub`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match mpm_services::server::main_entry(
        mpm_services::device_hub::SERVICE,
        mpm_services::device_hub::start,
    )
    .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "device-hub failed");
            eprintln!("device-hub: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
