//! The mutation itself (pure): a Meter created without the `meterpark.io/deprovision` finalizer
//! gets it in the same write, so the Meter controller does not spend an API write on it.

use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::DynamicObject;
use serde_json::json;

use crate::meter::controller::FINALIZER;

/// The JSON patch that adds `finalizer` to an object whose finalizers are `existing`, or `None`
/// when it is already there.
pub fn finalizer_patch(existing: Option<&[String]>, finalizer: &str) -> Option<json_patch::Patch> {
    let ops = match existing {
        Some(list) if list.iter().any(|f| f == finalizer) => return None,
        // `/-` appends; the list itself must exist for that.
        Some(list) if !list.is_empty() => {
            json!([{"op": "add", "path": "/metadata/finalizers/-", "value": finalizer}])
        }
        _ => json!([{"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}]),
    };
    serde_json::from_value(ops).ok()
}

/// What the webhook did with one request, for the metrics and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The finalizer was added.
    Added,
    /// The Meter already had it.
    Present,
    /// Not a Meter CREATE (a misconfigured webhook rule); allowed unchanged.
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Added => "added",
            Outcome::Present => "present",
            Outcome::Ignored => "ignored",
        }
    }
}

/// The AdmissionReview to send back, as JSON. kube-core serialises `response.patch` (bytes) as an
/// array of numbers (kube-rs/kube#1781); the API's JSON form of bytes is base64.
pub fn review_body(response: AdmissionResponse) -> serde_json::Value {
    use base64::Engine as _;
    let patch = response.patch.clone();
    let mut review = serde_json::to_value(response.into_review()).unwrap_or_default();
    if let (Some(bytes), Some(body)) = (patch, review.get_mut("response")) {
        body["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    review
}

/// Answers one admission request for Meters. Never denies: the webhook only saves the operator a
/// write, and whatever it lets through unchanged the Meter controller still handles.
pub fn review_meter(request: &AdmissionRequest<DynamicObject>) -> (AdmissionResponse, Outcome) {
    let allowed = AdmissionResponse::from(request);
    let is_meter = request.kind.group == crate::crd::GROUP && request.kind.kind == "Meter";
    let object = match (&request.operation, &request.object) {
        (Operation::Create, Some(object)) if is_meter => object,
        _ => return (allowed, Outcome::Ignored),
    };
    match finalizer_patch(object.metadata.finalizers.as_deref(), FINALIZER) {
        None => (allowed, Outcome::Present),
        Some(patch) => match allowed.clone().with_patch(patch) {
            Ok(response) => (response, Outcome::Added),
            // Serialising a two-field patch cannot fail; if it did, the controller adds it.
            Err(_) => (allowed, Outcome::Ignored),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;

    fn apply(existing: Option<Vec<&str>>) -> Option<Vec<String>> {
        let mut doc = json!({"metadata": {"name": "m"}});
        if let Some(list) = &existing {
            doc["metadata"]["finalizers"] = json!(list);
        }
        let owned: Option<Vec<String>> =
            existing.map(|l| l.into_iter().map(String::from).collect());
        let patch = finalizer_patch(owned.as_deref(), FINALIZER)?;
        json_patch::patch(&mut doc, &patch).expect("patch applies");
        Some(serde_json::from_value(doc["metadata"]["finalizers"].clone()).unwrap())
    }

    #[test]
    fn adds_the_finalizer_when_there_is_none() {
        assert_eq!(apply(None), Some(vec![FINALIZER.to_string()]));
        assert_eq!(apply(Some(vec![])), Some(vec![FINALIZER.to_string()]));
    }

    #[test]
    fn appends_after_other_finalizers_and_keeps_them() {
        assert_eq!(
            apply(Some(vec!["example.com/keep"])),
            Some(vec!["example.com/keep".to_string(), FINALIZER.to_string()])
        );
    }

    #[test]
    fn leaves_a_meter_that_has_it_alone() {
        assert_eq!(apply(Some(vec!["example.com/keep", FINALIZER])), None);
    }

    fn request(
        operation: &str,
        group: &str,
        kind: &str,
        finalizers: serde_json::Value,
    ) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "0f0e5a3c-1111-2222-3333-444455556666",
                "kind": {"group": group, "version": "v1alpha1", "kind": kind},
                "resource": {"group": group, "version": "v1alpha1", "resource": "meters"},
                "operation": operation, "namespace": "park", "name": "m1",
                "userInfo": {"username": "sre"},
                "object": {"apiVersion": format!("{group}/v1alpha1"), "kind": kind,
                           "metadata": {"name": "m1", "namespace": "park", "finalizers": finalizers},
                           "spec": {}}
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    #[test]
    fn a_created_meter_gets_a_json_patch_and_is_allowed() {
        let (response, outcome) =
            review_meter(&request("CREATE", crate::crd::GROUP, "Meter", json!(null)));
        assert_eq!(outcome, Outcome::Added);
        let review = review_body(response);
        assert_eq!(review["apiVersion"], json!("admission.k8s.io/v1"));
        assert_eq!(review["kind"], json!("AdmissionReview"));
        assert_eq!(review["response"]["allowed"], json!(true));
        assert_eq!(
            review["response"]["uid"],
            json!("0f0e5a3c-1111-2222-3333-444455556666")
        );
        assert_eq!(review["response"]["patchType"], json!("JSONPatch"));
        use base64::Engine as _;
        let patch = base64::engine::general_purpose::STANDARD
            .decode(review["response"]["patch"].as_str().unwrap())
            .unwrap();
        let patch: serde_json::Value = serde_json::from_slice(&patch).unwrap();
        assert_eq!(
            patch,
            json!([{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}])
        );
    }

    #[test]
    fn other_operations_and_kinds_pass_unchanged() {
        for (op, group, kind) in [
            ("UPDATE", crate::crd::GROUP, "Meter"),
            ("CREATE", crate::crd::GROUP, "DeviceHub"),
            ("CREATE", "example.com", "Meter"),
        ] {
            let (response, outcome) = review_meter(&request(op, group, kind, json!(null)));
            assert_eq!(outcome, Outcome::Ignored, "{op} {group} {kind}");
            let review = review_body(response);
            assert_eq!(review["response"]["allowed"], json!(true));
            assert!(review["response"].get("patch").is_none());
        }
        let (_, outcome) = review_meter(&request(
            "CREATE",
            crate::crd::GROUP,
            "Meter",
            json!([FINALIZER]),
        ));
        assert_eq!(outcome, Outcome::Present);
    }
}
