//! Keys and secrets: the router's public key inline or as a file, the private key's
//! file and mode, a token in a file others can read.

use super::{check, none, router};
use crate::config::tests::Fixture;

#[test]
fn router_keys_are_checked_inline_and_as_files() {
    let f = Fixture::new();
    let text = |key: &str| {
        format!(
            "[router]\nhost = \"h\"\npublic_key = \"{key}\"\n[[tunnels]]\nname = \"a\"\n\
             source = \"s:1\"\nbind = \"127.0.0.1:1\"\n"
        )
    };
    assert_eq!(
        check(&f, &text("ed25519:AAAA")),
        [
            "error: router.public_key: invalid public key \"ed25519:AAAA\": an Ed25519 public key \
          is 32 bytes; paste the key the router's `conduit init` printed ($F:3)"
        ]
    );
    assert_eq!(
        check(&f, &text("keys/router.pub")),
        [
            "error: router.public_key: no file at $DIR/keys/router.pub: give the router's public \
          key (ed25519:…, as the router's `conduit init` printed) or the path of its .pub \
          file ($F:3)"
        ]
    );
    std::fs::write(f.path("bad.pub"), "ssh-ed25519 AAAA\n").unwrap();
    assert_eq!(
        check(&f, &text("bad.pub")),
        [
            "error: router.public_key: public key in $DIR/bad.pub: invalid public key \
          \"ssh-ed25519\": an OpenSSH key; Conduit's keys are `ed25519:…` lines as `conduit \
          init` prints them, not ssh keys ($F:3)"
        ]
    );
    let pub_file = f.home.public_key("router").display().to_string();
    assert_eq!(check(&f, &text(&pub_file)), none());
    // The line `conduit init` printed, the key's name too.
    let line = std::fs::read_to_string(&pub_file).unwrap();
    assert!(line.trim().ends_with(" router"), "{line}");
    assert_eq!(check(&f, &text(line.trim())), none());
}

#[test]
fn a_path_starting_with_a_tilde_is_refused_with_the_fix() {
    let f = Fixture::new();
    let text = f.client_text("[security]\nprivate_key_path = \"~/keys/client.key\"\n");
    assert_eq!(
        check(&f, &text),
        [
            "error: security.private_key_path: \"~/keys/client.key\" starts with ~, which is \
             not expanded here (no shell reads this value): write the home directory in full, \
             such as /home/USER/keys/client.key ($F:10)"
        ]
    );
}

/// A key path that cannot be looked at is not called missing: the system's reason
/// is given, as loading the key would.
#[cfg(unix)]
#[test]
fn a_key_behind_a_loop_of_links_is_named_as_such() {
    let f = Fixture::new();
    let dir = f.dir.path();
    std::os::unix::fs::symlink(dir.join("loop2"), dir.join("loop1")).unwrap();
    std::os::unix::fs::symlink(dir.join("loop1"), dir.join("loop2")).unwrap();
    let text = f.client_text("[security]\nprivate_key_path = \"loop1\"\n");
    assert_eq!(
        check(&f, &text),
        [
            "error: security.private_key_path: cannot read private key $DIR/loop1: Too many \
             levels of symbolic links (os error 40) ($F:10)"
        ]
    );
}

#[test]
fn the_private_key_must_exist_and_be_private() {
    let f = Fixture::new();
    let text = f.client_text("[security]\nprivate_key_path = \"nope.key\"\n");
    assert_eq!(
        check(&f, &text),
        [
            "error: security.private_key_path: no private key at $DIR/nope.key: create one with \
          `conduit init --name client` (it writes $CONDUIT_HOME/keys/client.key) or set \
          security.private_key_path to an existing key ($F:10)"
        ]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = f.home.private_key("client");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let k = key
            .display()
            .to_string()
            .replace(&f.dir.path().display().to_string(), "$DIR");
        assert_eq!(
            check(&f, &f.client_text("")),
            [format!(
                "error: security.private_key_path: private key {k} is readable by group or \
                 others (mode 0644); run `chmod 600 {k}` and start again"
            )]
        );
    }
}

