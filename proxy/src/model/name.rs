//! `namespace/name`: how Kubernetes names a namespaced object, and how
//! Switchyard names a Service (or an EndpointSlice) everywhere it keys,
//! logs or reports one.

use std::fmt;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl NamespacedName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_namespace_then_name_and_prints_with_a_slash() {
        let mut names = [
            NamespacedName::new("kube-system", "dns"),
            NamespacedName::new("default", "web"),
            NamespacedName::new("default", "api"),
        ];
        names.sort();
        let shown: Vec<String> = names.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["default/api", "default/web", "kube-system/dns"]);
    }
}
