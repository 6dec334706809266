//! Pod networking for berth.
//!
//! - [`conf`]: finding and validating the CNI network configuration berthd uses.
//! - [`cni`]: running a CNI plugin chain (ADD, DEL, CHECK, STATUS, GC) with a result
//!   cache for DEL and GC.
//! - [`network`]: the pod network of a conf dir (readiness, GC) and the default network.
//! - [`bridge`]: berth-bridge, berth's own CNI plugin for bridge networks (the binary is a thin
//!   wrapper).

pub mod bridge;
pub mod cni;
pub mod conf;
pub mod network;

/// CNI spec versions this crate reads and writes, oldest first.
pub const SUPPORTED_CNI_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
