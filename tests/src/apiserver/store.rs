//! The API server's state, as etcd would hold it: objects by kind,
//! namespace and name; one global resourceVersion counter; a history of
//! change events for watches to replay; a compaction point before which
//! versions are gone (410).

use std::{
    collections::BTreeMap,
    sync::mpsc::{Receiver, Sender, channel},
};

use serde_json::{Value, json};

use super::selector::Selector;

/// A resource kind the server knows: its name (the list kind adds `List`),
/// API version, plural and whether it is namespaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Kind {
    pub name: &'static str,
    pub api_version: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

pub const KINDS: [Kind; 4] = [
    Kind {
        name: "Service",
        api_version: "v1",
        plural: "services",
        namespaced: true,
    },
    Kind {
        name: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
        plural: "endpointslices",
        namespaced: true,
    },
    Kind {
        name: "Node",
        api_version: "v1",
        plural: "nodes",
        namespaced: false,
    },
    Kind {
        name: "ServiceCIDR",
        api_version: "networking.k8s.io/v1",
        plural: "servicecidrs",
        namespaced: false,
    },
];

pub fn kind_named(kind: &str) -> Option<Kind> {
    KINDS.iter().copied().find(|k| k.name == kind)
}

type Key = (&'static str, String, String);

#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub kind: &'static str,
    /// The object before (None when created) and after (None when deleted).
    pub before: Option<Value>,
    pub after: Option<Value>,
}

#[derive(Default)]
pub struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    compacted: u64,
    history: Vec<Change>,
    subscribers: Vec<(u64, Sender<Change>)>,
    next_uid: u64,
}

impl Store {
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Creates or replaces; returns the stored object.
    pub fn apply(&mut self, mut object: Value) -> Value {
        let kind = kind_named(object["kind"].as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("unsupported kind in {object}"));
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let namespace = if kind.namespaced {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            object["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        let key = (kind.name, namespace, name);
        let before = self.objects.get(&key).cloned();
        self.rv += 1;
        let metadata = &mut object["metadata"];
        metadata["resourceVersion"] = json!(self.rv.to_string());
        let uid = before
            .as_ref()
            .and_then(|b| b["metadata"]["uid"].as_str().map(String::from))
            .unwrap_or_else(|| {
                self.next_uid += 1;
                format!("00000000-0000-0000-0000-{:012}", self.next_uid)
            });
        metadata["uid"] = json!(uid);
        if metadata.get("creationTimestamp").is_none() {
            metadata["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        self.objects.insert(key, object.clone());
        self.record(kind.name, before, Some(object.clone()));
        object
    }

    pub fn delete(&mut self, kind: &str, namespace: &str, name: &str) -> bool {
        let Some(kind) = kind_named(kind) else {
            return false;
        };
        let namespace = if kind.namespaced { namespace } else { "" };
        let key = (kind.name, namespace.to_owned(), name.to_owned());
        let Some(before) = self.objects.remove(&key) else {
            return false;
        };
        self.rv += 1;
        let mut gone = before.clone();
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(kind.name, Some(before), None);
        if let Some(last) = self.history.last_mut() {
            last.before = Some(gone);
        }
        true
    }

    fn record(&mut self, kind: &'static str, before: Option<Value>, after: Option<Value>) {
        let change = Change {
            rv: self.rv,
            kind,
            before,
            after,
        };
        self.subscribers
            .retain(|(_, subscriber)| subscriber.send(change.clone()).is_ok());
        self.history.push(change);
    }

    /// Every version up to now becomes too old to watch from.
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }

    /// Up to `limit` of the objects of `kind` matching the selectors, in
    /// key order, after `after` (a continue token: the `namespace/name` of
    /// the last object of the previous page); and the token for the next
    /// page, if there is one. A page costs its own size, not the store's,
    /// as with the real API server's watch cache.
    pub fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: &Selector,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> (Vec<Value>, Option<String>) {
        use std::ops::Bound;
        let start = match after {
            Some((ns, name)) => Bound::Excluded((kind.name, ns.to_owned(), name.to_owned())),
            None => Bound::Included((kind.name, String::new(), String::new())),
        };
        let mut matching = self
            .objects
            .range((start, Bound::Unbounded))
            .take_while(|((k, _, _), _)| *k == kind.name)
            .filter(|((_, ns, _), _)| namespace.is_none_or(|n| n == ns))
            .filter(|(_, object)| selector.matches(object));
        let page: Vec<(&Key, &Value)> = matching.by_ref().take(limit).collect();
        let more = matching.next().is_some();
        let token = page
            .last()
            .filter(|_| more)
            .map(|((_, ns, name), _)| format!("{ns}/{name}"));
        (
            page.into_iter().map(|(_, object)| object.clone()).collect(),
            token,
        )
    }

    /// Changes after `rv` (None when `rv` is compacted away), and a live
    /// feed of the ones to come.
    pub fn watch_from(&mut self, rv: u64, id: u64) -> Option<(Vec<Change>, Receiver<Change>)> {
        if rv < self.compacted {
            return None;
        }
        let replay = self.history.iter().filter(|c| c.rv > rv).cloned().collect();
        let (sender, receiver) = channel();
        self.subscribers.push((id, sender));
        Some((replay, receiver))
    }

    /// Ends every live feed (the watch connections notice and close).
    pub fn drop_subscribers(&mut self) {
        self.subscribers.clear();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pages_resume_after_the_last_key_and_stay_within_their_kind() {
        let mut store = Store::default();
        for name in ["e", "a", "c", "b", "d"] {
            store.apply(json!({"kind": "Service", "metadata": {"name": name, "namespace": "x"}}));
        }
        store.apply(json!({"kind": "Node", "metadata": {"name": "n"}}));
        let service = kind_named("Service").unwrap();
        let everything = Selector::parse("", "");
        let names = |page: &[Value]| -> Vec<String> {
            page.iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let (page, token) = store.list(service, None, &everything, None, 2);
        assert_eq!(
            (names(&page), token.as_deref()),
            (vec!["a".into(), "b".into()], Some("x/b"))
        );
        let (page, token) = store.list(service, None, &everything, Some(("x", "b")), 2);
        assert_eq!(
            (names(&page), token.as_deref()),
            (vec!["c".into(), "d".into()], Some("x/d"))
        );
        let (page, token) = store.list(service, None, &everything, Some(("x", "d")), 2);
        assert_eq!((names(&page), token), (vec!["e".into()], None));
        let (page, token) = store.list(service, None, &everything, None, usize::MAX);
        assert_eq!((page.len(), token), (5, None));
    }
}
