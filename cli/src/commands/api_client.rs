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

/// A usage error when `--api-token` is given on the command line without `--router`:
/// `command` would show this machine's tunnels, and the user meant a router's. (A
/// token in `CONDUIT_API_TOKEN` is no mistake: it waits for a `--router`.)
pub(crate) fn token_needs_router(api: &ApiClientArgs, command: &str) -> Result<()> {
    if api.router.is_none()
        && api.api_token.is_some()
        && std::env::var_os("CONDUIT_API_TOKEN").is_none()
    {
        return Err(Usage(format!(
            "--api-token is for a router's API, and no --router names one: add --router \
             HOST:PORT to ask the router, or leave --api-token out for this machine's \
             tunnels (`conduit {command}` alone)"
        ))
        .into());
    }
    Ok(())
}

/// The `--router` value, or a usage error.
fn router(api: &ApiClientArgs) -> Result<&str> {
    match api.router.as_deref().map(str::trim) {
        Some("") => Err(Usage(
            "--router is empty: give the router's API as host:port or http://host:port".into(),
        )
        .into()),
        Some(r) => {
            api_url(r).map_err(|why| {
                Usage(format!(
                    "--router {:?}: {why}; give the router's API as host:port, \
                     http://host:port or https://host:port",
                    without_userinfo(r)
                ))
            })?;
            Ok(r)
        }
        None => Err(Usage("--router URL is required here".into()).into()),
    }
}

/// `router` with a user and password in it (which may be a secret) replaced by `…`.
fn without_userinfo(router: &str) -> String {
    let (scheme, rest) = match router.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), router),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}…@{host}{path}"),
        None => router.to_owned(),
    }
}

/// Checks what [`base`] makes of `router`: an http or https URL with a host, and a
/// port, if any, that is a port.
fn api_url(router: &str) -> Result<(), String> {
    if router
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_matches('/').is_empty())
    {
        return Err("it names no host".into());
    }
    let url = base(router);
    let (scheme, rest) = url.split_once("://").unwrap_or(("", &url));
    if !matches!(scheme, "http" | "https") {
        return Err(format!("{scheme}:// is not a scheme the API speaks"));
    }
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("it holds {c:?}, which no URL holds"));
    }
    if rest.contains(['?', '#']) {
        return Err("a query or fragment is not taken: the API's paths are added to it".into());
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(
            "a user or password in the URL is not taken: give the API's token with \
             --api-token (or CONDUIT_API_TOKEN)"
                .into(),
        );
    }
    if authority.is_empty() {
        return Err("it names no host".into());
    }
    let bracketed = authority.starts_with('[');
    if bracketed && !authority.contains(']') {
        return Err("its IPv6 address opens a bracket it does not close".into());
    }
    let has_port = if bracketed {
        authority.contains("]:")
    } else {
        authority.contains(':')
    };
    if has_port {
        conduit_controlplane::config::host_port(authority)?;
    }
    Ok(())
}

async fn get(api: &ApiClientArgs, path: &str, accept: &str) -> Result<Answer> {
    let router = router(api)?;
    let client = HttpClient::new(Duration::from_secs(5)).map_err(Error::Config)?;
    let auth = match &api.api_token {
        Some(t) => match conduit_controlplane::api::token_problem(t.expose()) {
            // Said without the token: it is a secret.
            Some(why) => {
                return Err(Usage(format!("--api-token (or CONDUIT_API_TOKEN): {why}")).into());
            }
            None => Some(format!("Bearer {}", t.expose())),
        },
        None => None,
    };
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
            if text.contains("invalid HTTP") || text.contains("parse") {
                return anyhow::Error::new(BadAnswer(format!(
                    "{} answered something that is not HTTP ({text}): is this the address \
                     of the router's API (--api-bind), not the one tunnels connect to?",
                    base(router)
                )));
            }
            // It answered, too much: not what an API of Conduit's says.
            if text.starts_with("the answer is larger than") {
                return anyhow::Error::new(BadAnswer(format!("{}: {text}", base(router))));
            }
            Error::Network {
                what: format!("cannot reach the router's API at {}", base(router)),
                source: std::io::Error::other(format!(
                    "{text}; check that the router runs with its API on at that address \
                     (--api-bind, or api.bind in its file) and that this host may reach it"
                )),
            }
            .into()
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

/// Items per page asked for by [`all_pages`]: the API's most.
const PER_PAGE: u32 = 500;

/// Every page of the list at `path` (under `/api/v1`, with its own query if any): the
/// first page's `data` without `pagination`, its `items` those of every page.
/// The most pages [`all_pages`] reads: far more than a router lists (its clients,
/// a week of history samples), and a bound on what an API that never ends can cost.
const MAX_PAGES: usize = 1000;

pub(crate) async fn all_pages(api: &ApiClientArgs, path: &str, key: &str) -> Result<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut pages = Vec::new();
    loop {
        let page = pages.len() + 1;
        let d = data(api, &format!("{path}{sep}per_page={PER_PAGE}&page={page}")).await?;
        let total = d["pagination"]["total_pages"].as_u64().unwrap_or(0);
        // A list that shrank while it was read ends early; one that never ends is
        // not an API this command can read.
        let empty = d["items"].as_array().is_none_or(Vec::is_empty);
        pages.push(d);
        if empty || u64::try_from(page).unwrap_or(u64::MAX) >= total {
            break;
        }
        if page >= MAX_PAGES {
            return Err(BadAnswer(format!(
                "{} lists more than {MAX_PAGES} pages of {PER_PAGE} under {path} ({total} \
                 pages): is it a Conduit router's API?",
                base(router(api)?)
            ))
            .into());
        }
    }
    Ok(merge_pages(pages, key))
}

