//! Key files, pins, known routers and the authorized-clients file, with real files
//! in a temporary directory.

use std::time::SystemTime;

use super::*;

#[test]
fn a_rotation_adds_the_next_key_and_dates_the_old_one() {
    let [a, b, c] = [(); 3].map(|()| KeyPair::generate().unwrap().public());
    let text = format!("# team\n{a} laptop\nexpires=2030-01-01 {b} old\n");
    let now = humantime::parse_rfc3339("2027-01-01T03:04:05Z").unwrap();
    let t = humantime::parse_rfc3339("2027-01-02T03:04:05Z").unwrap();
    assert_eq!(
        rotate_authorized(&text, &a, &c, "laptop", now, t).unwrap(),
        format!(
            "# team\nexpires=2027-01-02T03:04:05Z {a} laptop\n{c} laptop\n\
             expires=2030-01-01 {b} old\n"
        )
    );
    // A key being phased out is not rotated: that would outlive its expiry.
    assert_eq!(
        rotate_authorized(&text, &b, &c, "old", now, t).unwrap_err(),
        format!(
            "key {b} is already set to expire at 2030-01-01T00:00:00Z in \
             authorized_clients; it is not rotated again (a tunnel that rotated it uses \
             the new key once it reconnects; to rotate a key whose expires= was set by \
             hand, remove that expires= from its line first)"
        )
    );
    // Lines whose time has passed go.
    let later = humantime::parse_rfc3339("2031-01-01T00:00:00Z").unwrap();
    let soon = later + std::time::Duration::from_secs(60);
    assert_eq!(
        rotate_authorized(&text, &a, &c, "laptop", later, soon).unwrap(),
        format!("# team\nexpires=2031-01-01T00:01:00Z {a} laptop\n{c} laptop\n")
    );
    assert_eq!(
        rotate_authorized(&text, &c, &a, "", now, t).unwrap_err(),
        format!("key {a} is already authorized")
    );
    let d = KeyPair::generate().unwrap().public();
    assert_eq!(
        rotate_authorized(&text, &c, &d, "", now, t).unwrap_err(),
        format!("key {c} is not in the authorized-clients file (was it removed meanwhile?)")
    );
}

fn home() -> (tempfile::TempDir, Home) {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path().to_owned());
    (dir, home)
}

/// Root writing a service file for the user the service runs as checks the files
/// that user will read: theirs (or root's) pass, another's do not.
#[test]
fn files_of_trusted_keys_are_checked_for_the_user_who_reads_them() {
    let p = Path::new("/srv/authorized_clients");
    let what = "the authorized clients file";
    assert!(owned_by_reader(p, 1000, what, 1000, None).is_ok());
    assert!(owned_by_reader(p, 0, what, 1000, None).is_ok());
    assert!(owned_by_reader(p, 994, what, 0, Some(994)).is_ok());
    assert!(owned_by_reader(p, 0, what, 0, Some(994)).is_ok());
    assert_eq!(
        owned_by_reader(p, 994, what, 0, None)
            .unwrap_err()
            .to_string(),
        "the authorized clients file /srv/authorized_clients belongs to another user (uid \
         994), who could put their own key in it; this process runs as uid 0: give it a file \
         owned by root (`chown`)"
    );
    assert_eq!(
        owned_by_reader(p, 1000, what, 0, Some(994))
            .unwrap_err()
            .to_string(),
        "the authorized clients file /srv/authorized_clients belongs to another user (uid \
         1000), who could put their own key in it; the service runs as uid 994: give it a \
         file owned by uid 994 or root (`chown`)"
    );
}

