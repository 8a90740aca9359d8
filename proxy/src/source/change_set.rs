//! Which Services changed since the last pass, as the watchers report them.
//! A pass told that only a few Services changed recomputes and rewrites
//! just those; anything it cannot pin down to Services (a relist, the Node,
//! a manifests folder, too many at once) asks for a full pass.

use std::{collections::BTreeSet, sync::Mutex, time::SystemTime};

use crate::model::{address::IpFamily, name::NamespacedName};

/// Beyond this many changed Services a full pass is cheaper than tracking.
const MAX_TRACKED: usize = 1_024;
/// Trigger times kept between passes; a burst beyond them is measured by
/// the ones kept.
pub const MAX_TRIGGERS: usize = 4_096;

/// When the change an EndpointSlice carries was triggered: its
/// `endpoints.kubernetes.io/last-change-trigger-time`, set by the
/// EndpointSlice controller when a Pod or Service changed. kube-proxy's
/// network programming latency runs from it to the pass that programmed
/// the slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeTrigger {
    pub family: IpFamily,
    pub at: SystemTime,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub everything: bool,
    /// `(namespace, name)` of each changed Service.
    pub services: BTreeSet<NamespacedName>,
    /// Watch events received, kept even when the set says `everything`:
    /// kube-proxy's `sync_proxy_rules_*_changes_total` count these.
    pub received: ReceivedChanges,
    /// The trigger times of the EndpointSlices received.
    pub triggers: Vec<ChangeTrigger>,
}

/// How many Service and EndpointSlice changes the watchers delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceivedChanges {
    pub services: u64,
    pub endpoint_slices: u64,
}

impl ChangeSet {
    pub fn everything() -> Self {
        Self {
            everything: true,
            ..Self::default()
        }
    }

    /// Nothing to recompute: no Service named and no full pass asked for.
    pub fn is_empty(&self) -> bool {
        !self.everything && self.services.is_empty()
    }

    fn add_service(&mut self, namespace: &str, name: &str) {
        if self.everything {
            return;
        }
        self.services.insert(NamespacedName::new(namespace, name));
        if self.services.len() > MAX_TRACKED {
            self.mark_everything();
        }
    }

    fn mark_everything(&mut self) {
        self.everything = true;
        self.services.clear();
    }
}

/// The change set the watcher tasks add to and each pass takes.
#[derive(Debug, Default)]
pub struct PendingChanges(Mutex<ChangeSet>);

impl PendingChanges {
    pub fn service(&self, namespace: &str, name: &str) {
        self.lock().add_service(namespace, name);
    }

    pub fn everything(&self) {
        self.lock().mark_everything();
    }

    /// One Service added, updated or deleted, as a watch event delivered it.
    pub fn received_service(&self) {
        self.lock().received.services += 1;
    }

    /// One EndpointSlice added, updated or deleted, with its trigger time
    /// when it has one.
    pub fn received_endpoint_slice(&self, trigger: Option<ChangeTrigger>) {
        let mut set = self.lock();
        set.received.endpoint_slices += 1;
        if let Some(trigger) = trigger
            && set.triggers.len() < MAX_TRIGGERS
        {
            set.triggers.push(trigger);
        }
    }

    /// Changes received and not yet taken, for kube-proxy's `*_pending`
    /// gauges.
    pub fn pending(&self) -> ReceivedChanges {
        self.lock().received
    }

    /// What changed since the last take, leaving nothing pending.
    pub fn take(&self) -> ChangeSet {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChangeSet> {
        // The set is valid after any panic mid-insert; worst case it names
        // one Service too many.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_services_until_too_many() {
        let pending = PendingChanges::default();
        pending.service("default", "web");
        pending.service("default", "web");
        pending.service("kube-system", "dns");
        let taken = pending.take();
        assert!(!taken.everything);
        assert_eq!(taken.services.len(), 2);
        assert_eq!(pending.take(), ChangeSet::default());

        for i in 0..=MAX_TRACKED {
            pending.service("default", &format!("svc-{i}"));
        }
        assert_eq!(pending.take(), ChangeSet::everything());
    }

    #[test]
    fn counts_what_was_received_even_when_everything_changed() {
        let pending = PendingChanges::default();
        pending.received_service();
        let trigger = ChangeTrigger {
            family: IpFamily::V6,
            at: SystemTime::UNIX_EPOCH,
        };
        pending.received_endpoint_slice(Some(trigger));
        pending.received_endpoint_slice(None);
        assert_eq!(pending.pending().endpoint_slices, 2);
        pending.everything();
        let taken = pending.take();
        assert!(taken.everything);
        assert_eq!(taken.triggers, [trigger]);
        assert_eq!(
            taken.received,
            ReceivedChanges {
                services: 1,
                endpoint_slices: 2
            }
        );
        assert_eq!(pending.take().received, ReceivedChanges::default());
    }

    #[test]
    fn everything_absorbs_services() {
        let pending = PendingChanges::default();
        pending.everything();
        pending.service("default", "web");
        assert_eq!(pending.take(), ChangeSet::everything());
    }
}