/// `pages` as one: each item once, by its `key` field. A list can shift between two
/// pages' requests (a new history sample, a new client), pushing an item already
/// fetched onto the next page.
fn merge_pages(pages: Vec<Value>, key: &str) -> Value {
    let mut seen = std::collections::HashSet::new();
    let mut items = Vec::new();
    for p in &pages {
        for item in p["items"].as_array().into_iter().flatten() {
            if seen.insert(item[key].to_string()) {
                items.push(item.clone());
            }
        }
    }
    let mut all = pages.into_iter().next().unwrap_or(Value::Null);
    if let Some(o) = all.as_object_mut() {
        o.remove("pagination");
        o.insert("items".into(), Value::Array(items));
    }
    all
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

    /// A sample taken between two pages' requests pushes the first page's last onto
    /// the second: it is listed once.
    #[test]
    fn a_user_and_password_are_not_repeated() {
        for (url, shown) in [
            (
                "http://user:PASSW0RD@127.0.0.1:9990",
                "http://…@127.0.0.1:9990",
            ),
            ("user:pw@h:1/api", "…@h:1/api"),
            ("https://a@b@h/x@y", "https://…@h/x@y"),
            ("http://h:1/x@y", "http://h:1/x@y"),
            ("127.0.0.1:9990", "127.0.0.1:9990"),
        ] {
            assert_eq!(without_userinfo(url), shown, "{url}");
        }
    }

    #[test]
    fn pages_merge_each_item_once() {
        let page = |ats: &[&str], n: u64| {
            let items: Vec<Value> = ats.iter().map(|a| serde_json::json!({"at": a})).collect();
            serde_json::json!({"interval_secs": 60, "items": items,
                               "pagination": {"page": n, "total_pages": 2}})
        };
        let all = merge_pages(
            vec![page(&["t4", "t3"], 1), page(&["t3", "t2", "t1"], 2)],
            "at",
        );
        assert_eq!(
            all,
            serde_json::json!({"interval_secs": 60, "items": [
                {"at": "t4"}, {"at": "t3"}, {"at": "t2"}, {"at": "t1"}
            ]})
        );
    }

    #[test]
    fn an_api_url_needs_a_scheme_the_api_speaks_a_host_and_a_port_if_any() {
        for good in [
            "127.0.0.1:9990",
            "http://127.0.0.1:9990/api/v1",
            "https://r.example",
            "[::1]:9990",
            "r.example/api/v1",
        ] {
            assert_eq!(api_url(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("http://", "it names no host"),
            (
                "ftp://127.0.0.1:21",
                "ftp:// is not a scheme the API speaks",
            ),
            (
                "http://u:p@h:1",
                "a user or password in the URL is not taken: give the API's token with \
                 --api-token (or CONDUIT_API_TOKEN)",
            ),
            ("garbage url", "it holds ' ', which no URL holds"),
            (
                "http://[::1",
                "its IPv6 address opens a bracket it does not close",
            ),
            ("127.0.0.1:99999", "port 99999 is out of range (1-65535)"),
            (
                "127.0.0.1:9990?x=1",
                "a query or fragment is not taken: the API's paths are added to it",
            ),
            (
                "http://r.example/api/v1#top",
                "a query or fragment is not taken: the API's paths are added to it",
            ),
        ] {
            assert_eq!(api_url(bad), Err(why.to_owned()), "{bad}");
        }
    }

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
