//! Which Service ports get traffic counters of their own, and how many:
//! the bound on the per-Service series a node exports, whatever the
//! cluster holds (`--service-counters`, `--service-counters-for`,
//! `--service-counter-series`, `--backend-counter-series`).

use std::{fmt, str::FromStr};

use switchyard_abi::{BACKEND_STATS_SERIES, SERVICE_STATS_SERIES};

use crate::model::{ServicePortName, name::NamespacedName};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterPolicy {
    /// Off: the kernel counts nothing per Service (its one branch aside).
    pub enabled: bool,
    /// Service ports that may have series of their own; the rest are
    /// summed in the overflow series.
    pub selectors: Vec<CounterSelector>,
    /// Service ports with series of their own, at most; the rest overflow.
    pub service_series: u32,
    /// (Service port, backend) pairs with series of their own, at most.
    pub backend_series: u32,
}

impl Default for CounterPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            selectors: vec![CounterSelector::All],
            service_series: SERVICE_STATS_SERIES,
            backend_series: BACKEND_STATS_SERIES,
        }
    }
}

impl CounterPolicy {
    pub fn selects(&self, service: &ServicePortName) -> bool {
        self.selectors
            .iter()
            .any(|selector| selector.matches(service))
    }
}

/// One entry of `--service-counters-for`: `*`, a namespace, or
/// `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterSelector {
    All,
    Namespace(String),
    Service(NamespacedName),
}

impl CounterSelector {
    pub fn matches(&self, service: &ServicePortName) -> bool {
        match self {
            Self::All => true,
            Self::Namespace(namespace) => service.namespace == *namespace,
            Self::Service(name) => service.namespace == name.namespace && service.name == name.name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not *, a namespace or namespace/name")]
pub struct BadCounterSelector {
    pub text: String,
}

impl FromStr for CounterSelector {
    type Err = BadCounterSelector;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadCounterSelector {
            text: text.to_owned(),
        };
        let label = |part: &str| {
            !part.is_empty()
                && part.len() <= 63
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        match text.split_once('/') {
            _ if text == "*" => Ok(Self::All),
            None if label(text) => Ok(Self::Namespace(text.to_owned())),
            Some((namespace, name)) if label(namespace) && label(name) => {
                Ok(Self::Service(NamespacedName::new(namespace, name)))
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for CounterSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Namespace(namespace) => f.write_str(namespace),
            Self::Service(name) => write!(f, "{}/{}", name.namespace, name.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(namespace: &str, name: &str) -> ServicePortName {
        ServicePortName {
            namespace: namespace.into(),
            name: name.into(),
            port: "http".into(),
        }
    }

    #[test]
    fn selectors_pick_namespaces_and_services() {
        let policy = CounterPolicy {
            selectors: vec!["shop".parse().unwrap(), "kube-system/dns".parse().unwrap()],
            ..CounterPolicy::default()
        };
        assert!(policy.selects(&port("shop", "cart")));
        assert!(policy.selects(&port("kube-system", "dns")));
        assert!(!policy.selects(&port("kube-system", "metrics")));
        assert!(CounterPolicy::default().selects(&port("any", "thing")));
    }

    #[test]
    fn bad_selectors_are_named() {
        for text in ["", "Shop", "a/b/c", "/x", "x/", "sp ace"] {
            let error = text.parse::<CounterSelector>().unwrap_err();
            assert_eq!(error.text, text);
        }
        for text in ["*", "shop", "shop/cart"] {
            assert_eq!(text.parse::<CounterSelector>().unwrap().to_string(), text);
        }
    }
}
