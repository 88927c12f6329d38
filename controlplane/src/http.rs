//! A small HTTP/1.1 client (hyper with rustls, TLS 1.3 only) for alert webhooks and
//! for the CLI's calls to a router's API.
//!
//! rustls is built without TLS 1.2 in this workspace (see the root `Cargo.toml`), so
//! HTTPS endpoints must speak TLS 1.3; plain `http://` works for anything local.
//! Server certificates are checked against the system's roots, or Mozilla's bundled
//! roots when the system has none (minimal containers).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
pub use hyper::Method;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The most of an answer's body that is read: the router API's answers are pages of
/// a few hundred rows and a webhook receiver's a line, so anything larger is a wrong
/// URL or a hostile server, refused rather than held in memory.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// A reusable client.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its body.
    pub body: Bytes,
}

impl HttpClient {
    /// A client that gives up on connecting after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let tls = rustls_config()?;
        let https = builder
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            inner: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    /// Sends one request and reads the whole answer (at most [`MAX_ANSWER_BYTES`]),
    /// all within `timeout`.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(Vec<u8>, &str)>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let req = request(method, url, headers, body)?;
        let exchange = async {
            let resp = self.inner.request(req).await.map_err(describe)?;
            let status = resp.status();
            let body = read_body(resp.into_body(), MAX_ANSWER_BYTES).await?;
            Ok(Answer { status, body })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }
}

impl HttpClient {
    /// Sends one request and takes the status of its answer, within `timeout`; the
    /// body is not read (a webhook receiver's 2xx is its whole answer, however much
    /// it sends after it).
    pub async fn status_of(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(Vec<u8>, &str)>,
        timeout: Duration,
    ) -> Result<StatusCode, String> {
        let req = request(method, url, headers, body)?;
        match tokio::time::timeout(timeout, self.inner.request(req)).await {
            Ok(r) => r.map(|resp| resp.status()).map_err(describe),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }
}

/// A request with `headers` and, if given, a body of its content type.
fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<(Vec<u8>, &str)>,
) -> Result<Request<Full<Bytes>>, String> {
    let (uri, credentials) = split_credentials(url)?;
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let authorized = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
    if let Some(basic) = credentials.filter(|_| !authorized) {
        req = req.header("authorization", basic);
    }
    let body = match body {
        Some((bytes, content_type)) => {
            req = req.header("content-type", content_type);
            Full::new(Bytes::from(bytes))
        }
        None => Full::new(Bytes::new()),
    };
    req.body(body).map_err(|e| format!("invalid request: {e}"))
}

/// `url` without its `user:password@`, and those as the value of a Basic
/// `authorization` header (as curl sends them): a receiver that asks for them gets
/// them, and they stay out of the connection pool's key, which the HTTP library
/// logs at `trace`. Errors never quote the URL, which may hold a secret.
fn split_credentials(url: &str) -> Result<(hyper::Uri, Option<String>), String> {
    use base64::Engine as _;
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL ({e}): give http://host[:port]/path"))?;
    let Some((userinfo, host)) = uri.authority().and_then(|a| a.as_str().rsplit_once('@')) else {
        return Ok((uri, None));
    };
    let plain: Vec<u8> = percent_encoding::percent_decode_str(userinfo).collect();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(plain)
    );
    let host = host.to_owned();
    let mut parts = uri.into_parts();
    parts.authority = Some(
        host.parse()
            .map_err(|e| format!("invalid host in the URL ({e})"))?,
    );
    let uri = hyper::Uri::from_parts(parts).map_err(|e| format!("invalid URL ({e})"))?;
    Ok((uri, Some(basic)))
}

/// The whole of `body`, or an error once it passes `limit` bytes.
async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, String>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(all) => Ok(all.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => {
            let most = if limit.is_multiple_of(1 << 20) {
                format!("{} MiB", limit >> 20)
            } else {
                format!("{limit} bytes")
            };
            Err(format!(
                "the answer is larger than {most}, the most read of one: check that the URL \
                 is a Conduit router's API or the webhook receiver meant"
            ))
        }
        Err(e) => Err(format!("reading the answer failed: {e}")),
    }
}

/// The error and its causes in one line ("client error (Connect): tcp connect error:
/// Connection refused").
fn describe(e: hyper_util::client::legacy::Error) -> String {
    let mut s = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    if s.contains("ProtocolVersion") {
        s.push_str(
            " (the server speaks no TLS 1.3, the only version this client speaks: turn TLS \
             1.3 on there, or reach it through a relay that speaks it)",
        );
    }
    s
}

fn rustls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let b = rustls::ClientConfig::builder_with_provider(conduit_proto::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("cannot set up TLS for HTTP: {e}"))?;
    Ok(b.with_root_certificates(roots).with_no_client_auth())
}

