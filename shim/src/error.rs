//! The shim's errors and their one conversion to a ttrpc status.

use containerd_shim_protos::ttrpc::{self, Code};

use crate::runc::RuncError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0} not found")]
    NotFound(String),
    #[error("exec process {exec_id} of container {id} not found")]
    ExecNotFound { id: String, exec_id: String },
    /// Signalling a process that has exited (containerd answers the same, with NotFound).
    #[error("process {0} already finished")]
    Finished(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    fn code(&self) -> Code {
        match self {
            Error::NotFound(_) | Error::ExecNotFound { .. } | Error::Finished(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Runc(_) => Code::UNKNOWN,
            Error::Io { .. } => Code::INTERNAL,
        }
    }
}

/// The single place an [`Error`] becomes a ttrpc status.
pub fn to_ttrpc(e: Error) -> ttrpc::Error {
    tracing::warn!(error = %e, "request failed");
    ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_grpc_codes() {
        let status = |e: Error| match to_ttrpc(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            status(Error::NotFound("c1".into())),
            (Code::NOT_FOUND, "container c1 not found".into())
        );
        let runc = RuncError {
            command: "runc start".into(),
            status: Some(1),
            message: "no such file".into(),
        };
        assert_eq!(
            status(runc.into()),
            (
                Code::UNKNOWN,
                "runc start failed (exit status 1): no such file".into()
            )
        );
    }
}
