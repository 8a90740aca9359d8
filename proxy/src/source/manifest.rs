//! The standalone source: a folder of ordinary Kubernetes YAML, the files
//! `kubectl apply -f DIR` takes. Several documents per file, `kind: List`,
//! and JSON are accepted; kinds the proxy does not use are ignored; a bad
//! document is reported with its file and position and the rest still loads.

#[cfg(any(test, feature = "fuzzing"))]
pub mod invariants;
#[cfg(test)]
mod mutation_tests;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
        networking::v1::ServiceCIDR,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use tracing::debug;

use crate::convert::{
    endpoints::{ParsedSlice, read_slice},
    input_error::{InputError, ObjectRef, Origin, Reason},
    proxy_selector::ProxySelector,
    service::{DEFAULT_NAMESPACE, ParsedService, read_service},
};

/// Everything the folder holds, each object once (the last one read wins).
#[derive(Debug, Default)]
pub struct Manifests {
    // Shared, not owned: the API source hands out what its stores hold
    // without copying every object on every pass.
    /// Services and slices as read when they arrived
    /// (`convert::service::read_service`, `convert::endpoints::read_slice`);
    /// their problems are in `errors`.
    pub services: Vec<Arc<ParsedService>>,
    pub slices: Vec<Arc<ParsedSlice>>,
    pub nodes: Vec<Arc<Node>>,
    /// The cluster's service CIDRs (networking.k8s.io/v1, Kubernetes 1.33).
    pub service_cidrs: Vec<Arc<ServiceCIDR>>,
    pub errors: Vec<InputError>,
    /// Which file each object came from, to name it in later errors.
    pub origins: BTreeMap<ObjectRef, Origin>,
}

impl Manifests {
    /// Points an error found while converting an object at the file that
    /// object came from.
    pub fn attribute(&self, error: InputError) -> InputError {
        let origin = error
            .object()
            .and_then(|object| self.origins.get(object))
            .cloned();
        match origin {
            Some(origin) => error.with_origin(origin),
            None => error,
        }
    }
}

/// One object read from a document.
#[derive(Debug)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
    ServiceCidr(Box<ServiceCIDR>),
}

/// Reads every `*.yaml`, `*.yml` and `*.json` file in `dir` (not its
/// subfolders, and not hidden files, which is where editors and ConfigMap
/// volumes keep their temporary and bookkeeping files), in name order.
pub fn load_dir(dir: &Path, selector: &ProxySelector) -> Manifests {
    let mut loader = Loader {
        selector: selector.clone(),
        ..Loader::default()
    };
    match manifest_files(dir) {
        Ok(files) => {
            for path in files {
                match fs::read_to_string(&path) {
                    Ok(text) => loader.add(&path, &text),
                    Err(error) => loader.manifests.errors.push(InputError::Unreadable {
                        origin: Origin::File { path },
                        detail: error.to_string(),
                    }),
                }
            }
        }
        Err(error) => loader.manifests.errors.push(InputError::Unreadable {
            origin: Origin::File {
                path: dir.to_path_buf(),
            },
            detail: error.to_string(),
        }),
    }
    loader.finish()
}

pub(crate) fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_none_or(|name| name.starts_with('.'));
        let wanted = matches!(
            path.extension().and_then(|ext| ext.to_str()),
            Some("yaml" | "yml" | "json")
        );
        // `is_file` follows symlinks, as ConfigMap volumes need.
        if !hidden && wanted && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses one file's text: the objects in document order, and one error per
/// document that could not be read.
pub fn parse_manifest(path: &Path, text: &str) -> (Vec<Object>, Vec<InputError>) {
    let origin = Origin::File {
        path: path.to_path_buf(),
    };
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (index, (first_line, document)) in documents(text).enumerate() {
        let document_error = |reason, detail: String| InputError::Document {
            origin: origin.clone(),
            document: index + 1,
            reason,
            detail,
        };
        match serde_yaml::from_str::<Value>(document) {
            Ok(value) => {
                if let Err(error) = collect(value, &mut objects) {
                    errors.push(document_error(error.reason, error.detail));
                }
            }
            // A syntax error costs its own document only: the next one
            // starts at its `---`, which no broken document can hide.
            Err(error) => errors.push(document_error(
                Reason::ParseError,
                syntax_error(&error, first_line),
            )),
        }
    }
    (objects, errors)
}

