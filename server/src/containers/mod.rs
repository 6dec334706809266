//! CRI containers: the container service ([`service::Containers`]), the OCI spec it builds
//! ([`spec`]) and the resources read back from it ([`resources`]), its seams to the pod's shim
//! and to mount(2) ([`tasks`]), and the task view of containers that berth's task API uses
//! ([`inspect`]).

pub mod host;
pub mod inspect;
pub mod resources;
pub mod seccomp;
pub mod service;
pub mod spec;
pub mod tasks;
pub mod volumes;
