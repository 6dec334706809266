//! berthd's error kinds and their single mapping to gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An RPC whose capability has not landed yet. Never answered with a fake success.
    #[error("{0} is not implemented by berth yet")]
    NotImplemented(&'static str),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("metadata store: {0}")]
    Store(#[from] berth_store::StoreError),
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let code = match &err {
            Error::NotImplemented(_) => Code::Unimplemented,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Store(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %err, "internal error");
        }
        Status::new(code, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_their_codes_with_the_message() {
        let s = Status::from(Error::NotImplemented("RunPodSandbox"));
        assert_eq!(s.code(), Code::Unimplemented);
        assert_eq!(s.message(), "RunPodSandbox is not implemented by berth yet");
        let s = Status::from(Error::NotFound("pod \"p\" not found".into()));
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "pod \"p\" not found")
        );
        assert_eq!(
            Status::from(Error::InvalidArgument("x".into())).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            Status::from(Error::AlreadyExists("x".into())).code(),
            Code::AlreadyExists
        );
        assert_eq!(
            Status::from(Error::FailedPrecondition("x".into())).code(),
            Code::FailedPrecondition
        );
    }
}