/// Splits a YAML stream into its documents, each with the number of lines
/// before it, without parsing: at each line that starts a document
/// (`---` alone or followed by a space) and after each line that ends one
/// (`...`). YAML forbids both markers at the start of a line inside any
/// content, so the split is the stream's own. Empty documents (a stream
/// that opens with `---`, a trailing marker) are left out.
fn documents(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let marker = |line: &str, mark: &str| {
        line.strip_prefix(mark)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
    };
    let mut found = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 0, 0);
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches('\n');
        if marker(bare, "---") {
            found.push((start_line, &text[start..offset]));
            // The marker's line may carry the document's first node.
            (start, start_line) = (offset + 3, number);
        } else if marker(bare, "...") {
            found.push((start_line, &text[start..offset]));
            (start, start_line) = (offset + line.len(), number + 1);
        }
        offset += line.len();
    }
    found.push((start_line, &text[start..]));
    found
        .into_iter()
        .filter(|(_, document)| !document.trim().is_empty())
}

/// serde_yaml's message, with its position counted from the file's start.
fn syntax_error(error: &serde_yaml::Error, lines_before: usize) -> String {
    let text = one_line(error);
    match error.location() {
        Some(at) => {
            let message = text.split(" at line ").next().unwrap_or(&text);
            format!(
                "{message} at line {} column {}",
                at.line() + lines_before,
                at.column()
            )
        }
        None => text,
    }
}

struct DocumentError {
    reason: Reason,
    detail: String,
}

fn collect(value: Value, objects: &mut Vec<Object>) -> Result<(), DocumentError> {
    if value.is_null() {
        return Ok(()); // an empty document or one holding only comments
    }
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match (api_version, kind) {
        ("v1", "List") => {
            let items = value
                .get("items")
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default();
            for (index, item) in items.into_iter().enumerate() {
                collect(item, objects).map_err(|error| DocumentError {
                    detail: format!("items[{index}]: {}", error.detail),
                    ..error
                })?;
            }
        }
        ("v1", "Service") => objects.push(Object::Service(typed(value)?)),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            objects.push(Object::EndpointSlice(typed(value)?));
        }
        ("v1", "Node") => objects.push(Object::Node(typed(value)?)),
        ("networking.k8s.io/v1", "ServiceCIDR") => {
            objects.push(Object::ServiceCidr(typed(value)?));
        }
        ("", _) | (_, "") => {
            return Err(DocumentError {
                reason: Reason::MissingField,
                detail: "not a Kubernetes object: apiVersion and kind are required".into(),
            });
        }
        (_, "Service" | "EndpointSlice" | "Node" | "ServiceCIDR") => {
            return Err(DocumentError {
                reason: Reason::Unsupported,
                detail: format!("{kind}: apiVersion {api_version} is not supported"),
            });
        }
        _ => debug!(api_version, kind, "ignoring a kind the proxy does not use"),
    }
    Ok(())
}

fn typed<T: DeserializeOwned + HasMeta>(value: Value) -> Result<Box<T>, DocumentError> {
    let object: T = serde_yaml::from_value(value).map_err(|error| DocumentError {
        reason: Reason::ParseError,
        detail: one_line(&error),
    })?;
    if object.meta().name.as_deref().unwrap_or_default().is_empty() {
        return Err(DocumentError {
            reason: Reason::MissingField,
            detail: "metadata.name: required".into(),
        });
    }
    Ok(Box::new(object))
}

fn one_line(error: &impl std::fmt::Display) -> String {
    error.to_string().replace('\n', " ")
}

trait HasMeta {
    fn meta(&self) -> &ObjectMeta;
    fn meta_mut(&mut self) -> &mut ObjectMeta;
}

