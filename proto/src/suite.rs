//! The TLS 1.3 cipher suites Conduit speaks, and which of them an operator allows.
//!
//! By default both ends offer all three, AES-128-GCM first (the fastest with AES
//! instructions, and 128-bit keys are the strength Ed25519 gives anyway), then
//! AES-256-GCM, then ChaCha20-Poly1305 for machines without AES instructions. An
//! operator whose policy asks for one (AES-256 only, say) names the suites to allow,
//! in order of preference, by their IANA names; the router's order wins.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::SupportedCipherSuite;
use rustls::crypto::CryptoProvider;
// ring's record protection: its AES-GCM uses VAES with AVX2 where the CPU has them
// (most x86-64 server CPUs since 2019, AVX-512 or not), about twice the speed of
// aws-lc's AES-NI code on such CPUs without AVX-512 (`benches/README.md`).
use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};

/// A TLS 1.3 cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// `TLS_AES_128_GCM_SHA256`.
    Aes128Gcm,
    /// `TLS_AES_256_GCM_SHA384`.
    Aes256Gcm,
    /// `TLS_CHACHA20_POLY1305_SHA256`.
    Chacha20Poly1305,
}

impl Suite {
    /// Every suite, in the default order of preference.
    pub const ALL: [Suite; 3] = [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::Chacha20Poly1305];

    /// The IANA name.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Aes128Gcm => "TLS_AES_128_GCM_SHA256",
            Suite::Aes256Gcm => "TLS_AES_256_GCM_SHA384",
            Suite::Chacha20Poly1305 => "TLS_CHACHA20_POLY1305_SHA256",
        }
    }

    fn rustls(self) -> SupportedCipherSuite {
        match self {
            Suite::Aes128Gcm => TLS13_AES_128_GCM_SHA256,
            Suite::Aes256Gcm => TLS13_AES_256_GCM_SHA384,
            Suite::Chacha20Poly1305 => TLS13_CHACHA20_POLY1305_SHA256,
        }
    }

    /// The suite rustls negotiated, if it is one of ours.
    pub fn of(negotiated: SupportedCipherSuite) -> Option<Suite> {
        Suite::ALL
            .into_iter()
            .find(|s| s.rustls().suite() == negotiated.suite())
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Suite {
    type Err = String;

    /// An IANA name (`TLS_AES_256_GCM_SHA384`), in any case, or rustls' name of it
    /// (`TLS13_AES_256_GCM_SHA384`).
    fn from_str(s: &str) -> Result<Self, String> {
        let upper = s.trim().to_ascii_uppercase();
        let iana = upper
            .strip_prefix("TLS13_")
            .map_or(upper.clone(), |rest| format!("TLS_{rest}"));
        Suite::ALL
            .into_iter()
            .find(|suite| suite.name() == iana)
            .ok_or_else(|| {
                format!(
                    "unknown cipher suite {s:?}: Conduit speaks TLS 1.3 only, with {}",
                    names(&Suite::ALL)
                )
            })
    }
}

/// The suites an operator allows, in order of preference; empty: every suite, in
/// the default order. Equal when they allow the same suites in the same order.
#[derive(Debug, Clone, Default)]
pub struct Suites(Vec<Suite>);

impl PartialEq for Suites {
    fn eq(&self, other: &Self) -> bool {
        self.list() == other.list()
    }
}

impl Eq for Suites {}

impl Suites {
    /// Every suite, in the default order.
    pub fn all() -> Self {
        Self::default()
    }

    /// The suites in `list`, in its order; repeats are dropped.
    pub fn new(list: impl IntoIterator<Item = Suite>) -> Self {
        let mut out = Vec::new();
        for s in list {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        Self(out)
    }

    /// Parses names separated by commas (and spaces).
    pub fn parse_list(s: &str) -> Result<Self, String> {
        let names: Vec<&str> = s
            .split([',', ' '])
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Err(format!(
                "no cipher suite named: give one or more of {}",
                names_or(&Suite::ALL)
            ));
        }
        names
            .into_iter()
            .map(Suite::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
    }

    /// The suites allowed, in order.
    pub fn list(&self) -> Vec<Suite> {
        if self.0.is_empty() {
            Suite::ALL.to_vec()
        } else {
            self.0.clone()
        }
    }

    /// True when every suite is allowed in the default order.
    pub fn is_default(&self) -> bool {
        self.list() == Suite::ALL
    }

    /// The crypto provider that offers these suites: records sealed and opened by
    /// ring, key exchange, Ed25519 signatures and randomness by aws-lc-rs.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        let mut p = rustls::crypto::aws_lc_rs::default_provider();
        p.cipher_suites = self.list().into_iter().map(Suite::rustls).collect();
        Arc::new(p)
    }
}

impl fmt::Display for Suites {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.list().into_iter().map(Suite::name).collect();
        f.write_str(&names.join(","))
    }
}

