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
    /// Bytes the event holds in its strings (what a document's events cost beyond their count).
    pub fn string_bytes(&self) -> usize {
        [
            Some(&self.serial_number),
            Some(&self.timestamp),
            self.reading_type.as_ref(),
            self.unit.as_ref(),
            self.event_type.as_ref(),
            self.reason.as_ref(),
            self.correlation_id.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(String::len)
        .sum()
    }

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

/// Bounds on one ingest body (contract: ingest API, `ingest.limits` in config.json). Every count
/// is checked while the document is read, before the work or allocation that grows with it, so the
/// largest accepted document keeps the connector well inside its memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "LimitsConfig")]
pub struct Limits {
    /// Bytes of the request body (`413` above it).
    pub max_body_bytes: usize,
    /// Nesting of elements (XML) or of objects and arrays (JSON); the root is depth 1.
    pub max_depth: usize,
    /// Elements and attributes together (XML); values and object members (JSON).
    pub max_elements: usize,
    /// Attributes of one element (XML).
    pub max_attributes: usize,
    /// Bytes of text of one element (XML) or of one string (JSON).
    pub max_text_bytes: usize,
    /// Normalized events from one document.
    pub max_events: usize,
}

/// The highest `maxDepth` a config may set: serde_json's own recursion limit, and what keeps the
/// stack use of the (depth-recursive) JSON conversion small.
pub const MAX_DEPTH_CEILING: usize = 128;
/// The highest `maxBodyBytes` a config may set.
pub const MAX_BODY_CEILING: usize = 64 << 20;

impl Default for Limits {
    /// Sized for the connector's 128 MiB memory limit: a parse at these limits raises a small
    /// process's peak RSS to at most about 30 MiB, body included (`examples/ingest_limits.rs`:
    /// 100,000 XML elements or JSON members, 10,000 events), and the connector parses two
    /// documents at a time. 10,000 events take about 80,000 nodes and 2.1 MiB of XML.
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_depth: 32,
            max_elements: 100_000,
            max_attributes: 32,
            max_text_bytes: 64 << 10,
            max_events: 10_000,
        }
    }
}

/// `ingest.limits` as written in config.json: every field optional (default above), unknown
/// fields refused so a misspelt limit cannot be silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LimitsConfig {
    max_body_bytes: Option<usize>,
    max_depth: Option<usize>,
    max_elements: Option<usize>,
    max_attributes: Option<usize>,
    max_text_bytes: Option<usize>,
    max_events: Option<usize>,
}

impl TryFrom<LimitsConfig> for Limits {
    type Error = String;

    fn try_from(c: LimitsConfig) -> Result<Self, String> {
        let d = Limits::default();
        let pick = |name: &str, v: Option<usize>, default: usize, ceiling: usize| match v {
            None => Ok(default),
            Some(v) if (1..=ceiling).contains(&v) => Ok(v),
            Some(v) => Err(format!(
                "ingest.limits.{name} {v} is out of range (1..={ceiling})"
            )),
        };
        Ok(Self {
            max_body_bytes: pick(
                "maxBodyBytes",
                c.max_body_bytes,
                d.max_body_bytes,
                MAX_BODY_CEILING,
            )?,
            max_depth: pick("maxDepth", c.max_depth, d.max_depth, MAX_DEPTH_CEILING)?,
            max_elements: pick("maxElements", c.max_elements, d.max_elements, usize::MAX)?,
            max_attributes: pick(
                "maxAttributes",
                c.max_attributes,
                d.max_attributes,
                usize::MAX,
            )?,
            max_text_bytes: pick(
                "maxTextBytes",
                c.max_text_bytes,
                d.max_text_bytes,
                usize::MAX,
            )?,
            max_events: pick("maxEvents", c.max_events, d.max_events, usize::MAX)?,
        })
    }
}

/// Why an ingest body was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IngestError {
    #[error("body exceeds maxBodyBytes {max}")]
    BodyTooLarge { max: usize },
    /// A bound of [`Limits`] other than the body size; `limit` is its config.json name.
    #[error("document exceeds {limit} {max}{}", at_byte(*.position))]
    Limit {
        limit: &'static str,
        max: usize,
        position: Option<u64>,
    },
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

