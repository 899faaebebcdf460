//! Status conditions following the Kubernetes API conventions, shared by every kind.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The status of a condition.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// One aspect of an object's state, as in `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition, in CamelCase (for example `Ready`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable reason for the last transition, in CamelCase.
    pub reason: String,
    /// Human-readable details for the last transition.
    pub message: String,
    /// When the status last changed.
    pub last_transition_time: DateTime<Utc>,
    /// The `.metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
        generation: Option<i64>,
    ) -> Self {
        let mut message = message.into();
        if message.is_empty() {
            // Kubernetes 1.20 turns an empty string in a custom resource's status into null and then
            // rejects it as "must be of type string"; a message is more useful anyway.
            message = reason.to_string();
        }
        Self {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: Utc::now(),
            observed_generation: generation,
        }
    }
}

/// Merges `new` conditions into `old`, keeping `lastTransitionTime` when the status did not change
/// (so that a reconcile that finds nothing new writes an identical status, and no API write).
pub fn merge_conditions(old: &[Condition], new: Vec<Condition>) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            if let Some(prev) = old.iter().find(|o| o.type_ == c.type_) {
                if prev.status == c.status {
                    c.last_transition_time = prev.last_transition_time;
                }
            }
            c
        })
        .collect()
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_transition_time_when_status_is_unchanged() {
        let mut old = Condition::new("Ready", ConditionStatus::True, "A", "", Some(1));
        old.last_transition_time = DateTime::from_timestamp(1_000, 0).unwrap();
        let same = Condition::new("Ready", ConditionStatus::True, "B", "m", Some(2));
        let merged = merge_conditions(std::slice::from_ref(&old), vec![same]);
        assert_eq!(merged[0].last_transition_time, old.last_transition_time);
        assert_eq!(merged[0].reason, "B");

        let flipped = Condition::new("Ready", ConditionStatus::False, "C", "m", Some(2));
        let merged = merge_conditions(&[old.clone()], vec![flipped]);
        assert_ne!(merged[0].last_transition_time, old.last_transition_time);
    }
}
