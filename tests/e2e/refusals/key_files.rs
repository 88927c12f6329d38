//! Key files that are no key files: a device or a named pipe given as a private key
//! is refused at once, as one given as a file of trusted keys is; a private key given
//! as a public one is named as such.

use super::start_to_nowhere;
use crate::harness::{Home, assert_code};

/// `--key /dev/zero` was read until memory ran out (gigabytes in seconds), and
/// `--key` a named pipe waited for a writer for good; each is refused at once
/// (exit 64), as `--authorized-keys /dev/zero` is, for a tunnel and for a router's
/// key and next key.
#[cfg(unix)]
#[test]
fn a_private_key_that_is_a_device_or_a_pipe_is_refused_at_once() {
    let home = Home::with_keys();
    let fifo = home.path().join("key.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let fifo = fifo.to_str().unwrap();
    let not_a_file = |path: &str, name: &str| {
        format!(
            "private key {path} is not a regular file (a device, a named pipe or a socket); \
             give the private key file, e.g. $CONDUIT_HOME/keys/{name}.key (`conduit init \
             --name {name}` makes one)"
        )
    };
    for key in ["/dev/zero", fifo] {
        let (status, err) = start_to_nowhere(&home, "127.0.0.1:0", &["--key", key]);
        assert_code(status, 64, &err);
        assert_eq!(
            err,
            format!("conduit: error: {}\n", not_a_file(key, "client"))
        );
        let (status, _, err) = home.run(&["router", "--bind", "127.0.0.1:0", "--key", key]);
        assert_code(status, 64, &err);
        assert_eq!(
            err,
            format!(
                "conduit: error: router.private_key_path: {} (cli --key)\n",
                not_a_file(key, "router")
            )
        );
    }
    let (status, _, err) = home.run(&["router", "--bind", "127.0.0.1:0", "--next-key", fifo]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        format!(
            "conduit: error: router.next_private_key_path: {} (cli --next-key)\n",
            not_a_file(fifo, "router-next")
        )
    );
}

/// The router's private key given to a tunnel as the router's key is named as a
/// private key, with the `.pub` to give instead; it was `invalid public key
/// "-----BEGIN"`.
#[test]
fn a_router_private_key_given_as_the_router_key_is_named_with_the_pub_to_give() {
    let home = Home::with_keys();
    let key = home.key("router.key");
    let (status, _, err) = home.run(&[
        "start",
        "--foreground",
        "--router",
        "127.0.0.1:9",
        "--router-key",
        key.to_str().unwrap(),
        "--source",
        "127.0.0.1:1",
        "--bind",
        "127.0.0.1:0",
    ]);
    assert_code(status, 64, &err);
    assert_eq!(
        err,
        format!(
            "conduit: error: --router-key: {} is a private key (-----BEGIN PRIVATE KEY-----), \
             not a public key; give the .pub file beside it, {}. A private key stays on its \
             own host: a router's .key is never copied to its clients\n",
            key.display(),
            home.key("router.pub").display()
        )
    );
}
