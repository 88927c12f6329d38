//! kTLS tests that hold on any Linux host. This build host has no kTLS, so the keys
//! are never installed for real; what can be checked is the detection and fallback,
//! the kernel ABI (every size, offset and constant against `linux/tls.h` and `libc`)
//! and the exact bytes built from real rustls secrets.

use std::collections::HashMap;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use conduit_proto::KeyPair;
use conduit_proto::tls::{self, AuthorizedClients, PinnedRouterKey};
use rustls::client::AlwaysResolvesClientRawPublicKeys;
use rustls::crypto::aws_lc_rs::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::{
    ClientConfig, ClientConnection, ConnectionTrafficSecrets, ServerConnection,
    SupportedCipherSuite,
};

use super::imp::crypto_info;
use super::*;
use crate::sys::{
    self, CryptoInfo, Tls12CryptoInfoAesGcm128, Tls12CryptoInfoAesGcm256,
    Tls12CryptoInfoChacha20Poly1305, TlsCryptoInfo,
};

// ---- the kernel ABI ------------------------------------------------------------

#[test]
fn constants_match_linux_tls_h_and_libc() {
    // The numbers from include/uapi/linux/tls.h and tcp.h…
    assert_eq!(
        (sys::TCP_ULP, sys::SOL_TLS, sys::TLS_TX, sys::TLS_RX),
        (31, 282, 1, 2)
    );
    assert_eq!(sys::TLS_1_3_VERSION, (3 << 8) | 4);
    assert_eq!(
        (
            sys::TLS_CIPHER_AES_GCM_128,
            sys::TLS_CIPHER_AES_GCM_256,
            sys::TLS_CIPHER_CHACHA20_POLY1305
        ),
        (51, 52, 54)
    );
    // …and the libc crate agrees.
    assert_eq!(sys::TCP_ULP, libc::TCP_ULP);
    assert_eq!(sys::SOL_TLS, libc::SOL_TLS);
    assert_eq!(sys::TLS_TX, libc::TLS_TX);
    assert_eq!(sys::TLS_RX, libc::TLS_RX);
    assert_eq!(sys::TLS_1_3_VERSION, libc::TLS_1_3_VERSION);
    assert_eq!(sys::TLS_CIPHER_AES_GCM_128, libc::TLS_CIPHER_AES_GCM_128);
    assert_eq!(sys::TLS_CIPHER_AES_GCM_256, libc::TLS_CIPHER_AES_GCM_256);
    assert_eq!(
        sys::TLS_CIPHER_CHACHA20_POLY1305,
        libc::TLS_CIPHER_CHACHA20_POLY1305
    );
}

/// (size, offset of iv, key, salt, rec_seq) of a crypto-info struct.
macro_rules! layout {
    ($t:ty) => {
        (
            size_of::<$t>(),
            offset_of!($t, iv),
            offset_of!($t, key),
            offset_of!($t, salt),
            offset_of!($t, rec_seq),
        )
    };
}

#[test]
fn struct_layouts_match_the_kernel() {
    assert_eq!(size_of::<TlsCryptoInfo>(), 4);
    assert_eq!(offset_of!(TlsCryptoInfo, version), 0);
    assert_eq!(offset_of!(TlsCryptoInfo, cipher_type), 2);
    // Header 4 bytes, then iv, key, salt, rec_seq with the *_SIZE numbers of tls.h:
    // AES-GCM-128 iv 8 key 16 salt 4; AES-GCM-256 iv 8 key 32 salt 4;
    // ChaCha20-Poly1305 iv 12 key 32 salt 0; rec_seq 8 for all.
    assert_eq!(layout!(Tls12CryptoInfoAesGcm128), (40, 4, 12, 28, 32));
    assert_eq!(layout!(Tls12CryptoInfoAesGcm256), (56, 4, 12, 44, 48));
    assert_eq!(
        layout!(Tls12CryptoInfoChacha20Poly1305),
        (56, 4, 16, 48, 48)
    );
    assert_eq!(
        layout!(Tls12CryptoInfoAesGcm128),
        layout!(libc::tls12_crypto_info_aes_gcm_128)
    );
    assert_eq!(
        layout!(Tls12CryptoInfoAesGcm256),
        layout!(libc::tls12_crypto_info_aes_gcm_256)
    );
    assert_eq!(
        layout!(Tls12CryptoInfoChacha20Poly1305),
        layout!(libc::tls12_crypto_info_chacha20_poly1305)
    );
    assert_eq!(
        std::mem::align_of::<Tls12CryptoInfoAesGcm256>(),
        std::mem::align_of::<libc::tls12_crypto_info_aes_gcm_256>()
    );
}

// ---- the bytes handed to the kernel ----------------------------------------------

fn counting(n: usize, from: u8) -> Vec<u8> {
    (0..n).map(|i| from.wrapping_add(i as u8)).collect()
}

fn key32() -> AeadKey {
    let mut k = [0u8; 32];
    k.copy_from_slice(&counting(32, 0x10));
    AeadKey::from(k)
}

