//! `--config`: the KubeProxyConfiguration an operator already has (the
//! `config.conf` of the `kube-proxy` ConfigMap). The fields that mean
//! something here are applied; the iptables/ipvs/nftables tuning and the
//! like are accepted and ignored, so the same file works unchanged.
//!
//! Precedence: a flag given on the command line wins over the file, and the
//! file wins over the built-in defaults.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::cli::RunArgs;

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

/// The applicable subset, with the file's own field names.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeProxyConfiguration {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub healthz_bind_address: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub hostname_override: Option<String>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    #[serde(default)]
    pub node_port_addresses: Vec<String>,
    pub sync_period: Option<String>,
    pub min_sync_period: Option<String>,
    #[serde(default)]
    pub client_connection: ClientConnection,
    /// Older files set the periods per backend; used when the top-level
    /// ones are absent.
    #[serde(default)]
    pub iptables: LegacyPeriods,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConnection {
    pub kubeconfig: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LegacyPeriods {
    pub sync_period: Option<String>,
    pub min_sync_period: Option<String>,
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

impl KubeProxyConfiguration {
    pub fn parse(path: &std::path::Path, text: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_yaml::from_str(text).map_err(|error| ConfigError::Unreadable {
            path: path.to_path_buf(),
            detail: error.to_string().replace('\n', " "),
        })?;
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
            text.trim()
                .parse()
                .map_err(|error| field_error(field, format!("{text:?}: {error}")))
        };
        let duration = |field: &'static str, text: &str| -> Result<Duration, ConfigError> {
            humantime::parse_duration(text.trim())
                .map_err(|error| field_error(field, format!("{text:?}: {error}")))
        };
        if let Some(text) = self
            .healthz_bind_address
            .as_deref()
            .filter(|t| !t.is_empty())
            && !explicit.is_explicit("healthz_bind_address")
        {
            args.healthz_bind_address = address("healthzBindAddress", text)?;
        }
        if let Some(text) = self
            .metrics_bind_address
            .as_deref()
            .filter(|t| !t.is_empty())
            && !explicit.is_explicit("metrics_bind_address")
        {
            args.metrics_bind_address = address("metricsBindAddress", text)?;
        }
        if let Some(name) = self.hostname_override.as_deref().filter(|t| !t.is_empty())
            && !explicit.is_explicit("node_name")
        {
            args.node_name = Some(name.trim().to_owned());
        }
        if let Some(cidrs) = self.cluster_cidr.as_deref().filter(|t| !t.is_empty())
            && !explicit.is_explicit("cluster_cidr")
        {
            // kube-proxy tolerates whitespace around the comma-separated CIDRs.
            args.cluster_cidr = cidrs.split(',').map(|c| c.trim().to_owned()).collect();
        }
        if !self.node_port_addresses.is_empty() && !explicit.is_explicit("nodeport_addresses") {
            args.nodeport_addresses = self
                .node_port_addresses
                .iter()
                .map(|c| c.trim().to_owned())
                .collect();
        }
        let sync = self
            .sync_period
            .as_ref()
            .or(self.iptables.sync_period.as_ref());
        if let Some(text) = sync
            && !explicit.is_explicit("sync_period")
        {
            args.sync_period = duration("syncPeriod", text)?;
        }
        let min_sync = self
            .min_sync_period
            .as_ref()
            .or(self.iptables.min_sync_period.as_ref());
        if let Some(text) = min_sync
            && !explicit.is_explicit("min_sync_period")
        {
            args.min_sync_period = duration("minSyncPeriod", text)?;
        }
        if let Some(path) = self
            .client_connection
            .kubeconfig
            .as_deref()
            .filter(|t| !t.is_empty())
            && !explicit.is_explicit("kubeconfig")
            && args.manifests.is_none()
        {
            args.kubeconfig = Some(PathBuf::from(path));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, path::Path};

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    struct Given(BTreeSet<&'static str>);

    impl ExplicitFlags for Given {
        fn is_explicit(&self, id: &str) -> bool {
            self.0.contains(id)
        }
    }

    fn run_args(extra: &[&str]) -> RunArgs {
        let args = ["switchyard", "run"]
            .into_iter()
            .chain(extra.iter().copied());
        match Cli::try_parse_from(args).unwrap().command {
            Command::Run(run) => *run,
            _ => unreachable!(),
        }
    }

    /// The shape of a real kube-proxy ConfigMap's config.conf.
    const CONFIG: &str = "
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
clientConnection:
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 5
clusterCIDR: ' 10.244.0.0/16, fd00:10:244::/56'
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 0.0.0.0:10249
mode: iptables
nodePortAddresses: [10.0.0.0/8]
iptables:
  masqueradeAll: false
  minSyncPeriod: 1s
  syncPeriod: 30s
conntrack:
  maxPerCore: 32768
";

    #[test]
    fn applies_the_fields_that_mean_something_here() {
        let config = KubeProxyConfiguration::parse(Path::new("c"), CONFIG).unwrap();
        let mut args = run_args(&[]);
        config
            .apply_to(Path::new("c"), &mut args, &Given(BTreeSet::new()))
            .unwrap();
        assert_eq!(args.metrics_bind_address, "0.0.0.0:10249".parse().unwrap());
        assert_eq!(args.healthz_bind_address, "0.0.0.0:10256".parse().unwrap());
        assert_eq!(args.cluster_cidr, ["10.244.0.0/16", "fd00:10:244::/56"]);
        assert_eq!(args.nodeport_addresses, ["10.0.0.0/8"]);
        assert_eq!(args.min_sync_period, Duration::from_secs(1));
        assert_eq!(args.sync_period, Duration::from_secs(30));
        assert_eq!(
            args.kubeconfig.as_deref(),
            Some(Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
        );
    }

    #[test]
    fn command_line_flags_win_over_the_file() {
        let config = KubeProxyConfiguration::parse(Path::new("c"), CONFIG).unwrap();
        let mut args = run_args(&["--metrics-bind-address", "127.0.0.1:9999"]);
        let given = Given(["metrics_bind_address"].into_iter().collect());
        config.apply_to(Path::new("c"), &mut args, &given).unwrap();
        assert_eq!(args.metrics_bind_address, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(args.healthz_bind_address, "0.0.0.0:10256".parse().unwrap());
    }

    #[test]
    fn bad_values_name_the_file_and_field() {
        let cases = [
            ("kind: Deployment", "kind"),
            ("metricsBindAddress: nowhere", "metricsBindAddress"),
            ("syncPeriod: soon", "syncPeriod"),
        ];
        for (text, field) in cases {
            let path = Path::new("/etc/kube-proxy/config.conf");
            let result = KubeProxyConfiguration::parse(path, text).and_then(|config| {
                config.apply_to(path, &mut run_args(&[]), &Given(BTreeSet::new()))
            });
            let line = result.unwrap_err().to_string();
            assert!(
                line.contains("config.conf") && line.contains(field),
                "{line}"
            );
        }
    }
}
