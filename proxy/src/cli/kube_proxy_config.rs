//! `--config`: the KubeProxyConfiguration an operator already has (the
//! `config.conf` of the `kube-proxy` ConfigMap). Every field that means
//! something here is applied to its flag; the others are accepted, and each
//! one set to anything but kube-proxy's default is named once at start with
//! why it is ignored (`fields`), so the same file works unchanged.
//!
//! Precedence: a flag given on the command line wins over the file, and the
//! file wins over the built-in defaults. A field at kube-proxy's "default"
//! value (null, "", 0, "0s") leaves the flag's default.

mod fields;
#[cfg(test)]
mod tests;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

pub use self::fields::{FIELDS, Treatment};
use crate::{cli::RunArgs, model::detect_local::DetectLocalMode};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config {path}: {detail}")]
    Unreadable { path: PathBuf, detail: String },
    #[error("--config {path}: {field}: {detail}")]
    Field {
        path: PathBuf,
        field: &'static str,
        detail: String,
    },
}

/// The applicable fields, with the file's own names.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub healthz_bind_address: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub bind_address_hard_fail: Option<bool>,
    pub hostname_override: Option<String>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    pub node_port_addresses: Option<Vec<String>>,
    pub mode: Option<String>,
    pub sync_period: Option<String>,
    pub min_sync_period: Option<String>,
    /// v1alpha2's place for it; v1alpha1 has it per mode.
    pub masquerade_all: Option<bool>,
    #[serde(default)]
    pub client_connection: ClientConnection,
    /// v1alpha1 sets the periods and masqueradeAll per mode; the running
    /// mode's are used when the top-level ones are absent.
    #[serde(default)]
    pub iptables: ModeSettings,
    #[serde(default)]
    pub nftables: ModeSettings,
    #[serde(default)]
    pub ipvs: ModeSettings,
    pub detect_local_mode: Option<String>,
    #[serde(default)]
    pub detect_local: DetectLocalConfig,
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    /// The whole document, for the fields this struct does not name.
    #[serde(skip)]
    document: serde_yaml::Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConnection {
    pub kubeconfig: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModeSettings {
    pub sync_period: Option<String>,
    pub min_sync_period: Option<String>,
    pub masquerade_all: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectLocalConfig {
    pub bridge_interface: Option<String>,
    pub interface_name_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackConfig {
    pub max_per_core: Option<u32>,
    pub min: Option<u32>,
    pub tcp_established_timeout: Option<String>,
    pub tcp_close_wait_timeout: Option<String>,
    pub udp_timeout: Option<String>,
    pub udp_stream_timeout: Option<String>,
}

/// Which `run` flags were given explicitly; those are left alone.
pub trait ExplicitFlags {
    fn is_explicit(&self, id: &str) -> bool;
}

impl ExplicitFlags for clap::ArgMatches {
    fn is_explicit(&self, id: &str) -> bool {
        matches!(
            self.value_source(id),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        )
    }
}

/// A text field that is set: not absent, empty or zero.
fn given(text: Option<&String>) -> Option<&str> {
    text.map(|t| t.trim()).filter(|t| !fields::is_unset_text(t))
}

impl KubeProxyConfiguration {
    pub fn parse(path: &std::path::Path, text: &str) -> Result<Self, ConfigError> {
        let unreadable = |error: serde_yaml::Error| ConfigError::Unreadable {
            path: path.to_path_buf(),
            detail: error.to_string().replace('\n', " "),
        };
        let document: serde_yaml::Value = serde_yaml::from_str(text).map_err(unreadable)?;
        let mut config: Self = serde_yaml::from_value(document.clone()).map_err(unreadable)?;
        config.document = document;
        if !config.kind.is_empty() && config.kind != "KubeProxyConfiguration" {
            return Err(ConfigError::Field {
                path: path.to_path_buf(),
                field: "kind",
                detail: format!("expected KubeProxyConfiguration, got {}", config.kind),
            });
        }
        Ok(config)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Unreadable {
            path: path.to_path_buf(),
            detail: error.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// One line per field set and ignored, or unknown: said once at start.
    pub fn ignored(&self) -> Vec<String> {
        fields::warnings(&self.document)
    }

    /// The settings of the mode kube-proxy would run in (iptables when
    /// none is named, as kube-proxy on Linux).
    fn mode_settings(&self) -> &ModeSettings {
        match self.mode.as_deref().map(str::trim) {
            Some("nftables") => &self.nftables,
            Some("ipvs") => &self.ipvs,
            _ => &self.iptables,
        }
    }

    /// Fills every field of `args` not set on the command line.
    pub fn apply_to(
        &self,
        path: &std::path::Path,
        args: &mut RunArgs,
        explicit: &impl ExplicitFlags,
    ) -> Result<(), ConfigError> {
        let field_error = |field: &'static str, detail: String| ConfigError::Field {
            path: path.to_path_buf(),
            field,
            detail,
        };
        let address = |field: &'static str, text: &str| -> Result<SocketAddr, ConfigError> {
            text.parse()
                .map_err(|error| field_error(field, format!("{text:?}: {error}")))
        };
        let duration = |field: &'static str, text: &str| -> Result<Duration, ConfigError> {
            humantime::parse_duration(text)
                .map_err(|error| field_error(field, format!("{text:?}: {error}")))
        };
        let open = |id: &str| !explicit.is_explicit(id);
        if let Some(text) = given(self.healthz_bind_address.as_ref())
            && open("healthz_bind_address")
        {
            args.serving.healthz_bind_address = address("healthzBindAddress", text)?;
        }
        if let Some(text) = given(self.metrics_bind_address.as_ref())
            && open("metrics_bind_address")
        {
            args.serving.metrics_bind_address = address("metricsBindAddress", text)?;
        }
        if let Some(hard) = self.bind_address_hard_fail
            && open("bind_address_hard_fail")
        {
            args.serving.bind_address_hard_fail = hard;
        }
        if let Some(name) = given(self.hostname_override.as_ref())
            && open("node_name")
        {
            // kube-proxy lowercases it: Node names are lowercase.
            args.node_name = Some(name.to_lowercase());
        }
        if let Some(cidrs) = given(self.cluster_cidr.as_ref())
            && open("cluster_cidr")
        {
            // kube-proxy tolerates whitespace around the comma-separated CIDRs.
            args.cluster_cidr = cidrs.split(',').map(|c| c.trim().to_owned()).collect();
        }
        if let Some(cidrs) = self.node_port_addresses.as_ref().filter(|c| !c.is_empty())
            && open("nodeport_addresses")
        {
            args.nodeport_addresses = cidrs.iter().map(|c| c.trim().to_owned()).collect();
        }
        let mode = self.mode_settings();
        if let Some(text) = given(self.sync_period.as_ref().or(mode.sync_period.as_ref()))
            && open("sync_period")
        {
            args.sync_period = duration("syncPeriod", text)?;
        }
        if let Some(text) = given(
            self.min_sync_period
                .as_ref()
                .or(mode.min_sync_period.as_ref()),
        ) && open("min_sync_period")
        {
            args.min_sync_period = duration("minSyncPeriod", text)?;
        }
        if let Some(all) = self.masquerade_all.or(mode.masquerade_all)
            && open("masquerade_all")
        {
            args.masquerade.masquerade_all = all;
        }
        self.apply_detect_local(args, &open, &field_error)?;
        self.apply_conntrack(args, &open, &duration)?;
        if let Some(kubeconfig) = given(self.client_connection.kubeconfig.as_ref())
            && open("kubeconfig")
            && args.manifests.is_none()
        {
            args.kubeconfig = Some(PathBuf::from(kubeconfig));
        }
        Ok(())
    }

    fn apply_detect_local(
        &self,
        args: &mut RunArgs,
        open: &impl Fn(&str) -> bool,
        field_error: &impl Fn(&'static str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let masquerade = &mut args.masquerade;
        if let Some(text) = given(self.detect_local_mode.as_ref())
            && open("detect_local_mode")
        {
            masquerade.detect_local_mode = text
                .parse::<DetectLocalMode>()
                .map_err(|error| field_error("detectLocalMode", error.to_string()))?;
        }
        if let Some(bridge) = given(self.detect_local.bridge_interface.as_ref())
            && open("pod_bridge_interface")
        {
            bridge.clone_into(&mut masquerade.pod_bridge_interface);
        }
        if let Some(prefix) = given(self.detect_local.interface_name_prefix.as_ref())
            && open("pod_interface_name_prefix")
        {
            prefix.clone_into(&mut masquerade.pod_interface_name_prefix);
        }
        Ok(())
    }

    /// kube-proxy's conntrack settings, on Switchyard's own conntrack. A
    /// timeout of 0s leaves netfilter's alone in kube-proxy; here it keeps
    /// the flag's default.
    fn apply_conntrack(
        &self,
        args: &mut RunArgs,
        open: &impl Fn(&str) -> bool,
        duration: &impl Fn(&'static str, &str) -> Result<Duration, ConfigError>,
    ) -> Result<(), ConfigError> {
        let conntrack = &self.conntrack;
        let target = &mut args.conntrack;
        if let Some(count) = conntrack.max_per_core
            && open("max_per_core")
        {
            target.max_per_core = count;
        }
        if let Some(count) = conntrack.min
            && open("min")
        {
            target.min = count;
        }
        let timeouts = [
            (
                "conntrack.tcpEstablishedTimeout",
                &conntrack.tcp_established_timeout,
                "tcp_established",
                &mut target.tcp_established,
            ),
            (
                "conntrack.tcpCloseWaitTimeout",
                &conntrack.tcp_close_wait_timeout,
                "tcp_close_wait",
                &mut target.tcp_close_wait,
            ),
            (
                "conntrack.udpTimeout",
                &conntrack.udp_timeout,
                "udp",
                &mut target.udp,
            ),
            (
                "conntrack.udpStreamTimeout",
                &conntrack.udp_stream_timeout,
                "udp_stream",
                &mut target.udp_stream,
            ),
        ];
        for (field, text, id, slot) in timeouts {
            if let Some(text) = given(text.as_ref())
                && open(id)
            {
                *slot = duration(field, text)?;
            }
        }
        Ok(())
    }
}
