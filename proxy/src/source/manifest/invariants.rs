//! What any manifests file keeps, whatever bytes it holds: parsing and
//! conversion never panic, and every problem is one line naming its
//! document, or its object and field. One check for the bounded mutation
//! run of `cargo xtask test` and for the coverage-guided fuzz target of
//! `cargo xtask fuzz` (`fuzz/fuzz_targets/manifest.rs`).

use std::path::Path;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{Object, parse_manifest};
use crate::convert::{desired::desired_state, input_error::InputError, topology::NodeContext};

/// The name the checked file is read under.
pub const FILE_NAME: &str = "m.yaml";

/// What one input met, so a run that only ever breaks (or never breaks)
/// its input is noticed.
#[derive(Debug, Default)]
pub struct Met {
    pub objects: usize,
    pub document_errors: usize,
    pub field_errors: usize,
}

/// Parses `bytes` as a manifests file and converts what it holds into the
/// desired state of a node. Panics, naming the line, if an error is not
/// one line that names its document or its object and field.
pub fn check_manifest(bytes: &[u8]) -> Met {
    let text = String::from_utf8_lossy(bytes);
    let node = NodeContext {
        node_port_addresses: vec![std::net::Ipv4Addr::new(192, 168, 1, 5).into()],
        ..NodeContext::default()
    };
    let (objects, mut errors) = parse_manifest(Path::new(FILE_NAME), &text);
    let services: Vec<Service> = objects
        .iter()
        .filter_map(|object| match object {
            Object::Service(service) => Some((**service).clone()),
            _ => None,
        })
        .collect();
    let slices: Vec<EndpointSlice> = objects
        .iter()
        .filter_map(|object| match object {
            Object::EndpointSlice(slice) => Some((**slice).clone()),
            _ => None,
        })
        .collect();
    let mut met = Met {
        objects: services.len() + slices.len(),
        ..Met::default()
    };
    let (_, conversion) = desired_state(&services, &slices, &node);
    errors.extend(conversion);
    for error in &errors {
        let line = error.to_string();
        assert!(!line.contains('\n'), "an error of several lines: {line:?}");
        let named = match error {
            InputError::Document { .. } => {
                met.document_errors += 1;
                line.starts_with(&format!("{FILE_NAME}: document "))
            }
            InputError::Field { object, field, .. } => {
                met.field_errors += 1;
                !object.name.is_empty() && !field.is_empty()
            }
            InputError::Unreadable { .. } => false,
        };
        assert!(named, "an error naming no document or field: {line:?}");
    }
    met
}
