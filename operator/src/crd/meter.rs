//! `Meter`: one smart meter, provisioned through device-hub's API.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::condition::Condition;

/// A smart meter. The operator provisions it through its hub's device-hub API over mTLS and
/// deprovisions it when the Meter is deleted.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "meterpark.io",
    version = "v1alpha1",
    kind = "Meter",
    namespaced,
    status = "MeterStatus",
    shortname = "mtr",
    category = "meterpark",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Serial","type":"string","jsonPath":".spec.serialNumber"}"#,
    printcolumn = r#"{"name":"Hub","type":"string","jsonPath":".spec.hubRef.name"}"#,
    printcolumn = r#"{"name":"Device","type":"string","jsonPath":".status.deviceId"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MeterSpec {
    /// The DeviceHub (same namespace) that provisions this meter.
    pub hub_ref: HubRef,
    /// The meter's serial number, unique within its hub. Immutable once set.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    )]
    pub serial_number: String,
    /// Manufacturer, for example `Landis+Gyr`.
    pub manufacturer: String,
    /// Model, for example `E450`.
    pub model: String,
    /// Communication protocol, for example `DLMS/COSEM` or `IEC 61968-9`.
    pub protocol: String,
    /// Identifier of the head-end system that reads this meter.
    pub hes_id: String,
    /// Where the meter is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// `Active` (provisioned and read) or `Decommissioned` (kept, no longer read).
    #[serde(default)]
    pub desired_state: DesiredState,
}

/// A reference to a DeviceHub in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct HubRef {
    /// DeviceHub name.
    pub name: String,
}

/// Installation site of a meter.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    /// Street address or site description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Latitude in degrees (WGS 84).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Longitude in degrees (WGS 84).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
}

/// The state the meter should be in.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DesiredState {
    #[default]
    Active,
    Decommissioned,
}

/// Life-cycle phase of a Meter.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MeterPhase {
    #[default]
    Pending,
    Provisioning,
    Provisioned,
    Failed,
    Decommissioned,
}

impl MeterPhase {
    pub const ALL: [MeterPhase; 5] = [
        MeterPhase::Pending,
        MeterPhase::Provisioning,
        MeterPhase::Provisioned,
        MeterPhase::Failed,
        MeterPhase::Decommissioned,
    ];

    /// The name as written in `status.phase` (a test keeps it equal to serde's).
    pub fn as_str(self) -> &'static str {
        match self {
            MeterPhase::Pending => "Pending",
            MeterPhase::Provisioning => "Provisioning",
            MeterPhase::Provisioned => "Provisioned",
            MeterPhase::Failed => "Failed",
            MeterPhase::Decommissioned => "Decommissioned",
        }
    }
}

/// Observed state of a Meter.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeterStatus {
    /// The generation the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Provisioning, Provisioned, Failed or Decommissioned.
    #[serde(default)]
    pub phase: MeterPhase,
    /// Device identifier assigned by device-hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Serial number as first provisioned (the spec's serial may not change afterwards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_serial_number: Option<String>,
    /// When device-hub first provisioned the meter, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioned_at: Option<String>,
    /// The state device-hub last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_state: Option<String>,
    /// Consecutive failed attempts (drives the capped exponential backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u32>,
    /// `Ready` with a reason such as `Provisioned`, `HubNotReady`, `DuplicateSerial`, `Rejected`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_names_are_the_serialized_ones() {
        for phase in MeterPhase::ALL {
            assert_eq!(
                serde_json::to_value(phase).ok(),
                Some(phase.as_str().into())
            );
        }
    }
}