fn at_byte(position: Option<u64>) -> String {
    position
        .map(|p| format!(" at byte {p}"))
        .unwrap_or_default()
}

impl IngestError {
    /// The HTTP status for the refusal: `413` for a body over `maxBodyBytes`, else `400`.
    pub fn status(&self) -> http::StatusCode {
        match self {
            IngestError::BodyTooLarge { .. } => http::StatusCode::PAYLOAD_TOO_LARGE,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

fn over(limit: &'static str, max: usize, position: Option<u64>) -> IngestError {
    IngestError::Limit {
        limit,
        max,
        position,
    }
}

/// A namespace-agnostic element.
#[derive(Debug, Default, Clone)]
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    children: Vec<Element>,
    text: String,
}

impl Drop for Element {
    /// Iterative, so that dropping a tree never recurses once per level (the depth limit bounds
    /// the tree anyway; this keeps the stack flat whatever the limit).
    fn drop(&mut self) {
        let mut pending = std::mem::take(&mut self.children);
        while let Some(mut c) = pending.pop() {
            pending.append(&mut c.children);
        }
    }
}

impl Element {
    fn named(name: impl Into<String>) -> Self {
        Self::leaf(name, String::new())
    }

    fn leaf(name: impl Into<String>, text: String) -> Self {
        Self {
            name: name.into(),
            attrs: Vec::new(),
            children: Vec::new(),
            text,
        }
    }

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

    /// Every element with the name, in document order, not looking inside a match. Iterative:
    /// the stack use does not grow with the depth of the tree.
    fn find_all<'a>(&'a self, name: &str) -> Vec<&'a Element> {
        let mut out = Vec::new();
        let mut pending = vec![self];
        while let Some(el) = pending.pop() {
            if el.name == name {
                out.push(el);
            } else {
                pending.extend(el.children.iter().rev());
            }
        }
        out
    }
}

fn local(name: &str) -> String {
    name.rsplit(':').next().unwrap_or(name).to_string()
}

/// Counts elements and attributes of an XML document against the limits.
struct XmlBudget<'l> {
    limits: &'l Limits,
    nodes: usize,
}

impl XmlBudget<'_> {
    fn node(&mut self, position: u64) -> Result<(), IngestError> {
        self.nodes += 1;
        if self.nodes > self.limits.max_elements {
            return Err(over(
                "maxElements",
                self.limits.max_elements,
                Some(position),
            ));
        }
        Ok(())
    }

    /// A new element at `depth` (root: 1) with its attributes, each counted before it is kept.
    fn element(
        &mut self,
        e: &quick_xml::events::BytesStart<'_>,
        depth: usize,
        position: u64,
    ) -> Result<Element, IngestError> {
        if depth > self.limits.max_depth {
            return Err(over("maxDepth", self.limits.max_depth, Some(position)));
        }
        self.node(position)?;
        let mut el = Element::named(local(e.local_name().as_ref()));
        for a in e.attributes() {
            let a = a.map_err(|err| IngestError::Xml {
                position,
                reason: err.to_string(),
            })?;
            if el.attrs.len() >= self.limits.max_attributes {
                return Err(over(
                    "maxAttributes",
                    self.limits.max_attributes,
                    Some(position),
                ));
            }
            self.node(position)?;
            if a.value.len() > self.limits.max_text_bytes {
                return Err(over(
                    "maxTextBytes",
                    self.limits.max_text_bytes,
                    Some(position),
                ));
            }
            let v = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|err| IngestError::Xml {
                    position,
                    reason: err.to_string(),
                })?;
            el.attrs
                .push((local(a.key.local_name().as_ref()), v.into_owned()));
        }
        Ok(el)
    }
}

/// Appends text to the element being read, within `maxTextBytes`.
fn push_text(
    cur: Option<&mut Element>,
    piece: &str,
    limits: &Limits,
    position: u64,
) -> Result<(), IngestError> {
    if let Some(cur) = cur {
        if cur.text.len().saturating_add(piece.len()) > limits.max_text_bytes {
            return Err(over("maxTextBytes", limits.max_text_bytes, Some(position)));
        }
        cur.text.push_str(piece);
    }
    Ok(())
}

