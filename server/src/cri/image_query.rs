//! ListImages and ImageStatus: image records as CRI `Image`s.

use std::collections::HashMap;

use berth_proto::cri::{
    Image, ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value, ListImagesRequest,
    ListImagesResponse,
};
use berth_store::ImageRecord;
use serde_json::json;

use super::CriImages;
use crate::error::Error;
use crate::images::chain_ids;

impl CriImages {
    pub(super) async fn list(&self, req: ListImagesRequest) -> Result<ListImagesResponse, Error> {
        let filter = req.filter.and_then(|f| f.image).map(|i| i.image);
        let images = self.0.clone();
        let records = tokio::task::spawn_blocking(move || images.list(filter.as_deref()))
            .await
            .map_err(|e| Error::FailedPrecondition(format!("list images: {e}")))??;
        Ok(ListImagesResponse {
            images: records.iter().map(to_cri).collect(),
        })
    }

    /// A missing image is an empty response, not an error, as the CRI specifies.
    pub(super) async fn status(
        &self,
        req: ImageStatusRequest,
    ) -> Result<ImageStatusResponse, Error> {
        let reference = req.image.map(|i| i.image).unwrap_or_default();
        if reference.is_empty() {
            return Err(Error::InvalidArgument("image reference is required".into()));
        }
        let images = self.0.clone();
        let record = tokio::task::spawn_blocking(move || images.resolve(&reference))
            .await
            .map_err(|e| Error::FailedPrecondition(format!("image status: {e}")))??;
        let Some(record) = record else {
            return Ok(ImageStatusResponse::default());
        };
        let mut info = HashMap::new();
        if req.verbose {
            info.insert("info".to_string(), verbose_info(&record));
        }
        Ok(ImageStatusResponse {
            image: Some(to_cri(&record)),
            info,
        })
    }
}

fn to_cri(r: &ImageRecord) -> Image {
    let config: serde_json::Value = serde_json::from_slice(&r.config).unwrap_or_default();
    let user = config["config"]["User"].as_str().unwrap_or_default();
    let user = user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(uid) => (Some(Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_string()),
    };
    Image {
        id: r.id.clone(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: r.id.clone(),
            ..ImageSpec::default()
        }),
        pinned: r.pinned,
    }
}

/// containerd's verbose shape: `{"chainID": ..., "imageSpec": <image config>}`.
fn verbose_info(r: &ImageRecord) -> String {
    let config: serde_json::Value = serde_json::from_slice(&r.config).unwrap_or_default();
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let chain_id = chain_ids(&diff_ids).pop().unwrap_or_default();
    json!({
        "id": r.id,
        "repoTags": r.repo_tags,
        "repoDigests": r.repo_digests,
        "size": r.size,
        "pinned": r.pinned,
        "chainID": chain_id,
        "imageSpec": config,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_becomes_uid_or_username() {
        let mut r = ImageRecord {
            id: "sha256:x".into(),
            config: br#"{"config":{"User":"1000:1000"},"rootfs":{"diff_ids":[]}}"#.to_vec(),
            ..ImageRecord::default()
        };
        let img = to_cri(&r);
        assert_eq!(img.uid, Some(Int64Value { value: 1000 }));
        r.config = br#"{"config":{"User":"nobody"}}"#.to_vec();
        assert_eq!(to_cri(&r).username, "nobody");
        let info: serde_json::Value = serde_json::from_str(&verbose_info(&r)).unwrap();
        assert_eq!(info["imageSpec"]["config"]["User"], "nobody");
    }
}
