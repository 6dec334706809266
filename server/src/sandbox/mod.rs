//! Pod sandboxes: the namespaces a pod's containers share, held by files rather than by a
//! process where the kernel allows it.
//!
//! - [`service`]: the sandbox lifecycle (run, stop, remove, recover) behind small traits.
//! - [`linux`]: the real namespace pinning and CNI network behind those traits.

pub mod linux;
pub mod namespaces;
pub mod service;
