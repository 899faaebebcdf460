//! Measures the ingest parser under the default limits: time and peak RSS (`VmHWM`) for the
//! largest documents it accepts and for hostile ones it refuses. Each scenario runs in a fresh
//! process (the high-water mark never goes down).
//!
//! `cargo run -p mpm-services --example ingest_limits [--release]`

use std::process::Command;
use std::time::Instant;

use mpm_services::iec::{parse_events, Limits};

const SCENARIOS: &[&str] = &[
    "events-10000-xml",
    "events-10000-json",
    "xml-max-elements",
    "xml-max-attributes",
    "xml-max-text",
    "json-max-values",
    "json-max-members",
    "hostile-nested-xml-700k",
    "hostile-flat-xml-4m",
    "hostile-nested-json",
    "readings-10000-shared-ids-at-max",
    "hostile-shared-ids-64k",
];

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// (content type, body) of a scenario, as large as the default limits let it be.
fn document(name: &str) -> (&'static str, Vec<u8>) {
    let l = Limits::default();
    let event = r#"<EndDeviceEvent><mRID>evt-000001</mRID><createdDateTime>2026-11-22T10:00:00Z</createdDateTime><reason>cover opened</reason><Assets><mRID>MTR-000001</mRID></Assets><EndDeviceEventType ref="3.26.0.185"/></EndDeviceEvent>"#;
    let json_event = r#"{"kind":"endDeviceEvent","serialNumber":"MTR-000001","timestamp":"2026-11-22T10:00:00Z","eventType":"3.26.0.185","reason":"cover opened","correlationId":"evt-000001"}"#;
    // Bytes per node that fill maxBodyBytes with maxElements nodes.
    let per_node = l.max_body_bytes / l.max_elements - 12;
    let body = match name {
        "events-10000-xml" => format!(
            "<EndDeviceEvents>{}</EndDeviceEvents>",
            event.repeat(l.max_events)
        ),
        "events-10000-json" => format!(
            "{{\"events\": [{}]}}",
            vec![json_event; l.max_events].join(",")
        ),
        // 99,999 elements with long names.
        "xml-max-elements" => format!(
            "<r>{}</r>",
            format!("<{}/>", "n".repeat(per_node)).repeat(l.max_elements - 1)
        ),
        // Elements of 32 attributes with values, up to maxElements nodes.
        "xml-max-attributes" => {
            let attrs: String = (0..l.max_attributes)
                .map(|i| format!(" a{i:02}=\"{}\"", "v".repeat(per_node - 6)))
                .collect();
            let per = l.max_body_bytes / (attrs.len() + 5);
            format!("<r>{}</r>", format!("<x{attrs}/>").repeat(per.min(3000)))
        }
        // The whole body as text, maxTextBytes per element.
        "xml-max-text" => {
            let n = l.max_body_bytes / (l.max_text_bytes + 7) - 1;
            format!(
                "<r>{}</r>",
                format!("<t>{}</t>", "x".repeat(l.max_text_bytes)).repeat(n)
            )
        }
        // Objects of short members up to maxElements values (5 per object with its comma).
        "json-max-values" => {
            let obj = r#"{"a":"0123456789","b":1,"c":true,"d":"x"}"#;
            format!(
                "{{\"MeterReadings\":{{\"MeterReading\":[{}]}}}}",
                vec![obj; l.max_elements / 5 - 10].join(",")
            )
        }
        // One object of maxElements members.
        "json-max-members" => format!(
            "{{\"MeterReading\":{{{}\"z\":0}}}}",
            (0..l.max_elements - 10)
                .map(|i| format!("\"k{i:06}\":\"{}\",", "v".repeat(per_node - 16)))
                .collect::<String>()
        ),
        "hostile-nested-xml-700k" => format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000)),
        "hostile-flat-xml-4m" => format!("<r>{}</r>", "<x/>".repeat(l.max_body_bytes / 4 - 3)),
        "hostile-nested-json" => format!("{}{}", "[".repeat(2_000_000), "]".repeat(2_000_000)),
        // 10,000 interval readings of one meter and block: serial, ReadingType and MessageID (copied
        // into every event) at their bounds (128 / 256 / 256 bytes) ...
        "readings-10000-shared-ids-at-max" => shared_ids(128, 256, l.max_events),
        // ... and at maxTextBytes each, which used to become 10,000 copies of 3 x 64 KiB.
        "hostile-shared-ids-64k" => shared_ids(l.max_text_bytes, l.max_text_bytes, l.max_events),
        other => panic!("unknown scenario {other}"),
    };
    let ct = if name.contains("json") {
        "application/json"
    } else {
        "application/xml"
    };
    (ct, body.into_bytes())
}

fn shared_ids(serial: usize, id: usize, readings: usize) -> String {
    let reading = "<IntervalReadings><timeStamp>2026-11-22T10:15:00Z</timeStamp><value>1.5</value></IntervalReadings>";
    format!(
        "<MeterReadings><Header><MessageID>{}</MessageID></Header><MeterReading><Meter><Names><name>{}</name></Names></Meter><IntervalBlocks><ReadingType ref=\"{}\"/>{}</IntervalBlocks></MeterReading></MeterReadings>",
        "m".repeat(id),
        "S".repeat(serial),
        "r".repeat(id),
        reading.repeat(readings)
    )
}

fn run(name: &str) {
    let (ct, body) = document(name);
    let before = vm_hwm_kib();
    let started = Instant::now();
    let result = parse_events(ct, &body, &Limits::default());
    let took = started.elapsed();
    let after = vm_hwm_kib();
    let outcome = match &result {
        Ok(evs) => format!("accepted {} events", evs.len()),
        Err(e) => format!("refused: {e}"),
    };
    drop(result);
    println!(
        "| {name} | {} | {:.1} ms | {:.1} MiB | {:.1} MiB | {outcome} |",
        body.len(),
        took.as_secs_f64() * 1e3,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
    );
}

fn main() {
    if let Some(name) = std::env::args().nth(1) {
        run(&name);
        return;
    }
    println!(
        "| scenario | body bytes | parse time | VmHWM with body | VmHWM after parse | outcome |"
    );
    println!("|---|---|---|---|---|---|");
    let exe = std::env::current_exe().expect("current exe");
    for name in SCENARIOS {
        let status = Command::new(&exe).arg(name).status().expect("run scenario");
        assert!(status.success(), "{name}: {status}");
    }
}
