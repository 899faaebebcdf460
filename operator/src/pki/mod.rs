//! The per-hub CA, leaf certificates and the renewal schedule (pure functions).
