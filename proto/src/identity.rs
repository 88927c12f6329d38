//! Identities: Ed25519 keys and their text form.
//!
//! A public key is written `ed25519:<base64 of the 32 raw bytes>`, the form `conduit
//! init` prints, `.pub` files hold and `authorized_clients` lists. On the wire a key
//! travels as an RFC 7250 SubjectPublicKeyInfo; the two convert losslessly.
//! Private keys are PKCS#8 v1 documents (what `openssl genpkey -algorithm ed25519`
//! writes); reading and writing the files is the control plane's job.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::error::ProtoError;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the raw key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const TEXT_PREFIX: &str = "ed25519:";

/// An Ed25519 public key: a peer's whole identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses `ed25519:<base64>`; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, ProtoError> {
        let t = text.trim();
        let invalid = |reason| ProtoError::InvalidKey {
            text: shorten(t),
            reason,
        };
        if ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"]
            .iter()
            .any(|p| t.starts_with(p))
        {
            return Err(invalid(
                "an OpenSSH key; Conduit's keys are `ed25519:…` lines as `conduit init` \
                 prints them, not ssh keys",
            ));
        }
        let b64 = t.strip_prefix(TEXT_PREFIX).ok_or_else(|| {
            invalid("expected the form ed25519:<base64>, as `conduit init` prints")
        })?;
        let bytes = STANDARD_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| invalid("the part after `ed25519:` is not base64"))?;
        let raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| invalid("an Ed25519 public key is 32 bytes"))?;
        Ok(Self(raw))
    }

    /// Parses a key as `conduit init` and `conduit keys show` print it, and a `.pub`
    /// file's line holds it: `ed25519:<base64>`, optionally followed by whitespace and
    /// the key's name, which is ignored.
    pub fn parse_named(text: &str) -> Result<Self, ProtoError> {
        let t = text.trim();
        Self::parse(t.split_once(char::is_whitespace).map_or(t, |(key, _)| key))
    }

    /// Parses every key of `text` given as a `.pub` file's content (`"$(cat
    /// router.pub)"`): a key per line, each as [`Self::parse_named`] takes it; blank
    /// lines and `#` comments are skipped.
    pub fn parse_lines(text: &str) -> Result<Vec<Self>, ProtoError> {
        text.lines()
            .filter_map(Self::parse_line)
            .map(|k| k.map(|(key, _)| key))
            .collect()
    }

    /// Parses one line of a `.pub` or `authorized_clients` file: a key, then optionally
    /// whitespace and the key's name. Returns `None` for blank lines and `#` comments;
    /// a `#` after whitespace starts a comment that is no part of the name
    /// (`ed25519:… laptop  # Alice's`), one inside a word is (`team#2`).
    pub fn parse_line(line: &str) -> Option<Result<(Self, String), ProtoError>> {
        // A byte-order mark (some Windows editors start a file with one) is no part
        // of the key.
        let line = line.trim().trim_start_matches('\u{feff}').trim_start();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (key, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim_start();
        let end = (rest.char_indices())
            .find(|&(i, c)| c == '#' && (i == 0 || rest[..i].ends_with(char::is_whitespace)))
            .map_or(rest.len(), |(i, _)| i);
        let name = rest[..end].trim().to_owned();
        Some(Self::parse(key).map(|k| (k, name)))
    }

    /// The SubjectPublicKeyInfo DER that carries this key in a TLS handshake.
    pub fn to_spki(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(ED25519_SPKI_PREFIX.len() + 32);
        v.extend_from_slice(&ED25519_SPKI_PREFIX);
        v.extend_from_slice(&self.0);
        v
    }

    /// The key inside an Ed25519 SubjectPublicKeyInfo, or `None` for any other DER.
    pub fn from_spki(der: &[u8]) -> Option<Self> {
        let raw = der.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
        Some(Self(raw.try_into().ok()?))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TEXT_PREFIX}{}", STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn shorten(t: &str) -> String {
    t.chars().take(80).collect()
}

/// A private Ed25519 key with its public half.
///
/// `Debug` shows only the public key; the private bytes leave this type only through
/// [`KeyPair::pkcs8_der`], for writing the key file.
pub struct KeyPair {
    pkcs8: Vec<u8>,
    public: PublicKey,
}

/// The private bytes are wiped from memory when it is dropped.
impl Drop for KeyPair {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.pkcs8);
    }
}

/// A key file that does not hold a usable Ed25519 private key.
#[derive(Debug, thiserror::Error)]
#[error("not an Ed25519 private key in PKCS#8 form: {0}")]
pub struct KeyRejected(String);

impl KeyPair {
    /// Generates a new key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyRejected> {
        let pair = Ed25519KeyPair::generate().map_err(|e| KeyRejected(e.to_string()))?;
        let doc = pair.to_pkcs8v1().map_err(|e| KeyRejected(e.to_string()))?;
        Self::from_pkcs8_der(doc.as_ref())
    }

    /// Loads a PKCS#8 (v1 or v2) Ed25519 private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyRejected> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| KeyRejected(e.to_string()))?;
        let raw: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyRejected("public key is not 32 bytes".into()))?;
        Ok(Self {
            pkcs8: der.to_vec(),
            public: PublicKey(raw),
        })
    }

    /// The PKCS#8 document, for writing the key file (mode 0600).
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The key as rustls presents it: an RFC 7250 raw public key and its signer.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, rustls::Error> {
        let provider = crate::tls::provider();
        let signer = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                self.pkcs8.clone(),
            )))?;
        Ok(Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(self.public.to_spki())],
            signer,
        )))
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .field("private", &"***")
            .finish()
    }
}

