//! Kernel TLS offload (kTLS): finding out whether this kernel can encrypt and decrypt
//! TLS records itself, and handing it a connection's record keys.
//!
//! Used by `offload.rs` for TCP streams whose two ends agree to it (`OpenKernel` /
//! `OpenedKernel`, protocol 4); everything else (UDP flows, streams to or from a host
//! without kTLS, `kernel_tls = false`) is sealed and opened by rustls in userspace:
//!
//! ```text
//!  handshake done (rustls, control plane)
//!    │ attach_ulp(socket)          false ─▶ userspace TLS (cached: one failed
//!    ▼                                      setsockopt per process on hosts without kTLS)
//!  TlsSession::into_kernel()       (rustls' dangerous_into_kernel_connection; the
//!    │ ExtractedSecrets             configs set `enable_secret_extraction`)
//!    ▼
//!  install(socket, secrets)        error ─▶ close the connection: its keys have left rustls
//!    ▼
//!  relay plaintext with splice; the kernel seals and opens the records
//! ```
//!
//! Non-data records after the hand-over: the relay reads them with `recvmsg` and a
//! `TLS_GET_RECORD_TYPE` control message when `splice` refuses one (`EINVAL`);
//! close_notify ends a direction, anything else ends the stream with an error. No
//! Conduit end sends a `KeyUpdate` or a session ticket on a kernel-TLS stream, so
//! none is expected (the `ktls` crate, Tokio-only, ignores them; we refuse them).
//!
//! Tested against a real kTLS kernel by `tests/ktls/run.sh`, which boots Debian's
//! kernel in QEMU: this project's build host has no kTLS.
//!
//! Detection follows what was measured on the build host (no `CONFIG_TLS`): the
//! `TCP_ULP` setsockopt on a connected socket fails with `ENOENT` when the kernel has
//! no "tls" ULP, while `/proc/sys/net/ipv4/tcp_available_ulp` and `/proc/net/tls_stat`
//! are only hints (a module may be loaded by that very setsockopt).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU8, Ordering};

use rustls::ExtractedSecrets;

use crate::DataplaneError;

/// What this process has learned about kernel TLS on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Nothing tried yet.
    Unknown,
    /// A socket accepted the "tls" ULP.
    Available,
    /// The kernel has no kTLS; no further socket will try.
    Unavailable,
}

const UNKNOWN: u8 = 0;
const AVAILABLE: u8 = 1;
const UNAVAILABLE: u8 = 2;

/// The machine-wide answer, shared by every core: one byte written at most twice.
static DETECTOR: Detector = Detector::new();

/// The cached machine-wide answer.
pub fn support() -> Support {
    DETECTOR.support()
}

/// Attaches the kernel's "tls" upper-layer protocol to a connected TCP socket: the
/// first step of an offload. True when it worked; false means "keep TLS in
/// userspace", and is silent.
///
/// After an error that says the kernel itself lacks kTLS (`ENOENT`: no such ULP;
/// `ENOPROTOOPT`: no ULPs at all; or anything else not about this socket), the answer
/// is cached for the whole process and later calls return false without a system
/// call. Errors about this one socket (not connected, ULP already attached, not a TCP
/// socket) make only this call fail. The first machine-wide answer is logged with one
/// `debug!` line; nothing else here ever logs.
///
/// Attaching is harmless on its own: until keys are installed the socket behaves as
/// plain TCP. It cannot be undone.
pub fn attach_ulp(socket: BorrowedFd<'_>) -> bool {
    let fd = socket.as_raw_fd();
    DETECTOR.attach(|| set_ulp(fd))
}

/// Settles the machine-wide answer at process start with [`probe`], so that it is
/// logged once, in the detector's one debug line, before any stream asks; later
/// [`attach_ulp`] calls go by it. Returns the answer.
pub fn detect() -> Support {
    DETECTOR.attach(probe);
    DETECTOR.support()
}

/// Tries the "tls" ULP on a loopback connection made for the purpose, bypassing the
/// cache: `Ok` when this kernel offers kTLS, otherwise why not. For diagnostics
/// (`conduit tune --check`); on a kernel with kTLS as a module, running it as root
/// may load that module.
pub fn probe() -> io::Result<()> {
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let client = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (_server, _) = listener.accept()?;
    set_ulp(client.as_raw_fd())
}

/// Hands the record keys of a TLS 1.3 connection to the kernel: `TLS_TX` with the
/// keys we send with, then `TLS_RX` with the keys we receive with, each with its
/// record sequence number. The socket must have the "tls" ULP ([`attach_ulp`]), and
/// the secrets come from rustls' `dangerous_into_kernel_connection()` on a connection
/// configured with `enable_secret_extraction = true`.
///
/// Supports AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305, the three suites Conduit
/// negotiates. On error the connection cannot continue (rustls no longer holds its
/// keys, and the kernel may hold half of them): close it. The secrets are consumed
/// and wiped, as are the kernel structures built from them.
pub fn install(socket: BorrowedFd<'_>, secrets: ExtractedSecrets) -> Result<(), DataplaneError> {
    imp::install(socket.as_raw_fd(), secrets)
}

fn set_ulp(fd: std::os::fd::RawFd) -> io::Result<()> {
    imp::set_ulp(fd)
}

/// The cached answer and the one log line.
struct Detector {
    state: AtomicU8,
}