fn iv12() -> Iv {
    let mut iv = [0u8; 12];
    iv.copy_from_slice(&counting(12, 0xa0));
    Iv::from(iv)
}

/// What the kernel must read: header in host order, then the arrays in order.
fn expected(cipher: u16, parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0x0304u16.to_ne_bytes());
    v.extend_from_slice(&cipher.to_ne_bytes());
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

const SEQ: u64 = 0x0102_0304_0506_0708;
const SEQ_BE: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

#[test]
fn aes_256_gcm_splits_the_iv_into_salt_and_iv() {
    let s = ConnectionTrafficSecrets::Aes256Gcm {
        key: key32(),
        iv: iv12(),
    };
    let info = crypto_info(SEQ, &s).unwrap();
    assert!(matches!(info, CryptoInfo::Aes256Gcm(_)));
    let iv = counting(12, 0xa0);
    // iv = rustls IV bytes 4..12, key, salt = rustls IV bytes 0..4, rec_seq big-endian.
    let want = expected(52, &[&iv[4..], &counting(32, 0x10), &iv[..4], &SEQ_BE]);
    assert_eq!(info.as_bytes(), want.as_slice());
    assert_eq!(info.as_bytes().len(), 56);
}

#[test]
fn chacha20_poly1305_takes_the_whole_iv() {
    let s = ConnectionTrafficSecrets::Chacha20Poly1305 {
        key: key32(),
        iv: iv12(),
    };
    let info = crypto_info(SEQ, &s).unwrap();
    assert!(matches!(info, CryptoInfo::Chacha20Poly1305(_)));
    let want = expected(54, &[&counting(12, 0xa0), &counting(32, 0x10), &SEQ_BE]);
    assert_eq!(info.as_bytes(), want.as_slice());
}

#[test]
fn a_key_of_the_wrong_length_is_refused_with_the_lengths() {
    // AeadKey can only be made with 32 bytes outside rustls: wrong for AES-128.
    let s = ConnectionTrafficSecrets::Aes128Gcm {
        key: key32(),
        iv: iv12(),
    };
    let Err(e) = crypto_info(0, &s) else {
        panic!("a 32-byte AES-128 key was accepted")
    };
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(
        e.to_string(),
        "AES-128-GCM needs a 16-byte key and a 12-byte IV, rustls gave 32 and 12"
    );
}

// ---- real secrets from a real handshake --------------------------------------------

/// A handshake in memory between a client offering only `suite` and a Conduit
/// server, both with secret extraction on; returns (client, server) secrets.
fn handshake(suite: SupportedCipherSuite) -> (ExtractedSecrets, ExtractedSecrets) {
    let router = KeyPair::generate().unwrap();
    let client = KeyPair::generate().unwrap();
    let clients = HashMap::from([(client.public(), "test".to_owned())]);
    let mut server_cfg = (*tls::server_config(
        &[&router],
        Arc::new(AuthorizedClients::new(clients)),
        &tls::Suites::all(),
    )
    .unwrap())
    .clone();
    server_cfg.enable_secret_extraction = true;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![suite];
    let mut client_cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedRouterKey::new(&[router.public()])))
        .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(
            client.certified_key().unwrap(),
        )));
    client_cfg.alpn_protocols = vec![tls::ALPN.to_vec()];
    client_cfg.enable_secret_extraction = true;
    let mut c = ClientConnection::new(Arc::new(client_cfg), tls::router_server_name(None)).unwrap();
    let mut s = ServerConnection::new(Arc::new(server_cfg)).unwrap();
    for _ in 0..16 {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let mut rd = wire.as_slice();
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
        }
        let mut wire = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        let mut rd = wire.as_slice();
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    (
        c.dangerous_extract_secrets().unwrap(),
        s.dangerous_extract_secrets().unwrap(),
    )
}

#[test]
fn each_side_builds_what_the_other_receives_with() {
    for (suite, cipher, len) in [
        (TLS13_AES_128_GCM_SHA256, 51u16, 40),
        (TLS13_AES_256_GCM_SHA384, 52, 56),
        (TLS13_CHACHA20_POLY1305_SHA256, 54, 56),
    ] {
        let (client, server) = handshake(suite);
        // The server's session tickets went to the client after the handshake.
        assert_eq!(client.tx.0, server.rx.0, "{suite:?}");
        assert_eq!(client.rx.0, server.tx.0, "{suite:?}");
        let c_tx = crypto_info(client.tx.0, &client.tx.1).unwrap();
        let s_rx = crypto_info(server.rx.0, &server.rx.1).unwrap();
        let c_rx = crypto_info(client.rx.0, &client.rx.1).unwrap();
        let s_tx = crypto_info(server.tx.0, &server.tx.1).unwrap();
        assert_eq!(c_tx.as_bytes(), s_rx.as_bytes(), "{suite:?}");
        assert_eq!(s_tx.as_bytes(), c_rx.as_bytes(), "{suite:?}");
        assert_ne!(c_tx.as_bytes(), c_rx.as_bytes(), "{suite:?}");
        for info in [&c_tx, &c_rx] {
            let b = info.as_bytes();
            assert_eq!(b.len(), len, "{suite:?}");
            assert_eq!(&b[..4], expected(cipher, &[]).as_slice(), "{suite:?}");
        }
        // rec_seq is the last 8 bytes, big-endian.
        let b = s_tx.as_bytes();
        assert_eq!(b[len - 8..], server.tx.0.to_be_bytes(), "{suite:?}");
    }
}

