//! The envelope every answer of the API wears (the Prometheus text of `/metrics`
//! excepted):
//!
//! ```json
//! {"success": true, "data": {…}, "error": null, "timestamp": "2026-01-01T00:00:00.000Z", "request_id": "5f0c…"}
//! {"success": false, "data": null, "error": {"code": "not_found", "message": "…"}, …}
//! ```
//!
//! Handlers answer [`Data`] or [`ApiError`]; both travel as response *extensions*, and
//! the [`envelope`] middleware, which owns the request id, writes the body. Answers
//! that axum makes by itself (405, a query string it cannot parse) come out as plain
//! text; the middleware turns those into error envelopes too, so no answer escapes the
//! format.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The id of one request, also sent back in `x-request-id`.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) String);

/// A successful answer's `data`.
#[derive(Debug, Clone)]
pub(crate) struct Data(pub(crate) Value);

impl IntoResponse for Data {
    fn into_response(self) -> Response {
        let mut r = StatusCode::OK.into_response();
        r.extensions_mut().insert(self);
        r
    }
}

/// A failed answer: HTTP status, a stable code, and a message that says what to do.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = self.status.into_response();
        r.extensions_mut().insert(self);
        r
    }
}

/// Gives every request an id and every answer its envelope.
pub(crate) async fn envelope(mut req: Request, next: Next) -> Response {
    let id = RequestId(format!("{:016x}", rand::random::<u64>()));
    req.extensions_mut().insert(id.clone());
    let resp = next.run(req).await;
    let mut resp = finish(resp, &id).await;
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn finish(resp: Response, id: &RequestId) -> Response {
    let status = resp.status();
    if let Some(Data(data)) = resp.extensions().get::<Data>().cloned() {
        return body(status, true, data, Value::Null, id, resp);
    }
    if let Some(e) = resp.extensions().get::<ApiError>().cloned() {
        let err = json!({"code": e.code, "message": e.message});
        return body(e.status, false, Value::Null, err, id, resp);
    }
    if status.is_success() || status.is_redirection() {
        return resp; // /metrics text, the OpenAPI document
    }
    // An answer axum made itself: keep its status, use its text as the message.
    let (parts, b) = resp.into_parts();
    let text = axum::body::to_bytes(b, 4096).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_owned();
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned();
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        // axum's own text is only "Method Not Allowed"; its `Allow` header says more
        // (added after this layer, so absent here: every route serves GET and HEAD).
        let allow: Vec<&str> = parts
            .headers
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .map_or_else(
                || vec!["GET", "HEAD"],
                |a| a.split(',').map(str::trim).collect(),
            );
        let served = match allow.split_last() {
            Some((last, [])) => format!("{last} is"),
            Some((last, rest)) => format!("{} and {last} are", rest.join(", ")),
            None => "GET is".to_owned(),
        };
        message = format!("method not allowed: only {served} served here (the API is read-only)");
    }
    let code = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    };
    let err = json!({"code": code, "message": message});
    body(
        status,
        false,
        Value::Null,
        err,
        id,
        Response::from_parts(parts, Body::empty()),
    )
}

fn body(
    status: StatusCode,
    success: bool,
    data: Value,
    error: Value,
    id: &RequestId,
    template: Response,
) -> Response {
    let v = json!({
        "success": success,
        "data": data,
        "error": error,
        "timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "request_id": id.0,
    });
    let (mut parts, _) = template.into_parts();
    parts.status = status;
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.extensions.remove::<Data>();
    parts.extensions.remove::<ApiError>();
    Response::from_parts(parts, Body::from(v.to_string()))
}