fn parse_xml(text: &str, limits: &Limits) -> Result<Element, IngestError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut budget = XmlBudget { limits, nodes: 0 };
    // The document node, then one entry per open element: the depth of a new element is the
    // length before it is pushed.
    let mut stack: Vec<Element> = vec![Element::named("#document")];
    let xml_err = |reader: &quick_xml::Reader<&[u8]>, e: String| IngestError::Xml {
        position: reader.buffer_position(),
        reason: e,
    };
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| xml_err(&reader, e.to_string()))?;
        let position = reader.buffer_position();
        match ev {
            Event::Start(e) => {
                let el = budget.element(&e, stack.len(), position)?;
                stack.push(el);
            }
            Event::Empty(e) => {
                let el = budget.element(&e, stack.len(), position)?;
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
                // Indentation between elements is never read (values are trimmed): not kept,
                // so it does not count against the element's text either.
                if t.bytes().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                if t.len() > limits.max_text_bytes {
                    return Err(over("maxTextBytes", limits.max_text_bytes, Some(position)));
                }
                push_text(stack.last_mut(), &t.xml10_content(), limits, position)?;
            }
            Event::CData(t) => {
                if t.len() > limits.max_text_bytes {
                    return Err(over("maxTextBytes", limits.max_text_bytes, Some(position)));
                }
                push_text(stack.last_mut(), &t.into_inner(), limits, position)?;
            }
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => match r.xml10_content().as_ref() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => return Err(xml_err(&reader, format!("unknown entity &{other};"))),
                    },
                    Err(e) => return Err(xml_err(&reader, e.to_string())),
                };
                push_text(
                    stack.last_mut(),
                    ch.encode_utf8(&mut [0; 4]),
                    limits,
                    position,
                )?;
            }
            // No DTD: no entity declarations, so nothing can expand (billion laughs) and no
            // external entity is ever looked at.
            Event::DocType(_) => {
                return Err(xml_err(
                    &reader,
                    "DOCTYPE is not allowed (no DTDs or entity declarations)".into(),
                ))
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

/// Checks a JSON body's shape against the limits before any value is built: one pass over the
/// bytes, no allocation. Nesting of objects and arrays against `maxDepth`; values (one plus
/// every `{`, `[` and `,` outside strings: at least the number of values and members) against
/// `maxElements`; each string's raw length against `maxTextBytes`. Syntax is left to the parser
/// that follows.
fn check_json_shape(body: &[u8], limits: &Limits) -> Result<(), IngestError> {
    let (mut depth, mut nodes) = (0usize, 1usize);
    let (mut in_string, mut escaped, mut string_len) = (false, false, 0usize);
    for (i, &b) in body.iter().enumerate() {
        let at = Some(i as u64);
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                continue;
            }
            string_len += 1;
            if string_len > limits.max_text_bytes {
                return Err(over("maxTextBytes", limits.max_text_bytes, at));
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                string_len = 0;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > limits.max_depth {
                    return Err(over("maxDepth", limits.max_depth, at));
                }
                nodes += 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => nodes += 1,
            _ => continue,
        }
        if nodes > limits.max_elements {
            return Err(over("maxElements", limits.max_elements, at));
        }
    }
    Ok(())
}

