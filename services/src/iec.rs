//! IEC 61968-9 `MeterReadings` and `EndDeviceEvents` (XML or a JSON rendering of the same shape)
//! normalized to the contract's event (contract: Normalized event).
//!
//! Both formats are read into a small namespace-agnostic element tree, so one walker handles XML
//! (`<m:MeterReadings>` with or without a message envelope) and JSON
//! (`{"MeterReadings": {"MeterReading": [...]}}`). A JSON body may also be normalized events already:
//! one object, an array, or `{"events": [...]}`.

use serde::{Deserialize, Serialize};

use crate::util::{parse_rfc3339, rfc3339_millis};

/// What kind of normalized event.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    Reading,
    EndDeviceEvent,
}

/// The normalized event (contract: Normalized event).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NormalizedEvent {
    pub kind: EventKind,
    pub serial_number: String,
    pub timestamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reading_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

impl NormalizedEvent {
    /// Checks required fields per kind; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.serial_number.trim().is_empty() {
            return Err("serialNumber is empty".into());
        }
        parse_rfc3339(&self.timestamp)
            .map_err(|e| format!("timestamp {:?} is not RFC 3339: {e}", self.timestamp))?;
        match self.kind {
            EventKind::Reading => {
                if self.reading_type.as_deref().unwrap_or("").is_empty() {
                    return Err("reading without readingType".into());
                }
                match self.value {
                    Some(v) if v.is_finite() => {}
                    _ => return Err("reading without a finite numeric value".into()),
                }
            }
            EventKind::EndDeviceEvent => {
                if self.event_type.as_deref().unwrap_or("").is_empty() {
                    return Err("endDeviceEvent without eventType".into());
                }
            }
        }
        Ok(())
    }
}

/// Why an ingest body was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IngestError {
    #[error("body is not UTF-8: {0}")]
    Utf8(String),
    #[error("malformed XML at byte {position}: {reason}")]
    Xml { position: u64, reason: String },
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("unsupported Content-Type {0:?}: use application/xml or application/json")]
    ContentType(String),
    #[error("no MeterReadings or EndDeviceEvents found in the document")]
    Empty,
    #[error("{0}")]
    Invalid(String),
}

/// A namespace-agnostic element.
#[derive(Debug, Default, Clone)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Element>,
    text: String,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Text at a `/`-separated path of child names; the last step may be an attribute.
    fn get(&self, path: &str) -> Option<String> {
        let mut cur = self;
        let steps: Vec<&str> = path.split('/').collect();
        for (i, step) in steps.iter().enumerate() {
            if let Some(c) = cur.child(step) {
                cur = c;
            } else if i + 1 == steps.len() {
                return cur
                    .attrs
                    .iter()
                    .find(|(k, _)| k == step)
                    .map(|(_, v)| v.trim().to_string())
                    .filter(|v| !v.is_empty());
            } else {
                return None;
            }
        }
        let t = cur.text.trim();
        (!t.is_empty()).then(|| t.to_string())
    }

    /// Depth-first search for every element with the name.
    fn find_all<'a>(&'a self, name: &str, out: &mut Vec<&'a Element>) {
        if self.name == name {
            out.push(self);
            return;
        }
        for c in &self.children {
            c.find_all(name, out);
        }
    }
}

fn local(name: &str) -> String {
    name.rsplit(':').next().unwrap_or(name).to_string()
}

