//! The cluster's Services and EndpointSlices as the conversion reads them
//! (`convert::service::read_service`, `convert::endpoints::read_slice`),
//! kept from a watcher's events instead of whole objects in a reflector
//! store: a Service of one port, or a slice of four endpoints, is a few
//! hundred bytes here and several kilobytes as an object.
//!
//! A relist (after a disconnect or `410 Gone`) marks and sweeps in place:
//! each object listed again replaces its entry, and those not listed again
//! go when the list ends. A reflector store instead fills a second store and
//! swaps, holding two copies of the catalog meanwhile. A pass during the
//! relist sees some objects newer than others, each one whole, as it could
//! between any two watch events.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use kube::Resource;

use crate::{
    convert::{input_error::InputError, service::namespace_of},
    model::name::NamespacedName,
};

/// How an object of kind `K` is read into the `T` the conversion needs.
pub type Reader<K, T> = fn(&K) -> (Option<T>, Vec<InputError>);

pub struct ReadStore<K, T> {
    read: Reader<K, T>,
    records: HashMap<NamespacedName, Record<T>>,
    /// While a relist runs: the objects it listed so far.
    relisting: Option<HashSet<NamespacedName>>,
    listed: bool,
}

/// One object as read: what is usable of it, and what was wrong.
struct Record<T> {
    parsed: Option<Arc<T>>,
    errors: Vec<InputError>,
}

fn key<K: Resource>(object: &K) -> NamespacedName {
    let meta = object.meta();
    NamespacedName::new(namespace_of(meta), meta.name.as_deref().unwrap_or_default())
}

impl<K: Resource, T> ReadStore<K, T> {
    pub fn new(read: Reader<K, T>) -> Self {
        Self {
            read,
            records: HashMap::new(),
            relisting: None,
            listed: false,
        }
    }

    /// An object added or changed (or listed again).
    pub fn apply(&mut self, object: &K) {
        let (parsed, errors) = (self.read)(object);
        let key = key(object);
        if let Some(listed) = &mut self.relisting {
            listed.insert(key.clone());
        }
        self.records.insert(
            key,
            Record {
                parsed: parsed.map(Arc::new),
                errors,
            },
        );
    }

    pub fn delete(&mut self, object: &K) {
        self.records.remove(&key(object));
    }

    /// A list begins: what it does not list again goes when it ends.
    pub fn relist_started(&mut self) {
        self.relisting = Some(HashSet::new());
    }

    /// The list ended. Returns whether it was the first.
    pub fn relisted(&mut self) -> bool {
        if let Some(listed) = self.relisting.take() {
            self.records.retain(|key, _| listed.contains(key));
        }
        !std::mem::replace(&mut self.listed, true)
    }

    /// Object `namespace/name` if it exists: what is usable of it, and the
    /// problems found in it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<(Option<&Arc<T>>, &[InputError])> {
        let record = self.records.get(&NamespacedName::new(namespace, name))?;
        Some((record.parsed.as_ref(), &record.errors))
    }

    /// Everything usable, and every problem found in any object.
    pub fn snapshot(&self) -> (Vec<Arc<T>>, Vec<InputError>) {
        let mut parsed = Vec::with_capacity(self.records.len());
        let mut errors = Vec::new();
        for record in self.records.values() {
            parsed.extend(record.parsed.clone());
            errors.extend(record.errors.iter().cloned());
        }
        (parsed, errors)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use super::*;
    use crate::convert::{
        endpoints::{ParsedSlice, read_slice},
        fixtures::slice,
    };

    type SliceStore = ReadStore<EndpointSlice, ParsedSlice>;

    fn web_slice(name: &str, ip: &str) -> EndpointSlice {
        slice(&format!(
            r"
metadata:
  name: {name}
  namespace: shop
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: [{{addresses: [{ip}]}}]
"
        ))
    }

    fn names(store: &SliceStore) -> Vec<String> {
        let mut names: Vec<String> = store
            .snapshot()
            .0
            .iter()
            .map(|slice| slice.name.clone())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_relist_replaces_in_place_and_sweeps_what_it_did_not_list() {
        let mut store = SliceStore::new(read_slice);
        store.relist_started();
        store.apply(&web_slice("a", "10.0.0.1"));
        store.apply(&web_slice("b", "10.0.0.2"));
        assert!(store.relisted(), "the first list");
        assert_eq!(names(&store), ["a", "b"]);

        store.relist_started();
        store.apply(&web_slice("b", "10.0.0.3"));
        // Mid-relist, a is still there (not yet known to be gone).
        assert_eq!(names(&store), ["a", "b"]);
        assert!(!store.relisted());
        assert_eq!(names(&store), ["b"]);
        let (parsed, errors) = store.get("shop", "b").unwrap();
        assert_eq!(
            parsed.map(|slice| &**slice),
            read_slice(&web_slice("b", "10.0.0.3")).0.as_ref()
        );
        assert!(errors.is_empty());
        assert!(store.get("shop", "a").is_none());
    }

    #[test]
    fn problems_are_kept_with_their_slice_and_go_with_it() {
        let mut store = SliceStore::new(read_slice);
        let bad = web_slice("bad", "not-an-ip");
        store.apply(&bad);
        let (slices, errors) = store.snapshot();
        assert_eq!(slices.len(), 1, "the slice itself is still usable");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("bad"), "{}", errors[0]);
        store.delete(&bad);
        assert_eq!(store.snapshot().1.len(), 0);
    }
}
