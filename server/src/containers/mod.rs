//! CRI containers: the container service ([`service::Containers`]), the OCI spec it builds
//! ([`spec`]) and its seams to the pod's shim and to mount(2) ([`tasks`]).

pub mod host;
pub mod seccomp;
pub mod service;
pub mod spec;
pub mod tasks;
pub mod volumes;
