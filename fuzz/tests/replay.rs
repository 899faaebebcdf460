//! Runs every fuzz target's body on its committed seeds (`fuzz/seeds/<target>/`): the seeds are
//! the starting corpus of `run.sh` and the regression tests of every crash found (a crashing
//! input is added to the target's seed directory with the fix).

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    for f in files {
        let data = std::fs::read(&f).expect("seed");
        let run = std::panic::catch_unwind(|| body(&data));
        assert!(run.is_ok(), "{target} fails on seed {}", f.display());
    }
}

#[test]
fn ingest_xml() {
    replay("ingest_xml", mpm_fuzz::ingest_xml);
}

#[test]
fn ingest_json() {
    replay("ingest_json", mpm_fuzz::ingest_json);
}

#[test]
fn allowed_peers() {
    replay("allowed_peers", mpm_fuzz::allowed_peers);
}

#[test]
fn cert_inspect() {
    replay("cert_inspect", mpm_fuzz::cert_inspect);
}

#[test]
fn jwks() {
    replay("jwks", mpm_fuzz::jwks);
}

#[test]
fn jwt() {
    replay("jwt", mpm_fuzz::jwt);
}

#[test]
fn duration() {
    replay("duration", mpm_fuzz::duration);
}

#[test]
fn acl_compile() {
    replay("acl_compile", mpm_fuzz::acl_compile);
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The seeds get past the first parse into the code each property checks (a seed refused at the
/// first byte would leave the fuzzer to find the format by itself).
#[test]
fn the_seeds_reach_the_checked_code() {
    use mpm_operator::crd::service_acl::ServiceAclSpec;
    use mpm_services::iec::{parse_events, Limits};

    let xml = parse_events(
        "application/xml",
        &seed("ingest_xml", "readings.xml"),
        &Limits::default(),
    );
    assert_eq!(xml.expect("readings.xml parses").len(), 3);
    let json = parse_events(
        "application/json",
        &seed("ingest_json", "end-device-events.json"),
        &Limits::default(),
    );
    assert_eq!(json.expect("end-device-events.json parses").len(), 1);

    let acl = mpm_services::acl::Acl::parse(
        // The lines after the JSON document are request paths for the target, not part of it.
        String::from_utf8(seed("allowed_peers", "two-rules.json"))
            .expect("utf-8")
            .split("\n/")
            .next()
            .expect("document")
            .as_bytes(),
    )
    .expect("two-rules.json parses");
    assert_eq!(acl.rules.peers.len(), 3);

    let svid = mpm_spiffe::svid_spiffe_id(&seed("cert_inspect", "svid.der"));
    assert_eq!(
        svid.as_deref(),
        Ok("spiffe://cluster.local/ns/park/sa/demo-device-hub")
    );
    assert!(mpm_spiffe::svid_spiffe_id(&seed("cert_inspect", "two-uris.der")).is_err());

    let jwt = String::from_utf8(seed("jwt", "expired-reader.txt")).expect("utf-8");
    let set = mpm_services::jwks::parse_jwks(&seed("jwks", "rsa.json")).expect("rsa.json");
    let verifier = mpm_services::jwt::JwtVerifier::with_jwks(
        mpm_fuzz::JWT_ISSUER,
        mpm_fuzz::JWT_AUDIENCE,
        set.keys,
    );
    let err = futures::executor::block_on(verifier.verify_header(Some(&jwt)))
        .expect_err("the seed is expired");
    assert!(
        err.to_string().contains("xpired"),
        "the signature is checked and only the expiry refuses it: {err}"
    );

    let specs: ServiceAclSpec =
        serde_json::from_slice(&seed("acl_compile", "meter-park.json")).expect("spec");
    assert!(mpm_operator::pki::parse_duration("1h30m").is_ok());
    let topology = mpm_fuzz::topology();
    let compiled = mpm_operator::acl::compile(topology, &[specs]).expect("meter-park compiles");
    assert_eq!(compiled.allowed_edges(), 2);
}
