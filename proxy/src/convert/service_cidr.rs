//! The cluster's service CIDRs: the ranges ClusterIPs are allocated from,
//! which kube-proxy (1.33+) learns from ServiceCIDR objects and drops
//! unallocated addresses of. The agent adds `--service-cluster-ip-range`,
//! for clusters whose API server has no ServiceCIDR objects.

use std::{collections::BTreeSet, sync::Arc};

use k8s_openapi::api::networking::v1::ServiceCIDR;

use crate::{
    convert::input_error::{InputError, ObjectRef, Reason},
    model::address::Cidr,
};

/// Every CIDR of every ServiceCIDR object (a terminating one included: its
/// addresses may still be held until it goes), with `configured` first;
/// a CIDR that does not parse is left out with an error naming it.
pub fn service_cidrs(
    configured: &[Cidr],
    objects: &[Arc<ServiceCIDR>],
) -> (Vec<Cidr>, Vec<InputError>) {
    let mut cidrs: BTreeSet<Cidr> = configured.iter().copied().collect();
    let mut errors = Vec::new();
    for object in objects {
        let name = object.metadata.name.as_deref().unwrap_or_default();
        let texts = object
            .spec
            .as_ref()
            .and_then(|spec| spec.cidrs.as_deref())
            .unwrap_or_default();
        for (index, text) in texts.iter().enumerate() {
            match text.parse::<Cidr>() {
                Ok(cidr) => {
                    cidrs.insert(cidr);
                }
                Err(bad) => errors.push(InputError::field(
                    &ObjectRef::new("ServiceCIDR", "", name),
                    format!("spec.cidrs[{index}]"),
                    Reason::InvalidIp,
                    bad.to_string(),
                )),
            }
        }
    }
    (cidrs.into_iter().collect(), errors)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::networking::v1::ServiceCIDRSpec, apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn object(name: &str, cidrs: &[&str]) -> Arc<ServiceCIDR> {
        Arc::new(ServiceCIDR {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceCIDRSpec {
                cidrs: Some(cidrs.iter().map(|&c| c.to_owned()).collect()),
            }),
            status: None,
        })
    }

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn objects_and_the_flag_are_merged_without_repeats() {
        let objects = [
            object("kubernetes", &["10.96.0.0/16", "fd00:96::/112"]),
            object("extra", &["10.97.0.0/24", "10.96.0.0/16"]),
        ];
        let (cidrs, errors) = service_cidrs(&[cidr("10.96.0.0/16")], &objects);
        assert!(errors.is_empty());
        assert_eq!(
            cidrs,
            [
                cidr("10.96.0.0/16"),
                cidr("10.97.0.0/24"),
                cidr("fd00:96::/112")
            ]
        );
    }

    #[test]
    fn a_bad_cidr_is_named_and_the_rest_kept() {
        let (cidrs, errors) =
            service_cidrs(&[], &[object("extra", &["10.97.0.0/33", "10.98.0.0/24"])]);
        assert_eq!(cidrs, [cidr("10.98.0.0/24")]);
        assert_eq!(errors.len(), 1);
        let line = errors[0].to_string();
        assert!(
            line.contains("ServiceCIDR extra") && line.contains("spec.cidrs[0]"),
            "{line}"
        );
    }

    #[test]
    fn an_object_without_a_spec_adds_nothing() {
        let empty = Arc::new(ServiceCIDR {
            metadata: ObjectMeta::default(),
            spec: None,
            status: None,
        });
        assert_eq!(service_cidrs(&[], &[empty]), (Vec::new(), Vec::new()));
    }
}
