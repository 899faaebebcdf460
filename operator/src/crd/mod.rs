//! Custom resource types of the `meterpark.io/v1alpha1` API.

pub mod service_acl;
