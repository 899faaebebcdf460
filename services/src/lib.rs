//! Shared library of the meter park services.
