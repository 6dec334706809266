//! Wire types of berth. Data only: generated code and re-exports, no logic.
//!
//! - [`cri`]: CRI v1 (Kubernetes 1.32) messages with tonic clients and servers, from `k8s-cri`.
//! - [`shim`]: the containerd shim v2 task API over ttrpc (`containerd.task.v3.Task`), from
//!   `containerd-shim-protos`; spoken between berthd and `berth-shim`.
//! - [`tasks`]: berth's own task API, served by berthd to `berthctl`; defined in
//!   `berth/tasks/v1/tasks.proto` in this crate.

/// CRI v1 as kubelet and crictl speak it.
pub mod cri {
    pub use k8s_cri::v1::*;
}

/// The containerd shim task API (ttrpc, rust-protobuf messages).
pub mod shim {
    pub use containerd_shim_protos::*;
}

/// berth's task API (`berth.tasks.v1`).
pub mod tasks {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("berth.tasks.v1");
}
