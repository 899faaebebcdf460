//! Command-line interface of the `mpm-operator` binary.

pub mod acl_graph;
pub mod explain;
pub mod netpol;
pub mod status;