/// `scheme://host[:port]/…` with the path and query cut off: what may be logged of a
/// URL that carries a token (Slack and most webhook URLs do).
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = host.rsplit('@').next().unwrap_or(host);
            let cut = rest.len() > host.len();
            format!("{scheme}://{host}{}", if cut { "/…" } else { "" })
        }
        None => "(invalid URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_scheme_and_host() {
        assert_eq!(
            redact("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(redact("http://127.0.0.1:9000"), "http://127.0.0.1:9000");
        assert_eq!(
            redact("https://user:pw@example.com/x?token=1"),
            "https://example.com/…"
        );
        assert_eq!(redact("nonsense"), "(invalid URL)");
    }

    #[tokio::test]
    async fn an_answer_up_to_the_limit_is_read_whole() {
        let body = Full::new(Bytes::from(vec![7u8; 64]));
        assert_eq!(read_body(body, 64).await, Ok(Bytes::from(vec![7u8; 64])));
    }

    #[tokio::test]
    async fn an_answer_past_the_limit_is_refused() {
        let body = Full::new(Bytes::from(vec![7u8; 65]));
        assert_eq!(
            read_body(body, 64).await,
            Err(
                "the answer is larger than 64 bytes, the most read of one: check that the URL \
                 is a Conduit router's API or the webhook receiver meant"
                    .to_owned()
            )
        );
    }

    /// The limit through `send`: a server that answers with more than
    /// [`MAX_ANSWER_BYTES`] (a `Content-Length` it never sends in full) is refused
    /// once that much arrived.
    /// A server that answers one request with `head`, then `chunk` again and again
    /// until the client hangs up; its address.
    async fn endless_answer(
        head: String,
        chunk: Vec<u8>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            while s.write_all(&chunk).await.is_ok() {}
        });
        (addr, server)
    }

    #[tokio::test]
    async fn send_refuses_an_answer_larger_than_the_limit() {
        // Until the client hangs up: it stops reading past the limit.
        let (addr, server) = endless_answer(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                MAX_ANSWER_BYTES * 2
            ),
            vec![b'x'; 1 << 20],
        )
        .await;
        let client = HttpClient::new(Duration::from_secs(5)).unwrap();
        let got = client
            .send(
                Method::GET,
                &format!("http://{addr}/api/v1/stats/history"),
                &[],
                None,
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(
            got,
            Err(
                "the answer is larger than 16 MiB, the most read of one: check that the URL \
                 is a Conduit router's API or the webhook receiver meant"
                    .to_owned()
            )
        );
        server.abort();
    }

    /// `user:password@` in a URL is sent as Basic authorization (percent-decoded),
    /// not as part of the address; a header the caller gives wins.
    #[tokio::test]
    async fn credentials_in_a_url_are_sent_as_basic_authorization() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut heads = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert_ne!(n, 0, "the request ended early");
                    head.extend_from_slice(&buf[..n]);
                }
                s.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await
                    .unwrap();
                heads.push(String::from_utf8(head).unwrap().to_ascii_lowercase());
            }
            heads
        });
        let client = HttpClient::new(Duration::from_secs(5)).unwrap();
        let url = format!("http://hook%40user:p%3Ass@{addr}/hook?x=1");
        let got = client
            .status_of(Method::POST, &url, &[], None, Duration::from_secs(30))
            .await;
        assert_eq!(got, Ok(StatusCode::NO_CONTENT));
        let bearer = [("authorization", "Bearer t")];
        let got = client
            .status_of(Method::POST, &url, &bearer, None, Duration::from_secs(30))
            .await;
        assert_eq!(got, Ok(StatusCode::NO_CONTENT));
        let heads = server.await.unwrap();
        // base64("hook@user:p:ss") is aG9va0B1c2VyOnA6c3M=, lowercased with the rest.
        assert!(
            heads[0].starts_with("post /hook?x=1 http/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0].contains("\r\nauthorization: basic ag9va0b1c2vyona6c3m=\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0].contains(&format!("\r\nhost: {addr}\r\n")),
            "{}",
            heads[0]
        );
        assert!(
            heads[1].contains("\r\nauthorization: bearer t\r\n"),
            "{}",
            heads[1]
        );
        assert_eq!(heads[1].matches("authorization").count(), 1, "{}", heads[1]);
    }

    /// A webhook receiver's answer is its status: a 200 followed by a body that never
    /// ends is a delivery, not a failure to retry.
    #[tokio::test]
    async fn a_status_is_taken_without_the_body() {
        let (addr, server) = endless_answer(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_owned(),
            format!("100000\r\n{}\r\n", "x".repeat(1 << 20)).into_bytes(),
        )
        .await;
        let client = HttpClient::new(Duration::from_secs(5)).unwrap();
        let got = client
            .status_of(
                Method::POST,
                &format!("http://{addr}/hook"),
                &[],
                Some((b"{}".to_vec(), "application/json")),
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(got, Ok(StatusCode::OK));
        server.abort();
    }
}
