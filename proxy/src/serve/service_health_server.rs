//! kube-proxy's health check node ports: one HTTP listener per
//! `externalTrafficPolicy: Local` Service with a `healthCheckNodePort`,
//! telling a load balancer whether this node has endpoints of it.
//! Reconciled from the desired state on every sync, like the maps.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{
    model::HealthCheck,
    serve::{
        admin_server::{self, BindError, Endpoints},
        health::ProxyHealth,
    },
};

#[derive(Debug, thiserror::Error)]
#[error("Service {namespace}/{name}: spec.healthCheckNodePort {port} not served: {source}")]
pub struct ServiceHealthError {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub source: BindError,
}

/// The listeners of one port; they stop when this is dropped.
struct Listener {
    check: Arc<Mutex<HealthCheck>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub struct ServiceHealthServers {
    /// Where each port listens; empty means every address.
    addresses: Vec<IpAddr>,
    proxy: Arc<Mutex<ProxyHealth>>,
    listeners: BTreeMap<u16, Listener>,
}

impl ServiceHealthServers {
    pub fn new(addresses: Vec<IpAddr>, proxy: Arc<Mutex<ProxyHealth>>) -> Self {
        Self {
            addresses,
            proxy,
            listeners: BTreeMap::new(),
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }

    /// Opens listeners for new ports, closes those no longer wanted and
    /// updates the answers of the rest in place. A port that cannot be
    /// bound is reported and tried again on the next sync; the others are
    /// served.
    pub async fn sync(&mut self, wanted: &BTreeMap<u16, HealthCheck>) -> Vec<ServiceHealthError> {
        self.listeners.retain(|port, _| wanted.contains_key(port));
        let mut errors = Vec::new();
        for (&port, check) in wanted {
            if let Some(listener) = self.listeners.get(&port) {
                let mut current = listener
                    .check
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *current = check.clone();
                continue;
            }
            match self.listen(port, check).await {
                Ok(listener) => {
                    info!(port, service = %format!("{}/{}", check.namespace, check.name), "serving health check node port");
                    self.listeners.insert(port, listener);
                }
                Err(source) => errors.push(ServiceHealthError {
                    namespace: check.namespace.clone(),
                    name: check.name.clone(),
                    port,
                    source,
                }),
            }
        }
        errors
    }

    async fn listen(&self, port: u16, check: &HealthCheck) -> Result<Listener, BindError> {
        let check = Arc::new(Mutex::new(check.clone()));
        let mut tasks = Vec::new();
        for address in self.bind_addresses(port) {
            let listener = admin_server::bind(address).await?;
            let endpoints = Endpoints::ServiceHealth {
                check: Arc::clone(&check),
                proxy: Arc::clone(&self.proxy),
            };
            tasks.push(tokio::spawn(admin_server::serve(listener, endpoints)));
        }
        Ok(Listener { check, tasks })
    }

    /// Every address: `[::]`, which on Linux also takes IPv4 unless
    /// `bindv6only` is set; `0.0.0.0` when IPv6 is off.
    fn bind_addresses(&self, port: u16) -> Vec<SocketAddr> {
        if !self.addresses.is_empty() {
            return self
                .addresses
                .iter()
                .map(|&ip| SocketAddr::new(ip, port))
                .collect();
        }
        let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        match tokio::net::TcpSocket::new_v6() {
            Ok(_) => vec![any6],
            Err(error) => {
                warn!(%error, "no IPv6; health check node ports listen on IPv4 only");
                vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn status(port: u16) -> Option<String> {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await.ok()?;
            response.get(9..12).map(str::to_owned)
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .ok()
            .flatten()
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn check(name: &str, local_endpoints: usize) -> HealthCheck {
        HealthCheck {
            namespace: "default".into(),
            name: name.into(),
            local_endpoints,
        }
    }

    #[tokio::test]
    async fn listeners_follow_the_wanted_ports() {
        let proxy = Arc::new(Mutex::new(ProxyHealth::new(Duration::from_secs(30))));
        let loopback = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let mut servers = ServiceHealthServers::new(loopback, proxy);
        let (a, b) = (free_port(), free_port());
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let busy = taken.local_addr().unwrap().port();

        let wanted = BTreeMap::from([
            (a, check("a", 1)),
            (b, check("b", 0)),
            (busy, check("c", 1)),
        ]);
        let errors = servers.sync(&wanted).await;
        assert_eq!(errors.len(), 1);
        let line = errors[0].to_string();
        assert!(
            line.contains("default/c") && line.contains("spec.healthCheckNodePort"),
            "{line}"
        );
        assert_eq!(status(a).await.as_deref(), Some("200"));
        assert_eq!(status(b).await.as_deref(), Some("503"));

        let wanted = BTreeMap::from([(a, check("a", 0))]);
        assert!(servers.sync(&wanted).await.is_empty());
        assert_eq!(status(a).await.as_deref(), Some("503"), "updated in place");
        assert_eq!(servers.ports(), [a]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(status(b).await, None, "closed");
    }
}
