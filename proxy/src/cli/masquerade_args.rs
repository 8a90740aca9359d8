//! kube-proxy's masquerade flags: which packets from outside to a ClusterIP
//! keep their source (see `model::detect_local`).

use clap::Args;

use crate::model::detect_local::DetectLocalMode;

#[derive(Debug, Args)]
pub struct MasqueradeArgs {
    /// Masquerade every packet from outside to a ClusterIP, local or not
    /// (kube-proxy's --masquerade-all). Connections from this node's pods
    /// and processes take the socket path and keep their address.
    #[arg(long)]
    pub masquerade_all: bool,
    /// How a packet is known to come from a pod, so that it keeps its
    /// source: ClusterCIDR (its source is in --cluster-cidr), NodeCIDR (in
    /// this Node's spec.podCIDRs), BridgeInterface (it came in on
    /// --pod-bridge-interface) or InterfaceNamePrefix (on a device named
    /// --pod-interface-name-prefix...).
    #[arg(long, value_name = "MODE", default_value = "ClusterCIDR", value_parser = parse_mode)]
    pub detect_local_mode: DetectLocalMode,
    /// The bridge for --detect-local-mode=BridgeInterface.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub pod_bridge_interface: String,
    /// The device name prefix for --detect-local-mode=InterfaceNamePrefix.
    #[arg(long, value_name = "PREFIX", default_value = "")]
    pub pod_interface_name_prefix: String,
}

fn parse_mode(text: &str) -> Result<DetectLocalMode, String> {
    text.parse()
        .map_err(|error: crate::model::detect_local::BadDetectLocal| error.to_string())
}
