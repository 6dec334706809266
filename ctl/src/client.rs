//! The gRPC channel to berthd over its unix socket.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// The socket path of `address` (a path, or `unix://` followed by one).
pub fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.strip_prefix("unix://").unwrap_or(address))
}

/// Connects to berthd. The socket is tried first so that a daemon that is not running is
/// reported with the socket and the OS's reason, not as a bare transport error.
pub async fn connect(address: &str) -> Result<Channel> {
    let path = socket_path(address);
    if let Err(e) = tokio::net::UnixStream::connect(&path).await {
        return Err(anyhow!(
            "cannot connect to berthd at {}: {e} (is berthd running? --address or BERTH_ADDRESS names another socket)",
            path.display()
        ));
    }
    // The URI is required by tonic and ignored: the connector dials the socket.
    let channel = Endpoint::from_static("http://berthd.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| anyhow!("cannot connect to berthd at {address}: {e}"))?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_or_unix_urls() {
        assert_eq!(
            socket_path("unix:///run/berth/berthd.sock"),
            PathBuf::from("/run/berth/berthd.sock")
        );
        assert_eq!(socket_path("/tmp/b.sock"), PathBuf::from("/tmp/b.sock"));
    }

    #[tokio::test]
    async fn a_missing_socket_is_named_in_one_line() {
        let dir = std::env::temp_dir().join(format!("berthctl-test-{}", std::process::id()));
        let sock = dir.join("none.sock");
        let err = connect(sock.to_str().unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&sock.display().to_string()), "{err}");
        assert!(err.contains("is berthd running?"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