fn parse_xml(text: &str) -> Result<Element, IngestError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut stack: Vec<Element> = vec![Element {
        name: "#document".into(),
        ..Default::default()
    }];
    let xml_err = |reader: &quick_xml::Reader<&[u8]>, e: String| IngestError::Xml {
        position: reader.buffer_position(),
        reason: e,
    };
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| xml_err(&reader, e.to_string()))?;
        match ev {
            Event::Start(e) => {
                let mut el = Element {
                    name: local(e.local_name().as_ref()),
                    ..Default::default()
                };
                for a in e.attributes() {
                    let a = a.map_err(|err| xml_err(&reader, err.to_string()))?;
                    let v = a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|err| xml_err(&reader, err.to_string()))?;
                    el.attrs
                        .push((local(a.key.local_name().as_ref()), v.into_owned()));
                }
                stack.push(el);
            }
            Event::Empty(e) => {
                let mut el = Element {
                    name: local(e.local_name().as_ref()),
                    ..Default::default()
                };
                for a in e.attributes() {
                    let a = a.map_err(|err| xml_err(&reader, err.to_string()))?;
                    let v = a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|err| xml_err(&reader, err.to_string()))?;
                    el.attrs
                        .push((local(a.key.local_name().as_ref()), v.into_owned()));
                }
                if let Some(parent) = stack.last_mut() {
                    parent.children.push(el);
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| xml_err(&reader, "unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Err(xml_err(&reader, "unbalanced end tag".into())),
                }
            }
            Event::Text(t) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&t.into_inner());
                }
            }
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(c),
                    Ok(None) => match r.xml10_content().as_ref() {
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "amp" => Some('&'),
                        "apos" => Some('\''),
                        "quot" => Some('"'),
                        other => return Err(xml_err(&reader, format!("unknown entity &{other};"))),
                    },
                    Err(e) => return Err(xml_err(&reader, e.to_string())),
                };
                if let (Some(c), Some(cur)) = (ch, stack.last_mut()) {
                    cur.text.push(c);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if stack.len() != 1 {
        let open = stack.last().map(|e| e.name.clone()).unwrap_or_default();
        return Err(IngestError::Xml {
            position: reader.buffer_position(),
            reason: format!("document ends inside <{open}>"),
        });
    }
    let doc = stack.pop().unwrap_or_default();
    if doc.children.is_empty() {
        return Err(IngestError::Xml {
            position: 0,
            reason: "no root element".into(),
        });
    }
    Ok(doc)
}

fn json_to_element(name: &str, v: &serde_json::Value) -> Vec<Element> {
    use serde_json::Value;
    match v {
        Value::Array(items) => items
            .iter()
            .flat_map(|i| json_to_element(name, i))
            .collect(),
        Value::Object(map) => {
            let mut el = Element {
                name: name.to_string(),
                ..Default::default()
            };
            for (k, v) in map {
                match v {
                    Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        el.attrs.push((k.clone(), text.clone()));
                        el.children.push(Element {
                            name: k.clone(),
                            text,
                            ..Default::default()
                        });
                    }
                    Value::Null => {}
                    _ => el.children.extend(json_to_element(k, v)),
                }
            }
            vec![el]
        }
        Value::String(s) => vec![Element {
            name: name.to_string(),
            text: s.clone(),
            ..Default::default()
        }],
        Value::Number(n) => vec![Element {
            name: name.to_string(),
            text: n.to_string(),
            ..Default::default()
        }],
        Value::Bool(b) => vec![Element {
            name: name.to_string(),
            text: b.to_string(),
            ..Default::default()
        }],
        Value::Null => Vec::new(),
    }
}

/// Unit from the CIM reading type code (`macroPeriod.aggregate....multiplier.uom.phase`): field 16 is
/// the power-of-ten multiplier, field 17 the unit of measure.
pub fn unit_from_reading_type(rt: &str) -> Option<String> {
    let parts: Vec<&str> = rt.split('.').collect();
    if parts.len() < 17 {
        return None;
    }
    let uom = match parts[16] {
        "72" => "Wh",
        "73" => "VArh",
        "71" => "VAh",
        "38" => "W",
        "63" => "VAr",
        "61" => "VA",
        "29" => "V",
        "5" => "A",
        "33" => "Hz",
        "42" => "m3",
        _ => return None,
    };
    let mult = match parts[15] {
        "0" => "",
        "3" => "k",
        "6" => "M",
        "9" => "G",
        "-3" => "m",
        _ => return None,
    };
    Some(format!("{mult}{uom}"))
}

