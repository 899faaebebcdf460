//! Bodies of the fuzz targets (`fuzz_targets/*.rs` are one-line libFuzzer wrappers around them).
//!
//! Each function feeds hostile bytes to one parser the system exposes to an attacker and checks,
//! besides "no panic, no abort, no unbounded allocation", a property that must hold whatever the
//! input: a limit that is never exceeded, a token that is never accepted without the key, an ACL
//! that never grants more than its rules say, two sides of a contract that agree. A violated
//! property panics, which libFuzzer reports as a crash with the input that caused it.
//!
//! `tests/replay.rs` runs every function on the committed seeds (`fuzz/seeds/<target>/`) in the
//! normal test command, so a seed that once crashed stays a regression test.

use std::sync::OnceLock;

use mpm_operator::acl::{self as op_acl, HubTopology, NamedPort, OperatorAccess, ServicePorts};
use mpm_operator::crd::service_acl::ServiceAclSpec;
use mpm_services::acl as svc_acl;
use mpm_services::iec::{self, IngestError, Limits};

/// Inputs above this are skipped: every limit the parsers enforce is far smaller, and libFuzzer
/// is faster on small inputs (`-max_len` in `run.sh` says the same).
pub const MAX_INPUT: usize = 1 << 20;

/// Limits small enough that the fuzzer reaches every one of them with short inputs.
fn tight_limits() -> Limits {
    Limits {
        max_body_bytes: 16 << 10,
        max_depth: 6,
        max_elements: 200,
        max_attributes: 4,
        max_text_bytes: 64,
        max_events: 5,
    }
}

/// The ingest parser under the default and the tight limits: never panics (the stack overflow of
/// issue 16 was an abort), and what it accepts respects the limits and validates.
fn ingest(content_type: &str, data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    for limits in [Limits::default(), tight_limits()] {
        match iec::parse_events(content_type, data, &limits) {
            Ok(events) => {
                assert!(
                    events.len() <= limits.max_events,
                    "{} events accepted with max_events {}",
                    events.len(),
                    limits.max_events
                );
                assert!(
                    data.len() <= limits.max_body_bytes,
                    "a body over max_body_bytes was parsed"
                );
                // No value is multiplied into every event: the events hold about what the body
                // held (each event's own fields) plus bounded identifiers.
                let bytes: usize = events.iter().map(iec::NormalizedEvent::string_bytes).sum();
                assert!(
                    bytes <= data.len() + events.len() * 1024,
                    "a {} byte body became {bytes} bytes of events",
                    data.len()
                );
            }
            Err(IngestError::ContentType(ct)) => panic!("content type {ct:?} refused"),
            Err(e) => {
                // Every refusal is a client error, never a 5xx.
                let status = e.status();
                assert!(status.is_client_error(), "{e} answered {status}");
            }
        }
    }
}

/// `POST /ingest` with `Content-Type: application/xml`.
pub fn ingest_xml(data: &[u8]) {
    ingest("application/xml", data);
}

/// `POST /ingest` with `Content-Type: application/json`.
pub fn ingest_json(data: &[u8]) {
    ingest("application/json", data);
}

/// What one allowed-peers entry permits, written out here from the contract (methods AND a
/// prefix that matches by whole segments), independently of both implementations.
fn reference_allows(rule: &svc_acl::PeerRule, method: &str, path: &str) -> bool {
    let method_ok = rule
        .methods
        .as_ref()
        .is_none_or(|ms| ms.iter().any(|m| m == method));
    let path_ok = rule.path_prefixes.as_ref().is_none_or(|ps| {
        ps.iter().any(|p| {
            path == p
                || (p.ends_with('/') && path.starts_with(p.as_str()))
                || path.starts_with(&format!("{p}/"))
        })
    });
    method_ok && path_ok
}