#[cfg(unix)]
#[test]
fn files_of_trusted_keys_that_anyone_may_write_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, home) = home();
    let pair = generate(&home, "client", false).unwrap();
    let pub_path = home.public_key("client");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pub_path), 0o644, "whatever the umask");
    let auth = home.authorized_clients();
    std::fs::write(&auth, format!("{} client\n", pair.public())).unwrap();
    for (path, what) in [
        (&auth, "the authorized clients file"),
        (&pub_path, "the public key file"),
    ] {
        let refusal = || match what {
            "the public key file" => load_public(path.to_str().unwrap(), "key").unwrap_err(),
            _ => load_authorized_file(path).map(|_| ()).unwrap_err(),
        };
        let p = path.display();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(
            refusal().to_string(),
            format!(
                "{what} {p} is writable by every user of this host (mode 0666), who could put \
                 their own key in it; run `chmod go-w {p}`"
            )
        );
        // Group-writable too: anyone in its group could add a key.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert_eq!(
            refusal().to_string(),
            format!(
                "{what} {p} is writable by its group (mode 0664), who could put their own key \
                 in it; run `chmod g-w {p}`"
            )
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Owned by another user (not root): refused; only root can try it here.
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(path, Some(65534), None).unwrap();
            assert_eq!(
                refusal().to_string(),
                format!(
                    "{what} {p} belongs to another user (uid 65534), who could put their own \
                     key in it; this process runs as uid 0: give it a file owned by root \
                     (`chown`)"
                )
            );
            std::os::unix::fs::chown(path, Some(0), None).unwrap();
        }
    }
    let names = load_authorized_file(&auth).unwrap().names;
    assert_eq!(
        names.get(&pair.public()).map(String::as_str),
        Some("client")
    );
}

#[cfg(unix)]
#[test]
fn a_replaced_file_behind_a_link_is_the_link_s_target() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("shared");
    std::fs::write(&target, "old\n").unwrap();
    let link = dir.path().join("authorized_clients");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    replace_file(&link, b"new\n").unwrap();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "new\n");
    assert!(!dir.path().join("shared.tmp").exists());
}

/// A file rewritten in place of another (a rotated key behind a link, a rewritten
/// `authorized_clients`) keeps that file's owner and group, where this process may
/// give them (as root; elsewhere the test has nothing to show).
#[cfg(unix)]
#[test]
fn rewritten_files_keep_their_owner() {
    use std::os::unix::fs::MetadataExt;
    let (_d, home) = home();
    generate(&home, "client", false).unwrap();
    let key = home.private_key("client");
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("authorized_clients");
    std::fs::write(&auth, "# none yet\n").unwrap();
    let (uid, gid) = (54_321, 54_322);
    if std::os::unix::fs::chown(&key, Some(uid), Some(gid)).is_err() {
        return;
    }
    std::os::unix::fs::chown(&auth, Some(uid), Some(gid)).unwrap();
    generate(&home, "client", true).unwrap();
    replace_file(&auth, b"# still none\n").unwrap();
    for path in [&key, &auth] {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", path.display());
    }
    assert_eq!(std::fs::read_to_string(&auth).unwrap(), "# still none\n");
}

#[test]
fn generate_writes_a_private_key_only_its_owner_can_read() {
    let (_d, home) = home();
    let pair = generate(&home, "client", false).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.private_key("client"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let pub_line = std::fs::read_to_string(home.public_key("client")).unwrap();
    assert_eq!(pub_line, format!("{} client\n", pair.public()));
    let loaded = load_private(&home.private_key("client"), "client").unwrap();
    assert_eq!(loaded.public(), pair.public());
    let from_file = load_public(home.public_key("client").to_str().unwrap(), "key").unwrap();
    assert_eq!(from_file, pair.public());
    // The .pub file's line, name and all (`--router-key "$(cat router.pub)"`).
    assert_eq!(load_public(&pub_line, "key").unwrap(), pair.public());
    assert_eq!(load_pinned(&pub_line, "key").unwrap(), [pair.public()]);
    let next = KeyPair::generate().unwrap().public();
    let both = format!("{}{next} client-next", pub_line);
    assert_eq!(load_pinned(&both, "key").unwrap(), [pair.public(), next]);

    // Files a Windows editor saved with a byte-order mark at the start read the same.
    for path in [home.private_key("client"), home.public_key("client")] {
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("\u{feff}{text}")).unwrap();
    }
    let loaded = load_private(&home.private_key("client"), "client").unwrap();
    assert_eq!(loaded.public(), pair.public());
    let from_file = load_pinned(home.public_key("client").to_str().unwrap(), "key").unwrap();
    assert_eq!(from_file, [pair.public()]);
    let authorized = parse_authorized_file(&format!("\u{feff}expires=2030-01-01 {pub_line}"));
    assert_eq!(
        authorized.unwrap().names.into_iter().collect::<Vec<_>>(),
        [(pair.public(), "client".to_owned())]
    );
}