fn normalize_ts(s: &str, what: &str) -> Result<String, IngestError> {
    parse_rfc3339(s)
        .map(rfc3339_millis)
        .map_err(|e| IngestError::Invalid(format!("{what}: timestamp {s:?} is not RFC 3339: {e}")))
}

fn meter_serial(el: &Element) -> Option<String> {
    el.get("Meter/Names/name")
        .or_else(|| el.get("Meter/mRID"))
        .or_else(|| el.get("EndDevice/Names/name"))
        .or_else(|| el.get("EndDevice/mRID"))
        .or_else(|| el.get("Assets/Names/name"))
        .or_else(|| el.get("Assets/mRID"))
        .or_else(|| el.get("UsagePoint/mRID"))
}

fn reading_event(
    serial: &str,
    el: &Element,
    reading_type: Option<String>,
    what: &str,
    correlation: &Option<String>,
) -> Result<NormalizedEvent, IngestError> {
    let rt = el
        .get("ReadingType/ref")
        .or_else(|| el.get("ReadingType/mRID"))
        .or_else(|| el.get("ReadingType"))
        .or(reading_type)
        .ok_or_else(|| IngestError::Invalid(format!("{what}: missing ReadingType ref")))?;
    let ts = el
        .get("timeStamp")
        .ok_or_else(|| IngestError::Invalid(format!("{what}: missing timeStamp")))?;
    let raw = el
        .get("value")
        .ok_or_else(|| IngestError::Invalid(format!("{what}: missing value")))?;
    let value: f64 = raw
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite())
        .ok_or_else(|| IngestError::Invalid(format!("{what}: value {raw:?} is not a number")))?;
    Ok(NormalizedEvent {
        kind: EventKind::Reading,
        serial_number: serial.to_string(),
        timestamp: normalize_ts(&ts, what)?,
        unit: el.get("unit").or_else(|| unit_from_reading_type(&rt)),
        reading_type: Some(rt),
        value: Some(value),
        event_type: None,
        reason: el.get("reason"),
        correlation_id: correlation.clone(),
    })
}

fn walk(doc: &Element) -> Result<Vec<NormalizedEvent>, IngestError> {
    let correlation = {
        let mut hs = Vec::new();
        doc.find_all("Header", &mut hs);
        hs.first()
            .and_then(|h| h.get("MessageID").or_else(|| h.get("CorrelationID")))
    };
    let mut out = Vec::new();
    let mut readings = Vec::new();
    doc.find_all("MeterReading", &mut readings);
    for (i, mr) in readings.iter().enumerate() {
        let what = format!("MeterReading[{i}]");
        let serial = meter_serial(mr).ok_or_else(|| {
            IngestError::Invalid(format!("{what}: missing Meter/mRID or Meter/Names/name"))
        })?;
        let before = out.len();
        for (j, r) in mr.children_named("Readings").enumerate() {
            out.push(reading_event(
                &serial,
                r,
                None,
                &format!("{what}.Readings[{j}]"),
                &correlation,
            )?);
        }
        for (j, block) in mr.children_named("IntervalBlocks").enumerate() {
            let rt = block
                .get("ReadingType/ref")
                .or_else(|| block.get("ReadingType"));
            for (k, r) in block.children_named("IntervalReadings").enumerate() {
                out.push(reading_event(
                    &serial,
                    r,
                    rt.clone(),
                    &format!("{what}.IntervalBlocks[{j}].IntervalReadings[{k}]"),
                    &correlation,
                )?);
            }
        }
        if out.len() == before {
            return Err(IngestError::Invalid(format!(
                "{what}: no Readings or IntervalBlocks/IntervalReadings"
            )));
        }
    }
    let mut events = Vec::new();
    doc.find_all("EndDeviceEvent", &mut events);
    for (i, ev) in events.iter().enumerate() {
        let what = format!("EndDeviceEvent[{i}]");
        let serial = meter_serial(ev).ok_or_else(|| {
            IngestError::Invalid(format!(
                "{what}: missing Assets/mRID, EndDevice/mRID or Names/name"
            ))
        })?;
        let event_type = ev
            .get("EndDeviceEventType/ref")
            .or_else(|| ev.get("EndDeviceEventType"))
            .ok_or_else(|| {
                IngestError::Invalid(format!("{what}: missing EndDeviceEventType ref"))
            })?;
        let ts = ev
            .get("createdDateTime")
            .ok_or_else(|| IngestError::Invalid(format!("{what}: missing createdDateTime")))?;
        out.push(NormalizedEvent {
            kind: EventKind::EndDeviceEvent,
            serial_number: serial,
            timestamp: normalize_ts(&ts, &what)?,
            reading_type: None,
            value: None,
            unit: None,
            event_type: Some(event_type),
            reason: ev.get("reason"),
            correlation_id: ev.get("mRID").or_else(|| correlation.clone()),
        });
    }
    if out.is_empty() {
        return Err(IngestError::Empty);
    }
    Ok(out)
}

