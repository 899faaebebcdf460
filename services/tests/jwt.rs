//! smoc-service query API: JWT (ES256 and RS256 from a JWKS file), issuer, audience, realm role.

mod common;

use base64::Engine;
use common::*;
use http::Method;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use mpm_services::config::JwtConfig;
use mpm_services::util::TraceContext;

const ISSUER: &str = "https://keycloak.example/realms/utility";
const AUDIENCE: &str = "smoc-api";
const RSA_KEY: &str = include_str!("fixtures/rsa-test-key.pem");
const RSA_JWK: &str = include_str!("fixtures/rsa-test-jwk.json");

struct Keys {
    ec: EncodingKey,
    rsa: EncodingKey,
    other_ec: EncodingKey,
    jwks: String,
}

fn keys() -> Keys {
    let kp = rcgen::KeyPair::generate().expect("ec key");
    let raw = kp.public_key_raw();
    assert_eq!(raw.len(), 65, "uncompressed P-256 point");
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let ec_jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "ec1", "alg": "ES256", "use": "sig",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
    let rsa_jwk: serde_json::Value = serde_json::from_str(RSA_JWK).expect("rsa jwk");
    let other = rcgen::KeyPair::generate().expect("ec key");
    Keys {
        ec: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("ec pem"),
        rsa: EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).expect("rsa pem"),
        other_ec: EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).expect("ec pem"),
        jwks: serde_json::json!({"keys": [ec_jwk, rsa_jwk]}).to_string(),
    }
}

fn claims(aud: &str, roles: &[&str], exp_offset: i64) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    serde_json::json!({"iss": ISSUER, "aud": aud, "sub": "alice", "iat": now, "exp": now + exp_offset,
        "realm_access": {"roles": roles}})
}

