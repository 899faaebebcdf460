//! ServiceACL compiler: ACL → NetworkPolicies and allowed-peer lists (pure functions).
