//! The kernel-TLS ABI: `include/uapi/linux/tls.h` and `TCP_ULP` from
//! `include/uapi/linux/tcp.h`. Defined here rather than taken from `libc` so that the
//! layout the kernel reads sits next to the unsafe code that hands it over; the unit
//! tests in `ktls` check every size and offset against the kernel header's numbers
//! and against `libc`'s definitions.

use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;

use zeroize::Zeroize;

/// `TCP_ULP`: attach an upper-layer protocol ("tls") to a TCP socket.
pub(crate) const TCP_ULP: libc::c_int = 31;
/// `SOL_TLS`: the socket level of the kTLS options.
pub(crate) const SOL_TLS: libc::c_int = 282;
/// `TLS_TX`: install the keys the kernel encrypts with.
pub(crate) const TLS_TX: libc::c_int = 1;
/// `TLS_RX`: install the keys the kernel decrypts with.
pub(crate) const TLS_RX: libc::c_int = 2;
/// `TLS_1_3_VERSION`: `TLS_VERSION_NUMBER(TLS_1_3)` = major 3 << 8 | minor 4.
pub(crate) const TLS_1_3_VERSION: u16 = 0x0304;
/// `TLS_CIPHER_AES_GCM_128`.
pub(crate) const TLS_CIPHER_AES_GCM_128: u16 = 51;
/// `TLS_CIPHER_AES_GCM_256`.
pub(crate) const TLS_CIPHER_AES_GCM_256: u16 = 52;
/// `TLS_CIPHER_CHACHA20_POLY1305`.
pub(crate) const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;
/// `TLS_CIPHER_*_REC_SEQ_SIZE`: the same for every cipher.
pub(crate) const REC_SEQ_SIZE: usize = 8;

/// `struct tls_crypto_info`: the header of every crypto-info struct. Both fields
/// are in host byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TlsCryptoInfo {
    pub(crate) version: u16,
    pub(crate) cipher_type: u16,
}

/// The kernel's `struct tls12_crypto_info_<cipher>` family (used for TLS 1.3 as
/// well): the header, then `iv[IV]`, `key[KEY]`, `salt[SALT]`, `rec_seq[8]`, all
/// byte arrays, so there is no padding (checked in [`Self::as_bytes`]). The key
/// material is wiped when the value is dropped.
#[repr(C)]
pub(crate) struct Tls12CryptoInfo<const IV: usize, const KEY: usize, const SALT: usize> {
    pub(crate) info: TlsCryptoInfo,
    pub(crate) iv: [u8; IV],
    pub(crate) key: [u8; KEY],
    pub(crate) salt: [u8; SALT],
    pub(crate) rec_seq: [u8; REC_SEQ_SIZE],
}

/// `struct tls12_crypto_info_aes_gcm_128`.
pub(crate) type Tls12CryptoInfoAesGcm128 = Tls12CryptoInfo<8, 16, 4>;
/// `struct tls12_crypto_info_aes_gcm_256`.
pub(crate) type Tls12CryptoInfoAesGcm256 = Tls12CryptoInfo<8, 32, 4>;
/// `struct tls12_crypto_info_chacha20_poly1305` (its `salt` has zero length).
pub(crate) type Tls12CryptoInfoChacha20Poly1305 = Tls12CryptoInfo<12, 32, 0>;

impl<const IV: usize, const KEY: usize, const SALT: usize> Tls12CryptoInfo<IV, KEY, SALT> {
    /// A zeroed struct with its header filled in.
    pub(crate) fn new(cipher_type: u16) -> Self {
        Self {
            info: TlsCryptoInfo {
                version: TLS_1_3_VERSION,
                cipher_type,
            },
            iv: [0; IV],
            key: [0; KEY],
            salt: [0; SALT],
            rec_seq: [0; REC_SEQ_SIZE],
        }
    }

