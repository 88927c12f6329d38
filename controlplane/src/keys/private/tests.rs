//! Private key files that are not what they must be, with real files in a temporary
//! directory.

use std::time::Duration;

use super::*;

/// A 0600 file at `dir/name` holding `bytes`.
fn secret(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// Why the private key at `path` is refused, within a deadline: a reader that waits
/// on the file fails the test rather than hang it.
fn refusal(path: &Path, hint_name: &'static str) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(load_private(&path, hint_name).map(|p| p.public()));
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(key)) => panic!("loaded {key}"),
        Err(_) => panic!("still reading the private key after 10 s"),
    }
}

#[cfg(unix)]
#[test]
fn a_pipe_or_a_device_given_as_the_private_key_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("key.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    for (path, name) in [
        (fifo.as_path(), "client"),
        (Path::new("/dev/zero"), "router"),
    ] {
        assert_eq!(
            refusal(path, name),
            format!(
                "private key {} is not a regular file (a device, a named pipe or a socket); \
                 give the private key file, e.g. $CONDUIT_HOME/keys/{name}.key (`conduit \
                 init --name {name}` makes one)",
                path.display()
            )
        );
    }
}

#[test]
fn a_file_far_larger_than_a_key_is_not_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let big = secret(dir.path(), "big.key", &vec![b'a'; (64 << 10) + 1]);
    assert_eq!(
        refusal(&big, "client"),
        format!(
            "{} is larger than 64 KiB, which no key file is (a Conduit private key file is \
             about 120 bytes); give the private key file, e.g. \
             $CONDUIT_HOME/keys/client.key (`conduit init --name client` makes one)",
            big.display()
        )
    );
    // Just within the bound, it is read (and found to be no key).
    let within = secret(dir.path(), "within.key", &vec![b'a'; 64 << 10]);
    assert!(
        refusal(&within, "client").contains("is not a Conduit private key"),
        "{}",
        refusal(&within, "client")
    );
}

/// `der` as PEM with `tag`.
fn pem_with(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

/// A PKCS#8 document of the algorithm `oid` (its content bytes) holding `key`.
fn pkcs8(oid: &[u8], key: &[u8]) -> Vec<u8> {
    let tlv = |tag: u8, body: &[u8]| {
        let mut v = vec![tag, u8::try_from(body.len()).unwrap()];
        v.extend_from_slice(body);
        v
    };
    let algorithm = tlv(0x30, &tlv(0x06, oid));
    let body = [tlv(0x02, &[0]), algorithm, tlv(0x04, key)].concat();
    tlv(0x30, &body)
}

#[test]
fn a_damaged_key_is_named_damaged_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let sound = pem_with(PEM_TAG, KeyPair::generate().unwrap().pkcs8_der());
    let damaged = |path: &Path| {
        format!(
            "private key {} is damaged: it begins -----BEGIN PRIVATE KEY----- but what \
             follows is cut short or altered; put back a sound copy of the file, or make a \
             new key with `conduit init --name client --force` and authorize its public key \
             where the old one was",
            path.display()
        )
    };
    // Cut short: no END line.
    let cut = secret(dir.path(), "cut.key", &sound.as_bytes()[..40]);
    assert_eq!(refusal(&cut, "client"), damaged(&cut));
    // Its base64 cut short, the END line kept.
    let lines: Vec<&str> = sound.lines().collect();
    let short = format!(
        "{}\n{}\n{}\n",
        lines[0],
        &lines[1][..20],
        lines[lines.len() - 1]
    );
    let short = secret(dir.path(), "short.key", short.as_bytes());
    assert_eq!(refusal(&short, "client"), damaged(&short));
}

