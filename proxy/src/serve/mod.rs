//! What the agent serves over HTTP: kube-proxy's admin endpoints, health
//! rules and health check node ports, and the Prometheus metrics.

pub mod admin_server;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod service_health_server;