    /// The bytes the kernel reads.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        const {
            assert!(
                size_of::<Self>() == size_of::<TlsCryptoInfo>() + IV + KEY + SALT + REC_SEQ_SIZE
            );
        }
        // SAFETY: `Self` is `repr(C)` and made only of `u16`s and `u8` arrays whose
        // sizes add up to `size_of::<Self>()` (asserted at compile time above), so
        // it has no padding and every one of its bytes is initialised. The slice
        // borrows `self`, so it cannot outlive the struct.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }
}

impl<const IV: usize, const KEY: usize, const SALT: usize> Drop for Tls12CryptoInfo<IV, KEY, SALT> {
    fn drop(&mut self) {
        self.iv.zeroize();
        self.key.zeroize();
        self.salt.zeroize();
    }
}

/// One direction's keys, in the struct its cipher needs.
pub(crate) enum CryptoInfo {
    Aes128Gcm(Tls12CryptoInfoAesGcm128),
    Aes256Gcm(Tls12CryptoInfoAesGcm256),
    Chacha20Poly1305(Tls12CryptoInfoChacha20Poly1305),
}

impl CryptoInfo {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Aes128Gcm(c) => c.as_bytes(),
            Self::Aes256Gcm(c) => c.as_bytes(),
            Self::Chacha20Poly1305(c) => c.as_bytes(),
        }
    }
}

/// Attaches the upper-layer protocol `name` to a connected TCP socket. The name is
/// passed NUL-terminated, as the kernel's documentation does (`sizeof("tls")`).
pub(crate) fn set_tcp_ulp(fd: RawFd, name: &str) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(name.len() + 1);
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    super::setsockopt_bytes(fd, libc::IPPROTO_TCP, TCP_ULP, &bytes)
}

/// Installs one direction's record keys (`TLS_TX` or `TLS_RX`) on a socket whose
/// "tls" ULP is attached.
pub(crate) fn set_tls_crypto(
    fd: RawFd,
    direction: libc::c_int,
    info: &CryptoInfo,
) -> io::Result<()> {
    super::setsockopt_bytes(fd, SOL_TLS, direction, info.as_bytes())
}

/// `TLS_SET_RECORD_TYPE` / `TLS_GET_RECORD_TYPE`: the control message that gives
/// a record's content type on a kTLS socket.
const TLS_SET_RECORD_TYPE: libc::c_int = 1;
const TLS_GET_RECORD_TYPE: libc::c_int = 2;

/// Room for one control message carrying one byte.
const CMSG_ROOM: usize = 64;

/// Sends `payload` as one record of content type `typ` (21: alert) through the
/// kernel's TLS, without blocking.
pub(crate) fn send_record(fd: RawFd, typ: u8, payload: &[u8]) -> io::Result<usize> {
    let mut control = [0u64; CMSG_ROOM / 8];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: payload.len(),
    };
    let mut msg = super::one_buffer_msg(&mut iov, &mut control);
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(1) } as _;
    // SAFETY: msg_control points at `control`, which is larger than
    // CMSG_SPACE(1) and 8-byte aligned, so the first header and its one data
    // byte lie inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = SOL_TLS;
        (*cmsg).cmsg_type = TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(cmsg) = typ;
    }
    loop {
        // SAFETY: every pointer in `msg` refers to live locals or to `payload`,
        // which the kernel only reads.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Reads the next record from a kTLS socket without blocking, with its content
/// type (23 for application data): how a non-data record (an alert, say), which
/// `splice` refuses with `EINVAL`, is read.
pub(crate) fn recv_record(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, u8)> {
    let mut control = [0u64; CMSG_ROOM / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut msg = super::one_buffer_msg(&mut iov, &mut control);
    let n = loop {
        // SAFETY: `msg` points at `buf` and `control`, both live and writable
        // for the lengths given.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    // Application data comes without a control message.
    let mut typ = 23;
    // SAFETY: the kernel filled `msg_controllen` bytes of `control`; the CMSG
    // macros walk only within them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_TLS && (*cmsg).cmsg_type == TLS_GET_RECORD_TYPE {
                typ = *libc::CMSG_DATA(cmsg);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n, typ))
}
