//! pki-bench: leaf certificate issuance throughput of the operator's PKI core, next to `openssl`.
//!
//! Usage: `pki-bench [--count N] [--openssl-count M] [--no-openssl]` (build with `--release`).
//!
//! Every leaf gets a fresh ECDSA P-256 key, exactly as the controller does; no key pool. One
//! thread. The `openssl` side runs `openssl req -new -newkey ec ... | openssl x509 -req -CA ...`
//! per certificate with the same profile (SPIFFE URI SAN, DNS SANs, CA:FALSE, keyUsage, EKU), so
//! it includes process start-up: that is the cost of shelling out, which is the alternative.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use mpm_operator::pki::{
    generate_ca, inspect_cert, issue_leaf, service_dns_names, spiffe_id, LeafRequest,
    DEFAULT_CA_VALIDITY,
};

struct Args {
    count: usize,
    openssl_count: usize,
    openssl: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        count: 20_000,
        openssl_count: 200,
        openssl: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            it.next()
                .ok_or(format!("{name} needs a value"))?
                .parse()
                .map_err(|e| format!("{name}: {e}"))
        };
        match arg.as_str() {
            "--count" => args.count = number("--count")?.max(1),
            "--openssl-count" => args.openssl_count = number("--openssl-count")?.max(1),
            "--no-openssl" => args.openssl = false,
            "-h" | "--help" => {
                println!("pki-bench [--count N (20000)] [--openssl-count M (200)] [--no-openssl]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("pki-bench: error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let now = Utc::now();
    let ca = generate_ca("pki-bench", DEFAULT_CA_VALIDITY, now).map_err(|e| e.to_string())?;
    let id = spiffe_id("cluster.local", "park", "demo-device-hub").map_err(|e| e.to_string())?;
    let names = service_dns_names("demo-device-hub", "park").map_err(|e| e.to_string())?;
    let request = LeafRequest::new(id.clone(), names.clone());

    // Warm-up, and a sanity check of what is being measured.
    let sample = issue_leaf(&ca, &request, now).map_err(|e| e.to_string())?;
    let info = inspect_cert(&sample.cert_pem).map_err(|e| e.to_string())?;
    if info.uri_sans != [id.as_str()] || info.dns_sans != names {
        return Err("sample certificate has unexpected SANs".into());
    }

    // Key generation alone, to show where the time goes.
    let keygen_n = (args.count / 10).max(100);
    let rng = ring::rand::SystemRandom::new();
    let start = Instant::now();
    for _ in 0..keygen_n {
        let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .map_err(|_| "key generation failed".to_string())?;
        std::hint::black_box(doc);
    }
    let keygen_rate = rate(keygen_n, start.elapsed());

    // One ECDSA P-256 signature over a certificate-sized message (what the CA does per leaf).
    let signer_doc = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &rng,
    )
    .map_err(|_| "key generation failed".to_string())?;
    let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        signer_doc.as_ref(),
        &rng,
    )
    .map_err(|_| "key decoding failed".to_string())?;
    let message = [0x5au8; 600];
    let start = Instant::now();
    for _ in 0..keygen_n {
        let sig = signer
            .sign(&rng, &message)
            .map_err(|_| "signing failed".to_string())?;
        std::hint::black_box(sig);
    }
    let sign_rate = rate(keygen_n, start.elapsed());

    let start = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..args.count {
        let cert = issue_leaf(&ca, &request, now).map_err(|e| e.to_string())?;
        bytes += cert.cert_pem.len() + cert.key_pem.len();
        std::hint::black_box(&cert);
    }
    let elapsed = start.elapsed();
    let project = rate(args.count, elapsed);
    println!(
        "project: {} leaf certificates (fresh P-256 key each, PEM cert + PKCS#8 key, {} bytes) in \
         {:.3}s on one thread: {:.0} certs/s, {:.1} us/cert",
        args.count,
        bytes,
        elapsed.as_secs_f64(),
        project,
        elapsed.as_secs_f64() * 1e6 / args.count as f64
    );
    println!(
        "project: P-256 key generation alone: {:.0} keys/s ({:.1} us/key, {:.0}% of a leaf)",
        keygen_rate,
        1e6 / keygen_rate,
        100.0 * project / keygen_rate
    );

    println!(
        "project: P-256 signature alone: {:.0} sigs/s ({:.1} us/sig); key generation + signature \
         bound one leaf at {:.0} certs/s, the rest is DER/PEM encoding and allocation",
        sign_rate,
        1e6 / sign_rate,
        1.0 / (1.0 / keygen_rate + 1.0 / sign_rate)
    );
    if project < 10_000.0 {
        println!(
            "project: below the 10,000 certs/s target on this machine; ring P-256 key generation \
             and signing are the floor (no key pool is used: every leaf gets a fresh key)"
        );
    }

    let openssl = if args.openssl {
        match bench_openssl(&ca, id.as_str(), &names, args.openssl_count) {
            Ok(r) => Some(r),
            Err(e) => {
                println!("openssl: skipped ({e})");
                None
            }
        }
    } else {
        None
    };
    match openssl {
        Some(o) => println!(
            "pki-bench: project={:.0}/s openssl={:.0}/s ratio={:.1}",
            project,
            o,
            project / o
        ),
        None => println!("pki-bench: project={project:.0}/s openssl=n/a ratio=n/a"),
    }
    Ok(())
}

