//! kube-proxy's detect-local: which traffic counts as coming from this
//! node's or the cluster's pods. The per-packet path masquerades a packet
//! from outside to a ClusterIP unless it is local (or always, with
//! `masqueradeAll`); the socket path never needs to ask, since it sees
//! the pod's own socket.

use std::{fmt, str::FromStr};

use crate::model::address::Cidr;

/// `--detect-local-mode` and what it needs, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DetectLocal {
    /// A source in one of the cluster's pod CIDRs (`--cluster-cidr`); with
    /// none given, no source is local.
    ClusterCidr(Vec<Cidr>),
    /// A source in this node's `spec.podCIDRs`, known once its Node is.
    NodeCidr,
    /// A packet that came in on this bridge.
    BridgeInterface(String),
    /// A packet that came in on a device whose name starts so.
    InterfaceNamePrefix(String),
}

impl Default for DetectLocal {
    fn default() -> Self {
        Self::ClusterCidr(Vec::new())
    }
}

/// kube-proxy's names for the modes, as flags and KubeProxyConfiguration
/// spell them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DetectLocalMode {
    #[default]
    ClusterCidr,
    NodeCidr,
    BridgeInterface,
    InterfaceNamePrefix,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadDetectLocal {
    #[error(
        "unknown mode {text:?} (expected ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix)"
    )]
    Mode { text: String },
    #[error("mode {mode} needs {needs}")]
    Missing {
        mode: DetectLocalMode,
        needs: &'static str,
    },
}

impl FromStr for DetectLocalMode {
    type Err = BadDetectLocal;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            // kube-proxy's default when the field is empty.
            "" | "ClusterCIDR" => Ok(Self::ClusterCidr),
            "NodeCIDR" => Ok(Self::NodeCidr),
            "BridgeInterface" => Ok(Self::BridgeInterface),
            "InterfaceNamePrefix" => Ok(Self::InterfaceNamePrefix),
            other => Err(BadDetectLocal::Mode {
                text: other.to_owned(),
            }),
        }
    }
}

impl fmt::Display for DetectLocalMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClusterCidr => "ClusterCIDR",
            Self::NodeCidr => "NodeCIDR",
            Self::BridgeInterface => "BridgeInterface",
            Self::InterfaceNamePrefix => "InterfaceNamePrefix",
        })
    }
}

impl DetectLocal {
    /// The mode with what it reads: the cluster CIDRs, or a device name
    /// that must not be empty.
    pub fn new(
        mode: DetectLocalMode,
        cluster_cidrs: &[Cidr],
        bridge: &str,
        prefix: &str,
    ) -> Result<Self, BadDetectLocal> {
        let named = |name: &str, needs| {
            let name = name.trim();
            if name.is_empty() {
                Err(BadDetectLocal::Missing { mode, needs })
            } else {
                Ok(name.to_owned())
            }
        };
        Ok(match mode {
            DetectLocalMode::ClusterCidr => Self::ClusterCidr(cluster_cidrs.to_vec()),
            DetectLocalMode::NodeCidr => Self::NodeCidr,
            DetectLocalMode::BridgeInterface => {
                Self::BridgeInterface(named(bridge, "--pod-bridge-interface")?)
            }
            DetectLocalMode::InterfaceNamePrefix => {
                Self::InterfaceNamePrefix(named(prefix, "--pod-interface-name-prefix")?)
            }
        })
    }

    /// Whether locality is judged by the device a packet came in on.
    pub fn by_device(&self) -> bool {
        matches!(
            self,
            Self::BridgeInterface(_) | Self::InterfaceNamePrefix(_)
        )
    }

    /// Whether packets coming in on `device` are local.
    pub fn is_local_device(&self, device: &str) -> bool {
        match self {
            Self::BridgeInterface(bridge) => device == bridge,
            Self::InterfaceNamePrefix(prefix) => device.starts_with(prefix.as_str()),
            Self::ClusterCidr(_) | Self::NodeCidr => false,
        }
    }

    /// The source prefixes that are local, given this node's pod CIDRs
    /// (its Node's `spec.podCIDRs`, unparsable ones left out); none in the
    /// device modes.
    pub fn local_cidrs(&self, node_pod_cidrs: &[String]) -> Vec<Cidr> {
        match self {
            Self::ClusterCidr(cidrs) => cidrs.clone(),
            Self::NodeCidr => node_pod_cidrs
                .iter()
                .filter_map(|text| text.trim().parse().ok())
                .collect(),
            Self::BridgeInterface(_) | Self::InterfaceNamePrefix(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_by_kube_proxys_names() {
        for (text, want) in [
            ("", DetectLocalMode::ClusterCidr),
            ("ClusterCIDR", DetectLocalMode::ClusterCidr),
            ("NodeCIDR", DetectLocalMode::NodeCidr),
            ("BridgeInterface", DetectLocalMode::BridgeInterface),
            ("InterfaceNamePrefix", DetectLocalMode::InterfaceNamePrefix),
        ] {
            assert_eq!(text.parse::<DetectLocalMode>(), Ok(want), "{text}");
        }
        assert!("clustercidr".parse::<DetectLocalMode>().is_err());
    }

    #[test]
    fn device_modes_need_their_device() {
        let error = DetectLocal::new(DetectLocalMode::BridgeInterface, &[], " ", "").unwrap_err();
        assert_eq!(
            error.to_string(),
            "mode BridgeInterface needs --pod-bridge-interface"
        );
        let prefix =
            DetectLocal::new(DetectLocalMode::InterfaceNamePrefix, &[], "", "veth").unwrap();
        assert!(prefix.by_device());
        assert!(prefix.is_local_device("veth12ab"));
        assert!(!prefix.is_local_device("eth0"));
        let bridge = DetectLocal::new(DetectLocalMode::BridgeInterface, &[], "cbr0", "").unwrap();
        assert!(bridge.is_local_device("cbr0") && !bridge.is_local_device("cbr01"));
    }

    #[test]
    fn local_cidrs_follow_the_mode() {
        let cluster: Vec<Cidr> = vec!["10.244.0.0/16".parse().unwrap()];
        let node_cidrs = ["10.244.3.0/24".to_owned(), "bogus".to_owned()];
        let by_cluster = DetectLocal::new(DetectLocalMode::ClusterCidr, &cluster, "", "").unwrap();
        assert_eq!(by_cluster.local_cidrs(&node_cidrs), cluster);
        let by_node = DetectLocal::new(DetectLocalMode::NodeCidr, &cluster, "", "").unwrap();
        assert_eq!(
            by_node.local_cidrs(&node_cidrs),
            vec!["10.244.3.0/24".parse::<Cidr>().unwrap()]
        );
    }
}
