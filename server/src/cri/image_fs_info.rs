//! ImageFsInfo: bytes and inodes used by content and snapshots.

use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::cri::{FilesystemIdentifier, FilesystemUsage, ImageFsInfoResponse, UInt64Value};

use super::CriImages;
use crate::error::Error;

impl CriImages {
    pub(super) async fn fs_info(&self) -> Result<ImageFsInfoResponse, Error> {
        let images = self.0.clone();
        let usage = tokio::task::spawn_blocking(move || images.fs_usage())
            .await
            .map_err(|e| Error::FailedPrecondition(format!("image fs usage: {e}")))??;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Ok(ImageFsInfoResponse {
            image_filesystems: vec![FilesystemUsage {
                timestamp,
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: usage.mountpoint.to_string_lossy().into_owned(),
                }),
                used_bytes: Some(UInt64Value { value: usage.bytes }),
                inodes_used: Some(UInt64Value {
                    value: usage.inodes,
                }),
            }],
            container_filesystems: Vec::new(),
        })
    }
}