fn names(suites: &[Suite]) -> String {
    join(suites, "and")
}

fn names_or(suites: &[Suite]) -> String {
    join(suites, "or")
}

fn join(suites: &[Suite], word: &str) -> String {
    match suites {
        [] => String::new(),
        [one] => one.name().to_owned(),
        [init @ .., last] => {
            let init: Vec<&str> = init.iter().map(|s| s.name()).collect();
            format!("{} {word} {}", init.join(", "), last.name())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_in_any_case_and_in_rustls_spelling() {
        assert_eq!("TLS_AES_256_GCM_SHA384".parse(), Ok(Suite::Aes256Gcm));
        assert_eq!(
            "tls_chacha20_poly1305_sha256".parse(),
            Ok(Suite::Chacha20Poly1305)
        );
        assert_eq!("TLS13_AES_128_GCM_SHA256".parse(), Ok(Suite::Aes128Gcm));
        assert_eq!(
            "TLS_RSA_WITH_AES_128_CBC_SHA".parse::<Suite>(),
            Err(
                "unknown cipher suite \"TLS_RSA_WITH_AES_128_CBC_SHA\": Conduit speaks TLS 1.3 \
                 only, with TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384 and \
                 TLS_CHACHA20_POLY1305_SHA256"
                    .to_owned()
            )
        );
    }

    #[test]
    fn a_list_keeps_its_order_and_drops_repeats() {
        let s = Suites::parse_list(
            "TLS_CHACHA20_POLY1305_SHA256, TLS_AES_256_GCM_SHA384,TLS_CHACHA20_POLY1305_SHA256",
        )
        .unwrap();
        assert_eq!(s.list(), [Suite::Chacha20Poly1305, Suite::Aes256Gcm]);
        assert_eq!(
            s.to_string(),
            "TLS_CHACHA20_POLY1305_SHA256,TLS_AES_256_GCM_SHA384"
        );
        assert!(!s.is_default());
        let ids: Vec<_> = s
            .provider()
            .cipher_suites
            .iter()
            .map(|c| c.suite())
            .collect();
        assert_eq!(
            ids,
            [
                TLS13_CHACHA20_POLY1305_SHA256.suite(),
                TLS13_AES_256_GCM_SHA384.suite()
            ]
        );
        assert!(Suites::all().is_default());
        assert_eq!(Suites::new(Suite::ALL), Suites::all());
        assert_eq!(
            Suites::parse_list(" , "),
            Err(
                "no cipher suite named: give one or more of TLS_AES_128_GCM_SHA256, \
                 TLS_AES_256_GCM_SHA384 or TLS_CHACHA20_POLY1305_SHA256"
                    .to_owned()
            )
        );
    }

    #[test]
    fn a_negotiated_suite_is_named() {
        for s in Suite::ALL {
            assert_eq!(Suite::of(s.rustls()), Some(s));
        }
    }
}