/// A secret string (a token): `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison, so a wrong token's timing reveals nothing.
    pub fn matches(&self, other: &Secret) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Wiped from memory when dropped, so it does not linger in freed heap.
impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let k = KeyPair::generate().unwrap().public();
        let text = k.to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.len(), 8 + 44);
        assert_eq!(PublicKey::parse(&text).unwrap(), k);
        // Without padding, and with whitespace around it.
        let unpadded = format!("  {}\n", text.trim_end_matches('='));
        assert_eq!(PublicKey::parse(&unpadded).unwrap(), k);
    }

    #[test]
    fn a_key_with_its_name_as_init_prints_it_is_the_key() {
        let k = KeyPair::generate().unwrap().public();
        assert_eq!(PublicKey::parse_named(&format!("{k} router\n")).unwrap(), k);
        assert_eq!(
            PublicKey::parse_named(&format!(" {k}\tmy router ")).unwrap(),
            k
        );
        assert_eq!(PublicKey::parse_named(&k.to_string()).unwrap(), k);
        let k2 = KeyPair::generate().unwrap().public();
        assert_eq!(
            PublicKey::parse_lines(&format!("{k} router\n{k2} router-next")).unwrap(),
            [k, k2]
        );
        let e = PublicKey::parse_named("ed25519:!!! router").unwrap_err();
        assert_eq!(
            e.to_string(),
            PublicKey::parse("ed25519:!!!").unwrap_err().to_string()
        );
    }

    /// A `#` after whitespace starts a comment, which is no part of the name.
    #[test]
    fn a_comment_after_the_name_is_not_the_name() {
        let k = KeyPair::generate().unwrap().public();
        let name = |line: String| PublicKey::parse_line(&line).unwrap().unwrap().1;
        assert_eq!(name(format!("{k} laptop   # Alice's")), "laptop");
        assert_eq!(name(format!("{k} my laptop\t#x")), "my laptop");
        assert_eq!(name(format!("{k} # no name")), "");
        assert_eq!(name(format!("{k} team#2")), "team#2");
        assert_eq!(name(format!("{k}")), "");
        assert!(PublicKey::parse_line("  # a whole line").is_none());
    }

    /// A file a Windows editor saved starts with a byte-order mark: its first key is
    /// read as if it were not there.
    #[test]
    fn a_byte_order_mark_is_no_part_of_the_key() {
        let k = KeyPair::generate().unwrap().public();
        let line = format!("\u{feff}{k} laptop");
        assert_eq!(
            PublicKey::parse_line(&line).unwrap().unwrap(),
            (k, "laptop".to_owned())
        );
        assert_eq!(PublicKey::parse_lines(&format!("{line}\n")).unwrap(), [k]);
        assert!(PublicKey::parse_line("\u{feff}# a comment").is_none());
    }

    #[test]
    fn bad_keys_say_what_is_wrong() {
        let e = PublicKey::parse("ed25519-AAAA").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid public key \"ed25519-AAAA\": expected the form ed25519:<base64>, as \
             `conduit init` prints"
        );
        let e = PublicKey::parse_named("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 ana@laptop").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid public key \"ssh-ed25519\": an OpenSSH key; Conduit's keys are \
             `ed25519:…` lines as `conduit init` prints them, not ssh keys"
        );
        let e = PublicKey::parse("ed25519:!!!").unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
        let e = PublicKey::parse("ed25519:AAAA").unwrap_err();
        assert!(e.to_string().contains("32 bytes"), "{e}");
    }

    #[test]
    fn lines_with_comments_and_blanks() {
        let k = KeyPair::generate().unwrap().public();
        assert!(PublicKey::parse_line("   ").is_none());
        assert!(PublicKey::parse_line("# a comment").is_none());
        let (got, comment) = PublicKey::parse_line(&format!("{k} laptop of ana"))
            .unwrap()
            .unwrap();
        assert_eq!((got, comment.as_str()), (k, "laptop of ana"));
    }

    #[test]
    fn spki_round_trips() {
        let k = KeyPair::generate().unwrap().public();
        assert_eq!(PublicKey::from_spki(&k.to_spki()), Some(k));
        assert_eq!(PublicKey::from_spki(&[1, 2, 3]), None);
    }

    #[test]
    fn pkcs8_round_trips_and_secrets_stay_hidden() {
        let kp = KeyPair::generate().unwrap();
        let again = KeyPair::from_pkcs8_der(kp.pkcs8_der()).unwrap();
        assert_eq!(again.public(), kp.public());
        let dbg = format!("{kp:?}");
        assert!(dbg.contains("***") && dbg.contains("ed25519:"), "{dbg}");
        assert!(KeyPair::from_pkcs8_der(b"not a key").is_err());
        kp.certified_key().unwrap();
    }

    #[test]
    fn secrets_print_as_stars_and_compare() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert!(s.matches(&Secret::new("hunter2".into())));
        assert!(!s.matches(&Secret::new("hunter3".into())));
        assert!(!s.matches(&Secret::new("hunter".into())));
    }
}
