//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, text v1 or binary v2)
//! that a tunnel can put in front of each stream's bytes, so the source learns the
//! user's address instead of seeing every connection come from the router.
//!
//! The header rides as the stream's first payload: the router relays it like any
//! other byte and needs no part in it. It says where the user connected from and
//! which address of the tunnel it reached. The `ppp` crate writes it.
//!
//! A UDP tunnel puts v2's datagram form in front of every datagram of a flow (v1
//! has none: the configuration refuses it there), as Unbound, dnsdist and PowerDNS
//! read it; the source's answers come back bare.

use std::io;
use std::net::SocketAddr;

use ppp::v2::{Builder, Command, Protocol, Version};

/// Which PROXY protocol header a tunnel sends its source at the start of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// The text header, `PROXY TCP4 SRC DST SPORT DPORT\r\n` (nginx, HAProxy,
    /// Postfix, most servers that take one).
    V1,
    /// The binary header, 28 bytes for IPv4 and 52 for IPv6.
    V2,
}

impl ProxyProtocol {
    /// The header for a stream from `user` that reached the tunnel at `local`.
    /// IPv4 addresses a dual-stack socket shows mapped into IPv6 are given as IPv4;
    /// if the two are still of different families (they cannot be on one socket),
    /// the IPv4 one is mapped into IPv6.
    pub fn header(self, user: SocketAddr, local: SocketAddr) -> io::Result<Vec<u8>> {
        let (src, dst) = same_family(user, local);
        match self {
            ProxyProtocol::V1 => Ok(ppp::v1::Addresses::from((src, dst))
                .to_string()
                .into_bytes()),
            ProxyProtocol::V2 => {
                Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
                    .build()
            }
        }
    }

    /// The header a UDP tunnel puts in front of each datagram from `user` that
    /// reached the tunnel's socket bound at `local` (v2 only: v1 has no datagram
    /// form).
    pub fn datagram_header(self, user: SocketAddr, local: SocketAddr) -> io::Result<Vec<u8>> {
        match self {
            ProxyProtocol::V1 => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the PROXY protocol's v1 has no form for UDP: use v2",
            )),
            ProxyProtocol::V2 => {
                let (src, dst) = same_family(user, local);
                Builder::with_addresses(
                    Version::Two | Command::Proxy,
                    Protocol::Datagram,
                    (src, dst),
                )
                .build()
            }
        }
    }

    /// The word the configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

impl std::fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Both addresses in one family: IPv4 where both can be, else IPv6.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canon(a), canon(b));
    if a.is_ipv4() == b.is_ipv4() {
        return (a, b);
    }
    let v6 = |s: SocketAddr| match s {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    (v6(a), v6(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_is_the_text_line() {
        let h = ProxyProtocol::V1
            .header(addr("192.0.2.7:51000"), addr("10.0.0.1:8080"))
            .unwrap();
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 8080\r\n");
        let h = ProxyProtocol::V1
            .header(addr("[2001:db8::7]:51000"), addr("[::1]:443"))
            .unwrap();
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 ::1 51000 443\r\n");
    }

    #[test]
    fn v2_is_the_binary_header() {
        let h = ProxyProtocol::V2
            .header(addr("192.0.2.7:51000"), addr("10.0.0.1:8080"))
            .unwrap();
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        // Version 2, PROXY; TCP over IPv4; 12 bytes of addresses.
        want.extend_from_slice(&[0x21, 0x11, 0, 12]);
        want.extend_from_slice(&[192, 0, 2, 7, 10, 0, 0, 1]);
        want.extend_from_slice(&51000u16.to_be_bytes());
        want.extend_from_slice(&8080u16.to_be_bytes());
        assert_eq!(h, want);

        let h = ProxyProtocol::V2
            .header(addr("[2001:db8::7]:51000"), addr("[::1]:443"))
            .unwrap();
        assert_eq!(h.len(), 16 + 36);
        // TCP over IPv6.
        assert_eq!(h[12..16], [0x21, 0x21, 0, 36]);
        assert_eq!(
            h[16..32],
            "2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(h[48..52], [0xc7, 0x38, 0x01, 0xbb]);
    }

    #[test]
    fn datagrams_get_v2s_udp_form_and_v1_has_none() {
        let h = ProxyProtocol::V2
            .datagram_header(addr("192.0.2.7:51000"), addr("0.0.0.0:53"))
            .unwrap();
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        // Version 2, PROXY; UDP over IPv4; 12 bytes of addresses.
        want.extend_from_slice(&[0x21, 0x12, 0, 12]);
        want.extend_from_slice(&[192, 0, 2, 7, 0, 0, 0, 0]);
        want.extend_from_slice(&51000u16.to_be_bytes());
        want.extend_from_slice(&53u16.to_be_bytes());
        assert_eq!(h, want);
        let h = ProxyProtocol::V2
            .datagram_header(addr("[2001:db8::7]:51000"), addr("[::]:53"))
            .unwrap();
        // UDP over IPv6.
        assert_eq!((h.len(), &h[12..16]), (16 + 36, &[0x21, 0x22, 0, 36][..]));
        let e = ProxyProtocol::V1
            .datagram_header(addr("192.0.2.7:1"), addr("0.0.0.0:53"))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn mapped_ipv4_is_given_as_ipv4_and_mixed_families_as_ipv6() {
        let h = ProxyProtocol::V1
            .header(addr("[::ffff:192.0.2.7]:1"), addr("[::ffff:10.0.0.1]:2"))
            .unwrap();
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2\r\n");
        let h = ProxyProtocol::V1
            .header(addr("192.0.2.7:1"), addr("[2001:db8::1]:2"))
            .unwrap();
        assert_eq!(h, b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 1 2\r\n");
    }
}
