//! Serves an axum app over HTTP/1.1 on a TCP listener, within bounds: the router's REST
//! API (`api.bind`) and a tunnel's `--metrics-bind` endpoint.
//!
//! `axum::serve` takes every connection it is offered and keeps an idle one open for
//! as long as the peer likes, so a flood of idle connections to an API port used up
//! the router's open files and its users' streams failed. Here:
//!
//! - at most [`MAX_CONNECTIONS`] are open at once; further ones wait in the kernel's
//!   listen backlog, costing the process nothing, until one closes;
//! - a connection must send a request's headers within [`HEADER_READ_TIMEOUT`] of
//!   opening or of its previous answer (keep-alive), or it is closed;
//! - none stays open longer than [`MAX_CONNECTION_AGE`].
//!
//! What it does **not** do: TLS, HTTP/2, or telling one peer from another (a flood
//! still delays the API's own answers; it no longer starves the rest of the process).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use conduit_dataplane::AcceptBackoff;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Connections open at once at most.
pub const MAX_CONNECTIONS: usize = 128;
/// How long a connection may take to send a request's headers, counted from when it
/// opened or was last answered: an idle keep-alive connection is closed after this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay open at all; it is then closed after the answer in
/// progress, if any.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);
/// How long answers in progress may take to finish once the server stops.
const DRAIN: Duration = Duration::from_secs(5);
/// How often "all connections taken" is logged at most.
const FULL_REPEAT: Duration = Duration::from_secs(60);

/// The address a request's connection came from, in its extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// Serves `app` on `listener` until `shutdown` completes; `what` names the server in
/// the log ("the API", "the metrics endpoint").
pub fn serve(
    listener: TcpListener,
    app: axum::Router,
    what: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(listener, app, what, MAX_CONNECTIONS, shutdown))
}

async fn run(
    listener: TcpListener,
    app: axum::Router,
    what: &'static str,
    max: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(max));
    let (stop, stopping) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut backoff = AcceptBackoff::default();
    let mut said_full: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        while conns.try_join_next().is_some() {}
        // A slot first: while all are taken, new connections wait in the backlog.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if said_full.is_none_or(|t| t.elapsed() >= FULL_REPEAT) {
                    said_full = Some(Instant::now());
                    warn!(
                        "{what}: {max} connections open, the most it serves at once: new ones \
                         wait until one closes (an idle one is closed after \
                         {HEADER_READ_TIMEOUT:?}); if these are not your scripts, limit who \
                         can reach this address"
                    );
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                conns.spawn(connection(stream, app.clone(), permit, stopping.clone()));
            }
            Err(e) => {
                // Out of file descriptors, most often: wait rather than spin.
                let wait = backoff.failed(&e);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = &mut shutdown => break,
                }
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        debug!(
            "{what}: closing {} connection(s) still answering",
            conns.len()
        );
    }
}

/// One connection, until it closes, times out, or the server stops.
async fn connection(
    stream: TcpStream,
    app: axum::Router,
    _slot: OwnedSemaphorePermit,
    mut stopping: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    // Each request knows who sent it (the API logs the peers it refuses).
    let peer = stream.peer_addr().ok().map(Peer);
    let app = app.map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
        if let Some(peer) = peer {
            req.extensions_mut().insert(peer);
        }
        req
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(MAX_CONNECTION_AGE);
    tokio::pin!(deadline);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!("HTTP connection ended: {e}");
                }
                return;
            }
            _ = stopping.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = &mut deadline => {
                if closing {
                    // Its answer did not finish in time either: drop it.
                    return;
                }
                closing = true;
                conn.as_mut().graceful_shutdown();
                deadline.as_mut().reset(Instant::now() + DRAIN);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn app() -> axum::Router {
        axum::Router::new().route("/", axum::routing::get(|| async { "hello" }))
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Idle connections beyond the cap wait in the backlog; once the ones holding the
    /// slots go, a waiting request is answered.
    #[tokio::test(start_paused = true)]
    async fn connections_beyond_the_cap_wait_and_idle_ones_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(listener, app(), "test", 2, async move {
            let _ = stopped.await;
        }));
        let mut idle = Vec::new();
        for _ in 0..2 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let waiting = tokio::spawn(get(addr));
        // Both slots are held: the request waits in the backlog.
        tokio::time::sleep(HEADER_READ_TIMEOUT / 2).await;
        assert!(!waiting.is_finished());
        for mut s in idle {
            let mut buf = Vec::new();
            // Closed by the server for sending no headers in time (hyper may say 408).
            s.read_to_end(&mut buf).await.unwrap();
        }
        let answer = waiting.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");
        let _ = stop.send(());
        server.await.unwrap();
    }

    /// A keep-alive connection idle after its answer is closed too.
    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(listener, app(), "test", 2, async move {
            let _ = stopped.await;
        }));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        // The answer, then the end of the stream once the connection sat idle for the
        // header time limit (on the paused clock), well before its age limit.
        let start = Instant::now();
        s.read_to_end(&mut out).await.unwrap();
        let idle = start.elapsed();
        assert!(
            idle >= HEADER_READ_TIMEOUT && idle < MAX_CONNECTION_AGE,
            "{idle:?}"
        );
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nhello"), "{out}");
        let _ = stop.send(());
        server.await.unwrap();
    }
}
