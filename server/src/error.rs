//! berthd's error kinds and their single mapping to gRPC status codes.

use tonic::{Code, Status};

use crate::containers::service::ContainerError;
use crate::containers::spec::SpecError;
use crate::images::ImageError;
use crate::sandbox::service::SandboxError;

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
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Container(#[from] ContainerError),
}

impl From<crate::stats::StatsError> for Error {
    fn from(e: crate::stats::StatsError) -> Error {
        match e {
            crate::stats::StatsError::Container(e) => Error::Container(e),
            crate::stats::StatsError::Sandbox(e) => Error::Sandbox(e),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let code = match &err {
            Error::Container(e) => container_code(e),
            Error::NotImplemented(_) => Code::Unimplemented,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Store(_) => Code::Internal,
            Error::Image(e) => image_code(e),
            Error::Sandbox(e) => sandbox_code(e),
        };
        if code == Code::Internal {
            tracing::error!(error = %err, "internal error");
        }
        Status::new(code, err.to_string())
    }
}

fn image_code(e: &ImageError) -> Code {
    match e {
        ImageError::InvalidReference { .. } | ImageError::InvalidArgument(_) => {
            Code::InvalidArgument
        }
        ImageError::NotFound { .. } => Code::NotFound,
        ImageError::AuthFailed { .. } => Code::Unauthenticated,
        ImageError::Registry { .. } => Code::Unavailable,
        ImageError::Stalled { .. } => Code::DeadlineExceeded,
        ImageError::DigestMismatch { .. }
        | ImageError::Malformed(_)
        | ImageError::Limit(_)
        | ImageError::Unsupported(_) => Code::FailedPrecondition,
        ImageError::Io(_) | ImageError::Store(_) => Code::Internal,
    }
}

fn sandbox_code(e: &SandboxError) -> Code {
    match e {
        SandboxError::InvalidConfig(_) | SandboxError::UnknownHandler { .. } => {
            Code::InvalidArgument
        }
        SandboxError::NameInUse { .. } => Code::AlreadyExists,
        SandboxError::NotFound(_) => Code::NotFound,
        SandboxError::Ambiguous(_)
        | SandboxError::NetworkNotReady(_)
        | SandboxError::Cgroup(_)
        | SandboxError::Unsupported(_) => Code::FailedPrecondition,
        SandboxError::NetworkSetup { .. }
        | SandboxError::NetworkTeardown { .. }
        | SandboxError::Shim(_) => Code::Unknown,
        SandboxError::Namespace(_)
        | SandboxError::Io { .. }
        | SandboxError::Store(_)
        | SandboxError::CorruptRecord(_)
        | SandboxError::Task(_) => Code::Internal,
    }
}

fn container_code(e: &ContainerError) -> Code {
    match e {
        ContainerError::InvalidConfig(_) | ContainerError::Spec(SpecError::Build(_)) => {
            Code::InvalidArgument
        }
        ContainerError::Spec(
            SpecError::Unsupported(_)
            | SpecError::HostLacks(_)
            | SpecError::NoPodPidNamespace(_)
            | SpecError::UserNamespace(_),
        ) => Code::FailedPrecondition,
        ContainerError::Spec(_) => Code::InvalidArgument,
        ContainerError::NotFound(_)
        | ContainerError::PodNotFound(_)
        | ContainerError::ImageNotFound(_) => Code::NotFound,
        ContainerError::NameInUse { .. } => Code::AlreadyExists,
        ContainerError::Ambiguous(_)
        | ContainerError::PodNotReady(_)
        | ContainerError::FailedPrecondition(_)
        | ContainerError::ImageFile { .. } => Code::FailedPrecondition,
        ContainerError::Timeout(_) => Code::DeadlineExceeded,
        ContainerError::Task { .. } | ContainerError::Rootfs { .. } => Code::Unknown,
        ContainerError::Image(e) => image_code(e),
        ContainerError::Sandbox(e) => sandbox_code(e),
        ContainerError::Snapshot(_)
        | ContainerError::Io { .. }
        | ContainerError::Store(_)
        | ContainerError::CorruptRecord(_)
        | ContainerError::Join(_) => Code::Internal,
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
        let s = Status::from(Error::from(ImageError::NotFound {
            reference: "docker.io/library/x:latest".into(),
            detail: "manifest unknown".into(),
        }));
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("docker.io/library/x:latest"));
        let s = Status::from(Error::from(ImageError::AuthFailed {
            reference: "r".into(),
            registry: "127.0.0.1:5000".into(),
            detail: "401".into(),
        }));
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(
            s.message()
                .contains("authentication to registry 127.0.0.1:5000 failed")
        );
    }

    #[test]
    fn sandbox_errors_map_to_their_codes() {
        let cases = [
            (
                SandboxError::UnknownHandler {
                    handler: "kata".into(),
                    configured: "runc".into(),
                },
                Code::InvalidArgument,
            ),
            (
                SandboxError::NameInUse {
                    name: "n".into(),
                    id: "abc".into(),
                },
                Code::AlreadyExists,
            ),
            (SandboxError::NotFound("abc".into()), Code::NotFound),
            (
                SandboxError::NetworkNotReady("no network config".into()),
                Code::FailedPrecondition,
            ),
            (
                SandboxError::NetworkSetup {
                    id: "abc".into(),
                    message: "plugin failed".into(),
                },
                Code::Unknown,
            ),
        ];
        for (err, code) in cases {
            let msg = err.to_string();
            let s = Status::from(Error::from(err));
            assert_eq!((s.code(), s.message()), (code, msg.as_str()));
        }
    }

    #[test]
    fn container_errors_map_to_their_codes() {
        let cases = [
            (ContainerError::NotFound("c".into()), Code::NotFound),
            (
                ContainerError::ImageNotFound("busybox".into()),
                Code::NotFound,
            ),
            (
                ContainerError::NameInUse {
                    name: "n".into(),
                    id: "abc".into(),
                },
                Code::AlreadyExists,
            ),
            (
                ContainerError::PodNotReady("p".into()),
                Code::FailedPrecondition,
            ),
            (
                ContainerError::Spec(SpecError::UnknownUser("ghost".into())),
                Code::InvalidArgument,
            ),
            (
                ContainerError::Spec(SpecError::UnknownCapability("CAP_BOGUS".into())),
                Code::InvalidArgument,
            ),
            (
                ContainerError::Spec(SpecError::HostLacks("no apparmor".into())),
                Code::FailedPrecondition,
            ),
            (
                ContainerError::Timeout(std::time::Duration::from_secs(1)),
                Code::DeadlineExceeded,
            ),
            (
                ContainerError::Task {
                    id: "c".into(),
                    message: "runc create failed: boom".into(),
                },
                Code::Unknown,
            ),
        ];
        for (err, code) in cases {
            let msg = err.to_string();
            let s = Status::from(Error::from(err));
            assert_eq!((s.code(), s.message()), (code, msg.as_str()));
        }
    }
}
