//! Bearer-token authentication: every request must carry `Authorization: Bearer TOKEN`
//! unless the operator turned authentication off, which the configuration allows only
//! for an API bound to a loopback address.
//!
//! A refused request is counted (`conduit_api_requests_refused_total`), logged with
//! its peer (a few a second at most), and its connection closed after the answer: a
//! connection kept alive by requests without the token would hold one of the API's
//! connection slots for good, and enough of them would shut out every client that
//! has it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use conduit_proto::Secret;
use tracing::warn;

use super::envelope::ApiError;
use crate::log_budget::LogBudget;
use crate::metrics::Counters;
use crate::serve::Peer;

/// The refused API requests logged in a second at most.
const REFUSALS_LOGGED_PER_SEC: u32 = 5;

/// The most of a refused request's path a log line shows.
const PATH_SHOWN: usize = 64;

/// Why `token` cannot serve as the API's bearer token, if it cannot: an HTTP client
/// sends it in a header, where only printable ASCII without spaces goes through
/// unchanged (a token read from a file with its newline could never be matched).
pub fn token_problem(token: &str) -> Option<String> {
    if token.is_empty() {
        return Some("the API token is empty: give one (e.g. from `openssl rand -hex 32`)".into());
    }
    if token.trim() != token {
        return Some(
            "the API token begins or ends with whitespace (a newline kept from the file it \
             was read from?), which no HTTP client sends: remove it (write the file with \
             printf '%s', or strip it with tr -d '\\n')"
                .into(),
        );
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(
            "the API token holds a space, a control character or a non-ASCII character, \
             which HTTP clients do not send in a header as they are: choose one of letters, \
             digits and -._~+/= (e.g. from `openssl rand -hex 32`)"
                .into(),
        );
    }
    None
}

/// What the token check needs.
pub(crate) struct Gate {
    /// The token required; `None`: none is.
    token: Option<Secret>,
    counters: Arc<Counters>,
    log: LogBudget,
}

impl Gate {
    pub(crate) fn new(token: Option<Secret>, counters: Arc<Counters>) -> Self {
        Self {
            token,
            counters,
            log: LogBudget::new(REFUSALS_LOGGED_PER_SEC, "refused API requests"),
        }
    }
}

/// Checks the token, if one is required.
pub(crate) async fn require_token(
    State(gate): State<Arc<Gate>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(required) = gate.token.as_ref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| Secret::new(rest.trim().to_owned()))
        });
    let (message, why) = match given {
        Some(t) if t.matches(required) => return next.run(req).await,
        Some(_) => (
            "the API token is wrong: send the token the router was started with \
             (--api-token, CONDUIT_API_TOKEN or api.token)",
            "a wrong token",
        ),
        None => (
            "this API requires a token: send `Authorization: Bearer TOKEN` with the \
             router's API token",
            "no token",
        ),
    };
    gate.counters.refuse_api();
    if let Some(more) = gate.log.admit() {
        let peer = req
            .extensions()
            .get::<Peer>()
            .map_or_else(|| "an unknown peer".to_owned(), |p| p.0.to_string());
        let path = req.uri().path();
        let path = path
            .get(..PATH_SHOWN)
            .map_or(path.to_owned(), |p| format!("{p}…"));
        warn!(
            "refused an API request from {peer} for {path}: {why}; if it is yours, give it \
             the router's API token{more}"
        );
    }
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"conduit\""),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tokens_an_http_client_can_send_are_taken() {
        assert_eq!(token_problem("s3cr3t-T0ken_~+/=."), None);
        for bad in ["tok\n", " tok", "tok "] {
            assert!(
                token_problem(bad)
                    .unwrap()
                    .contains("begins or ends with whitespace"),
                "{bad:?}"
            );
        }
        for bad in ["to k", "t\u{f6}k\u{e9}n", "tok\u{7f}x"] {
            assert!(
                token_problem(bad)
                    .unwrap()
                    .contains("holds a space, a control character"),
                "{bad:?}"
            );
        }
        assert!(token_problem("").unwrap().contains("is empty"));
    }
}