// ---- detection and fallback on this host ------------------------------------------------

fn connected_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

/// Whether the running kernel lists the "tls" ULP (read after a probe, which may
/// have loaded the module).
fn listed() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
        .is_ok_and(|s| s.split_whitespace().any(|u| u == "tls"))
}

#[test]
fn detection_agrees_with_the_kernel_and_falls_back() {
    let (c, _s) = connected_pair();
    let attached = attach_ulp(c.as_fd());
    assert_eq!(attached, listed());
    if attached {
        assert_eq!(support(), Support::Available);
        return;
    }
    // This build host: no kTLS. The answer is cached, and the socket still carries
    // plain bytes (the fallback is the userspace path, untouched).
    assert_eq!(support(), Support::Unavailable);
    let (c2, _s2) = connected_pair();
    assert!(!attach_ulp(c2.as_fd()));
    use std::io::{Read, Write};
    let (mut a, mut b) = connected_pair();
    assert!(!attach_ulp(a.as_fd()));
    a.write_all(b"still plain TCP").unwrap();
    let mut got = [0u8; 15];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still plain TCP");
}

#[test]
fn the_probe_agrees_with_the_kernel() {
    let r = probe();
    assert_eq!(r.is_ok(), listed(), "{r:?}");
    if let Err(e) = r {
        // What the build host says: no such ULP.
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
    }
}

#[test]
fn detecting_at_start_settles_what_every_stream_goes_by() {
    let answer = detect();
    let expected = if listed() {
        Support::Available
    } else {
        Support::Unavailable
    };
    assert_eq!(answer, expected);
    assert_eq!(support(), expected);
    let (c, _s) = connected_pair();
    assert_eq!(attach_ulp(c.as_fd()), expected == Support::Available);
}

#[test]
fn installing_without_the_ulp_fails_on_the_transmit_keys() {
    let (client, _) = handshake(TLS13_AES_128_GCM_SHA256);
    let (c, _s) = connected_pair();
    // No ULP attached: the kernel knows no SOL_TLS options on this socket.
    let e = install(c.as_fd(), client).unwrap_err();
    let DataplaneError::Ktls { direction, source } = &e else {
        panic!("unexpected error {e:?}")
    };
    assert_eq!(*direction, "transmit");
    assert_eq!(source.raw_os_error(), Some(libc::ENOPROTOOPT), "{e}");
    assert!(
        e.to_string()
            .starts_with("kernel TLS offload: cannot install the transmit keys: "),
        "{e}"
    );
}

#[test]
fn a_missing_ulp_is_cached_and_decided_once() {
    let d = Detector::new();
    let calls = AtomicUsize::new(0);
    let enoent = || {
        calls.fetch_add(1, Ordering::Relaxed);
        Err(io::Error::from_raw_os_error(libc::ENOENT))
    };
    assert_eq!(d.support(), Support::Unknown);
    assert!(!d.attach(enoent));
    assert_eq!(d.support(), Support::Unavailable);
    for _ in 0..3 {
        assert!(!d.attach(|| -> io::Result<()> { panic!("no system call once known") }));
    }
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    // The first answer is the one logged; later ones are not.
    assert!(!d.settle(UNAVAILABLE));
}

#[test]
fn an_error_about_one_socket_is_not_cached() {
    let d = Detector::new();
    for errno in [libc::ENOTCONN, libc::EEXIST, libc::EBADF, libc::ENOTSOCK] {
        assert!(!d.attach(|| Err(io::Error::from_raw_os_error(errno))));
        assert_eq!(d.support(), Support::Unknown, "errno {errno}");
    }
    assert!(d.attach(|| Ok(())));
    assert_eq!(d.support(), Support::Available);
    // A later kernel-wide failure still switches every socket to userspace TLS.
    assert!(!d.attach(|| Err(io::Error::from_raw_os_error(libc::ENOPROTOOPT))));
    assert_eq!(d.support(), Support::Unavailable);
}

#[test]
fn a_file_is_not_a_socket_and_does_not_disable_ktls() {
    let d = Detector::new();
    let f = std::fs::File::open("/proc/self/status").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    assert!(!d.attach(|| {
        let r = super::set_ulp(fd);
        assert_eq!(
            r.as_ref().err().and_then(io::Error::raw_os_error),
            Some(libc::ENOTSOCK)
        );
        r
    }));
    assert_eq!(d.support(), Support::Unknown);
}
