//! The cluster's EndpointSlices as the conversion reads them
//! (`convert::endpoints::read_slice`), kept from a watcher's events instead
//! of whole objects in a reflector store: a slice of four endpoints is a
//! few hundred bytes here, several kilobytes as an object.
//!
//! A relist (after a disconnect or `410 Gone`) marks and sweeps in place:
//! each slice listed again replaces its entry, and those not listed again
//! go when the list ends. A reflector store instead fills a second store and
//! swaps, holding two copies of the catalog meanwhile. A pass during the
//! relist sees some slices newer than others, each one whole, as it could
//! between any two watch events.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::{
    convert::{
        endpoints::{ParsedSlice, read_slice},
        input_error::InputError,
        service::namespace_of,
    },
    model::name::NamespacedName,
};

#[derive(Debug, Default)]
pub struct SliceStore {
    slices: HashMap<NamespacedName, SliceRecord>,
    /// While a relist runs: the slices it listed so far.
    relisting: Option<HashSet<NamespacedName>>,
    listed: bool,
}

/// One slice as read: what is usable of it, and what was wrong.
#[derive(Debug)]
struct SliceRecord {
    parsed: Option<Arc<ParsedSlice>>,
    errors: Vec<InputError>,
}

fn key(slice: &EndpointSlice) -> NamespacedName {
    NamespacedName::new(
        namespace_of(&slice.metadata),
        slice.metadata.name.as_deref().unwrap_or_default(),
    )
}

impl SliceStore {
    /// A slice added or changed (or listed again).
    pub fn apply(&mut self, slice: &EndpointSlice) {
        let (parsed, errors) = read_slice(slice);
        let key = key(slice);
        if let Some(listed) = &mut self.relisting {
            listed.insert(key.clone());
        }
        self.slices.insert(
            key,
            SliceRecord {
                parsed: parsed.map(Arc::new),
                errors,
            },
        );
    }

    pub fn delete(&mut self, slice: &EndpointSlice) {
        self.slices.remove(&key(slice));
    }

    /// A list begins: what it does not list again goes when it ends.
    pub fn relist_started(&mut self) {
        self.relisting = Some(HashSet::new());
    }

    /// The list ended. Returns whether it was the first.
    pub fn relisted(&mut self) -> bool {
        if let Some(listed) = self.relisting.take() {
            self.slices.retain(|key, _| listed.contains(key));
        }
        !std::mem::replace(&mut self.listed, true)
    }

    /// Slice `namespace/name` if it exists: what is usable of it, and the
    /// problems found in it.
    pub fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<(Option<&Arc<ParsedSlice>>, &[InputError])> {
        let record = self.slices.get(&NamespacedName::new(namespace, name))?;
        Some((record.parsed.as_ref(), &record.errors))
    }

    /// Every usable slice, and every problem found in any.
    pub fn snapshot(&self) -> (Vec<Arc<ParsedSlice>>, Vec<InputError>) {
        let mut slices = Vec::with_capacity(self.slices.len());
        let mut errors = Vec::new();
        for record in self.slices.values() {
            slices.extend(record.parsed.clone());
            errors.extend(record.errors.iter().cloned());
        }
        (slices, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::fixtures::slice;

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
        let mut store = SliceStore::default();
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
        let mut store = SliceStore::default();
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
