//! smoc-service's writes, validated and planned without I/O: the single calls (`PUT` and `DELETE
//! /v1/devices/{serial}`, `POST /v1/readings`) and `POST /v1/batch`, which carries the same writes
//! (contract: smoc-service API) and is stored in one durable transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{StoreError, WriteOp};
use crate::util::{parse_rfc3339, rfc3339, rfc3339_millis};

pub const DEVICES: &str = "devices";
pub const READINGS: &str = "readings";
/// At most this many writes in one `POST /v1/batch`.
pub const MAX_BATCH_ITEMS: usize = 500;

/// A reading as posted by device-hub.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Reading {
    pub serial_number: String,
    pub timestamp: String,
    pub reading_type: String,
    pub value: f64,
    #[serde(default)]
    pub unit: Option<String>,
}

/// One write of `POST /v1/batch`, the same as the single call it names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum BatchOp {
    /// `PUT /v1/devices/{serialNumber}` with `device` as the body.
    PutDevice {
        serial_number: String,
        device: serde_json::Value,
    },
    /// `DELETE /v1/devices/{serialNumber}`.
    DeleteDevice { serial_number: String },
    /// `POST /v1/readings` with `reading` as the body.
    PostReading { reading: serde_json::Value },
}

/// A validated device for `PUT /v1/devices/{serial}`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceWrite {
    pub serial: String,
    pub device: serde_json::Value,
}

/// A validated reading and the key it is stored under.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingWrite {
    pub key: String,
    pub reading: Reading,
}

/// A validated write, ready for the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    PutDevice(DeviceWrite),
    DeleteDevice { serial: String },
    PutReading(ReadingWrite),
}

impl DeviceWrite {
    pub fn op(&self) -> Result<WriteOp, StoreError> {
        WriteOp::put_json(DEVICES, &self.serial, &self.device)
    }
}

impl ReadingWrite {
    pub fn op(&self) -> Result<WriteOp, StoreError> {
        WriteOp::put_json(READINGS, &self.key, &self.reading)
    }
}

impl Write {
    pub fn op(&self) -> Result<WriteOp, StoreError> {
        match self {
            Write::PutDevice(d) => d.op(),
            Write::DeleteDevice { serial } => Ok(WriteOp::delete(DEVICES, serial)),
            Write::PutReading(r) => r.op(),
        }
    }
}

pub fn valid_serial(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.contains('|')
}

