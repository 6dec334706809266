//! Pod sandboxes: the namespaces a pod's containers share, held by files rather than by a
//! process where the kernel allows it.

pub mod namespaces;
