//! The reachability matrix between workloads (and external addresses).

use std::net::IpAddr;

use super::{Endpoint, Evaluator, Protocol};
use crate::crd::service_acl::MatrixEntry;

/// Ports probed for an external destination: every numeric `(protocol, port)` some policy's egress
/// rule names (for a port range, its first port). External addresses declare no ports, and these
/// are the only ports on which a policy can make a difference for them. Empty when no egress rule
/// names a port: the external destination is then left out of the matrix.
pub fn external_ports(ev: &Evaluator) -> Vec<(Protocol, u16)> {
    ev.egress_rule_ports()
}

/// Every `{from, to, protocol, port, allowed}` for every ordered pair of distinct endpoints (pods in
/// evaluator order, then `externals` in the given order) and every port the destination declares
/// (its containers' ports, named ports resolved to their numbers; for external destinations
/// [`external_ports`]). Pairs of two external addresses are skipped (that traffic never crosses the
/// cluster). Endpoints are named `<namespace>/<name>` or by their address.
pub fn matrix(ev: &Evaluator, externals: &[IpAddr]) -> Vec<MatrixEntry> {
    let mut endpoints: Vec<(Endpoint, String)> = ev
        .endpoints()
        .zip(ev.pods())
        .map(|(e, p)| (e, p.key()))
        .collect();
    endpoints.extend(
        externals
            .iter()
            .map(|ip| (Endpoint::External(*ip), ip.to_string())),
    );
    let ext_ports = external_ports(ev);
    let mut out = Vec::new();
    for (src, src_name) in &endpoints {
        for (dst, dst_name) in &endpoints {
            if src == dst || matches!((src, dst), (Endpoint::External(_), Endpoint::External(_))) {
                continue;
            }
            let ports = match dst {
                Endpoint::Pod(id) => declared_ports(ev, *id),
                Endpoint::External(_) => ext_ports.clone(),
            };
            for (proto, port) in ports {
                out.push(MatrixEntry {
                    from: src_name.clone(),
                    to: dst_name.clone(),
                    protocol: proto,
                    port,
                    allowed: ev.allowed(src, dst, port, proto),
                });
            }
        }
    }
    out
}

/// The `(protocol, port)` pairs a pod declares, sorted by port then protocol, without duplicates.
fn declared_ports(ev: &Evaluator, id: super::PodId) -> Vec<(Protocol, u16)> {
    let mut ports: Vec<(Protocol, u16)> = ev
        .pod(id)
        .map(|p| p.ports.iter().map(|cp| (cp.protocol, cp.port)).collect())
        .unwrap_or_default();
    ports.sort_by_key(|&(proto, port)| (port, proto));
    ports.dedup();
    ports
}
