//! The accept loop every HTTP listener of the agent runs, hardened for a
//! port anyone on the network may reach (the health check node ports, and
//! `/healthz` on 0.0.0.0):
//!
//! - a failed accept (EMFILE at the open-file limit, ENOBUFS) waits before
//!   the next try, 5 ms doubling to 1 s as Go's `net/http` does, and is
//!   logged once per streak, not once per try;
//! - at most [`Limits::connections`] connections at once: the rest wait
//!   in the kernel's backlog rather than take file descriptors;
//! - a connection gets [`Limits::header_timeout`] for each request's
//!   headers and lives at most [`Limits::lifetime`], after which it is
//!   closed once its current request is answered (a client polling every
//!   few seconds would otherwise hold it for ever).

use std::{convert::Infallible, io, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Request, Response,
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, info, warn};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub connections: usize,
    pub header_timeout: Duration,
    pub lifetime: Duration,
}

impl Default for Limits {
    /// Prometheus and the kubelet each hold one connection; a load
    /// balancer's health checker a few.
    fn default() -> Self {
        Self {
            connections: 64,
            header_timeout: Duration::from_secs(10),
            lifetime: Duration::from_mins(1),
        }
    }
}

/// Where connections come from: a TCP listener, or a test's stand-in.
pub trait Accept: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// How long to wait after failed accepts, and when to say so.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    delay: Duration,
    failures: u64,
}

const FIRST_DELAY: Duration = Duration::from_millis(5);
const LONGEST_DELAY: Duration = Duration::from_secs(1);

impl AcceptBackoff {
    /// After a failed accept: the wait before the next, and whether this
    /// failure starts a streak (the one to log).
    pub fn failed(&mut self) -> (Duration, bool) {
        self.failures += 1;
        self.delay = if self.delay.is_zero() {
            FIRST_DELAY
        } else {
            (self.delay * 2).min(LONGEST_DELAY)
        };
        (self.delay, self.failures == 1)
    }

    /// After an accept succeeded: how many failed in the streak it ends.
    pub fn succeeded(&mut self) -> u64 {
        self.delay = Duration::ZERO;
        std::mem::take(&mut self.failures)
    }
}

/// Serves `respond` on every connection `incoming` gives, until the task
/// is dropped. A failed connection affects only itself.
pub async fn serve<A, F>(mut incoming: A, limits: Limits, respond: F)
where
    A: Accept,
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.connections));
    let mut backoff = AcceptBackoff::default();
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return; // never closed
        };
        let stream = match incoming.accept().await {
            Ok(stream) => {
                let failures = backoff.succeeded();
                if failures > 0 {
                    info!(failures, "accepting HTTP connections again");
                }
                stream
            }
            Err(error) => {
                let (delay, first) = backoff.failed();
                if first {
                    warn!(%error, "accepting an HTTP connection failed; retrying with backoff");
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let _permit = permit;
            connection(stream, limits, respond).await;
        });
    }
}

async fn connection<S, F>(stream: S, limits: Limits, respond: F)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let service = service_fn(move |request| {
        let response = respond(&request);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = tokio::time::sleep(limits.lifetime) => {
            // The request in flight is answered, then the connection closes.
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.header_timeout, connection).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(error) = result {
        debug!(%error, "HTTP connection ended with an error");
    }
}

/// Raises the open-file soft limit to the hard limit, as Go programs
/// (kube-proxy among them) do at start: containerd gives containers a soft
/// limit of 1,024, which a few hundred health checkers and pinned maps
/// reach. A failure is logged; the agent runs on with the limit it has.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let raised = getrlimit(Resource::RLIMIT_NOFILE).and_then(|(soft, hard)| {
        if soft < hard {
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        }
        Ok((soft, hard))
    });
    match raised {
        Ok((soft, hard)) if soft < hard => {
            info!(from = soft, to = hard, "raised the open-file limit");
        }
        Ok(_) => {}
        Err(error) => warn!(%error, "raising the open-file limit"),
    }
}

#[cfg(test)]
mod tests;
