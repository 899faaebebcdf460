//! The system end to end: a meter reading posted by the HES to iec61968-connector travels
//! connector → device-hub → smoc-service over mTLS (as the ServiceACL allows) and becomes visible
//! in smoc-service's JWT-protected query API, called by an API gateway identity.

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use mpm_e2e::{
    client, condition, create, create_ingest_token, ingest_call, mtls_call, require_cluster,
    wait_for, TestNamespace, VERSION,
};
use mpm_operator::crd::{DeviceHub, ServiceACL};
use serde_json::json;

const HUB: &str = "pipe";

#[tokio::test]
#[ignore = "needs a cluster: MPM_E2E=1 cargo test -p mpm-e2e -- --ignored (e2e/test runs it)"]
async fn meter_reading_reaches_the_query_api() -> anyhow::Result<()> {
    require_cluster();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "mpm-pipe").await?;
    let result = run(&client, &ns.name).await;
    ns.delete().await;
    result
}

async fn run(client: &Client, ns: &str) -> anyhow::Result<()> {
    // A signing key of the (simulated) identity provider, published as a JWKS ConfigMap.
    let key = rcgen::KeyPair::generate()?;
    let raw = key.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "e2e", "alg": "ES256", "use": "sig",
                                "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]});
    create::<ConfigMap>(
        client,
        ns,
        json!({"metadata": {"name": "jwks"}, "data": {"jwks.json": jwks.to_string()}}),
    )
    .await?;

    // The HES authenticates on the ingest port with a bearer token from a Secret.
    let hes = create_ingest_token(client, ns).await?;
    create::<DeviceHub>(client, ns, json!({
        "apiVersion": "meterpark.io/v1alpha1", "kind": "DeviceHub", "metadata": {"name": HUB},
        "spec": {
            "hes": hes,
            "jwt": {"issuer": "https://idp.e2e", "audience": "smoc-api", "jwksConfigMap": "jwks"},
            "services": services(1)
        }
    }))
    .await?;
    create::<ServiceACL>(client, ns, json!({
        "apiVersion": "meterpark.io/v1alpha1", "kind": "ServiceACL", "metadata": {"name": HUB},
        "spec": {
            "hubRef": {"name": HUB},
            "allow": [
                {"from": "iec61968-connector", "to": "device-hub", "http": {"methods": ["POST"], "pathPrefixes": ["/v1/events"]}},
                {"from": "device-hub", "to": "smoc-service"},
                {"from": "api-gateway", "to": "smoc-service", "http": {"methods": ["GET"], "pathPrefixes": ["/v1/meters"]}},
                {"from": "api-gateway", "to": "iec61968-connector", "http": {"methods": ["GET"], "pathPrefixes": ["/dead-letters"]}}
            ],
            "deny": [{"from": "iec61968-connector", "to": "smoc-service"}]
        }
    }))
    .await?;
    let hubs: Api<DeviceHub> = Api::namespaced(client.clone(), ns);
    let status = wait_for("hub Ready", Duration::from_secs(240), || async {
        let status = serde_json::to_value(hubs.get(HUB).await?.status)?;
        Ok(matches!(condition(&status, "Ready"), Some((s, _, _)) if s == "True").then_some(status))
    })
    .await?;
    let ingest = condition(&status, "IngestAuthenticated").unwrap_or_default();
    assert_eq!(
        (ingest.0.as_str(), ingest.1.as_str()),
        ("True", "BearerToken"),
        "{status}"
    );
    // Every pod must have loaded the allowed peers compiled from this ServiceACL (the kubelet
    // refreshes ConfigMap volumes lazily, up to a minute or more after a change): compare the
    // SHA-256 each pod reports on /status with the ConfigMap's content (contract: Health port).
    use sha2::Digest;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(
        "every pod loaded the compiled allowed peers",
        Duration::from_secs(240),
        || async {
            let mut all = true;
            for pod in pods
                .list(&ListParams::default().labels(&format!("meterpark.io/hub={HUB}")))
                .await?
                .items
            {
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                let service = labels
                    .get("meterpark.io/service")
                    .cloned()
                    .unwrap_or_default();
                let acl = config_maps.get(&format!("{HUB}-{service}-acl")).await?;
                let peers = acl
                    .data
                    .unwrap_or_default()
                    .get("allowed-peers.json")
                    .cloned()
                    .unwrap_or_default();
                let expected = hex::encode(sha2::Sha256::digest(peers.as_bytes()));
                let name = pod.metadata.name.unwrap_or_default();
                let path = format!("/api/v1/namespaces/{ns}/pods/{name}:8080/proxy/status");
                let body = client
                    .request_text(http::Request::get(path).body(Vec::new())?)
                    .await
                    .unwrap_or_default();
                let loaded = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .map(|v| v["allowedPeersVersion"].clone());
                all &= loaded.is_some_and(|v| v.as_str() == Some(expected.as_str()));
            }
            Ok(all.then_some(()))
        },
    )
    .await?;

    // The HES posts an IEC 61968-9 MeterReadings document to the connector's ingest port.
    let serial = "E2E-PIPE-0001";
    let xml = meter_readings(serial, "42.5");
    // Without the token the connector refuses it; with it, it takes it.
    let (status, body) = ingest_xml(client, ns, &xml, Some("")).await?;
    assert_eq!(status, 401, "ingest without a token: {body}");
    let (status, body) =
        ingest_xml(client, ns, &xml, Some("Bearer not-the-token-0123456789")).await?;
    assert_eq!(status, 401, "ingest with a wrong token: {body}");
    let (status, body) = ingest_xml(client, ns, &xml, None).await?;
    println!("connector answered: {status} {body}");
    assert_eq!(status, 202, "ingest accepted: {body}");
    // The dead letters are not on the ingest port (they are on 8443, behind the ServiceACL).
    let (status, body) = ingest_call(
        client,
        ns,
        HUB,
        "GET",
        "/dead-letters",
        "application/json",
        b"",
        None,
    )
    .await?;
    assert_eq!(status, 404, "GET /dead-letters on the ingest port: {body}");

    // The reading becomes visible in smoc-service's query API (JWT with realm role `reader`).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({"iss": "https://idp.e2e", "aud": "smoc-api", "sub": "e2e", "exp": now + 3600, "iat": now,
                        "realm_access": {"roles": ["reader"]}});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("e2e".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())?,
    )?;
    let bearer = format!("Bearer {token}");
    // An event the connector could not forward stays in its dead-letter store and is redelivered
    // automatically (contract: ingest API); the reading must arrive either way.
    let readings = reading_arrives(client, ns, &bearer, serial, "42.5").await?;
    println!("smoc-service readings: {readings}");

    // Without a token the query API refuses; the connector's identity is refused outright.
    let (status, _) = query_readings(client, ns, "api-gateway", serial, None).await?;
    assert_eq!(status, 401);
    let (status, _) =
        query_readings(client, ns, "iec61968-connector", serial, Some(&bearer)).await?;
    assert_eq!(status, 403);

    device_hub_outage(client, ns, &pods, &bearer).await
}

