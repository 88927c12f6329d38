//! The control plane's errors: whose fault, and whether retrying can help.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use conduit_proto::TlsError;

/// A control-plane failure. Every message names the thing and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Settings, key files or policy are wrong. Local fault; retrying cannot help.
    #[error("{0}")]
    Config(String),
    /// A file could not be read or written. Local fault.
    #[error("{what} {}: {source}{}", path.display(), file_fix(source))]
    File {
        /// What the file is ("private key", "authorized clients file"…).
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The network failed (router unreachable, connection reset). Retrying may help.
    #[error("{what}: {source}")]
    Network {
        /// What was being attempted.
        what: String,
        /// What the system said.
        source: io::Error,
    },
    /// An address this process must listen on cannot be bound (in use, ports below
    /// 1024 without privileges, not on this machine). Local fault; free the address
    /// or choose another.
    #[error("cannot {what} on {addr}: {source}; {fix}")]
    Listen {
        /// What the address is for ("listen", "serve metrics"…).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        source: io::Error,
        /// What the user can do.
        fix: &'static str,
    },
    /// The peer is not who it must be, or refuses who we are. Never retried:
    /// someone must change a key, a token or an authorized-clients file.
    #[error("{0}")]
    Authentication(String),
    /// TLS failed for another reason (corrupt records, protocol mismatch). The peer
    /// is at fault; a retry may help if it was transient.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The other end broke the Conduit protocol or refused the request.
    #[error("{0}")]
    Protocol(String),
    /// The data plane could not start.
    #[error("{0}")]
    Dataplane(#[from] conduit_dataplane::DataplaneError),
    /// A background tunnel process failed to come up; `code` is its exit code.
    #[error("{message}")]
    Launch {
        /// The child's exit code (its error class).
        code: i32,
        /// The child's error message.
        message: String,
    },
}

impl Error {
    /// True when trying again later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Network { .. } | Self::Tls(_) | Self::Protocol(_)
        )
    }

    /// True when a network operation failed because this process (or the system) has
    /// no file descriptor left: waiting for the network cannot help.
    pub fn out_of_descriptors(&self) -> bool {
        #[cfg(unix)]
        if let Self::Network { source, .. } = self {
            use nix::libc::{EMFILE, ENFILE};
            return matches!(source.raw_os_error(), Some(EMFILE | ENFILE));
        }
        false
    }

    /// True when a connection found nothing listening: refused, no route to the
    /// host, or no answer at all within the connect timeout (a host that is down or
    /// rebooting, a firewall that drops): what a router that is restarting, or whose
    /// host is, looks like. Not a failure after the connection was accepted (a
    /// handshake that timed out included): that router listens.
    pub fn found_no_listener(&self) -> bool {
        use io::ErrorKind::{ConnectionRefused, HostUnreachable, NetworkUnreachable, TimedOut};
        let Self::Network { source, .. } = self else {
            return false;
        };
        match source.kind() {
            ConnectionRefused | HostUnreachable | NetworkUnreachable => true,
            TimedOut => source
                .get_ref()
                .is_some_and(|e| e.is::<crate::wire::NoAnswer>()),
            _ => false,
        }
    }

    pub(crate) fn network(what: impl Into<String>, source: io::Error) -> Self {
        Self::Network {
            what: what.into(),
            source,
        }
    }
}

/// Turns a TLS error into the error a user should see, naming keys where they matter:
/// `our_line` is this client's key as its authorized_clients line reads (the key and
/// its name).
pub(crate) fn from_tls(e: TlsError, our_key: &conduit_proto::PublicKey, our_line: &str) -> Error {
    if e.router_key_mismatch().is_some() {
        return Error::Authentication(e.to_string());
    }
    if e.peer_rejected_our_key() {
        return Error::Authentication(format!(
            "the router refused this client's key {our_key}; add this line to the router's \
             authorized_clients file: {our_line} (the name after the key is what the router's \
             logs and NAME= allow rules call this client: choose your own; if the key is there \
             already, its expires= time has passed: extend or remove that expires=)"
        ));
    }
    Error::Tls(e)
}

/// The fix for a file that could not be read or written, where the system's error
/// says what it is: a read-only file system, or a file or directory the user may
/// not touch.
fn file_fix(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ReadOnlyFilesystem => {
            "; the file system is read-only: point CONDUIT_HOME (or the setting that names \
             this file) at a writable directory"
        }
        io::ErrorKind::PermissionDenied => {
            "; check that this user owns the file and its directory (or may write there), \
             or run as the user that does"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_refused_unroutable_or_unanswered_found_no_listener() {
        let net = |e| Error::network("cannot reach router r:1", e);
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::HostUnreachable,
            io::ErrorKind::NetworkUnreachable,
        ] {
            assert!(net(io::Error::from(kind)).found_no_listener(), "{kind:?}");
        }
        let unanswered = crate::wire::NoAnswer(std::time::Duration::from_secs(1));
        let unanswered = net(io::Error::new(io::ErrorKind::TimedOut, unanswered));
        assert!(unanswered.found_no_listener());
        assert_eq!(
            unanswered.to_string(),
            "cannot reach router r:1: no answer within 1s"
        );
        // A router that accepted and then failed the attempt, a handshake that
        // timed out among them.
        for kind in [
            io::ErrorKind::TimedOut,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::UnexpectedEof,
        ] {
            assert!(!net(io::Error::from(kind)).found_no_listener(), "{kind:?}");
        }
        assert!(!Error::Authentication("refused".into()).found_no_listener());
    }

    /// A listener whose accept queue is full drops new connections' SYNs without a
    /// word, as a host that is down or a dropping firewall does: the connection
    /// gets no answer, and that is found to be no listener.
    #[tokio::test]
    async fn a_port_that_does_not_answer_found_no_listener() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let silent = socket.listen(0).unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        // Never accepted: it fills the queue.
        let _queued = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let within = std::time::Duration::from_millis(300);
        let e = crate::wire::connect(&addr, within).await.unwrap_err();
        let e = Error::network(format!("cannot reach router {addr}"), e);
        assert_eq!(
            e.to_string(),
            format!("cannot reach router {addr}: no answer within 300ms")
        );
        assert!(e.found_no_listener());
    }

    #[test]
    fn a_file_error_names_the_fix_where_the_system_says_what_is_wrong() {
        let file = |kind| Error::File {
            what: "cannot write private key",
            path: "/h/keys/client.key".into(),
            source: io::Error::from(kind),
        };
        assert_eq!(
            file(io::ErrorKind::ReadOnlyFilesystem).to_string(),
            "cannot write private key /h/keys/client.key: read-only filesystem or storage \
             medium; the file system is read-only: point CONDUIT_HOME (or the setting that \
             names this file) at a writable directory"
        );
        assert!(file(io::ErrorKind::PermissionDenied).to_string().ends_with(
            "; check that this user owns the file and its directory (or may \
                            write there), or run as the user that does"
        ));
        assert_eq!(
            file(io::ErrorKind::NotFound).to_string(),
            "cannot write private key /h/keys/client.key: entity not found"
        );
    }
}
