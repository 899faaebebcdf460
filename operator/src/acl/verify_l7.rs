//! Verification of an `allowed-peers.json` document against the ServiceACL rules: every entry
//! must be covered by one single allow rule (methods subset AND prefixes covered by segment), so
//! that an ACL never grants more than its rules say.

use super::compile::http_grant;
use super::l7::Grant;
use super::peers::AllowedPeers;
use super::{HubTopology, DEVICE_HUB_SERVICE};
use crate::crd::service_acl::{ServiceAclSpec, Violation, ViolationKind};
use crate::netpol::DEFAULT_ACTION_RULE;

/// Violations of `service`'s allowed-peers document `peers` against the allow rules of `acls`
/// (merged). The operator's own unrestricted entry for device-hub is allowed by the contract.
/// Rules that do not validate are skipped (compilation reports them).
pub fn verify_l7(
    topology: &HubTopology,
    acls: &[ServiceAclSpec],
    service: &str,
    peers: &AllowedPeers,
) -> Vec<Violation> {
    // (caller SPIFFE ID, grant) of every allow rule towards `service`.
    let mut allowed: Vec<(String, Grant)> = acls
        .iter()
        .flat_map(|a| a.allow.iter())
        .filter(|r| r.to == service && topology.service(&r.from).is_some())
        .filter_map(|r| {
            let grant = http_grant("", r.http.as_ref()).ok()?;
            Some((topology.service_spiffe_id(&r.from), grant))
        })
        .collect();
    if service == DEVICE_HUB_SERVICE {
        allowed.push((topology.operator_spiffe_id(), Grant::unrestricted()));
    }
    let caller_name = |id: &str| {
        topology
            .services
            .iter()
            .find(|s| topology.service_spiffe_id(&s.name) == id)
            .map_or_else(|| id.to_string(), |s| s.name.clone())
    };
    let mut violations = Vec::new();
    for (i, entry) in peers.peers.iter().enumerate() {
        let grant = Grant {
            methods: entry.methods.as_ref().map(|m| m.iter().cloned().collect()),
            path_prefixes: entry
                .path_prefixes
                .as_ref()
                .map(|p| p.iter().cloned().collect()),
        };
        let covered = allowed
            .iter()
            .any(|(id, g)| *id == entry.spiffe_id && g.covers(&grant));
        if !covered {
            let list = |v: &Option<Vec<String>>| {
                v.as_ref()
                    .map_or_else(|| "any".to_string(), |v| v.join(","))
            };
            violations.push(Violation {
                rule: DEFAULT_ACTION_RULE.to_string(),
                network_policy: None,
                from: caller_name(&entry.spiffe_id),
                to: service.to_string(),
                port: None,
                kind: ViolationKind::PeerGrantTooWide,
                message: format!(
                    "allowed-peers.json of {service}, entry #{i}: {} may use methods {} on paths {}, which no single allow rule grants",
                    entry.spiffe_id,
                    list(&entry.methods),
                    list(&entry.path_prefixes)
                ),
            });
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{AllowedPeer, OperatorAccess, ServicePorts};

    fn topology() -> HubTopology {
        HubTopology {
            namespace: "park".into(),
            hub: "demo".into(),
            trust_domain: "cluster.local".into(),
            services: vec![
                ServicePorts::new("device-hub"),
                ServicePorts::new("iec61968-connector"),
            ],
            operator: OperatorAccess::default(),
        }
    }

    const C: &str = "spiffe://cluster.local/ns/park/sa/demo-iec61968-connector";

    fn acls() -> Vec<ServiceAclSpec> {
        vec![serde_saphyr::from_str(
            "hubRef: {name: demo}
allow:
  - {from: iec61968-connector, to: device-hub, http: {methods: [GET], pathPrefixes: [/v1/meters/]}}
  - {from: iec61968-connector, to: device-hub, http: {methods: [DELETE], pathPrefixes: [/v1/admin/]}}
",
        )
        .expect("spec")]
    }

    type Entry<'a> = (&'a str, Option<&'a [&'a str]>, Option<&'a [&'a str]>);

    fn doc(entries: &[Entry<'_>]) -> AllowedPeers {
        let v = |x: Option<&[&str]>| x.map(|x| x.iter().map(|s| s.to_string()).collect());
        AllowedPeers {
            version: 1,
            service: "device-hub".into(),
            peers: entries
                .iter()
                .map(|(id, m, p)| AllowedPeer {
                    spiffe_id: id.to_string(),
                    methods: v(*m),
                    path_prefixes: v(*p),
                })
                .collect(),
        }
    }

    #[test]
    fn compiled_lists_have_no_violations() {
        let compiled = crate::acl::compile(&topology(), &acls()).expect("valid");
        for (name, svc) in &compiled.services {
            assert_eq!(
                verify_l7(&topology(), &acls(), name, &svc.allowed_peers),
                []
            );
        }
    }

    /// The merged entry the old compiler wrote is reported.
    #[test]
    fn merged_or_widened_entries_are_violations() {
        let op = "spiffe://cluster.local/ns/park/sa/mpm-operator";
        let narrow = doc(&[
            (C, Some(&["GET"]), Some(&["/v1/meters/SN-1"])),
            (C, Some(&["DELETE"]), Some(&["/v1/admin/"])),
            (op, None, None),
        ]);
        assert_eq!(verify_l7(&topology(), &acls(), "device-hub", &narrow), []);
        let wide = [
            (
                C,
                Some(&["DELETE", "GET"][..]),
                Some(&["/v1/admin/", "/v1/meters/"][..]),
            ),
            (C, Some(&["GET"][..]), Some(&["/v1/meters"][..])),
            (C, Some(&["GET"][..]), None),
            (C, None, Some(&["/v1/meters/"][..])),
            ("spiffe://cluster.local/ns/park/sa/demo-other", None, None),
        ];
        for e in wide {
            let v = verify_l7(&topology(), &acls(), "device-hub", &doc(&[e]));
            assert_eq!(v.len(), 1, "{e:?}");
            assert_eq!(v[0].kind, ViolationKind::PeerGrantTooWide);
            assert!(v[0].message.contains("entry #0"), "{}", v[0].message);
        }
        // The operator's entry is only allowed on device-hub.
        let v = verify_l7(
            &topology(),
            &acls(),
            "iec61968-connector",
            &doc(&[(op, None, None)]),
        );
        assert_eq!(v.len(), 1);
    }
}