#[test]
fn a_directory_or_a_public_key_given_as_the_private_key_is_named_before_its_mode() {
    let (d, home) = home();
    generate(&home, "router", false).unwrap();
    let keys = d.path().join("keys");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let err = load_private(&keys, "router").unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "private key {} is a directory; give the private key file in it, {}",
            keys.display(),
            home.private_key("router").display()
        )
    );
    let err = load_private(d.path(), "router").unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "private key {} is a directory; give the private key file in it, {}",
            d.path().display(),
            home.private_key("router").display()
        )
    );
    let err = load_private(&keys, "client").unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "private key {} is a directory; give the private key file, e.g. \
             $CONDUIT_HOME/keys/client.key (`conduit init --name client` makes one)",
            keys.display()
        )
    );
    // router.pub is mode 0644: it is named a public key, not told to be chmodded.
    let public = home.public_key("router");
    let err = load_private(&public, "router").unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{} is a public key, not a private key; give the .key file beside it, {}",
            public.display(),
            home.private_key("router").display()
        )
    );
    let alone = d.path().join("copied.pub");
    std::fs::copy(&public, &alone).unwrap();
    let err = load_private(&alone, "router").unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{} is a public key, not a private key; give the private key file instead \
             (router.key, which `conduit init --name router` writes beside router.pub)",
            alone.display()
        )
    );
}

#[test]
fn a_deleted_public_key_is_written_again_from_the_private_one() {
    let (_d, home) = home();
    let pair = generate(&home, "r", false).unwrap();
    let line = std::fs::read_to_string(home.public_key("r")).unwrap();
    assert_eq!(restore_named_public(&home, "r").unwrap(), None);
    std::fs::remove_file(home.public_key("r")).unwrap();
    assert_eq!(
        restore_named_public(&home, "r").unwrap(),
        Some(home.public_key("r"))
    );
    assert_eq!(std::fs::read_to_string(home.public_key("r")).unwrap(), line);
    assert_eq!(load_named_public(&home, "r").unwrap(), pair.public());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.public_key("r"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }
    // Neither file: nothing to restore, and `keys show` says to create the key.
    assert_eq!(restore_named_public(&home, "none").unwrap(), None);
}

#[test]
fn generate_refuses_to_overwrite_without_force() {
    let (_d, home) = home();
    let first = generate(&home, "router", false).unwrap();
    let err = generate(&home, "router", false).unwrap_err().to_string();
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    let second = generate(&home, "router", true).unwrap();
    assert_ne!(first.public(), second.public());
    // Only the .pub there: named as what exists.
    std::fs::write(
        home.public_key("lone"),
        format!("{} lone\n", first.public()),
    )
    .unwrap();
    assert_eq!(
        generate(&home, "lone", false).unwrap_err().to_string(),
        format!(
            "a key named \"lone\" already exists at {}; use --force to replace it (every \
             router or client that trusts the old key must then be updated)",
            home.public_key("lone").display()
        )
    );
}

#[test]
fn inits_at_once_make_one_key_and_its_own_pub() {
    let (_d, home) = home();
    let made: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| generate(&home, "race", false)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let won: Vec<&KeyPair> = made.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{made:?}");
    let on_disk = load_private(&home.private_key("race"), "race").unwrap();
    assert_eq!(on_disk.public(), won[0].public());
    assert_eq!(load_named_public(&home, "race").unwrap(), won[0].public());
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(home.keys())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Two keys pasted into one file are refused, not the first one taken.
#[test]
fn a_key_file_of_two_keys_is_refused() {
    let (_d, home) = home();
    generate(&home, "a", false).unwrap();
    generate(&home, "b", false).unwrap();
    let path = home.private_key("a");
    let both = std::fs::read_to_string(&path).unwrap()
        + &std::fs::read_to_string(home.private_key("b")).unwrap();
    std::fs::write(&path, both).unwrap();
    assert_eq!(
        load_private(&path, "a").unwrap_err().to_string(),
        format!(
            "private key {} holds 2 PEM blocks, where a key file holds one key: keep the key \
             this host is known by and move the other to a file of its own",
            path.display()
        )
    );
}

#[cfg(unix)]
#[test]
fn a_private_key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, home) = home();
    generate(&home, "client", false).unwrap();
    let path = home.private_key("client");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = load_private(&path, "client").unwrap_err().to_string();
    assert!(
        err.contains("readable by group or others (mode 0644)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("chmod 600 {}", path.display())),
        "{err}"
    );
    // Said as it is: a mode that lets the group only run or write it.
    for (mode, said) in [
        (0o610, "open to group or others (mode 0610)"),
        (0o620, "writable by group or others (mode 0620)"),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = load_private(&path, "client").unwrap_err().to_string();
        assert!(err.contains(said), "{err}");
    }
}

