//! Command-line interface of the `mpm-operator` binary.