/// device-hub goes away for a while (scaled to 0): a reading posted meanwhile is dead-lettered by
/// the connector, and reaches smoc-service by itself once device-hub is back, with no replay call.
async fn device_hub_outage(
    client: &Client,
    ns: &str,
    pods: &Api<Pod>,
    bearer: &str,
) -> anyhow::Result<()> {
    let hubs: Api<DeviceHub> = Api::namespaced(client.clone(), ns);
    let scale = |replicas: i32| {
        let hubs = hubs.clone();
        async move {
            let patch = json!({"spec": {"services": services(replicas)}});
            hubs.patch(HUB, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
    };
    scale(0).await?;
    let device_hub_pods = format!("meterpark.io/hub={HUB},meterpark.io/service=device-hub");
    wait_for("device-hub pods gone", Duration::from_secs(120), || async {
        let list = pods
            .list(&ListParams::default().labels(&device_hub_pods))
            .await?;
        Ok(list.items.is_empty().then_some(()))
    })
    .await?;

    let serial = "E2E-PIPE-0002";
    let (status, body) = ingest_xml(client, ns, &meter_readings(serial, "17.25"), None).await?;
    println!("connector answered during the outage: {status} {body}");
    let answer: serde_json::Value = serde_json::from_str(body.trim())
        .map_err(|e| anyhow::anyhow!("no JSON in the connector's answer ({e}): {body}"))?;
    anyhow::ensure!(
        status == 202 && answer["deadLettered"] == 1,
        "the reading must be accepted and dead-lettered while device-hub is away: {status} {body}"
    );
    // The dead letter is readable over mTLS by a peer the ServiceACL allows, and by no other.
    let (status, body) = dead_letters(client, ns, "api-gateway").await?;
    anyhow::ensure!(
        status == 200 && body.contains(serial),
        "the dead letter must be listed on the connector's mTLS port: {status} {body}"
    );
    let (status, body) = dead_letters(client, ns, "device-hub").await?;
    anyhow::ensure!(
        status == 403,
        "a peer without a ServiceACL rule must not read the dead letters: {status} {body}"
    );

    let back = std::time::Instant::now();
    scale(1).await?;
    let readings = reading_arrives(client, ns, bearer, serial, "17.25").await?;
    println!(
        "dead-lettered reading in smoc-service {:?} after device-hub was scaled back: {readings}",
        back.elapsed()
    );
    Ok(())
}

/// The hub's services beyond the built-in defaults: the API layer's identity, declared as a
/// service of the hub, and device-hub with `device_hub_replicas` pods.
fn services(device_hub_replicas: i32) -> serde_json::Value {
    json!([
        {"name": "api-gateway", "image": format!("localhost/mpm-services:{VERSION}"),
         "command": ["/usr/local/bin/device-hub"]},
        {"name": "device-hub", "replicas": device_hub_replicas}
    ])
}

/// An IEC 61968-9 MeterReadings document with one reading of `serial`.
fn meter_readings(serial: &str, value: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<m:MeterReadings xmlns:m="http://iec.ch/TC57/2011/MeterReadings#">
  <m:MeterReading>
    <m:Meter><m:mRID>e2e</m:mRID><m:Names><m:name>{serial}</m:name></m:Names></m:Meter>
    <m:Readings>
      <m:ReadingType ref="0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0"/>
      <m:timeStamp>2026-11-22T10:00:00Z</m:timeStamp>
      <m:value>{value}</m:value>
    </m:Readings>
  </m:MeterReading>
</m:MeterReadings>"#
    )
}

/// Waits until smoc-service's query API (called as the API gateway, JWT with realm role
/// `reader`) shows `value` for `serial`; on timeout the error carries the connector's dead
/// letters.
async fn reading_arrives(
    client: &Client,
    ns: &str,
    bearer: &str,
    serial: &str,
    value: &str,
) -> anyhow::Result<String> {
    let readings = wait_for(
        &format!("reading {value} of {serial} visible in smoc-service"),
        Duration::from_secs(180),
        || async {
            let (status, body) =
                query_readings(client, ns, "api-gateway", serial, Some(bearer)).await?;
            Ok((status == 200 && body.contains(value)).then_some(body))
        },
    )
    .await;
    match readings {
        Ok(r) => Ok(r),
        Err(e) => {
            let dead = dead_letters(client, ns, "api-gateway").await;
            anyhow::bail!("{e}; the connector's dead letters: {dead:?}");
        }
    }
}

/// `GET /v1/meters/{serial}/readings` on smoc-service over mTLS as `caller`, with `bearer` as the
/// Authorization header if given: (status, body).
async fn query_readings(
    client: &Client,
    ns: &str,
    caller: &str,
    serial: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let path = format!("/v1/meters/{serial}/readings");
    let headers: Vec<(&str, &str)> = bearer.map(|b| ("authorization", b)).into_iter().collect();
    mtls_call(
        client,
        ns,
        HUB,
        caller,
        "smoc-service",
        "GET",
        &path,
        &headers,
        b"",
    )
    .await
}

/// `POST /ingest` of an XML document as the HES (`authorization`: see [`ingest_call`]).
async fn ingest_xml(
    client: &Client,
    ns: &str,
    xml: &str,
    authorization: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    ingest_call(
        client,
        ns,
        HUB,
        "POST",
        "/ingest",
        "application/xml",
        xml.as_bytes(),
        authorization,
    )
    .await
}

/// `GET /dead-letters` on the connector's mTLS port as `caller` (contract: dead letters).
async fn dead_letters(client: &Client, ns: &str, caller: &str) -> anyhow::Result<(u16, String)> {
    mtls_call(
        client,
        ns,
        HUB,
        caller,
        "iec61968-connector",
        "GET",
        "/dead-letters",
        &[],
        b"",
    )
    .await
}
