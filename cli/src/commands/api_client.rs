//! Calls to a router's REST API (`conduit stats --router`, `conduit health --router`).

use std::time::Duration;

use anyhow::Result;
use conduit_controlplane::Error;
use conduit_controlplane::http::{Answer, HttpClient, Method};
use serde_json::Value;

use crate::args::ApiClientArgs;
use crate::exit::{BadAnswer, Usage};

/// The router's base URL, `http://` added when no scheme is given and a trailing
/// `/api/v1` (the API's own prefix, which each path adds) taken off.
pub(crate) fn base(router: &str) -> String {
    let r = router.trim_end_matches('/');
    let r = r.strip_suffix("/api/v1").unwrap_or(r);
    if r.contains("://") {
        r.to_owned()
    } else {
        format!("http://{r}")
    }
}

/// The `--router` value, or a usage error.
fn router(api: &ApiClientArgs) -> Result<&str> {
    api.router
        .as_deref()
        .ok_or_else(|| Usage("--router URL is required here".into()).into())
}

async fn get(api: &ApiClientArgs, path: &str, accept: &str) -> Result<Answer> {
    let router = router(api)?;
    let client = HttpClient::new(Duration::from_secs(5)).map_err(Error::Config)?;
    let auth = api
        .api_token
        .as_ref()
        .map(|t| format!("Bearer {}", t.expose()));
    let mut headers = vec![("accept", accept)];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let url = format!("{}{path}", base(router));
    let answer = client
        .send(Method::GET, &url, &headers, None, Duration::from_secs(10))
        .await
        .map_err(|e| {
            // Something answered, but not in HTTP: most likely the router's tunnel
            // port (TLS) rather than its API's.
            let text = e.to_string();
            let hint = if text.contains("invalid HTTP") || text.contains("parse") {
                "; it answered something that is not HTTP: is this the address of the \
                 router's API (--api-bind), not the one tunnels connect to?"
            } else {
                ""
            };
            Error::Network {
                what: format!("cannot reach the router's API at {}{hint}", base(router)),
                source: std::io::Error::other(e),
            }
        })?;
    Ok(answer)
}

/// The envelope's `data`, or its error as ours (401 is an authentication error).
fn unwrap(a: &Answer, router: &str) -> Result<Value> {
    let v: Value = serde_json::from_slice(&a.body).map_err(|_| {
        BadAnswer(format!(
            "{} answered {} with something that is not Conduit's JSON envelope; is it a \
             Conduit router's API?",
            base(router),
            a.status
        ))
    })?;
    if v["success"] == Value::Bool(true) {
        return Ok(v["data"].clone());
    }
    let message = v["error"]["message"].as_str().unwrap_or("no message");
    if a.status.as_u16() == 401 {
        return Err(Error::Authentication(format!(
            "the router's API refused the request: {message} (pass --api-token or set \
             CONDUIT_API_TOKEN)"
        ))
        .into());
    }
    Err(BadAnswer(format!(
        "the router's API at {} answered {}: {message}",
        base(router),
        a.status
    ))
    .into())
}

/// GETs `path` (under `/api/v1`) and returns the envelope's `data`.
pub(crate) async fn data(api: &ApiClientArgs, path: &str) -> Result<Value> {
    let a = get(api, path, "application/json").await?;
    unwrap(&a, router(api)?)
}

/// GETs the router's metrics text.
pub(crate) async fn metrics(api: &ApiClientArgs) -> Result<String> {
    let a = get(api, "/api/v1/metrics", "text/plain").await?;
    if a.status.is_success() {
        return Ok(String::from_utf8_lossy(&a.body).into_owned());
    }
    unwrap(&a, router(api)?).map(|_| String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_takes_a_scheme_and_drops_the_api_prefix() {
        for (given, base_url) in [
            ("127.0.0.1:9990", "http://127.0.0.1:9990"),
            ("http://127.0.0.1:9990/", "http://127.0.0.1:9990"),
            ("http://127.0.0.1:9990/api/v1", "http://127.0.0.1:9990"),
            ("https://r.example/api/v1/", "https://r.example"),
            ("r.example/api/v1", "http://r.example"),
            ("https://r.example/conduit", "https://r.example/conduit"),
        ] {
            assert_eq!(base(given), base_url, "{given}");
        }
    }
}