impl Detector {
    const fn new() -> Self {
        Self {
            state: AtomicU8::new(UNKNOWN),
        }
    }

    fn support(&self) -> Support {
        match self.state.load(Ordering::Relaxed) {
            AVAILABLE => Support::Available,
            UNAVAILABLE => Support::Unavailable,
            _ => Support::Unknown,
        }
    }

    /// Runs `try_attach` unless the machine is known to lack kTLS, and records what
    /// it says.
    fn attach(&self, try_attach: impl FnOnce() -> io::Result<()>) -> bool {
        if self.state.load(Ordering::Relaxed) == UNAVAILABLE {
            return false;
        }
        match try_attach() {
            Ok(()) => {
                if self.settle(AVAILABLE) {
                    tracing::debug!("kernel TLS offload is available (TCP_ULP \"tls\" accepted)");
                }
                true
            }
            Err(e) if is_about_this_socket(&e) => false,
            Err(e) => {
                if self.settle(UNAVAILABLE) {
                    tracing::debug!(
                        error = %e,
                        "kernel TLS offload is not available on this machine; TLS stays in userspace"
                    );
                }
                false
            }
        }
    }

    /// Stores `to`; true when this was the first answer (the one to log).
    fn settle(&self, to: u8) -> bool {
        self.state.swap(to, Ordering::Relaxed) == UNKNOWN
    }
}

/// Errors that describe the socket passed in, not the kernel.
fn is_about_this_socket(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN | libc::EEXIST | libc::EBADF | libc::ENOTSOCK | libc::EOPNOTSUPP)
    )
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::fd::RawFd;

    use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};

    use crate::DataplaneError;
    use crate::sys::{self, CryptoInfo, Tls12CryptoInfo};

    pub(super) fn set_ulp(fd: RawFd) -> io::Result<()> {
        sys::set_tcp_ulp(fd, "tls")
    }

    pub(super) fn install(fd: RawFd, secrets: ExtractedSecrets) -> Result<(), DataplaneError> {
        let failed = |direction| move |source| DataplaneError::Ktls { direction, source };
        let tx = crypto_info(secrets.tx.0, &secrets.tx.1).map_err(failed("transmit"))?;
        let rx = crypto_info(secrets.rx.0, &secrets.rx.1).map_err(failed("receive"))?;
        drop(secrets);
        sys::set_tls_crypto(fd, sys::TLS_TX, &tx).map_err(failed("transmit"))?;
        sys::set_tls_crypto(fd, sys::TLS_RX, &rx).map_err(failed("receive"))
    }

    /// The kernel structure for one direction: for AES-GCM the first 4 bytes of
    /// rustls' 12-byte IV are the kernel's `salt` and the other 8 its `iv` (the
    /// kernel joins them again into the TLS 1.3 per-record nonce base); ChaCha20 takes
    /// all 12 as `iv`. The sequence number goes big-endian into `rec_seq`.
    pub(super) fn crypto_info(
        seq: u64,
        secrets: &ConnectionTrafficSecrets,
    ) -> io::Result<CryptoInfo> {
        match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                let mut c = Tls12CryptoInfo::new(sys::TLS_CIPHER_AES_GCM_128);
                fill(&mut c, "AES-128-GCM", key.as_ref(), iv.as_ref(), seq)?;
                Ok(CryptoInfo::Aes128Gcm(c))
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                let mut c = Tls12CryptoInfo::new(sys::TLS_CIPHER_AES_GCM_256);
                fill(&mut c, "AES-256-GCM", key.as_ref(), iv.as_ref(), seq)?;
                Ok(CryptoInfo::Aes256Gcm(c))
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                let mut c = Tls12CryptoInfo::new(sys::TLS_CIPHER_CHACHA20_POLY1305);
                fill(&mut c, "ChaCha20-Poly1305", key.as_ref(), iv.as_ref(), seq)?;
                Ok(CryptoInfo::Chacha20Poly1305(c))
            }
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the negotiated cipher suite has no kernel TLS equivalent",
            )),
        }
    }

    fn fill<const IV: usize, const KEY: usize, const SALT: usize>(
        c: &mut Tls12CryptoInfo<IV, KEY, SALT>,
        cipher: &str,
        key: &[u8],
        iv: &[u8],
        seq: u64,
    ) -> io::Result<()> {
        if key.len() != KEY || iv.len() != SALT + IV {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{cipher} needs a {KEY}-byte key and a {}-byte IV, rustls gave {} and {}",
                    SALT + IV,
                    key.len(),
                    iv.len()
                ),
            ));
        }
        c.key.copy_from_slice(key);
        c.salt.copy_from_slice(&iv[..SALT]);
        c.iv.copy_from_slice(&iv[SALT..]);
        c.rec_seq = seq.to_be_bytes();
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;
    use std::os::fd::RawFd;

    use rustls::ExtractedSecrets;

    use crate::DataplaneError;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "kernel TLS exists only on Linux",
        )
    }

    pub(super) fn set_ulp(_fd: RawFd) -> io::Result<()> {
        Err(unsupported())
    }

    pub(super) fn install(_fd: RawFd, _secrets: ExtractedSecrets) -> Result<(), DataplaneError> {
        Err(DataplaneError::Ktls {
            direction: "transmit",
            source: unsupported(),
        })
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests;
