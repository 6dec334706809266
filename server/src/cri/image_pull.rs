//! PullImage: the reference and the AuthConfig in, the image id out.

use berth_proto::cri::{PullImageRequest, PullImageResponse};

use super::CriImages;
use crate::error::Error;
use crate::images::Credentials;

impl CriImages {
    pub(super) async fn pull(&self, req: PullImageRequest) -> Result<PullImageResponse, Error> {
        let reference = req.image.map(|i| i.image).unwrap_or_default();
        if reference.is_empty() {
            return Err(Error::InvalidArgument("image reference is required".into()));
        }
        // Never log the AuthConfig itself: prost's Debug prints the password.
        let credentials = match &req.auth {
            Some(a) => Credentials::from_cri(
                &a.username,
                &a.password,
                &a.auth,
                &a.identity_token,
                &a.registry_token,
            )?,
            None => Credentials::Anonymous,
        };
        tracing::info!(image = reference, credentials = ?credentials, "PullImage");
        let id = self.0.pull(&reference, credentials).await?;
        Ok(PullImageResponse { image_ref: id })
    }
}