fn token(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_string());
    encode(&h, claims, key).expect("encode token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwt_cases_on_the_query_api() {
    let w = World::new();
    let k = keys();
    let jwks_path = w.smoc.root.join("config/jwks.json");
    write_atomic(&jwks_path, k.jwks.as_bytes());
    let jwt = JwtConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_file: Some(jwks_path.to_string_lossy().to_string()),
        jwks_url: None,
        jwks_ca_file: None,
    };
    let smoc = start_smoc(&w.smoc, w.smoc_config(Some(jwt))).await;
    let (_s, hub_client) = client("hub", &w.hub);
    let (_s, op_client) = client("op", &w.op);
    let p = peer(&smoc.url(), SMOC_SA);
    let tc = TraceContext::new_root();

    // Data written by device-hub.
    let r = hub_client
        .call(
            "smoc",
            &p,
            Method::PUT,
            "/v1/devices/M-7",
            Some(br#"{"deviceId":"dev-1","state":"Provisioned"}"#.to_vec()),
            &tc,
        )
        .await
        .expect("put device");
    assert_eq!(r.status, 201);
    for (ts, v) in [
        ("2026-11-22T10:00:00Z", 1.0),
        ("2026-11-22T11:00:00Z", 2.0),
        ("2026-11-22T12:00:00Z", 3.0),
    ] {
        let body = serde_json::json!({"serialNumber": "M-7", "timestamp": ts,
            "readingType": "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0", "value": v, "unit": "kWh"});
        let r = hub_client
            .call(
                "smoc",
                &p,
                Method::POST,
                "/v1/readings",
                Some(body.to_string().into_bytes()),
                &tc,
            )
            .await
            .expect("post reading");
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }

    let get = |path: &'static str, auth: Option<String>| {
        let (c, p) = (&op_client, p.clone());
        async move {
            let headers: Vec<(String, String)> = auth
                .map(|t| vec![("authorization".to_string(), format!("Bearer {t}"))])
                .unwrap_or_default();
            let r = c
                .call_with_headers(
                    "smoc",
                    &p,
                    Method::GET,
                    path,
                    None,
                    &TraceContext::new_root(),
                    &headers,
                )
                .await
                .expect("query call");
            (r.status, String::from_utf8_lossy(&r.body).to_string())
        }
    };

    let valid_es = token(
        Algorithm::ES256,
        "ec1",
        &k.ec,
        &claims(AUDIENCE, &["reader"], 300),
    );
    let valid_rs = token(
        Algorithm::RS256,
        "rsa1",
        &k.rsa,
        &claims(AUDIENCE, &["reader", "x"], 300),
    );

    let (code, body) = get("/v1/meters", Some(valid_es.clone())).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["items"][0]["serialNumber"], "M-7");
    let (code, body) = get("/v1/meters/M-7", Some(valid_rs.clone())).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["deviceId"], "dev-1");
    let (code, body) = get(
        "/v1/meters/M-7/readings?from=2026-11-22T10:30:00Z&to=2026-11-22T12:00:00Z",
        Some(valid_es.clone()),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let items = json(&body)["items"].as_array().cloned().expect("items");
    assert_eq!(items.len(), 2, "{body}");
    assert_eq!(items[0]["value"], 2.0);
    let (code, _) = get("/v1/meters/NOPE", Some(valid_es.clone())).await;
    assert_eq!(code, 404);

    // Failures.
    assert_eq!(get("/v1/meters", None).await.0, 401, "missing token");
    let expired = token(
        Algorithm::ES256,
        "ec1",
        &k.ec,
        &claims(AUDIENCE, &["reader"], -3600),
    );
    assert_eq!(get("/v1/meters", Some(expired)).await.0, 401, "expired");
    let wrong_aud = token(
        Algorithm::ES256,
        "ec1",
        &k.ec,
        &claims("other-api", &["reader"], 300),
    );
    assert_eq!(
        get("/v1/meters", Some(wrong_aud)).await.0,
        401,
        "wrong audience"
    );
    let mut wrong_iss = claims(AUDIENCE, &["reader"], 300);
    wrong_iss["iss"] = "https://evil.example".into();
    let wrong_iss = token(Algorithm::ES256, "ec1", &k.ec, &wrong_iss);
    assert_eq!(
        get("/v1/meters", Some(wrong_iss)).await.0,
        401,
        "wrong issuer"
    );
    let forged = token(
        Algorithm::ES256,
        "ec1",
        &k.other_ec,
        &claims(AUDIENCE, &["reader"], 300),
    );
    assert_eq!(
        get("/v1/meters", Some(forged)).await.0,
        401,
        "signed by another key"
    );
    // Tamper: swap the payload of a valid token for one with more roles.
    let parts: Vec<&str> = valid_es.split('.').collect();
    let evil_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(claims(AUDIENCE, &["reader", "admin"], 9999).to_string());
    let tampered = format!("{}.{}.{}", parts[0], evil_payload, parts[2]);
    assert_eq!(get("/v1/meters", Some(tampered)).await.0, 401, "tampered");
    let no_role = token(
        Algorithm::RS256,
        "rsa1",
        &k.rsa,
        &claims(AUDIENCE, &["writer"], 300),
    );
    let (code, body) = get("/v1/meters", Some(no_role)).await;
    assert_eq!(code, 403, "wrong role: {body}");
    let unknown_kid = token(
        Algorithm::ES256,
        "nope",
        &k.ec,
        &claims(AUDIENCE, &["reader"], 300),
    );
    assert_eq!(
        get("/v1/meters", Some(unknown_kid)).await.0,
        401,
        "unknown kid"
    );
    assert_eq!(
        get("/v1/meters", Some("not.a.jwt".into())).await.0,
        401,
        "garbage"
    );

    // A valid token does not bypass the ACL: the connector's identity is not allowed.
    let (_s, conn_client) = client("conn", &w.conn);
    let r = conn_client
        .call_with_headers(
            "smoc",
            &p,
            Method::GET,
            "/v1/meters",
            None,
            &tc,
            &[("authorization".into(), format!("Bearer {valid_es}"))],
        )
        .await
        .expect("handshake ok");
    assert_eq!(r.status, 403);
    // And the operator's identity may not write even if the ACL allowed it.
    let r = op_client
        .call("smoc", &p, Method::GET, "/v1/devices/M-7", None, &tc)
        .await
        .expect("handshake ok");
    assert_eq!(r.status, 403);
    smoc.stop().await;
}
