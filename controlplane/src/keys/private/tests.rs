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
