//! Talking to a tunnel process's control API.

use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::pb::tunnel_control_client::TunnelControlClient;
use crate::Error;

/// A connected control client.
pub type Control = TunnelControlClient<Channel>;

/// Connects to the control socket of a tunnel process.
pub async fn connect(socket: &Path) -> Result<Control, Error> {
    let path = socket.to_owned();
    // The URI is required by the API but unused: the connector dials the socket.
    let endpoint = Endpoint::from_static("http://conduit.local")
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| {
            Error::network(
                format!(
                    "cannot reach the tunnel's control socket {}",
                    socket.display()
                ),
                std::io::Error::other(e),
            )
        })?;
    Ok(TunnelControlClient::new(channel))
}