/// The IEC structures as JSON, as elements: objects and arrays become child elements, scalar
/// members attributes (which [`Element::get`] reads as the last step of a path, like a child's
/// text). Consumes the value, so its memory is handed over rather than copied. Recursion is
/// bounded by `maxDepth` (checked before the value was built).
fn json_to_element(name: &str, v: serde_json::Value, out: &mut Vec<Element>) {
    use serde_json::Value;
    let scalar = |v: Value| match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match v {
        Value::Array(items) => {
            for i in items {
                json_to_element(name, i, out);
            }
        }
        Value::Object(map) => {
            let mut el = Element::named(name);
            for (k, v) in map {
                match v {
                    Value::Array(_) | Value::Object(_) => json_to_element(&k, v, &mut el.children),
                    Value::Null => {}
                    scalar_value => {
                        if let Some(text) = scalar(scalar_value) {
                            el.attrs.push((k, text));
                        }
                    }
                }
            }
            out.push(el);
        }
        other => {
            if let Some(text) = scalar(other) {
                out.push(Element::leaf(name, text));
            }
        }
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

/// Longest serial number (device-hub accepts 1..128 bytes).
pub const MAX_SERIAL_BYTES: usize = 128;
/// Longest identifier that is copied into every event of its scope: a ReadingType, the header's
/// MessageID/CorrelationID, an EndDeviceEventType. Without it a document's few long values would be
/// multiplied by its event count (a 1 MiB body could become GiBs of events).
pub const MAX_ID_BYTES: usize = 256;

/// `value` when it is at most `max` bytes, else `400` naming where and which field.
fn bounded(value: String, max: usize, what: &str, field: &str) -> Result<String, IngestError> {
    if value.len() > max {
        return Err(IngestError::Invalid(format!(
            "{what}: {field} is {} bytes, more than {max}",
            value.len()
        )));
    }
    Ok(value)
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
    let rt = bounded(rt, MAX_ID_BYTES, what, "ReadingType")?;
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

/// Collects the events of a document, at most `maxEvents`.
struct Events {
    out: Vec<NormalizedEvent>,
    max: usize,
}

impl Events {
    fn push(&mut self, ev: NormalizedEvent) -> Result<(), IngestError> {
        if self.out.len() >= self.max {
            return Err(over("maxEvents", self.max, None));
        }
        self.out.push(ev);
        Ok(())
    }
}

fn walk(doc: &Element, limits: &Limits) -> Result<Vec<NormalizedEvent>, IngestError> {
    let correlation = doc
        .find_all("Header")
        .first()
        .and_then(|h| h.get("MessageID").or_else(|| h.get("CorrelationID")))
        .map(|id| bounded(id, MAX_ID_BYTES, "Header", "MessageID/CorrelationID"))
        .transpose()?;
    let mut out = Events {
        out: Vec::new(),
        max: limits.max_events,
    };
    for (i, mr) in doc.find_all("MeterReading").iter().enumerate() {
        let what = format!("MeterReading[{i}]");
        let serial = meter_serial(mr).ok_or_else(|| {
            IngestError::Invalid(format!("{what}: missing Meter/mRID or Meter/Names/name"))
        })?;
        let serial = bounded(serial, MAX_SERIAL_BYTES, &what, "serialNumber")?;
        let before = out.out.len();
        for (j, r) in mr.children_named("Readings").enumerate() {
            out.push(reading_event(
                &serial,
                r,
                None,
                &format!("{what}.Readings[{j}]"),
                &correlation,
            )?)?;
        }
        for (j, block) in mr.children_named("IntervalBlocks").enumerate() {
            let rt = block
                .get("ReadingType/ref")
                .or_else(|| block.get("ReadingType"))
                .map(|rt| {
                    let at = format!("{what}.IntervalBlocks[{j}]");
                    bounded(rt, MAX_ID_BYTES, &at, "ReadingType")
                })
                .transpose()?;
            for (k, r) in block.children_named("IntervalReadings").enumerate() {
                out.push(reading_event(
                    &serial,
                    r,
                    rt.clone(),
                    &format!("{what}.IntervalBlocks[{j}].IntervalReadings[{k}]"),
                    &correlation,
                )?)?;
            }
        }
        if out.out.len() == before {
            return Err(IngestError::Invalid(format!(
                "{what}: no Readings or IntervalBlocks/IntervalReadings"
            )));
        }
    }
    for (i, ev) in doc.find_all("EndDeviceEvent").iter().enumerate() {
        let what = format!("EndDeviceEvent[{i}]");
        let serial = meter_serial(ev).ok_or_else(|| {
            IngestError::Invalid(format!(
                "{what}: missing Assets/mRID, EndDevice/mRID or Names/name"
            ))
        })?;
        let serial = bounded(serial, MAX_SERIAL_BYTES, &what, "serialNumber")?;
        let event_type = ev
            .get("EndDeviceEventType/ref")
            .or_else(|| ev.get("EndDeviceEventType"))
            .ok_or_else(|| {
                IngestError::Invalid(format!("{what}: missing EndDeviceEventType ref"))
            })?;
        let event_type = bounded(event_type, MAX_ID_BYTES, &what, "EndDeviceEventType")?;
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
        })?;
    }
    if out.out.is_empty() {
        return Err(IngestError::Empty);
    }
    Ok(out.out)
}

fn check_body_size(body: &[u8], limits: &Limits) -> Result<(), IngestError> {
    if body.len() > limits.max_body_bytes {
        return Err(IngestError::BodyTooLarge {
            max: limits.max_body_bytes,
        });
    }
    Ok(())
}

/// Parses an XML document within the limits.
pub fn parse_xml_events(body: &[u8], limits: &Limits) -> Result<Vec<NormalizedEvent>, IngestError> {
    check_body_size(body, limits)?;
    let text = std::str::from_utf8(body).map_err(|e| IngestError::Utf8(e.to_string()))?;
    walk(&parse_xml(text, limits)?, limits)
}

/// Parses a JSON body within the limits: normalized events, or the IEC structures as JSON.
pub fn parse_json_events(
    body: &[u8],
    limits: &Limits,
) -> Result<Vec<NormalizedEvent>, IngestError> {
    use serde_json::Value;
    check_body_size(body, limits)?;
    check_json_shape(body, limits)?;
    let v: Value = serde_json::from_slice(body).map_err(|e| IngestError::Json(e.to_string()))?;
    let direct = match v {
        Value::Array(items) => Ok(Value::Array(items)),
        Value::Object(mut m) if m.contains_key("events") => {
            Ok(m.remove("events").unwrap_or(Value::Null))
        }
        Value::Object(m) if m.contains_key("kind") => Ok(Value::Array(vec![Value::Object(m)])),
        other => Err(other),
    };
    match direct {
        Ok(list) => {
            if let Value::Array(items) = &list {
                if items.len() > limits.max_events {
                    return Err(over("maxEvents", limits.max_events, None));
                }
            }
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
            Ok(out)
        }
        Err(v) => {
            let mut doc = Element::named("#document");
            json_to_element("#root", v, &mut doc.children);
            walk(&doc, limits)
        }
    }
}

/// Dispatches on Content-Type (`xml` or `json` in the media type). The body size is checked
/// first, then every other limit while the document is read.
pub fn parse_events(
    content_type: &str,
    body: &[u8],
    limits: &Limits,
) -> Result<Vec<NormalizedEvent>, IngestError> {
    check_body_size(body, limits)?;
    let ct = content_type.to_ascii_lowercase();
    if ct.contains("xml") {
        parse_xml_events(body, limits)
    } else if ct.contains("json") {
        parse_json_events(body, limits)
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

    /// A value shared by many events (the meter's serial, the interval block's ReadingType, the
    /// header's MessageID) is copied into each of them: at maxTextBytes each, 10,000 interval
    /// readings of a 1 MiB document became about 2 GiB of events. Such values are identifiers and
    /// are refused beyond their contract length (serial 128 bytes, others 256), so the events
    /// never take more than the body plus about 1 KiB each.
    #[test]
    fn shared_values_are_not_amplified_into_every_event() {
        let long = "9".repeat(60_000);
        let reading = "<IntervalReadings><timeStamp>2026-11-22T10:15:00Z</timeStamp><value>1</value></IntervalReadings>";
        let doc = |serial: &str, rt: &str, id: &str, n: usize| {
            format!(
                "<MeterReadings><Header><MessageID>{id}</MessageID></Header><MeterReading><Meter><Names><name>{serial}</name></Names></Meter><IntervalBlocks><ReadingType ref=\"{rt}\"/>{}</IntervalBlocks></MeterReading></MeterReadings>",
                reading.repeat(n)
            )
        };
        let rt = "0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.3.72.0";
        let limits = Limits::default();
        for (what, body) in [
            ("serialNumber", doc(&long, rt, "m-1", 2_000)),
            ("ReadingType", doc("MTR-1", &long, "m-1", 2_000)),
            ("MessageID", doc("MTR-1", rt, &long, 2_000)),
        ] {
            match parse_events("application/xml", body.as_bytes(), &limits) {
                Ok(events) => {
                    let bytes: usize = events.iter().map(NormalizedEvent::string_bytes).sum();
                    assert!(
                        bytes <= body.len() + events.len() * 1024,
                        "{what}: a {} byte body became {bytes} bytes of events",
                        body.len()
                    );
                }
                Err(e) => {
                    assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
                    assert!(e.to_string().contains(what), "{what}: {e}");
                }
            }
        }
        // At the contract lengths the document is accepted.
        let ok = doc(&"S".repeat(128), &"r".repeat(256), &"m".repeat(256), 10);
        assert_eq!(
            parse_events("application/xml", ok.as_bytes(), &limits).map(|e| e.len()),
            Ok(10)
        );
    }

    #[test]
    fn parses_meter_readings_xml() {
        let evs = parse_events(
            "application/xml",
            READINGS_XML.as_bytes(),
            &Limits::default(),
        )
        .expect("valid");
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
        let evs = parse_events(
            "text/xml; charset=utf-8",
            xml.as_bytes(),
            &Limits::default(),
        )
        .expect("valid");
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].kind, EventKind::EndDeviceEvent);
        assert_eq!(evs[0].event_type.as_deref(), Some("3.26.0.185"));
        assert_eq!(evs[0].reason.as_deref(), Some("cover opened & closed"));
        assert_eq!(evs[0].correlation_id.as_deref(), Some("evt-1"));

        let json = br#"{"EndDeviceEvents": {"EndDeviceEvent": [{"mRID": "e2",
            "createdDateTime": "2026-11-22T10:00:00Z", "Assets": {"mRID": "MTR-0003"},
            "EndDeviceEventType": {"ref": "3.26.0.185"}}]}}"#;
        let evs = parse_events("application/json", json, &Limits::default()).expect("valid");
        assert_eq!(evs[0].serial_number, "MTR-0003");
    }

    #[test]
    fn json_normalized_events_pass_through() {
        let json = br#"{"kind":"reading","serialNumber":"S1","timestamp":"2026-11-22T10:00:00Z",
            "readingType":"0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.3.72.0","value":3}"#;
        let evs = parse_events("application/json", json, &Limits::default()).expect("valid");
        assert_eq!(evs[0].unit.as_deref(), Some("kWh"));
    }

    #[test]
    fn malformed_inputs_name_the_problem() {
        let e = parse_events(
            "application/xml",
            b"<MeterReadings><MeterReading></MeterReadings>",
            &Limits::default(),
        )
        .expect_err("mismatched tags");
        assert!(matches!(e, IngestError::Xml { .. }), "{e}");
        let e = parse_events("application/xml", b"<MeterReadings>", &Limits::default())
            .expect_err("unclosed");
        assert!(e.to_string().contains("MeterReadings"), "{e}");
        let e = parse_events("application/json", b"{\"kind\": ", &Limits::default())
            .expect_err("bad json");
        assert!(e.to_string().starts_with("malformed JSON"), "{e}");
        let bad_value = READINGS_XML.replace("12.5", "twelve");
        let e = parse_events("application/xml", bad_value.as_bytes(), &Limits::default())
            .expect_err("bad value");
        assert!(e.to_string().contains("twelve"), "{e}");
        let e = parse_events("text/plain", b"x", &Limits::default()).expect_err("content type");
        assert!(matches!(e, IngestError::ContentType(_)));
        let e =
            parse_events("application/xml", b"<Other/>", &Limits::default()).expect_err("empty");
        assert_eq!(e, IngestError::Empty);
    }

    /// Runs `f` on a thread with a 256 KiB stack (a tokio worker has 2 MiB): recursion that
    /// grows with the document would overflow it and abort the test process.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("no panic")
    }

    fn limit_of(e: &IngestError) -> Option<(&'static str, usize)> {
        match e {
            IngestError::Limit { limit, max, .. } => Some((limit, *max)),
            _ => None,
        }
    }

    fn end_device_events_xml(n: usize) -> String {
        let one = r#"<EndDeviceEvent><mRID>e</mRID><createdDateTime>2026-11-22T10:00:00Z</createdDateTime><Assets><mRID>MTR-1</mRID></Assets><EndDeviceEventType ref="3.26.0.185"/></EndDeviceEvent>"#;
        format!("<EndDeviceEvents>{}</EndDeviceEvents>", one.repeat(n))
    }

    /// Issue 16, item 1: `<a>` x 100,000 then `</a>` x 100,000 (700 KB) overflowed the stack of
    /// the connector's worker (recursive search and drop of the element tree) and aborted it.
    #[test]
    fn deeply_nested_xml_is_refused_at_max_depth_without_overflowing_the_stack() {
        let body = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
        let e = on_small_stack(move || {
            parse_events("application/xml", body.as_bytes(), &Limits::default())
                .expect_err("too deep")
        });
        assert_eq!(limit_of(&e), Some(("maxDepth", 32)), "{e}");
        // The 33rd `<a>` ends at byte 99.
        assert_eq!(e.to_string(), "document exceeds maxDepth 32 at byte 99");
        assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_deep_tree_drops_without_recursion() {
        on_small_stack(|| {
            let mut root = Element::named("a");
            for _ in 0..200_000 {
                let mut parent = Element::named("a");
                parent.children.push(root);
                root = parent;
            }
            assert_eq!(root.find_all("none").len(), 0);
            drop(root);
        });
    }

    #[test]
    fn deeply_nested_json_is_refused_at_max_depth() {
        for body in [
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            // Under serde_json's own recursion limit (128), over maxDepth.
            format!("{}1{}", "{\"a\":".repeat(100), "}".repeat(100)),
        ] {
            let e = on_small_stack(move || {
                parse_events("application/json", body.as_bytes(), &Limits::default())
                    .expect_err("too deep")
            });
            assert_eq!(limit_of(&e), Some(("maxDepth", 32)), "{e}");
            assert!(e
                .to_string()
                .starts_with("document exceeds maxDepth 32 at byte "));
        }
        // Brackets inside strings are text, not nesting.
        let inside = format!(
            r#"{{"kind":"endDeviceEvent","serialNumber":"S","timestamp":"2026-11-22T10:00:00Z","eventType":"1","reason":"{}"}}"#,
            "[{".repeat(1000)
        );
        parse_events("application/json", inside.as_bytes(), &Limits::default()).expect("valid");
    }

    #[test]
    fn too_many_elements_are_refused_before_they_are_kept() {
        let limits = Limits::default();
        let xml = format!("<r>{}</r>", "<x/>".repeat(100_000));
        let e = parse_events("application/xml", xml.as_bytes(), &limits).expect_err("xml");
        assert_eq!(limit_of(&e), Some(("maxElements", 100_000)), "{e}");
        // Attributes count too: 4,000 elements of 25 attributes.
        let attrs: String = (0..25).map(|i| format!(" a{i}=\"\"")).collect();
        let xml = format!("<r>{}</r>", format!("<x{attrs}/>").repeat(4_000));
        let e = parse_events("application/xml", xml.as_bytes(), &limits).expect_err("attrs");
        assert_eq!(limit_of(&e), Some(("maxElements", 100_000)), "{e}");
        let json = format!("[{}0]", "0,".repeat(100_000));
        let e = parse_events("application/json", json.as_bytes(), &limits).expect_err("json");
        assert_eq!(limit_of(&e), Some(("maxElements", 100_000)), "{e}");
    }

    #[test]
    fn too_many_attributes_on_one_element_are_refused() {
        let attrs: String = (0..33).map(|i| format!(" a{i}=\"v\"")).collect();
        let xml = format!("<MeterReadings{attrs}/>");
        let e =
            parse_events("application/xml", xml.as_bytes(), &Limits::default()).expect_err("attrs");
        assert_eq!(limit_of(&e), Some(("maxAttributes", 32)), "{e}");
    }

    #[test]
    fn too_long_text_is_refused() {
        let limits = Limits::default();
        let big = "x".repeat(64 << 10);
        let xml = format!("<r><reason>{big}y</reason></r>");
        let e = parse_events("application/xml", xml.as_bytes(), &limits).expect_err("text");
        assert_eq!(limit_of(&e), Some(("maxTextBytes", 65_536)), "{e}");
        // Split by entity references, still one element's text.
        let xml = format!("<r><reason>{}&amp;{}</reason></r>", &big[1..], "y");
        let e = parse_events("application/xml", xml.as_bytes(), &limits).expect_err("text");
        assert_eq!(limit_of(&e), Some(("maxTextBytes", 65_536)), "{e}");
        let xml = format!("<r a=\"{big}y\"/>");
        let e = parse_events("application/xml", xml.as_bytes(), &limits).expect_err("attr");
        assert_eq!(limit_of(&e), Some(("maxTextBytes", 65_536)), "{e}");
        let json = format!("{{\"reason\": \"{big}y\"}}");
        let e = parse_events("application/json", json.as_bytes(), &limits).expect_err("json");
        assert_eq!(limit_of(&e), Some(("maxTextBytes", 65_536)), "{e}");
        // Indentation between many children is not text.
        let pretty = format!("<r>{}</r>", "\n    <x/>".repeat(20_000));
        let e = parse_events("application/xml", pretty.as_bytes(), &limits).expect_err("empty");
        assert_eq!(e, IngestError::Empty);
    }

    #[test]
    fn too_many_events_are_refused() {
        let limits = Limits {
            max_events: 3,
            ..Limits::default()
        };
        let e = parse_events(
            "application/xml",
            end_device_events_xml(4).as_bytes(),
            &limits,
        )
        .expect_err("xml");
        assert_eq!(limit_of(&e), Some(("maxEvents", 3)), "{e}");
        assert_eq!(e.to_string(), "document exceeds maxEvents 3");
        let ok = parse_events(
            "application/xml",
            end_device_events_xml(3).as_bytes(),
            &limits,
        )
        .expect("at the limit");
        assert_eq!(ok.len(), 3);
        let one = r#"{"kind":"endDeviceEvent","serialNumber":"S","timestamp":"2026-11-22T10:00:00Z","eventType":"1"}"#;
        let json = format!("{{\"events\": [{}]}}", [one; 4].join(","));
        let e = parse_events("application/json", json.as_bytes(), &limits).expect_err("json");
        assert_eq!(limit_of(&e), Some(("maxEvents", 3)), "{e}");
        // The default: 10,000.
        let e = parse_events(
            "application/xml",
            end_device_events_xml(10_001).as_bytes(),
            &Limits::default(),
        )
        .expect_err("default");
        assert_eq!(limit_of(&e), Some(("maxEvents", 10_000)), "{e}");
    }

    #[test]
    fn a_body_over_max_body_bytes_is_413() {
        let limits = Limits {
            max_body_bytes: 100,
            ..Limits::default()
        };
        let body = vec![b' '; 101];
        for ct in ["application/xml", "application/json", "text/plain"] {
            let e = parse_events(ct, &body, &limits).expect_err("too large");
            assert_eq!(e, IngestError::BodyTooLarge { max: 100 });
            assert_eq!(e.to_string(), "body exceeds maxBodyBytes 100");
            assert_eq!(e.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        }
    }

    #[test]
    fn doctype_and_entity_declarations_are_refused() {
        let xml = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>
<EndDeviceEvents>&lol2;</EndDeviceEvents>"#;
        let e = parse_events("application/xml", xml.as_bytes(), &Limits::default())
            .expect_err("doctype");
        assert!(e.to_string().contains("DOCTYPE is not allowed"), "{e}");
    }

    #[test]
    fn the_largest_default_document_is_accepted() {
        let xml = end_device_events_xml(10_000);
        assert!(xml.len() < Limits::default().max_body_bytes);
        let evs = parse_events("application/xml", xml.as_bytes(), &Limits::default())
            .expect("at the limit");
        assert_eq!(evs.len(), 10_000);
    }

    #[test]
    fn limits_from_config_json() {
        let parse = |s: &str| serde_json::from_str::<Limits>(s);
        assert_eq!(parse("{}").expect("empty"), Limits::default());
        let l = parse(r#"{"maxDepth": 16, "maxBodyBytes": 1048576}"#).expect("partial");
        assert_eq!(
            l,
            Limits {
                max_depth: 16,
                max_body_bytes: 1 << 20,
                ..Limits::default()
            }
        );
        let e = parse(r#"{"maxDeph": 16}"#)
            .expect_err("misspelt")
            .to_string();
        assert!(e.contains("maxDeph"), "{e}");
        let e = parse(r#"{"maxEvents": 0}"#).expect_err("zero").to_string();
        assert!(e.contains("ingest.limits.maxEvents 0"), "{e}");
        let e = parse(r#"{"maxDepth": 129}"#).expect_err("deep").to_string();
        assert!(e.contains("ingest.limits.maxDepth 129"), "{e}");
        let e = parse(r#"{"maxBodyBytes": 67108865}"#)
            .expect_err("big")
            .to_string();
        assert!(e.contains("maxBodyBytes"), "{e}");
        // Serialized as it is read.
        let back = serde_json::to_string(&l).expect("serialize");
        assert_eq!(parse(&back).expect("round trip"), l);
    }
}
