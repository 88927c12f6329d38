//! TLS 1.3 configurations with RFC 7250 raw public keys, pinned on both sides.
//!
//! Why raw public keys rather than self-signed certificates: a Conduit identity *is* an
//! Ed25519 key, so there is nothing for a certificate to add but an X.509 parser on the
//! attack surface, validity dates to expire and names nobody checks. With raw keys the
//! handshake carries 44 bytes of key, each side compares them with its pin, and the
//! only algorithm either side accepts is Ed25519.
//!
//! rustls is built without its `tls12` feature, so TLS 1.2 cannot be negotiated at all.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::AlwaysResolvesClientRawPublicKeys;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError,
    PeerIncompatible, SignatureScheme,
};

use crate::identity::{KeyPair, PublicKey};
pub use crate::suite::{Suite, Suites};

pub use rustls::{ClientConfig, ServerConfig};

/// The ALPN identifier both sides require.
pub const ALPN: &[u8] = b"conduit/1";

/// The crypto provider with every suite, in the default order (see [`Suites`]).
pub fn provider() -> Arc<CryptoProvider> {
    Suites::all().provider()
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// The router presented a key other than the pinned one (or ones).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "router key mismatch: expected {}, got {got}; if the router's key really changed, \
     update `--router-key` (or `[router] public_key`, `fallback_keys`), otherwise something is intercepting the connection",
    one_of(.expected)
)]
pub struct RouterKeyMismatch {
    /// The pinned keys: the router may present any of them.
    pub expected: Vec<PublicKey>,
    /// What the router presented.
    pub got: PublicKey,
}

/// `A`, `A or B`, `A, B or C` (`no key` for none).
pub fn one_of(keys: &[PublicKey]) -> String {
    match keys {
        [] => "no key".to_owned(),
        [one] => one.to_string(),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(ToString::to_string).collect();
            format!("{} or {last}", init.join(", "))
        }
    }
}

/// A client presented a key that is not in the router's authorized set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "client key {got} is not authorized; add it to the router's authorized_clients file to admit it"
)]
pub struct UnknownClientKey {
    /// The key the client presented.
    pub got: PublicKey,
}

/// The peer presented something other than an Ed25519 raw public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer presented a credential that is not an Ed25519 raw public key")]
pub struct NotEd25519;

fn other(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// Finds one of this module's verification errors inside a rustls error.
pub fn verification_error<E: std::error::Error + 'static>(err: &Error) -> Option<&E> {
    match err {
        Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<E>()
        }
        _ => None,
    }
}

fn verify_sig(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(PeerIncompatible::NoSignatureSchemesInCommon.into());
    }
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        &algorithms(),
    )
}

/// Accepts the pinned router keys only: one, or (while the router's key is being
/// replaced) the old and the new.
#[derive(Debug)]
pub struct PinnedRouterKey {
    expected: Vec<PublicKey>,
}

impl PinnedRouterKey {
    /// Pins `expected`: the router must present one of these keys.
    pub fn new(expected: &[PublicKey]) -> Self {
        Self {
            expected: expected.to_vec(),
        }
    }
}

