//! The per-process control API (gRPC `TunnelControl`, from `proto/grpc/tunnel.proto`)
//! on a Unix socket only the owner can open: the directory `$CONDUIT_HOME/run` is mode
//! 0700 and the socket 0600.

mod client;
mod server;

/// The generated protobuf and gRPC types.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("conduit.control.v1");
}

pub use client::{Control, connect};
pub(crate) use server::order_shutdown;
pub use server::{ControlState, Ordered, TunnelFacts, serve, serve_metrics};