/// Parses an XML document.
pub fn parse_xml_events(body: &[u8]) -> Result<Vec<NormalizedEvent>, IngestError> {
    let text = std::str::from_utf8(body).map_err(|e| IngestError::Utf8(e.to_string()))?;
    walk(&parse_xml(text)?)
}

/// Parses a JSON body: normalized events, or the IEC structures as JSON.
pub fn parse_json_events(body: &[u8]) -> Result<Vec<NormalizedEvent>, IngestError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| IngestError::Json(e.to_string()))?;
    let direct = match &v {
        serde_json::Value::Array(_) => Some(v.clone()),
        serde_json::Value::Object(m) if m.contains_key("events") => m.get("events").cloned(),
        serde_json::Value::Object(m) if m.contains_key("kind") => {
            Some(serde_json::Value::Array(vec![v.clone()]))
        }
        _ => None,
    };
    let events = match direct {
        Some(list) => {
            let events: Vec<NormalizedEvent> = serde_json::from_value(list)
                .map_err(|e| IngestError::Json(format!("not a list of normalized events: {e}")))?;
            let mut out = Vec::with_capacity(events.len());
            for (i, mut ev) in events.into_iter().enumerate() {
                ev.validate()
                    .map_err(|e| IngestError::Invalid(format!("events[{i}]: {e}")))?;
                ev.timestamp = normalize_ts(&ev.timestamp, &format!("events[{i}]"))?;
                if ev.unit.is_none() {
                    ev.unit = ev.reading_type.as_deref().and_then(unit_from_reading_type);
                }
                out.push(ev);
            }
            if out.is_empty() {
                return Err(IngestError::Empty);
            }
            out
        }
        None => {
            let mut doc = Element {
                name: "#document".into(),
                ..Default::default()
            };
            doc.children = json_to_element("#root", &v);
            walk(&doc)?
        }
    };
    Ok(events)
}

