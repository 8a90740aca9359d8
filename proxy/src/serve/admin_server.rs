//! The HTTP endpoints a cluster expects of a kube-proxy: `/metrics` and
//! `/proxyMode` (metrics address, default 127.0.0.1:10249), `/healthz` and
//! `/livez` (health address, default 0.0.0.0:10256).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
};
use tokio::net::TcpListener;

use crate::{
    model::HealthCheck,
    serve::{
        health::ProxyHealth,
        listener::{self, Limits},
        metrics::{Metrics, kube_proxy::HealthEndpoint},
    },
};

/// What `/proxyMode` answers; kube-proxy answers "iptables", "ipvs" or
/// "nftables" there.
pub const PROXY_MODE: &str = "ebpf";

#[derive(Debug, thiserror::Error)]
#[error("binding {address}: {source}")]
pub struct BindError {
    pub address: SocketAddr,
    pub source: std::io::Error,
}

/// Which endpoints one listener serves.
#[derive(Clone)]
pub enum Endpoints {
    Metrics(Arc<Metrics>),
    /// `/healthz` and `/livez`, each answer counted in `metrics`.
    Health {
        health: Arc<Mutex<ProxyHealth>>,
        metrics: Arc<Metrics>,
    },
    /// A health check node port: every path answers for one Service.
    ServiceHealth {
        check: Arc<Mutex<HealthCheck>>,
        proxy: Arc<Mutex<ProxyHealth>>,
    },
}

/// kube-proxy's health check node port body (`service_health.go`).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceHealthBody<'a> {
    service: ServiceName<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

#[derive(serde::Serialize)]
struct ServiceName<'a> {
    namespace: &'a str,
    name: &'a str,
}

pub async fn bind(address: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| BindError { address, source })
}

/// Serves `endpoints` until the task is dropped (see `listener` for the
/// limits every listener applies).
pub async fn serve(listener: TcpListener, endpoints: Endpoints) {
    listener::serve(listener, Limits::default(), move |request| {
        endpoints.respond(request)
    })
    .await;
}

impl Endpoints {
    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if let Self::ServiceHealth { check, proxy } = self {
            return service_health(check, proxy);
        }
        match (self, path) {
            (Self::Metrics(metrics), "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render(),
            ),
            (Self::Metrics(_), "/proxyMode") => reply(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                PROXY_MODE.into(),
            ),
            (Self::Health { health, metrics }, "/healthz" | "/livez") => {
                let now = SystemTime::now();
                let answer = {
                    // A poisoned lock only means a panic elsewhere mid-update;
                    // the health record is still meaningful.
                    let health = health
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if path == "/healthz" {
                        health.healthz(now)
                    } else {
                        health.livez(now)
                    }
                };
                let endpoint = if path == "/healthz" {
                    HealthEndpoint::Healthz
                } else {
                    HealthEndpoint::Livez
                };
                metrics.kube_proxy.count_health(endpoint, answer.status);
                let status =
                    StatusCode::from_u16(answer.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                reply(status, "application/json", answer.body)
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "404 page not found\n".into(),
            ),
        }
    }
}

/// 200 when this node has endpoints of the Service and the proxy is
/// healthy, else 503; the weight header lets a load balancer spread by
/// endpoint count.
fn service_health(check: &Mutex<HealthCheck>, proxy: &Mutex<ProxyHealth>) -> Response<Full<Bytes>> {
    let check = check
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let proxy_healthy = proxy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_healthy(SystemTime::now());
    let body = ServiceHealthBody {
        service: ServiceName {
            namespace: &check.namespace,
            name: &check.name,
        },
        local_endpoints: check.local_endpoints,
        service_proxy_healthy: proxy_healthy,
    };
    let status = if check.local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = reply(
        status,
        "application/json",
        serde_json::to_string(&body).unwrap_or_default(),
    );
    response.headers_mut().insert(
        "X-Load-Balancing-Endpoint-Weight",
        header::HeaderValue::from(check.local_endpoints),
    );
    response
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A real HTTP/1.1 exchange over loopback; returns the whole response.
    async fn get(address: SocketAddr, path: &str) -> String {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn service_health_answers_like_kube_proxy() {
        let check = Arc::new(Mutex::new(HealthCheck {
            namespace: "ns".into(),
            name: "web".into(),
            local_endpoints: 2,
        }));
        let proxy = Arc::new(Mutex::new(ProxyHealth::new(Duration::from_secs(30))));
        let address = start(Endpoints::ServiceHealth {
            check: Arc::clone(&check),
            proxy: Arc::clone(&proxy),
        })
        .await;
        let ok = get(address, "/any/path").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(
            ok.to_ascii_lowercase()
                .contains("x-load-balancing-endpoint-weight: 2")
        );
        assert!(ok.ends_with(
            r#"{"service":{"namespace":"ns","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#
        ));
        check.lock().unwrap().local_endpoints = 0;
        assert!(get(address, "/").await.starts_with("HTTP/1.1 503"));
        check.lock().unwrap().local_endpoints = 1;
        let long_ago = SystemTime::now() - Duration::from_mins(2);
        proxy.lock().unwrap().queued_update(long_ago);
        let sick = get(address, "/").await;
        assert!(sick.starts_with("HTTP/1.1 503") && sick.contains("\"serviceProxyHealthy\":false"));
    }

    async fn start(endpoints: Endpoints) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, endpoints));
        address
    }

    #[tokio::test]
    async fn metrics_listener_serves_metrics_and_proxy_mode() {
        let metrics = Arc::new(Metrics::new());
        metrics.set_programmed(2, 5);
        let address = start(Endpoints::Metrics(metrics)).await;
        let response = get(address, "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.contains("switchyard_frontends_programmed 2"));
        let mode = get(address, "/proxyMode").await;
        assert!(
            mode.starts_with("HTTP/1.1 200 OK") && mode.ends_with("ebpf"),
            "{mode}"
        );
        assert!(get(address, "/healthz").await.starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn health_listener_follows_the_health_rules() {
        let health = Arc::new(Mutex::new(ProxyHealth::new(Duration::from_secs(30))));
        let metrics = Arc::new(Metrics::new());
        let address = start(Endpoints::Health {
            health: Arc::clone(&health),
            metrics: Arc::clone(&metrics),
        })
        .await;
        let healthy = get(address, "/healthz").await;
        assert!(healthy.starts_with("HTTP/1.1 200 OK"), "{healthy}");
        let lower = healthy.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json"));
        assert!(lower.contains("x-content-type-options: nosniff"));
        assert!(healthy.contains("\"nodeEligible\":true"));

        health.lock().unwrap().set_node_eligible(false);
        assert!(get(address, "/healthz").await.starts_with("HTTP/1.1 503"));
        let livez = get(address, "/livez").await;
        assert!(livez.starts_with("HTTP/1.1 200 OK") && !livez.contains("nodeEligible"));

        let long_ago = SystemTime::now() - Duration::from_mins(2);
        health.lock().unwrap().queued_update(long_ago);
        assert!(get(address, "/livez").await.starts_with("HTTP/1.1 503"));
        // Each answer counted by code, as kube-proxy counts them.
        let text = metrics.render();
        for line in [
            "kubeproxy_proxy_healthz_total{code=\"200\"} 1",
            "kubeproxy_proxy_healthz_total{code=\"503\"} 1",
            "kubeproxy_proxy_livez_total{code=\"200\"} 1",
            "kubeproxy_proxy_livez_total{code=\"503\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
