//! Kubernetes objects to the desired state: Services to frontends,
//! EndpointSlices to backends, topology and traffic policies, and the input
//! errors met on the way. Pure: no I/O.

pub mod claim;
pub mod desired;
pub mod endpoints;
#[cfg(test)]
pub mod fixtures;
pub mod input_error;
pub mod proxy_selector;
pub mod service;
pub mod service_cidr;
pub mod topology;