#[test]
fn a_router_is_pinned_to_every_key_its_pub_file_or_spec_names() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = [(); 3].map(|()| KeyPair::generate().unwrap().public());
    let file = dir.path().join("router.pub");
    std::fs::write(
        &file,
        format!("# the router\n{a} router\n\n{b} router-next\n"),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    assert_eq!(load_pinned(path, "k").unwrap(), [a, b]);
    assert_eq!(
        load_pinned(&format!("{c} | {path}"), "k").unwrap(),
        [c, a, b]
    );
    let pins = load_router_pins(&format!("{path},{c}"), "--router-key").unwrap();
    assert_eq!(pins, [vec![a, b], vec![c]]);

    let err = load_pinned(&format!("{c}||{path}"), "--router-key").unwrap_err();
    assert!(
        err.to_string()
            .ends_with("has an empty key; separate a router's keys with single `|`"),
        "{err}"
    );
    std::fs::write(&file, format!("{a} router\ned25519:garbage next\n")).unwrap();
    let err = load_pinned(path, "--router-key").unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("--router-key in {path}: ")),
        "{err}"
    );

    std::fs::write(&file, "# the router's key goes here\n\n").unwrap();
    let want = format!(
        "--router-key: {path} holds no key; give the .pub file `conduit init` wrote (a \
         line ed25519:…), or the key itself"
    );
    assert_eq!(
        load_pinned(path, "--router-key").unwrap_err().to_string(),
        want
    );
    assert_eq!(
        load_public(path, "--router-key").unwrap_err().to_string(),
        want
    );
}

#[test]
fn known_routers_keep_one_line_per_router_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("known_routers");
    let [a, b, c] = [(); 3].map(|()| KeyPair::generate().unwrap().public());
    let known = |keys: &[PublicKey], pin| KnownRouter {
        keys: keys.to_vec(),
        pin,
    };
    assert!(load_known_routers(&path).unwrap().is_empty());
    save_known_router(&path, "10.0.0.1:9999", &known(&[a, b], a)).unwrap();
    save_known_router(&path, "gw:9999", &known(&[c], c)).unwrap();
    // The router named other keys since: they replace its line.
    let text = save_known_router(&path, "10.0.0.1:9999", &known(&[b], a)).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert!(text.ends_with(&format!(
        "\n10.0.0.1:9999 {b} pin={a}\ngw:9999 {c} pin={c}\n"
    )));
    let all = load_known_routers(&path).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all["10.0.0.1:9999"], known(&[b], a));
    assert_eq!(all["gw:9999"], known(&[c], c));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A line that does not parse is skipped, not an error; so is one without the
    // pin it was learned under.
    let lines = format!("r:1 ed25519:nope pin={a}\n# c\nr:2\nr:3 {a}\nr:4 pin={a}\n");
    assert_eq!(parse_known_routers(&lines).len(), 0);
}

#[test]
fn known_routers_with_a_spoiled_line_or_writable_by_all_keep_their_other_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("known_routers");
    let [a, b] = [(); 2].map(|()| KeyPair::generate().unwrap().public());
    let known = |k: PublicKey| KnownRouter {
        keys: vec![k],
        pin: k,
    };
    save_known_router(&path, "r:1", &known(a)).unwrap();
    // Bytes that are not UTF-8 spoil their own line only: the others stay.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"\xff\xfe\n");
    std::fs::write(&path, &bytes).unwrap();
    save_known_router(&path, "r:2", &known(b)).unwrap();
    let all = load_known_routers(&path).unwrap();
    assert_eq!(
        (all["r:1"].clone(), all["r:2"].clone()),
        (known(a), known(b))
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Writable by every user: not trusted, and not rewritten either.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = format!(
            "known_routers {0} is writable by every user of this host (mode 0666), who could \
             put their own key in it; run `chmod go-w {0}`",
            path.display()
        );
        assert_eq!(load_known_routers(&path).unwrap_err().to_string(), err);
        let before = std::fs::read(&path).unwrap();
        assert_eq!(
            save_known_router(&path, "r:3", &known(a))
                .unwrap_err()
                .to_string(),
            err
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}

#[test]
fn tunnels_writing_known_routers_at_once_keep_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("known_routers");
    let key = KeyPair::generate().unwrap().public();
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let known = KnownRouter {
                    keys: vec![key],
                    pin: key,
                };
                save_known_router(&path, &format!("10.0.0.{i}:9999"), &known).unwrap();
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(load_known_routers(&path).unwrap().len(), 16);
}