/// `allowed-peers.json` as device-hub and smoc-service read it (a mounted file the operator
/// writes). The input is the file; when it parses, the lines of the input are also used as
/// request paths and prefixes. Properties: the service allows a request only when one single
/// entry allows it (the reference above); the operator's and the services' prefix and path rules
/// agree on every string.
pub fn allowed_peers(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.lines().take(64).collect();
    for line in &lines {
        assert_eq!(
            svc_acl::validate_prefix(line).is_ok(),
            op_acl::l7::validate_prefix(line).is_ok(),
            "operator and services disagree on prefix {line:?}"
        );
        assert_eq!(
            svc_acl::validate_path(line).is_ok(),
            op_acl::l7::validate_path(line).is_ok(),
            "operator and services disagree on path {line:?}"
        );
    }
    for pair in lines.windows(2) {
        let (prefix, path) = (pair[0], pair[1]);
        if svc_acl::validate_prefix(prefix).is_ok() && svc_acl::validate_path(path).is_ok() {
            assert_eq!(
                svc_acl::prefix_matches(prefix, path),
                op_acl::l7::prefix_matches(prefix, path),
                "operator and services disagree whether {prefix:?} admits {path:?}"
            );
        }
    }
    let Ok(acl) = svc_acl::Acl::parse(data) else {
        return;
    };
    let mut paths: Vec<&str> = lines.clone();
    paths.extend([
        "/",
        "/v1/meters/SN-1",
        "/v1/meters:batch",
        "/v1/meters:batchDelete",
    ]);
    for peer in acl.rules.peers.iter().map(|p| p.spiffe_id.as_str()).take(8) {
        for method in svc_acl::METHODS {
            for path in &paths {
                let decision = acl.check(Some(peer), method, path);
                let (m, p) = svc_acl::checked_as(method, path);
                let expected = svc_acl::validate_path(path).is_ok()
                    && acl
                        .rules
                        .peers
                        .iter()
                        .filter(|r| r.spiffe_id == peer)
                        .any(|r| reference_allows(r, m, p));
                assert_eq!(
                    decision.is_allowed(),
                    expected,
                    "{peer} {method} {path}: {decision:?}"
                );
            }
        }
    }
}

/// Certificates as the operator inspects them (Secrets, a user-supplied CA) and as the services
/// read a peer's certificate. PEM input is read as PEM, anything else as DER. Property: a SPIFFE
/// ID the services accept is a valid SPIFFE ID and the certificate's only URI SAN.
pub fn cert_inspect(data: &[u8]) {
    use base64::Engine as _;
    if data.len() > MAX_INPUT {
        return;
    }
    let pem = if data.starts_with(b"-----BEGIN") {
        String::from_utf8_lossy(data).into_owned()
    } else {
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
    };
    let operator_view = mpm_operator::pki::inspect_cert(&pem).ok();
    let _ = mpm_operator::pki::inspect_cert_with_issuers(&pem, &[pem.as_str()]);
    let _ = mpm_operator::pki::cert_fingerprint(&pem);
    if data.starts_with(b"-----BEGIN") {
        return;
    }
    let _ = mpm_services::tls::cert_info(data);
    if let Ok(id) = mpm_spiffe::svid_spiffe_id(data) {
        assert!(
            mpm_spiffe::validate_spiffe_id(&id).is_ok(),
            "accepted SPIFFE ID {id:?} is not valid"
        );
        if let Some(info) = operator_view {
            assert_eq!(
                info.uri_sans,
                vec![id.clone()],
                "the services accepted {id:?} from a certificate whose URI SANs are {:?}",
                info.uri_sans
            );
        }
    }
}

/// A JWKS document as smoc-service fetches it from the identity provider. Property: an accepted
/// set holds only EC or RSA signing keys (never a symmetric key, which would let anyone holding
/// the "public" document sign tokens).
pub fn jwks(data: &[u8]) {
    use mpm_services::jwks::parse_jwks;
    if data.len() > MAX_INPUT {
        return;
    }
    let Ok(set) = parse_jwks(data) else {
        return;
    };
    assert!(!set.keys.keys.is_empty(), "an empty key set was accepted");
    for key in &set.keys.keys {
        let debug = format!("{:?}", key.algorithm);
        assert!(
            debug.starts_with("EllipticCurve") || debug.starts_with("RSA"),
            "a key of type {debug} was accepted"
        );
    }
}

/// The RSA public key the JWT target verifies against (its private key is a test fixture; the
/// seeds are signed with it but expired, so no seed is a valid token).
const TEST_JWKS: &str = concat!(
    "{\"keys\": [",
    include_str!("../../services/tests/fixtures/rsa-test-jwk.json"),
    "]}"
);
/// Issuer and audience the seeds carry.
pub const JWT_ISSUER: &str = "https://idp.example/realms/mpm";
pub const JWT_AUDIENCE: &str = "smoc-service";