macro_rules! has_meta {
    ($($kind:ty),*) => {$(
        impl HasMeta for $kind {
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    )*};
}
has_meta!(Service, EndpointSlice, Node, ServiceCIDR);

/// Collects objects across files, one per kind/namespace/name.
#[derive(Default)]
struct Loader {
    /// Which Services and slices are this proxy's.
    selector: ProxySelector,
    manifests: Manifests,
    /// Services and slices read as each is found, so a folder's objects are
    /// never all held whole; with the problems found, each naming the file.
    services: BTreeMap<ObjectRef, Reading<ParsedService>>,
    slices: BTreeMap<ObjectRef, Reading<ParsedSlice>>,
    nodes: BTreeMap<ObjectRef, Node>,
    service_cidrs: BTreeMap<ObjectRef, ServiceCIDR>,
}

impl Loader {
    fn add(&mut self, path: &Path, text: &str) {
        let (objects, errors) = parse_manifest(path, text);
        self.manifests.errors.extend(errors);
        let origin = Origin::File {
            path: path.to_path_buf(),
        };
        for object in objects {
            let selected = match &object {
                Object::Service(service) => self.selector.excludes(&service.metadata),
                Object::EndpointSlice(slice) => self.selector.excludes(&slice.metadata),
                Object::Node(_) | Object::ServiceCidr(_) => None,
            };
            if let Some(label) = selected {
                debug!(file = %path.display(), label, "not this proxy's object: skipped");
                continue;
            }
            match object {
                Object::Service(mut service) => {
                    let object = object_ref(&mut *service, "Service", true);
                    let reading = Reading::of(read_service(&service), &origin);
                    let replaced = self.services.insert(object.clone(), reading).is_some();
                    self.note_origin((object, replaced), &origin);
                }
                Object::EndpointSlice(mut slice) => {
                    let object = object_ref(&mut *slice, "EndpointSlice", true);
                    let reading = Reading::of(read_slice(&slice), &origin);
                    let replaced = self.slices.insert(object.clone(), reading).is_some();
                    self.note_origin((object, replaced), &origin);
                }
                Object::Node(node) => {
                    let object = keep(&mut self.nodes, *node, "Node", false);
                    self.note_origin(object, &origin);
                }
                Object::ServiceCidr(cidr) => {
                    let object = keep(&mut self.service_cidrs, *cidr, "ServiceCIDR", false);
                    self.note_origin(object, &origin);
                }
            }
        }
    }

    fn note_origin(&mut self, (object, replaced): (ObjectRef, bool), origin: &Origin) {
        let first = replaced
            .then(|| self.manifests.origins.get(&object))
            .flatten();
        if let Some(first) = first {
            self.manifests.errors.push(
                InputError::field(
                    &object,
                    "metadata.name",
                    Reason::Duplicate,
                    format!("also defined in {first}; this later definition is used"),
                )
                .with_origin(origin.clone()),
            );
        }
        self.manifests.origins.insert(object, origin.clone());
    }

    fn finish(mut self) -> Manifests {
        let services = Reading::collect(self.services, &mut self.manifests.errors);
        let slices = Reading::collect(self.slices, &mut self.manifests.errors);
        Manifests {
            services,
            slices,
            nodes: self.nodes.into_values().map(Arc::new).collect(),
            service_cidrs: self.service_cidrs.into_values().map(Arc::new).collect(),
            ..self.manifests
        }
    }
}

/// One object as read: what is usable of it, and its problems, each
/// naming the file.
struct Reading<T> {
    parsed: Option<T>,
    errors: Vec<InputError>,
}

impl<T> Reading<T> {
    fn of((parsed, errors): (Option<T>, Vec<InputError>), origin: &Origin) -> Self {
        let errors = errors
            .into_iter()
            .map(|error| error.with_origin(origin.clone()))
            .collect();
        Self { parsed, errors }
    }

    /// The usable objects, their problems added to `errors`.
    fn collect(readings: BTreeMap<ObjectRef, Self>, errors: &mut Vec<InputError>) -> Vec<Arc<T>> {
        let mut usable = Vec::with_capacity(readings.len());
        for reading in readings.into_values() {
            usable.extend(reading.parsed.map(Arc::new));
            errors.extend(reading.errors);
        }
        usable
    }
}

/// Inserts `object` under its reference (namespaced kinds get the default
/// namespace when the manifest leaves it out, as kubectl does). Returns the
/// reference and whether it replaced an earlier definition.
fn keep<T: HasMeta>(
    store: &mut BTreeMap<ObjectRef, T>,
    mut object: T,
    kind: &str,
    namespaced: bool,
) -> (ObjectRef, bool) {
    let reference = object_ref(&mut object, kind, namespaced);
    let replaced = store.insert(reference.clone(), object).is_some();
    (reference, replaced)
}

/// `object`'s reference, its namespace defaulted first.
fn object_ref<T: HasMeta>(object: &mut T, kind: &str, namespaced: bool) -> ObjectRef {
    let meta = object.meta_mut();
    if namespaced && meta.namespace.as_deref().unwrap_or_default().is_empty() {
        meta.namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
    ObjectRef::new(
        kind,
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}
