//! Which Services and EndpointSlices this proxy serves, by kube-proxy's
//! labels: without `--service-proxy-name`, those without
//! `service.kubernetes.io/service-proxy-name` (what kube-proxy serves);
//! with it, only those labelled with that name, so that a cluster can move
//! from kube-proxy Service by Service. Headless ones never.
//!
//! The API source asks the API server for just these (a label selector);
//! the manifests folder is filtered the same way as it is read.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::convert::service::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxySelector {
    /// `--service-proxy-name`.
    name: Option<String>,
}

impl ProxySelector {
    pub fn new(name: Option<&str>) -> Self {
        Self {
            name: name.map(str::to_owned),
        }
    }

    /// The label selector the watches send.
    pub fn label_selector(&self) -> String {
        match &self.name {
            None => format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}"),
            Some(name) => format!("{SERVICE_PROXY_NAME_LABEL}={name},!{HEADLESS_LABEL}"),
        }
    }

    /// Why an object is not this proxy's, if it is not.
    pub fn excludes(&self, meta: &ObjectMeta) -> Option<&'static str> {
        let label = |key: &str| meta.labels.as_ref()?.get(key).map(String::as_str);
        if label(HEADLESS_LABEL).is_some() {
            return Some(HEADLESS_LABEL);
        }
        let served = match (&self.name, label(SERVICE_PROXY_NAME_LABEL)) {
            (None, None) => true,
            (Some(ours), Some(theirs)) => ours == theirs,
            _ => false,
        };
        (!served).then_some(SERVICE_PROXY_NAME_LABEL)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn meta(labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn serves_what_the_name_selects() {
        let unlabelled = meta(&[]);
        let ours = meta(&[(SERVICE_PROXY_NAME_LABEL, "switchyard")]);
        let theirs = meta(&[(SERVICE_PROXY_NAME_LABEL, "other")]);
        let headless = meta(&[(HEADLESS_LABEL, "")]);
        let kube_proxys = ProxySelector::new(None);
        let named = ProxySelector::new(Some("switchyard"));
        let cases = [
            (&kube_proxys, &unlabelled, None),
            (&kube_proxys, &ours, Some(SERVICE_PROXY_NAME_LABEL)),
            (&kube_proxys, &headless, Some(HEADLESS_LABEL)),
            (&named, &unlabelled, Some(SERVICE_PROXY_NAME_LABEL)),
            (&named, &ours, None),
            (&named, &theirs, Some(SERVICE_PROXY_NAME_LABEL)),
            (&named, &headless, Some(HEADLESS_LABEL)),
        ];
        for (selector, object, want) in cases {
            assert_eq!(selector.excludes(object), want, "{selector:?} {object:?}");
        }
        assert_eq!(
            kube_proxys.label_selector(),
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
        );
        assert_eq!(
            named.label_selector(),
            "service.kubernetes.io/service-proxy-name=switchyard,!service.kubernetes.io/headless"
        );
    }
}