#[test]
fn pins_that_name_files_are_made_absolute() {
    let k = KeyPair::generate().unwrap().public().to_string();
    assert!(!pins_name_a_file(&k));
    assert!(!pins_name_a_file(&format!("{k} | {k}")));
    assert!(pins_name_a_file(&format!("{k}|router.pub")));
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(
        absolute_pins(&format!("{k} | keys/router.pub|/etc/r.pub")).unwrap(),
        format!("{k}|{}|/etc/r.pub", cwd.join("keys/router.pub").display())
    );
}

#[test]
fn missing_and_garbage_keys_say_what_to_do() {
    let (_d, home) = home();
    let err = load_private(&home.private_key("client"), "client")
        .unwrap_err()
        .to_string();
    assert!(err.contains("conduit init --name client"), "{err}");
    Home::ensure_private_dir(&home.keys()).unwrap();
    write_private(&home.private_key("x"), b"hello").unwrap();
    let err = load_private(&home.private_key("x"), "x")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{} is not a Conduit private key: it is not a PEM private key \
             (-----BEGIN PRIVATE KEY-----); make one with `conduit init --name x` \
             (a PKCS#8 Ed25519 key in PEM) or pass another --key PATH",
            home.private_key("x").display()
        )
    );
    let err = load_public("/nonexistent/router.pub", "--router-key")
        .unwrap_err()
        .to_string();
    assert!(err.contains("neither a public key"), "{err}");
}

#[test]
fn authorized_clients_allow_comments_and_name_bad_lines() {
    let a = KeyPair::generate().unwrap().public();
    let b = KeyPair::generate().unwrap().public();
    let text = format!("# laptops\n{a} ana\n\n  {b}\n");
    let keys = parse_authorized(&text).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[&a], "ana");
    let err = parse_authorized(&format!("{a}\nssh-ed25519 AAAA\n")).unwrap_err();
    assert_eq!(err.0, 2);
}

#[test]
fn keys_being_rotated_out_carry_an_expiry_time() {
    let a = KeyPair::generate().unwrap().public();
    let b = KeyPair::generate().unwrap().public();
    let text = format!("expires=2026-12-01T18:30:00Z {a} old laptop\n{b} new laptop\n");
    let f = parse_authorized_file(&text).unwrap();
    assert_eq!(f.names[&a], "old laptop");
    assert_eq!(f.names[&b], "new laptop");
    assert_eq!(
        f.expires[&a],
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_149_800)
    );
    assert!(!f.expires.contains_key(&b));
    let date = parse_authorized_file(&format!("expires=2026-12-01 {a}\n")).unwrap();
    assert_eq!(
        date.expires[&a],
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_083_200)
    );
    assert_eq!(
        parse_authorized_file(&format!("{b}\nexpires=tomorrow {a}\n")).unwrap_err(),
        (
            2,
            "expires=tomorrow is not a UTC time; write it as 2026-12-01T18:00:00Z or \
             2026-12-01"
                .to_owned()
        )
    );
    assert_eq!(
        parse_authorized_file("expires=2026-12-01\n").unwrap_err(),
        (1, "expires= must be followed by a key".to_owned())
    );
    // Every bad line is named, the first one's number first.
    assert_eq!(
        parse_authorized_file(&format!("{a}\nnot a key\n{b}\nexpires=soon {b}\n")).unwrap_err(),
        (
            2,
            "invalid public key \"not\": expected the form ed25519:<base64>, as `conduit \
             init` prints; line 4: expires=soon is not a UTC time; write it as \
             2026-12-01T18:00:00Z or 2026-12-01"
                .to_owned()
        )
    );
    // Listed twice (is it leaving or not?): an error naming both lines.
    assert_eq!(
        parse_authorized_file(&format!("expires=2020-01-01 {a} old\n{b}\n{a} old\n")).unwrap_err(),
        (
            3,
            format!(
                "key {a} is listed on line 1 already; keep one line per key (with expires= on \
                 it, if it is to leave)"
            )
        )
    );
}

