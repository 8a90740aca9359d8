//! A stand-in Kubernetes API server for the integration tests: there is no
//! kube-apiserver binary on the registries these machines reach, so this
//! speaks the real list/watch protocol over HTTP instead (JSON lists with
//! resourceVersion and pagination, chunked watch streams with bookmarks,
//! `410 Gone` after compaction, dropped connections, a server that goes
//! away and comes back), and the agent talks to it through kube-rs, doing
//! real I/O.
//!
//! It listens on 127.0.0.1 inside a test's network namespace (the node's),
//! so it is reachable only from processes the test put there.

mod http;
mod selector;
mod store;

use std::{
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context, Result};
use serde_json::Value;
use store::Store;

use crate::netns::{NetNs, setns};

/// State shared by the accept loop, the connections and the test.
struct Shared {
    store: Mutex<Store>,
    lists: AtomicU64,
    watches: AtomicU64,
    /// Bumped to end every open watch at once.
    generation: AtomicU64,
    /// Bumped to make every open watch send a bookmark.
    bookmarks: AtomicU64,
    stopping: AtomicBool,
    connections: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub struct FakeApiServer {
    shared: Arc<Shared>,
    netns: File,
    address: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Listens on 127.0.0.1 (a free port) inside `netns`.
    pub fn start_in(netns: &NetNs) -> Result<Self> {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            lists: AtomicU64::new(0),
            watches: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            bookmarks: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let mut server = Self {
            shared,
            netns: netns.open()?,
            address: "127.0.0.1:0".parse()?,
            acceptor: None,
        };
        server.listen()?;
        Ok(server)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A kubeconfig pointing at this server over plain HTTP, no auth.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.address
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Creates or replaces an object (emits ADDED or MODIFIED).
    pub fn apply(&self, object: Value) -> Value {
        self.shared.store().apply(object)
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        self.shared.store().delete(kind, namespace, name)
    }

    /// Every resourceVersion so far becomes too old: a watch resuming from
    /// one gets `410 Gone` and must relist.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// Closes every open watch abruptly, as a load balancer or a restarted
    /// API server would.
    pub fn drop_watches(&self) {
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.shared.store().drop_subscribers();
    }

    pub fn send_bookmarks(&self) {
        self.shared.bookmarks.fetch_add(1, Ordering::AcqRel);
    }

    /// LIST requests served so far.
    pub fn lists(&self) -> u64 {
        self.shared.lists.load(Ordering::Relaxed)
    }

    /// WATCH requests served so far.
    pub fn watches(&self) -> u64 {
        self.shared.watches.load(Ordering::Relaxed)
    }

    /// The server goes away: the port refuses connections, open ones die.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.drop_watches();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for connection in self.shared.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Back on the same address with the same objects.
    pub fn restart(&mut self) -> Result<()> {
        self.shared.stopping.store(false, Ordering::Release);
        self.listen()
    }

    fn listen(&mut self) -> Result<()> {
        let address = self.address;
        let netns = self.netns.as_raw_fd();
        // The socket belongs to the namespace of the thread that makes it.
        let listener = std::thread::scope(|scope| {
            scope
                .spawn(move || -> Result<TcpListener> {
                    setns(netns).context("setns")?;
                    Ok(TcpListener::bind(address)?)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("bind thread panicked"))?
        })?;
        self.address = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let shared = Arc::clone(&self.shared);
        self.acceptor = Some(std::thread::spawn(move || accept(&listener, &shared)));
        Ok(())
    }
}

/// Accepts until stopped; polls so `stop` needs no signal to interrupt it.
fn accept(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stopping.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                if let Ok(clone) = stream.try_clone() {
                    let mut connections = shared.connections.lock().unwrap();
                    connections.retain(|c| c.peer_addr().is_ok());
                    connections.push(clone);
                }
                let shared = Arc::clone(shared);
                std::thread::spawn(move || http::handle(stream, &shared));
            }
            // Wakes at once for a connection, and every 20 ms to see
            // whether `stop` was called.
            Err(_) => wait_readable(listener, 20),
        }
    }
}

fn wait_readable(listener: &TcpListener, timeout_ms: i32) {
    let mut poll = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&raw mut poll, 1, timeout_ms) };
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}
