//! Who may use the router: telling a peer that does not speak TLS (or Conduit) from
//! a client, and admitting a client's channel by its key, its tunnel's name, the
//! protocol version, the token and, for a tunnel's link, its source.

use std::time::Duration;

use conduit_proto::version::VersionRange;
use conduit_proto::{Hello, PublicKey, Refusal, RefusalCode};
use tracing::debug;

use super::State;
use crate::authorized::not_admitted;
use crate::policy::Caller;

/// Whether `first` starts as a TLS handshake record does (`0x16 0x03`): a TLS
/// client's ClientHello.
pub(super) fn is_tls_record(first: &[u8]) -> bool {
    first.starts_with(&[0x16, 0x03])
}

/// Whether `first` starts as a plain-transport client's first frame does: a `Hello`
/// frame, whose length (4 bytes, big-endian) is far below 16 MiB.
pub(super) fn is_plain_hello(first: &[u8]) -> bool {
    first.len() >= conduit_proto::frame::HEADER_LEN
        && first[0] == 0
        && first[4] == conduit_proto::frame::FrameType::Hello as u8
}

/// What a peer whose first bytes are not a TLS handshake record was, for the log;
/// `None` when they are one (TLS itself then says what was wrong).
pub(super) fn not_tls(first: &[u8]) -> Option<String> {
    const TLS_HANDSHAKE: u8 = 0x16;
    match first.first() {
        None | Some(&TLS_HANDSHAKE) => None,
        Some(_) if is_plain_hello(first) => Some(
            "a client of the plain transport connected to this TLS router: start the tunnel \
             without --transport plain, or run the router with --transport plain"
                .into(),
        ),
        Some(_) if is_http(first) => Some(
            "a plain-text HTTP request, not TLS: this port is a Conduit router, only Conduit \
             clients can use it; point HTTP clients at a tunnel's --bind address"
                .into(),
        ),
        Some(_) => Some(format!(
            "not a TLS connection (first bytes {}): this port is a Conduit router, only Conduit \
             clients can use it",
            first.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )),
    }
}

/// Whether `first`, a connection's first bytes, start an HTTP/1 request (or the
/// HTTP/2 preface).
pub(super) fn is_http(first: &[u8]) -> bool {
    const HTTP: [&[u8]; 9] = [
        b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"PRI ",
    ];
    HTTP.iter().any(|m| first.starts_with(m))
}

/// Decides whether a client that finished its handshake may use the router.
pub(super) fn admit(state: &State, key: Option<&PublicKey>, hello: &Hello) -> Result<u16, Refusal> {
    // Checked again here (not only in the TLS verifier) because a resumed TLS session
    // skips certificate verification, and the authorized set may have changed. The
    // plain transport has no key to check: the operator chose to trust the network.
    if let Some(key) = key
        && state.authorized.lookup(key).is_none()
    {
        return Err(Refusal::new(
            RefusalCode::Unauthorized,
            not_admitted(&state.authorized, key),
        ));
    }
    // The name goes into logs, metrics labels and the API: a name that could forge
    // a log line, or a label value nobody chose, is refused.
    crate::config::peer_tunnel_name(&hello.tunnel).map_err(|e| {
        Refusal::new(
            RefusalCode::Protocol,
            format!("the tunnel's name {e}: rename it (conduit start --name, or name in the file)"),
        )
    })?;
    let version = VersionRange::ours()
        .negotiate(hello.versions)
        .map_err(|m| Refusal::new(RefusalCode::UnsupportedVersion, m))?;
    if let Some(required) = &state.token {
        let ok = hello.token.as_ref().is_some_and(|t| t.matches(required));
        if !ok {
            return Err(Refusal::new(
                RefusalCode::Unauthorized,
                if hello.token.is_some() {
                    "the token is wrong: use the token the router's operator configured (--token or CONDUIT_TOKEN)"
                } else {
                    "this router requires a token: pass --token (or set CONDUIT_TOKEN)"
                },
            ));
        }
    }
    Ok(version)
}

/// The longest a tunnel's `Hello` waits for its source's name to be looked up.
pub(super) const SOURCE_LOOKUP: Duration = Duration::from_secs(2);

/// Whether the policy lets `key`'s tunnel open `source` (every member of it): a
/// tunnel whose streams would all be refused is refused at its link, so that it fails
/// at `start` rather than at its first user. A name is looked up through the router's
/// resolver for at most [`SOURCE_LOOKUP`]; one that does not resolve (yet) is let
/// through, and each stream is checked as it opens all the same.
pub(super) async fn source_allowed(
    state: &State,
    key: Option<PublicKey>,
    source: &str,
) -> Result<(), Refusal> {
    let members = conduit_dataplane::source_members(source).count();
    if members > crate::balance::MAX_MEMBERS {
        return Err(Refusal::new(
            RefusalCode::Protocol,
            format!(
                "source names {members} members; a source may name at most {}",
                crate::balance::MAX_MEMBERS
            ),
        ));
    }
    // Rules may name the client as its line in authorized_clients does.
    let name = key
        .and_then(|k| state.authorized.lookup(&k))
        .filter(|n| !n.is_empty());
    let caller = key.as_ref().map(|key| Caller {
        key,
        name: name.as_deref(),
    });
    let allow = &state.policy;
    let names: Vec<(&str, u16)> = conduit_dataplane::source_members(source)
        .take(crate::balance::MAX_MEMBERS)
        .filter_map(|m| allow.lookup_needed(caller, m))
        .collect();
    if let Some(done) = state.resolver.prefetch(names) {
        let all = async { while done.recv_async().await.is_ok() {} };
        let _ = tokio::time::timeout(SOURCE_LOOKUP, all).await;
    }
    let checked = conduit_dataplane::source_members(source).try_for_each(|member| {
        allow
            .check(caller, member, |host, port| {
                state.resolver.cached(host, port)
            })
            .map(drop)
    });
    match checked {
        Err(refusal) if refusal.code == RefusalCode::PolicyDenied => Err(refusal),
        Err(other) => {
            debug!(
                "source {source:?} not checked at the link: {}",
                other.message
            );
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}
