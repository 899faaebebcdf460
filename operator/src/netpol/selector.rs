//! Compiled label selectors (`matchLabels` + `matchExpressions`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    /// `key` equals the value (from `matchLabels`).
    Equals(String, String),
    /// `key` exists and its value is one of the values.
    In(String, Vec<String>),
    /// `key` is absent or its value is none of the values.
    NotIn(String, Vec<String>),
    /// `key` exists.
    Exists(String),
    /// `key` is absent.
    DoesNotExist(String),
}

/// A label selector ready for matching. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

impl Selector {
    /// Compiles a Kubernetes label selector. Errors name the offending requirement.
    pub fn compile(sel: &LabelSelector) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let req = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "operator {} on key {:?} needs values",
                        e.operator, e.key
                    ));
                }
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "operator {} on key {:?} takes no values",
                        e.operator, e.key
                    ));
                }
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                other => return Err(format!("unknown operator {other:?} on key {:?}", e.key)),
            };
            reqs.push(req);
        }
        Ok(Selector { reqs })
    }

    /// Whether the selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: if values.is_empty() {
                    None
                } else {
                    Some(values.iter().map(|v| v.to_string()).collect())
                },
            }]),
            match_labels: None,
        }
    }

    #[test]
    fn operators() {
        let a = labels(&[("pod", "a")]);
        let none = labels(&[]);
        let s = |sel| Selector::compile(&sel).expect("valid");
        assert!(s(expr("pod", "In", &["a", "b"])).matches(&a));
        assert!(!s(expr("pod", "In", &["b"])).matches(&a));
        assert!(!s(expr("pod", "In", &["a"])).matches(&none));
        assert!(s(expr("pod", "NotIn", &["b"])).matches(&a));
        assert!(s(expr("pod", "NotIn", &["b"])).matches(&none));
        assert!(!s(expr("pod", "NotIn", &["a"])).matches(&a));
        assert!(s(expr("pod", "Exists", &[])).matches(&a));
        assert!(!s(expr("pod", "Exists", &[])).matches(&none));
        assert!(s(expr("pod", "DoesNotExist", &[])).matches(&none));
        assert!(!s(expr("pod", "DoesNotExist", &[])).matches(&a));
        assert!(Selector::compile(&LabelSelector::default())
            .expect("valid")
            .matches(&none));
    }

    #[test]
    fn invalid() {
        assert!(Selector::compile(&expr("pod", "Foo", &[])).is_err());
        assert!(Selector::compile(&expr("pod", "In", &[])).is_err());
        assert!(Selector::compile(&expr("pod", "Exists", &["x"])).is_err());
    }
}
