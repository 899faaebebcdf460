//! Kubernetes NetworkPolicy v1 evaluator (pure functions) and the reachability matrix.
