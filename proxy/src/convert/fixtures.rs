//! Kubernetes objects for the unit tests, written as the YAML an operator
//! would apply, so a test reads like the manifest it stands for.

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde::de::DeserializeOwned;

/// One object of any kind from its YAML; a fixture that does not parse is
/// a broken test.
pub fn object<T: DeserializeOwned>(yaml: &str) -> T {
    serde_yaml::from_str(yaml).unwrap_or_else(|error| panic!("fixture {yaml:?}: {error}"))
}

pub fn objects<T: DeserializeOwned>(yamls: &[&str]) -> Vec<T> {
    yamls.iter().map(|yaml| object(yaml)).collect()
}

pub fn service(yaml: &str) -> Service {
    object(yaml)
}

pub fn slice(yaml: &str) -> EndpointSlice {
    object(yaml)
}

pub fn node(yaml: &str) -> Node {
    object(yaml)
}