/// Issues `n` certificates with the openssl CLI (two processes per certificate) and returns certs/s.
fn bench_openssl(
    ca: &mpm_operator::pki::CaKeyPair,
    spiffe: &str,
    dns: &[String],
    n: usize,
) -> Result<f64, String> {
    let version = Command::new("openssl")
        .arg("version")
        .output()
        .map_err(|e| format!("openssl not runnable: {e}"))?;
    let dir = std::env::temp_dir().join(format!("pki-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = (|| {
        let write = |name: &str, content: &str| -> Result<(), String> {
            let path = dir.join(name);
            let mut f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                f.set_permissions(std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| e.to_string())?;
            }
            f.write_all(content.as_bytes()).map_err(|e| e.to_string())
        };
        write("ca.crt", ca.cert_pem())?;
        write("ca.key", ca.key_pem())?;
        let sans = std::iter::once(format!("URI:{spiffe}"))
            .chain(dns.iter().map(|d| format!("DNS:{d}")))
            .collect::<Vec<_>>()
            .join(",");
        write(
            "leaf.ext",
            &format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={sans}\n\
                 authorityKeyIdentifier=keyid\n"
            ),
        )?;
        let script = format!(
            "set -e; cd '{}'; openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
             -nodes -keyout leaf.key -subj '/CN={}' 2>/dev/null | openssl x509 -req -CA ca.crt \
             -CAkey ca.key -set_serial 0x$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n' | sed \
             's/^./4/') -days 1 -sha256 -extfile leaf.ext -out leaf.crt 2>/dev/null",
            dir.display(),
            dns.first().map(String::as_str).unwrap_or("leaf"),
        );
        let run_once = || -> Result<(), String> {
            let status = Command::new("sh")
                .arg("-c")
                .arg(&script)
                .stdin(Stdio::null())
                .status()
                .map_err(|e| e.to_string())?;
            if status.success() {
                Ok(())
            } else {
                Err(format!("openssl pipeline failed: {status}"))
            }
        };
        run_once()?; // warm-up and check
        let pem = std::fs::read_to_string(dir.join("leaf.crt")).map_err(|e| e.to_string())?;
        let info = inspect_cert(&pem).map_err(|e| e.to_string())?;
        if info.uri_sans != [spiffe] || info.dns_sans != dns || info.is_ca {
            return Err("openssl certificate does not have the same profile".into());
        }
        let start = Instant::now();
        for _ in 0..n {
            run_once()?;
        }
        let elapsed = start.elapsed();
        let r = rate(n, elapsed);
        println!(
            "openssl: {} ({}) leaf certificates via `openssl req | openssl x509 -req` in {:.3}s: \
             {:.0} certs/s, {:.1} ms/cert",
            n,
            String::from_utf8_lossy(&version.stdout).trim(),
            elapsed.as_secs_f64(),
            r,
            elapsed.as_secs_f64() * 1e3 / n as f64
        );
        Ok(r)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