impl ServerCertVerifier for PinnedRouterKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let got = PublicKey::from_spki(end_entity).ok_or_else(|| other(NotEd25519))?;
        if self.expected.contains(&got) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(other(RouterKeyMismatch {
                expected: self.expected.clone(),
                got,
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(PeerIncompatible::Tls13RequiredForQuic.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_sig(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The set of client keys a router admits, with each key's comment and, for keys
/// being rotated out, the time they stop being admitted.
///
/// Shared between the router's listener and whatever reloads the file: a lock is used
/// because the reader is rustls (which holds only `&self`), and it is read once per
/// handshake and per stream opened, never on the data path.
#[derive(Default)]
pub struct AuthorizedClients {
    keys: RwLock<Keys>,
}

#[derive(Default)]
struct Keys {
    names: HashMap<PublicKey, String>,
    expires: HashMap<PublicKey, SystemTime>,
    /// The names of keys listed once and removed since: traffic on record under a
    /// revoked key keeps its client's name (in the API, in metric labels).
    former: HashMap<PublicKey, String>,
}

/// The most names of removed keys kept; past it, later removals keep no name (a
/// router whose keys churn by the thousand): their traffic shows without one.
const FORMER_NAMES: usize = 10_000;

impl Keys {
    fn admits(&self, key: &PublicKey, now: SystemTime) -> bool {
        self.names.contains_key(key) && self.expires.get(key).is_none_or(|t| now < *t)
    }
}

impl fmt::Debug for AuthorizedClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthorizedClients({} keys)", self.len())
    }
}

impl AuthorizedClients {
    /// A set holding `keys` (key → comment), none of them expiring.
    pub fn new(keys: HashMap<PublicKey, String>) -> Self {
        Self::with_expiry(keys, HashMap::new())
    }

    /// A set holding `keys`, each in `expires` admitted only until that time.
    pub fn with_expiry(
        keys: HashMap<PublicKey, String>,
        expires: HashMap<PublicKey, SystemTime>,
    ) -> Self {
        Self {
            keys: RwLock::new(Keys {
                names: keys,
                expires,
                former: HashMap::new(),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the whole set (after the file changed); no key expires.
    pub fn replace(&self, keys: HashMap<PublicKey, String>) {
        self.replace_with_expiry(keys, HashMap::new());
    }

    /// Replaces the whole set and the expiry times.
    pub fn replace_with_expiry(
        &self,
        keys: HashMap<PublicKey, String>,
        expires: HashMap<PublicKey, SystemTime>,
    ) {
        let mut g = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let mut former = std::mem::take(&mut g.former);
        for (k, name) in g.names.drain() {
            if !keys.contains_key(&k) && former.len() < FORMER_NAMES {
                former.insert(k, name);
            }
        }
        former.retain(|k, _| !keys.contains_key(k));
        *g = Keys {
            names: keys,
            expires,
            former,
        };
    }

    /// The name of `key` as its line gave it, whether it is admitted now, expired,
    /// or was listed once and removed since.
    pub fn name_of(&self, key: &PublicKey) -> Option<String> {
        let g = self.read();
        g.names.get(key).or_else(|| g.former.get(key)).cloned()
    }

    /// The comment of `key` if it is admitted now (listed and not expired).
    pub fn lookup(&self, key: &PublicKey) -> Option<String> {
        let g = self.read();
        g.admits(key, SystemTime::now())
            .then(|| g.names.get(key).cloned())
            .flatten()
    }

    /// When `key` stops being admitted, if it is listed with an expiry time.
    pub fn expiry(&self, key: &PublicKey) -> Option<SystemTime> {
        self.read().expires.get(key).copied()
    }

    /// The listed keys whose expiry time is in `(after, until]`, with their comments,
    /// in key order: those that stopped being admitted in that span.
    pub fn expired_between(
        &self,
        after: SystemTime,
        until: SystemTime,
    ) -> Vec<(PublicKey, String)> {
        let g = self.read();
        let mut v: Vec<(PublicKey, String)> = g
            .expires
            .iter()
            .filter(|(_, t)| after < **t && **t <= until)
            .filter_map(|(k, _)| Some((*k, g.names.get(k)?.clone())))
            .collect();
        v.sort();
        v
    }

    /// Every key admitted now with its comment, in key order.
    pub fn entries(&self) -> Vec<(PublicKey, String)> {
        let g = self.read();
        let now = SystemTime::now();
        let mut v: Vec<(PublicKey, String)> = g
            .names
            .iter()
            .filter(|(k, _)| g.admits(k, now))
            .map(|(k, c)| (*k, c.clone()))
            .collect();
        v.sort();
        v
    }

    /// Number of keys admitted now.
    pub fn len(&self) -> usize {
        let g = self.read();
        let now = SystemTime::now();
        g.names.keys().filter(|k| g.admits(k, now)).count()
    }

    /// True when no key is admitted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Admits client keys in an [`AuthorizedClients`] set.
#[derive(Debug)]
pub struct AuthorizedClientVerifier {
    clients: Arc<AuthorizedClients>,
}

impl ClientCertVerifier for AuthorizedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let got = PublicKey::from_spki(end_entity).ok_or_else(|| other(NotEd25519))?;
        match self.clients.lookup(&got) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(other(UnknownClientKey { got })),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(PeerIncompatible::Tls13RequiredForQuic.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_sig(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The client side: present `identity`, accept only a router that presents one of
/// the keys in `router`; offer `suites`.
pub fn client_config(
    identity: &KeyPair,
    router: &[PublicKey],
    suites: &Suites,
) -> Result<Arc<ClientConfig>, Error> {
    let mut cfg = ClientConfig::builder_with_provider(suites.provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedRouterKey::new(router)))
        .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(
            identity.certified_key()?,
        )));
    // SNI carries the hint of the key the client expects ([`router_server_name`]).
    cfg.enable_sni = true;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    // Lets a data channel's keys move to kernel TLS (`TlsSession::into_kernel`).
    cfg.enable_secret_extraction = true;
    Ok(Arc::new(cfg))
}

/// The router side: present `keys[0]`, or another of `keys` to a client that asks
/// for it by its [hint](router_server_name) (a key the router is retiring, for
/// tunnels that have not heard of the new one yet); admit the keys in `clients`;
/// accept `suites`, preferring them in their order over the client's.
pub fn server_config(
    keys: &[&KeyPair],
    clients: Arc<AuthorizedClients>,
    suites: &Suites,
) -> Result<Arc<ServerConfig>, Error> {
    if keys.is_empty() {
        return Err(Error::General("a router needs a key to present".into()));
    }
    let held = keys
        .iter()
        .map(|k| Ok((key_hint(&k.public()), k.certified_key()?)))
        .collect::<Result<_, Error>>()?;
    let mut cfg = ServerConfig::builder_with_provider(suites.provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(AuthorizedClientVerifier { clients }))
        .with_cert_resolver(Arc::new(PresentsAskedKey { held }));
    // The operator's order, not the client's: the router's policy decides.
    cfg.ignore_client_order = true;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    // Lets a data channel's keys move to kernel TLS (`TlsSession::into_kernel`).
    cfg.enable_secret_extraction = true;
    Ok(Arc::new(cfg))
}

/// The router's keys, each with its hint: the first is presented unless the client
/// hints at another.
struct PresentsAskedKey {
    held: Vec<(String, Arc<CertifiedKey>)>,
}

impl fmt::Debug for PresentsAskedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hints: Vec<&str> = self.held.iter().map(|(h, _)| h.as_str()).collect();
        f.debug_struct("PresentsAskedKey")
            .field("hints", &hints)
            .finish()
    }
}

impl ResolvesServerCert for PresentsAskedKey {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let asked = hello.server_name();
        let (_, key) = self
            .held
            .iter()
            .find(|(hint, _)| Some(hint.as_str()) == asked)
            .unwrap_or(&self.held[0]);
        Some(key.clone())
    }

    fn only_raw_public_keys(&self) -> bool {
        true
    }
}

/// The name by which a client asks a router for `key`: the first 8 bytes of its
/// SHA-256 in hex, under `.invalid` (a name that never resolves). Sent in the clear
/// (SNI): it tells an observer which of a handful of keys is asked for, not the key.
pub fn key_hint(key: &PublicKey) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("k{hex}.conduit.invalid")
}

/// The name a client puts in its handshake. With a `hint` (the key it expects the
/// router to present), the key's [`key_hint`], sent as SNI, so that a router that
/// holds more than one key presents that one; without, an address, which is not sent.
/// The name is never checked against anything else: the key is pinned.
pub fn router_server_name(hint: Option<&PublicKey>) -> ServerName<'static> {
    hint.and_then(|k| ServerName::try_from(key_hint(k)).ok())
        .unwrap_or_else(|| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::KeyPair;

    /// A key removed from the file is no longer admitted, but keeps its name for
    /// the traffic on record; listed again, it is an admitted key as any other.
    #[test]
    fn a_removed_key_keeps_its_name() {
        let (a, b) = (
            KeyPair::generate().unwrap().public(),
            KeyPair::generate().unwrap().public(),
        );
        let set = AuthorizedClients::new(HashMap::from([(a, "laptop".into()), (b, "gw".into())]));
        set.replace(HashMap::from([(b, "gw".into())]));
        assert_eq!(set.lookup(&a), None);
        assert_eq!(set.name_of(&a).as_deref(), Some("laptop"));
        assert_eq!(set.name_of(&b).as_deref(), Some("gw"));
        set.replace(HashMap::from([(a, "laptop-2".into())]));
        assert_eq!(set.lookup(&a).as_deref(), Some("laptop-2"));
        assert_eq!(set.name_of(&a).as_deref(), Some("laptop-2"));
        assert_eq!(set.name_of(&b).as_deref(), Some("gw"));
        let never = KeyPair::generate().unwrap().public();
        assert_eq!(set.name_of(&never), None);
    }

    #[test]
    fn an_expired_key_is_no_longer_admitted() {
        let (old, new) = (
            KeyPair::generate().unwrap().public(),
            KeyPair::generate().unwrap().public(),
        );
        let now = SystemTime::now();
        let names: HashMap<PublicKey, String> =
            [(old, "old".to_owned()), (new, "new".to_owned())].into();
        let set = AuthorizedClients::with_expiry(
            names.clone(),
            [(old, now + Duration::from_secs(3600))].into(),
        );
        assert_eq!(set.lookup(&old).as_deref(), Some("old"));
        assert_eq!(set.len(), 2);
        assert_eq!(set.expiry(&old), Some(now + Duration::from_secs(3600)));
        assert_eq!(set.expiry(&new), None);
        assert_eq!(
            set.expired_between(now, now + Duration::from_secs(3599)),
            vec![]
        );
        assert_eq!(
            set.expired_between(now, now + Duration::from_secs(3600)),
            vec![(old, "old".to_owned())]
        );

        set.replace_with_expiry(names, [(old, now - Duration::from_secs(1))].into());
        assert_eq!(set.lookup(&old), None);
        assert_eq!(set.lookup(&new).as_deref(), Some("new"));
        assert_eq!(set.entries(), vec![(new, "new".to_owned())]);
        assert_eq!(set.len(), 1);
    }
}
