//! RemoveImage: by id, tag or digest; a missing image is success.

use berth_proto::cri::{RemoveImageRequest, RemoveImageResponse};

use super::CriImages;
use crate::error::Error;

impl CriImages {
    pub(super) async fn remove(
        &self,
        req: RemoveImageRequest,
    ) -> Result<RemoveImageResponse, Error> {
        let reference = req.image.map(|i| i.image).unwrap_or_default();
        if reference.is_empty() {
            return Err(Error::InvalidArgument("image reference is required".into()));
        }
        let images = self.0.clone();
        tokio::task::spawn_blocking(move || images.remove(&reference))
            .await
            .map_err(|e| Error::FailedPrecondition(format!("remove image: {e}")))??;
        Ok(RemoveImageResponse {})
    }
}