/// Dispatches on Content-Type (`xml` or `json` in the media type).
pub fn parse_events(content_type: &str, body: &[u8]) -> Result<Vec<NormalizedEvent>, IngestError> {
    let ct = content_type.to_ascii_lowercase();
    if ct.contains("xml") {
        parse_xml_events(body)
    } else if ct.contains("json") {
        parse_json_events(body)
    } else {
        Err(IngestError::ContentType(content_type.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const READINGS_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<m:MeterReadings xmlns:m="http://iec.ch/TC57/2011/MeterReadings#">
  <m:MeterReading>
    <m:Meter><m:mRID>b1c2</m:mRID><m:Names><m:name>MTR-0001</m:name></m:Names></m:Meter>
    <m:Readings>
      <m:ReadingType ref="0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0"/>
      <m:timeStamp>2026-11-22T10:00:00Z</m:timeStamp>
      <m:value>12.5</m:value>
    </m:Readings>
    <m:IntervalBlocks>
      <m:ReadingType ref="0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.3.72.0"/>
      <m:IntervalReadings><m:timeStamp>2026-11-22T10:15:00+01:00</m:timeStamp><m:value>1.25</m:value></m:IntervalReadings>
      <m:IntervalReadings><m:timeStamp>2026-11-22T10:30:00Z</m:timeStamp><m:value>1.5</m:value></m:IntervalReadings>
    </m:IntervalBlocks>
  </m:MeterReading>
</m:MeterReadings>"#;

    #[test]
    fn parses_meter_readings_xml() {
        let evs = parse_events("application/xml", READINGS_XML.as_bytes()).expect("valid");
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0].serial_number, "MTR-0001");
        assert_eq!(evs[0].value, Some(12.5));
        assert_eq!(evs[0].unit.as_deref(), Some("kWh"));
        assert_eq!(evs[1].timestamp, "2026-11-22T09:15:00.000Z");
        assert!(evs.iter().all(|e| e.validate().is_ok()));
    }

    #[test]
    fn parses_end_device_events_xml_and_json() {
        let xml = r#"<EndDeviceEvents xmlns="http://iec.ch/TC57/2011/EndDeviceEvents#">
  <EndDeviceEvent><mRID>evt-1</mRID><createdDateTime>2026-11-22T10:00:00Z</createdDateTime>
    <reason>cover opened &amp; closed</reason>
    <Assets><mRID>MTR-0002</mRID></Assets><EndDeviceEventType ref="3.26.0.185"/></EndDeviceEvent>
</EndDeviceEvents>"#;
        let evs = parse_events("text/xml; charset=utf-8", xml.as_bytes()).expect("valid");
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].kind, EventKind::EndDeviceEvent);
        assert_eq!(evs[0].event_type.as_deref(), Some("3.26.0.185"));
        assert_eq!(evs[0].reason.as_deref(), Some("cover opened & closed"));
        assert_eq!(evs[0].correlation_id.as_deref(), Some("evt-1"));

        let json = br#"{"EndDeviceEvents": {"EndDeviceEvent": [{"mRID": "e2",
            "createdDateTime": "2026-11-22T10:00:00Z", "Assets": {"mRID": "MTR-0003"},
            "EndDeviceEventType": {"ref": "3.26.0.185"}}]}}"#;
        let evs = parse_events("application/json", json).expect("valid");
        assert_eq!(evs[0].serial_number, "MTR-0003");
    }

    #[test]
    fn json_normalized_events_pass_through() {
        let json = br#"{"kind":"reading","serialNumber":"S1","timestamp":"2026-11-22T10:00:00Z",
            "readingType":"0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0","value":3}"#;
        let evs = parse_events("application/json", json).expect("valid");
        assert_eq!(evs[0].unit.as_deref(), Some("kWh"));
    }

    #[test]
    fn malformed_inputs_name_the_problem() {
        let e = parse_events(
            "application/xml",
            b"<MeterReadings><MeterReading></MeterReadings>",
        )
        .expect_err("mismatched tags");
        assert!(matches!(e, IngestError::Xml { .. }), "{e}");
        let e = parse_events("application/xml", b"<MeterReadings>").expect_err("unclosed");
        assert!(e.to_string().contains("MeterReadings"), "{e}");
        let e = parse_events("application/json", b"{\"kind\": ").expect_err("bad json");
        assert!(e.to_string().starts_with("malformed JSON"), "{e}");
        let bad_value = READINGS_XML.replace("12.5", "twelve");
        let e = parse_events("application/xml", bad_value.as_bytes()).expect_err("bad value");
        assert!(e.to_string().contains("twelve"), "{e}");
        let e = parse_events("text/plain", b"x").expect_err("content type");
        assert!(matches!(e, IngestError::ContentType(_)));
        let e = parse_events("application/xml", b"<Other/>").expect_err("empty");
        assert_eq!(e, IngestError::Empty);
    }
}