#[test]
fn key_names_are_checked() {
    let (_d, home) = home();
    for bad in ["", "../x", ".hidden", "a/b", "-x", &"k".repeat(65)] {
        let want = format!(
            "invalid key name {bad:?}: use 1-64 letters, digits, '-', '_' or '.' (not starting \
             with '.' or '-')"
        );
        let err = |r: Result<_, Error>| r.err().map(|e| e.to_string());
        assert_eq!(
            err(generate(&home, bad, false).map(drop)),
            Some(want.clone())
        );
        assert_eq!(err(load_named_public(&home, bad).map(drop)), Some(want));
    }
    // A good name is not refused for its shape.
    let made = generate(&home, "edge-1.b_2", false).unwrap();
    assert_eq!(
        load_named_public(&home, "edge-1.b_2").unwrap(),
        made.public()
    );
}

/// A `.pub` that is not the private key's (copied over from another key) is refused
/// with both keys named, not shown as this key's.
#[test]
fn a_public_key_file_of_another_key_is_refused() {
    let (_d, home) = home();
    let mine = generate(&home, "mine", false).unwrap();
    let other = generate(&home, "other", false).unwrap();
    std::fs::copy(home.public_key("other"), home.public_key("mine")).unwrap();
    let Err(Error::Config(why)) = load_named_public(&home, "mine") else {
        panic!("another key's .pub was shown as this one's");
    };
    assert_eq!(
        why,
        format!(
            "{} holds {}, which is not the public key of {} ({}): delete {} and run this \
             again: it is written anew from the private key",
            home.public_key("mine").display(),
            other.public(),
            home.private_key("mine").display(),
            mine.public(),
            home.public_key("mine").display()
        )
    );
    assert_eq!(load_named_public(&home, "other").unwrap(), other.public());
}

/// A `.pub` written by `init` (or a rotation) replaces a link planted at its path,
/// never writing through it into the file it points to.
#[cfg(unix)]
#[test]
fn a_link_planted_at_a_public_key_path_is_replaced_not_followed() {
    let (dir, home) = home();
    Home::ensure_private_dir(&home.keys()).unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "mine\n").unwrap();
    std::os::unix::fs::symlink(&victim, home.public_key("client")).unwrap();
    // Refused as a key that exists; forced, the link is replaced.
    assert!(generate(&home, "client", false).is_err());
    let pair = generate(&home, "client", true).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "mine\n");
    let meta = std::fs::symlink_metadata(home.public_key("client")).unwrap();
    assert!(meta.is_file(), "the link is still there");
    assert_eq!(
        std::fs::read_to_string(home.public_key("client")).unwrap(),
        format!("{} client\n", pair.public())
    );
}

/// A private key, or an ssh key, given where a public key must be is named as such,
/// with what to give instead; it was `invalid public key "-----BEGIN"`.
#[test]
fn a_private_key_or_an_ssh_key_given_as_a_public_key_is_named() {
    let (d, home) = home();
    generate(&home, "router", false).unwrap();
    let key = home.private_key("router");
    assert_eq!(
        load_public(key.to_str().unwrap(), "--router-key")
            .unwrap_err()
            .to_string(),
        format!(
            "--router-key: {} is a private key (-----BEGIN PRIVATE KEY-----), not a public \
             key; give the .pub file beside it, {}. A private key stays on its own host: a \
             router's .key is never copied to its clients",
            key.display(),
            home.public_key("router").display()
        )
    );
    let ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv6 ana@laptop";
    let why = "invalid public key \"ssh-ed25519\": an OpenSSH key; Conduit's keys are \
               `ed25519:…` lines as `conduit init` prints them, not ssh keys";
    assert_eq!(
        load_public(ssh, "--router-key").unwrap_err().to_string(),
        format!("--router-key: {why}")
    );
    let file = d.path().join("id_ed25519.pub");
    std::fs::write(&file, format!("{ssh}\n")).unwrap();
    assert_eq!(
        load_public(file.to_str().unwrap(), "--router-key")
            .unwrap_err()
            .to_string(),
        format!("--router-key in {}: {why}", file.display())
    );
}
