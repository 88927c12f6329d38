//! Bearer-token authentication: every request must carry `Authorization: Bearer TOKEN`
//! unless the operator turned authentication off, which the configuration allows only
//! for an API bound to a loopback address.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use conduit_proto::Secret;

use super::envelope::ApiError;

/// Checks the token, if one is required.
pub(crate) async fn require_token(
    State(token): State<Arc<Option<Secret>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(required) = token.as_ref() else {
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
    let message = match given {
        Some(t) if t.matches(required) => return next.run(req).await,
        Some(_) => {
            "the API token is wrong: send the token the router was started with \
                    (--api-token, CONDUIT_API_TOKEN or api.token)"
        }
        None => {
            "this API requires a token: send `Authorization: Bearer TOKEN` with the \
                 router's API token"
        }
    };
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"conduit\""),
    );
    resp
}