#[test]
fn keys_of_other_kinds_are_named_not_shown_as_debug_text() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let not_ours = |path: &Path, why: &str| {
        format!(
            "{} is not a Conduit private key: {why}; make one with `conduit init --name \
             client` (a PKCS#8 Ed25519 key in PEM) or pass another --key PATH",
            path.display()
        )
    };
    let rsa_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let cases: [(&str, String, &str); 6] = [
        (
            "rsa.key",
            pem_with("PRIVATE KEY", &pkcs8(&rsa_oid, &[0x30, 0x00])),
            "it holds an RSA key, and Conduit uses Ed25519 keys",
        ),
        (
            "x25519.key",
            pem_with("PRIVATE KEY", &pkcs8(&[0x2b, 0x65, 0x6e], &[0x04; 34])),
            "it holds an X25519 key (for key exchange, not signatures), and Conduit uses \
             Ed25519 keys",
        ),
        (
            "pkcs1.key",
            pem_with("RSA PRIVATE KEY", &[0x30, 0x00]),
            "it holds an RSA key (-----BEGIN RSA PRIVATE KEY-----), and Conduit uses Ed25519 \
             keys",
        ),
        (
            "id_ed25519",
            pem_with("OPENSSH PRIVATE KEY", b"openssh-key-v1\0"),
            "it is an OpenSSH private key, and Conduit's keys are not ssh keys",
        ),
        (
            "locked.key",
            pem_with("ENCRYPTED PRIVATE KEY", &[0x30, 0x00]),
            "it is encrypted (-----BEGIN ENCRYPTED PRIVATE KEY-----), and Conduit reads a \
             key in the clear (its mode, 0600, keeps it to its owner)",
        ),
        (
            "plain.txt",
            "this is not a key\n".to_owned(),
            "it is not a PEM private key (-----BEGIN PRIVATE KEY-----)",
        ),
    ];
    for (name, text, why) in cases {
        let path = secret(d, name, text.as_bytes());
        assert_eq!(refusal(&path, "client"), not_ours(&path, why), "{name}");
    }
}

/// An ssh public key or a certificate holds nothing secret: what it is is said,
/// not that its mode is too open.
#[cfg(unix)]
#[test]
fn an_ssh_public_key_or_a_certificate_is_named_before_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ssh = dir.path().join("id_ed25519.pub");
    std::fs::write(
        &ssh,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv6 ana@laptop\n",
    )
    .unwrap();
    let cert = dir.path().join("router.crt");
    std::fs::write(&cert, pem_with("CERTIFICATE", &[0x30, 0x00])).unwrap();
    for path in [&ssh, &cert] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    assert_eq!(
        refusal(&ssh, "client"),
        format!(
            "{} is not a Conduit private key: it is an OpenSSH public key (ssh-…), and \
             Conduit's keys are not ssh keys; make one with `conduit init --name client` (a \
             PKCS#8 Ed25519 key in PEM) or pass another --key PATH",
            ssh.display()
        )
    );
    assert_eq!(
        refusal(&cert, "router"),
        format!(
            "{} is not a Conduit private key: it is a certificate, and Conduit uses bare \
             keys, not certificates; make one with `conduit init --name router` (a PKCS#8 \
             Ed25519 key in PEM) or pass another --key PATH",
            cert.display()
        )
    );
}

/// The router's next key is given with --next-key: that is the option named.
#[test]
fn a_bad_next_key_names_the_next_key_option() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = secret(dir.path(), "next.key", b"garbage\n");
    assert_eq!(
        refusal(&garbage, "router-next"),
        format!(
            "{} is not a Conduit private key: it is not a PEM private key (-----BEGIN \
             PRIVATE KEY-----); make one with `conduit init --name router-next` (a PKCS#8 \
             Ed25519 key in PEM) or pass another --next-key PATH",
            garbage.display()
        )
    );
    let missing = dir.path().join("missing.key");
    assert_eq!(
        refusal(&missing, "router-next"),
        format!(
            "no private key at {0}: create one with `conduit init --name router-next` (it \
             writes keys/router-next.key in CONDUIT_HOME: move that file to {0}, or point \
             --next-key at it) or pass --next-key PATH",
            missing.display()
        )
    );
    // Where `init` writes it, the command is all it takes.
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let home_key = keys.join("router-next.key");
    assert_eq!(
        refusal(&home_key, "router-next"),
        format!(
            "no private key at {}: create one with `conduit init --name router-next` or pass \
             --next-key PATH",
            home_key.display()
        )
    );
}