/// The stored device for a `PUT`: the body (a JSON object) with `serialNumber` and `receivedAt`.
pub fn device_write(
    serial: &str,
    body: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<DeviceWrite, String> {
    if !valid_serial(serial) {
        return Err("invalid serial".into());
    }
    let serde_json::Value::Object(mut device) = body else {
        return Err("device must be a JSON object".into());
    };
    device.insert("serialNumber".into(), serial.into());
    device.insert("receivedAt".into(), rfc3339(now).into());
    Ok(DeviceWrite {
        serial: serial.to_string(),
        device: device.into(),
    })
}

/// The stored reading for a `POST`: validated, its timestamp normalized, and keyed so that a
/// retried delivery overwrites the same entry.
pub fn reading_write(body: serde_json::Value) -> Result<ReadingWrite, String> {
    let mut reading: Reading =
        serde_json::from_value(body).map_err(|e| format!("invalid reading JSON: {e}"))?;
    if !valid_serial(&reading.serial_number)
        || reading.reading_type.is_empty()
        || !reading.value.is_finite()
    {
        return Err("reading needs serialNumber, readingType and a finite value".into());
    }
    let t = parse_rfc3339(&reading.timestamp)
        .map_err(|e| format!("timestamp {:?} is not RFC 3339: {e}", reading.timestamp))?;
    reading.timestamp = rfc3339_millis(t);
    Ok(ReadingWrite {
        key: format!(
            "{}|{}|{}",
            reading.serial_number, reading.timestamp, reading.reading_type
        ),
        reading,
    })
}

/// One batch item, validated; the message names what is wrong (answered as that item's `400`).
pub fn batch_write(item: serde_json::Value, now: DateTime<Utc>) -> Result<Write, String> {
    let op: BatchOp = serde_json::from_value(item).map_err(|e| format!("invalid item: {e}"))?;
    match op {
        BatchOp::PutDevice {
            serial_number,
            device,
        } => device_write(&serial_number, device, now).map(Write::PutDevice),
        BatchOp::DeleteDevice { serial_number } if valid_serial(&serial_number) => {
            Ok(Write::DeleteDevice {
                serial: serial_number,
            })
        }
        BatchOp::DeleteDevice { .. } => Err("invalid serial".into()),
        BatchOp::PostReading { reading } => reading_write(reading).map(Write::PutReading),
    }
}

/// The answer for each item, as its single call would answer after the items before it:
/// `201` for a device that did not exist, `200` for one that did, `204` for a delete, `201` for a
/// reading, `400` with the message for an invalid item (which writes nothing). `stored` tells
/// whether a device exists in the store before the batch.
pub fn batch_statuses(
    writes: &[Result<Write, String>],
    stored: impl Fn(&str) -> bool,
) -> Vec<(u16, Option<String>)> {
    let mut in_batch: HashMap<&str, bool> = HashMap::new();
    writes
        .iter()
        .map(|w| match w {
            Ok(Write::PutDevice(DeviceWrite { serial, .. })) => {
                let existed = in_batch
                    .get(serial.as_str())
                    .copied()
                    .unwrap_or_else(|| stored(serial));
                in_batch.insert(serial, true);
                (if existed { 200 } else { 201 }, None)
            }
            Ok(Write::DeleteDevice { serial }) => {
                in_batch.insert(serial, false);
                (204, None)
            }
            Ok(Write::PutReading(_)) => (201, None),
            Err(e) => (400, Some(e.clone())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T05:00:00Z")
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn batch_items_are_validated_like_their_single_calls() {
        let put = batch_write(
            json!({"op": "putDevice", "serialNumber": "M-1", "device": {"state": "Provisioned"}}),
            now(),
        )
        .expect("put");
        assert_eq!(
            put,
            Write::PutDevice(DeviceWrite {
                serial: "M-1".into(),
                device: json!({"state": "Provisioned", "serialNumber": "M-1",
                               "receivedAt": "2026-11-23T05:00:00Z"}),
            })
        );
        let reading = batch_write(
            json!({"op": "postReading", "reading": {"serialNumber": "M-1",
                   "timestamp": "2026-11-23T06:00:00+01:00", "readingType": "0.0.1", "value": 1.5}}),
            now(),
        )
        .expect("reading");
        let Write::PutReading(ReadingWrite { key, reading }) = reading else {
            panic!("a reading write")
        };
        assert_eq!(key, "M-1|2026-11-23T05:00:00.000Z|0.0.1");
        assert_eq!(reading.timestamp, "2026-11-23T05:00:00.000Z");

        for (item, error) in [
            (
                json!({"op": "putDevice", "serialNumber": "a|b", "device": {}}),
                "invalid serial",
            ),
            (
                json!({"op": "putDevice", "serialNumber": "M", "device": []}),
                "device must be a JSON object",
            ),
            (
                json!({"op": "deleteDevice", "serialNumber": ""}),
                "invalid serial",
            ),
            (
                json!({"op": "postReading", "reading": {"serialNumber": "M", "timestamp": "x",
                       "readingType": "t", "value": 1.0}}),
                "is not RFC 3339",
            ),
            (
                json!({"op": "postReading", "reading": {"serialNumber": "M"}}),
                "invalid reading JSON",
            ),
            (json!({"op": "truncate"}), "invalid item"),
        ] {
            let err = batch_write(item.clone(), now()).expect_err(&item.to_string());
            assert!(err.contains(error), "{item}: {err}");
        }
    }

    #[test]
    fn statuses_follow_the_items_before_them() {
        let put = |s: &str| {
            Ok(Write::PutDevice(DeviceWrite {
                serial: s.into(),
                device: json!({}),
            }))
        };
        let writes = vec![
            put("new"),
            put("new"),
            put("old"),
            Ok(Write::DeleteDevice {
                serial: "old".into(),
            }),
            put("old"),
            Err("invalid serial".to_string()),
        ];
        let statuses = batch_statuses(&writes, |s| s == "old");
        assert_eq!(
            statuses,
            vec![
                (201, None),
                (200, None),
                (200, None),
                (204, None),
                (201, None),
                (400, Some("invalid serial".into())),
            ]
        );
    }

    #[test]
    fn the_wire_form_names_the_op() {
        let op = BatchOp::DeleteDevice {
            serial_number: "M-1".into(),
        };
        assert_eq!(
            serde_json::to_value(&op).expect("encode"),
            json!({"op": "deleteDevice", "serialNumber": "M-1"})
        );
    }
}
