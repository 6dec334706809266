//! The CRI v1 services. This layer translates: it validates requests, calls berth's domain
//! services and maps their results and errors; it owns no state. One file per RPC group.
//!
//! RPCs whose capability has not landed answer `Unimplemented`, never a fake success.

mod containers;
mod image_fs_info;
mod image_pull;
mod image_query;
mod image_remove;
mod image_service;
mod pod_sandbox;
mod runtime_info;
mod runtime_service;
mod stats;

use std::sync::Arc;

use berth_proto::cri::image_service_server::ImageServiceServer;
use berth_proto::cri::runtime_service_server::RuntimeServiceServer;

use crate::config::Config;
use crate::containers::service::Containers;
use crate::images::Images;
use crate::node::NodeInfo;
use crate::sandbox::service::Sandboxes;
use crate::stats::Stats;

/// What the CRI handlers need from the daemon, shared by both services.
pub struct Cri {
    config: Arc<Config>,
    node: Arc<NodeInfo>,
}

impl Cri {
    pub fn new(config: Arc<Config>, node: Arc<NodeInfo>) -> Arc<Cri> {
        Arc::new(Cri { config, node })
    }
}

/// The RuntimeService half, as a tonic service.
pub fn runtime_service(
    cri: Arc<Cri>,
    sandboxes: Arc<Sandboxes>,
    containers: Arc<Containers>,
    stats: Arc<Stats>,
) -> RuntimeServiceServer<CriRuntime> {
    RuntimeServiceServer::new(CriRuntime(cri, sandboxes, containers, stats))
}

/// The ImageService half, as a tonic service.
pub fn image_service(images: Arc<Images>) -> ImageServiceServer<CriImages> {
    ImageServiceServer::new(CriImages(images))
}

pub struct CriRuntime(Arc<Cri>, Arc<Sandboxes>, Arc<Containers>, Arc<Stats>);
pub struct CriImages(Arc<Images>);
