//! The task behind each watch stream: every event goes to its handler,
//! then wakes the agent; failures are said and the stream's backoff
//! retries.

use std::sync::{Arc, atomic::AtomicUsize};

use futures::StreamExt;
use kube::runtime::watcher;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};

use crate::source::change_set::PendingChanges;

/// Whether a watcher's first list holds back the first sync.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Required,
    /// Served when the API server has it; a 404 is said once, at info.
    Optional,
}

/// Where a watcher reports: a wake-up for the agent loop, what changed,
/// and how many watchers have listed.
pub struct Notify<'a> {
    pub wake: &'a mpsc::Sender<()>,
    pub pending: &'a Arc<PendingChanges>,
    pub listed: &'a Arc<AtomicUsize>,
}

/// Notes what one watch event changed: the object (by `changed`), or
/// everything (a relist).
pub fn record<K>(
    event: &watcher::Event<K>,
    pending: &PendingChanges,
    changed: &mut impl FnMut(&K, bool, &PendingChanges),
) {
    match event {
        watcher::Event::Apply(object) => changed(object, false, pending),
        watcher::Event::Delete(object) => changed(object, true, pending),
        // A relist replaces the store wholesale: diffing it against the
        // previous content is what a full pass does.
        watcher::Event::InitApply(object) => {
            changed(object, false, pending);
            pending.everything();
        }
        watcher::Event::Init | watcher::Event::InitDone => pending.everything(),
    }
}

/// Runs a watch stream: each event goes to `on_event`, then wakes the
/// agent; failures are said (once, at info, for an optional resource the
/// API server does not serve) and the stream's backoff retries.
pub fn spawn_events<K, S>(
    stream: S,
    listing: Listing,
    notify: &Notify<'_>,
    tasks: &mut Vec<JoinHandle<()>>,
    mut on_event: impl FnMut(&watcher::Event<K>, &PendingChanges) + Send + 'static,
) where
    K: kube::Resource<DynamicType = ()> + Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let kind = K::kind(&()).into_owned();
    let sender = notify.wake.clone();
    let pending = Arc::clone(notify.pending);
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut said_not_served = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    on_event(&event, &pending);
                    let _already_pending = sender.try_send(());
                }
                Err(error) if listing == Listing::Optional && not_served(&error) => {
                    if !said_not_served {
                        info!(%kind, "not served by this API server; retrying quietly");
                        said_not_served = true;
                    }
                }
                // The backoff retries; the stores keep their last content.
                Err(error) => warn!(%kind, %error, "watch failed; retrying"),
            }
        }
    }));
}

/// A resource the API server does not have (404 on its list).
fn not_served(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.is_not_found()
    )
}