fn verifier() -> &'static mpm_services::jwt::JwtVerifier {
    static V: OnceLock<mpm_services::jwt::JwtVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let set = mpm_services::jwks::parse_jwks(TEST_JWKS.as_bytes()).expect("fixture JWKS");
        mpm_services::jwt::JwtVerifier::with_jwks(JWT_ISSUER, JWT_AUDIENCE, set.keys)
    })
}

/// A bearer token as smoc-service's query API reads it. Property: no input is ever accepted (the
/// fuzzer cannot sign with the fixture key, and the only signed seeds are expired), and every
/// refusal is a 401/403.
pub fn jwt(data: &[u8]) {
    if data.len() > 64 << 10 {
        return;
    }
    let header = String::from_utf8_lossy(data);
    match futures::executor::block_on(verifier().verify_header(Some(&header))) {
        Ok(caller) => panic!("token accepted without a valid signature: {caller:?}"),
        Err(e) => {
            let status = e.status();
            assert!(status == 401 || status == 403, "{e} answered {status}");
        }
    }
}

/// Durations of the DeviceHub spec (`certificates.duration`, `renewBefore`, ...). Property: an
/// accepted duration is written only with digits, `.` and the units, and `0` is zero.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > 4096 {
        return;
    }
    if let Ok(d) = mpm_operator::pki::parse_duration(text) {
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'h' | b'm' | b's')),
            "{text:?} accepted as {d:?}"
        );
        if text.bytes().all(|b| b == b'0') {
            assert!(d.is_zero());
        }
    }
}

/// The hub the ACL target compiles for: the three services of the README's example, the
/// connector with its ingest port.
pub fn topology() -> &'static HubTopology {
    static T: OnceLock<HubTopology> = OnceLock::new();
    T.get_or_init(|| {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
        let sel = |k: &str, v: &str| LabelSelector {
            match_labels: Some([(k.to_string(), v.to_string())].into()),
            match_expressions: None,
        };
        HubTopology {
            namespace: "park".into(),
            hub: "demo".into(),
            trust_domain: "cluster.local".into(),
            services: vec![
                ServicePorts::new("device-hub"),
                ServicePorts {
                    extra_ports: vec![NamedPort {
                        name: "ingest".into(),
                        port: op_acl::INGEST_PORT,
                    }],
                    ..ServicePorts::new("iec61968-connector")
                },
                ServicePorts::new("smoc-service"),
            ],
            operator: OperatorAccess {
                namespace_selector: sel("kubernetes.io/metadata.name", "mpm-system"),
                pod_selector: sel("app.kubernetes.io/name", "mpm-operator"),
            },
        }
    })
}

/// ServiceACL specs (JSON, as the API server hands them over: one spec or a list) compiled for
/// one hub. Properties: a compiled ACL passes its own L7 verification (no entry wider than one
/// rule), every allowed-peers.json it writes is one the services accept, and no deny rule's
/// caller appears in its callee's list.
pub fn acl_compile(data: &[u8]) {
    if data.len() > 64 << 10 {
        return;
    }
    let specs: Vec<ServiceAclSpec> = match serde_json::from_slice::<Vec<ServiceAclSpec>>(data) {
        Ok(v) => v,
        Err(_) => match serde_json::from_slice::<ServiceAclSpec>(data) {
            Ok(s) => vec![s],
            Err(_) => return,
        },
    };
    let topo = topology();
    let Ok(compiled) = op_acl::compile(topo, &specs) else {
        return;
    };
    for (service, out) in &compiled.services {
        let violations = op_acl::verify_l7(topo, &specs, service, &out.allowed_peers);
        assert!(
            violations.is_empty(),
            "compiled {service} allowed-peers wider than the rules: {violations:?}"
        );
        let json = out.allowed_peers_json();
        if let Err(e) = svc_acl::Acl::parse(json.as_bytes()) {
            panic!("services refuse the compiled allowed-peers of {service}: {e}\n{json}");
        }
    }
    for deny in &compiled.denies {
        let caller = topo.service_spiffe_id(&deny.from);
        let Some(callee) = compiled.services.get(&deny.to) else {
            continue;
        };
        assert!(
            !callee
                .allowed_peers
                .peers
                .iter()
                .any(|p| p.spiffe_id == caller),
            "deny rule {} but {caller} is in {}'s allowed peers",
            deny.rule,
            deny.to
        );
    }
}