#[cfg(unix)]
#[test]
fn a_token_in_a_readable_file_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let sources = f.sources(&f.client_text("[security]\ntoken = \"t\"\n"), &[], &[]);
    std::fs::set_permissions(&sources.file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let report = crate::config::load_client(&sources).unwrap().report;
    let lines: Vec<String> = f
        .lines(&report)
        .into_iter()
        .map(|l| l.replace("$DIR/conduit.toml", "$F"))
        .collect();
    assert_eq!(
        lines,
        [
            "warning: security.token: $F holds a secret and is readable by group or others (mode \
          0644); run `chmod 600 $F` or pass the token in CONDUIT_SECURITY_TOKEN ($F:10)"
        ]
    );
}

/// An alert's URL is its secret too, and called a URL.
#[cfg(unix)]
#[test]
fn a_webhook_url_in_a_readable_file_is_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let text = f.client_text("[alerts]\nwebhook = \"https://hooks.example.com/x\"\n");
    let sources = f.sources(&text, &[], &[]);
    std::fs::set_permissions(&sources.file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let report = crate::config::load_client(&sources).unwrap().report;
    let lines: Vec<String> = f
        .lines(&report)
        .into_iter()
        .map(|l| l.replace("$DIR/conduit.toml", "$F"))
        .collect();
    assert_eq!(
        lines,
        [
            "warning: alerts.webhook: $F holds a secret and is readable by group or others \
             (mode 0644); run `chmod 600 $F` or pass the URL in CONDUIT_ALERTS_WEBHOOK ($F:10)"
        ]
    );
}

/// A token with whitespace at an end (a newline kept from the file it came from)
/// is refused on either side, from the file or the environment, without showing it.
#[test]
fn a_token_with_whitespace_at_an_end_is_an_error() {
    let f = Fixture::new();
    let why = "begins or ends with whitespace (a newline kept from the file it was read \
               from?), which would be part of the token: remove it (write the file with \
               printf '%s', or strip it with tr -d '\\n')";
    let text = f.client_text("[security]\ntoken = \"s3cret\\n\"\n");
    assert_eq!(
        check(&f, &text),
        [format!("error: security.token: {why} ($F:10)")]
    );
    let text = f.client_text("[security]\ntoken = \"s3cret\"\n");
    assert_eq!(check(&f, &text), none());
    std::fs::write(f.home.authorized_clients(), format!("{}\n", f.router_key)).unwrap();
    let text = "[router]\nallow = [\"10.2.0.2:80\"]\n";
    assert_eq!(
        router(&f, text, &[("CONDUIT_ROUTER_TOKEN", " s3cret")]),
        [format!(
            "error: router.token: {why} (env CONDUIT_ROUTER_TOKEN)"
        )]
    );
    assert_eq!(crate::config::token_problem("s3cret"), None);
    assert_eq!(
        crate::config::token_problem("s3\u{1}cret").as_deref(),
        Some("holds the control character '\\u{1}'; write the value without it")
    );
}

#[test]
fn webhook_urls_need_a_scheme_a_host_and_a_real_port() {
    use crate::config::webhook_url;
    for good in [
        "https://h/x",
        "http://10.0.0.1:8080/hook",
        "https://[::1]:443/",
    ] {
        assert_eq!(webhook_url(good), Ok(()), "{good}");
    }
    for bad in [
        "h/x",
        "ftp://h/x",
        "http://h:99999/x",
        "http://h:0/x",
        "https:///x",
    ] {
        assert_eq!(
            webhook_url(bad),
            Err(
                "not an http:// or https:// URL with a host (and a port 1-65535, if any); give \
                 the full webhook URL"
                    .to_owned()
            ),
            "{bad}"
        );
    }
}

/// The all-zero key the example files hold is refused inline and in a `.pub` file.
#[test]
fn the_placeholder_router_key_is_refused_inline_and_in_a_file() {
    let f = Fixture::new();
    let zeros = format!("ed25519:{}=", "A".repeat(43));
    let want = "error: router.public_key: is still the placeholder `conduit config init` \
                wrote (all zeros), not a key: paste the router's public key (what `conduit \
                init --name router` printed on the router; `conduit keys show --name router` \
                there prints it again) ($F:3)";
    let inline = f.client_text("").replace(&f.router_key, &zeros);
    assert_eq!(check(&f, &inline), [want]);
    let file = f.path("router.pub");
    std::fs::write(&file, format!("{zeros} router\n")).unwrap();
    let in_file = f
        .client_text("")
        .replace(&f.router_key, file.to_str().unwrap());
    assert_eq!(check(&f, &in_file), [want]);
}
