//! What a file given as a private key holds when it is not a Conduit key, in words
//! for the message that refuses it.

/// The tag of the first `-----BEGIN TAG-----` line of `text`, if it has one.
pub(super) fn begin_tag(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .map(|rest| rest.split_once("-----").map_or(rest, |(tag, _)| tag))
}

/// Why `text`, which holds nothing secret (an OpenSSH public key, a PEM public key
/// or certificate), is no private key; `None` when it may hold a secret.
pub(super) fn public_only(text: &str) -> Option<String> {
    if is_ssh_public(text) {
        return Some(SSH_PUBLIC.to_owned());
    }
    begin_tag(text)
        .filter(|tag| !tag.contains("PRIVATE KEY"))
        .map(of_tag)
}

/// Why `text`, which has no `-----BEGIN` line, is no private key.
pub(super) fn not_pem(text: &str) -> &'static str {
    if is_ssh_public(text) {
        SSH_PUBLIC
    } else {
        "it is not a PEM private key (-----BEGIN PRIVATE KEY-----)"
    }
}

const SSH_PUBLIC: &str = "it is an OpenSSH public key (ssh-…), and Conduit's keys are not ssh \
                          keys";

/// Whether the first line of `text` that says something is an OpenSSH public key
/// (`ssh-ed25519 AAAA… user@host`).
pub(super) fn is_ssh_public(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .is_some_and(|l| {
            ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"]
                .iter()
                .any(|p| l.starts_with(p))
        })
}

/// What a PEM block tagged `tag` (not `PRIVATE KEY`) holds.
pub(super) fn of_tag(tag: &str) -> String {
    let what = match tag {
        "RSA PRIVATE KEY" => "it holds an RSA key",
        "EC PRIVATE KEY" => "it holds an EC (ECDSA) key",
        "DSA PRIVATE KEY" => "it holds a DSA key",
        "OPENSSH PRIVATE KEY" => {
            return "it is an OpenSSH private key, and Conduit's keys are not ssh keys".into();
        }
        "ENCRYPTED PRIVATE KEY" => {
            return "it is encrypted (-----BEGIN ENCRYPTED PRIVATE KEY-----), and Conduit \
                    reads a key in the clear (its mode, 0600, keeps it to its owner)"
                .into();
        }
        "PUBLIC KEY" => return "it is a PEM public key, not a private key".into(),
        "CERTIFICATE" => {
            return "it is a certificate, and Conduit uses bare keys, not certificates".into();
        }
        _ => return format!("its PEM block is {tag:?}, not \"PRIVATE KEY\""),
    };
    format!("{what} (-----BEGIN {tag}-----), and Conduit uses Ed25519 keys")
}

/// What the PKCS#8 document `der`, which holds no Ed25519 key, holds instead: the
/// kind of key its algorithm names, or `None` when it names Ed25519 or cannot be
/// read (a damaged key).
pub(super) fn of_pkcs8(der: &[u8]) -> Option<String> {
    // PrivateKeyInfo ::= SEQUENCE { version INTEGER, algorithm SEQUENCE { OID, … }, … }
    let (info, _) = der_item(der, 0x30)?;
    let (_, rest) = der_item(info, 0x02)?;
    let (algorithm, _) = der_item(rest, 0x30)?;
    let (oid, _) = der_item(algorithm, 0x06)?;
    let what = match oid {
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01 | 0x0a] => "an RSA key",
        [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01] => "an EC (ECDSA) key",
        [0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01] => "a DSA key",
        [0x2b, 0x65, 0x6e] => "an X25519 key (for key exchange, not signatures)",
        [0x2b, 0x65, 0x6f] => "an X448 key (for key exchange, not signatures)",
        [0x2b, 0x65, 0x71] => "an Ed448 key",
        [0x2b, 0x65, 0x70] => return None,
        _ => "a key of another kind than Ed25519",
    };
    Some(format!("it holds {what}, and Conduit uses Ed25519 keys"))
}

/// The contents of the DER item tagged `tag` at the start of `der`, and what
/// follows it; `None` for another tag or an item cut short.
fn der_item(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = der.split_first()?;
    if first != tag {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    let (len, rest) = if len < 0x80 {
        (usize::from(len), rest)
    } else {
        let n = usize::from(len & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, rest)
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}
