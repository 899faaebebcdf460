//! In-cluster probe of the e2e smoke test: calls the API server through the `kubernetes` Service
//! (by its ClusterIP from the environment and by its DNS name) with the pod's ServiceAccount token
//! and CA, resolves Service names given as arguments, prints one JSON line per check, then idles so
//! the pod stays Running and the test reads the results from its log.

use std::time::Duration;

use kube::{Client, Config};
use serde_json::json;

async fn api_version(config: Result<Config, String>) -> Result<String, String> {
    let config = config?;
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| e.to_string())?;
    Ok(version.git_version)
}

#[tokio::main]
async fn main() {
    let env = api_version(Config::incluster_env().map_err(|e| e.to_string())).await;
    println!(
        "{}",
        json!({"check": "api-via-service-ip", "ok": env.is_ok(), "detail": env.clone().unwrap_or_else(|e| e)})
    );
    let dns = api_version(Config::incluster_dns().map_err(|e| e.to_string())).await;
    println!(
        "{}",
        json!({"check": "api-via-service-dns", "ok": dns.is_ok(), "detail": dns.clone().unwrap_or_else(|e| e)})
    );
    for name in std::env::args().skip(1) {
        // `tcp:<host>:<port>`: can a TCP connection be opened (NetworkPolicy enforcement probes)?
        if let Some(target) = name.strip_prefix("tcp:") {
            let connect = tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::TcpStream::connect(target),
            )
            .await;
            let (ok, detail) = match connect {
                Ok(Ok(_)) => (true, "connected".to_string()),
                Ok(Err(e)) => (false, e.to_string()),
                Err(_) => (false, "timed out".to_string()),
            };
            println!("{}", json!({"check": name, "ok": ok, "detail": detail}));
            continue;
        }
        let (ok, detail) = match tokio::net::lookup_host((name.as_str(), 443)).await {
            Ok(addrs) => (
                true,
                addrs
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Err(e) => (false, e.to_string()),
        };
        println!(
            "{}",
            json!({"check": format!("dns:{name}"), "ok": ok, "detail": detail})
        );
    }
    println!("{}", json!({"check": "done", "ok": true, "detail": ""}));
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
