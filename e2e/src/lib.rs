//! End-to-end test harness for berth.
//!
//! - [`registry::Registry`]: Debian's `docker-registry` on a free 127.0.0.1 port, with temporary
//!   storage and optional basic auth.
//! - [`image`] builds OCI images in memory; [`distribution::RegistryClient`] pushes and reads
//!   them over the distribution API.
//! - [`testimages`]: every image critest pulls, rebuilt locally under the repository paths it
//!   hard-codes, so a registry mirror for `registry.k8s.io` and `gcr.io` can serve them.
//! - [`daemon::Berthd`]: berthd as a child process with its own root, state and socket, torn
//!   down on drop (processes, mounts, network leftovers), even when the test panics.
//! - [`containerd::Containerd`]: Debian's containerd 1.6 with its CRI plugin, private dirs and
//!   socket, for benchmarks and interop tests.
//! - [`tools`]: the pinned crictl and critest.
//!
//! Tests that use this crate run as root.

pub mod containerd;
pub mod daemon;
pub mod distribution;
pub mod fixtures;
pub mod image;
pub mod registry;
pub mod testimages;
pub mod tools;

mod cleanup;
mod process;
