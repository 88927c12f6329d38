//! What the per-format tests share: one spec with arguments that need quoting in every
//! format, and the comparison with the reviewed files in `expected/`.

use std::path::PathBuf;

use super::*;

/// A tunnel on port 443 whose `--name` holds every character a format could choke on.
pub(super) fn sample_spec() -> ServiceSpec {
    ServiceSpec {
        name: "conduit-web".into(),
        description: "Conduit tunnel \"web\" (100% up)".into(),
        binary: "/usr/local/bin/conduit".into(),
        args: [
            "start",
            "--foreground",
            "--router",
            "router.example.com:9999",
            "--router-key",
            "ed25519:Ik6aDp1Rj7l1nB6ucjJJOXsn0sIBvlvSFwzC7xE0Zmk=",
            "--source",
            "10.2.0.2:8080",
            "--bind",
            "0.0.0.0:443",
            "--key",
            "/var/lib/conduit/keys/client.key",
            "--name",
            r#"web "blue" & it's 100% $HOME `id` \ <ü>"#,
        ]
        .map(String::from)
        .to_vec(),
        user: "conduit".into(),
        home: "/var/lib/conduit".into(),
        env: vec![("CONDUIT_LOG_FORMAT".into(), "json".into())],
        env_file: Some("/etc/conduit/conduit-web.env".into()),
        env_required: Vec::new(),
        privileged_port: true,
        writable: Vec::new(),
        reads: Vec::new(),
        drain: std::time::Duration::from_secs(30),
    }
}

/// Compares `actual` with `expected/NAME`, byte for byte. With `CONDUIT_BLESS=1` in
/// the environment it writes the file instead; review the diff before committing.
pub(super) fn check_expected(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/service/expected")
        .join(name);
    if std::env::var_os("CONDUIT_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with CONDUIT_BLESS=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the generated text:\n--- expected\n{expected}\n--- generated\n{actual}",
        path.display()
    );
}

#[test]
fn kinds_parse_and_print_by_their_flag_names() {
    for k in InitSystem::ALL {
        assert_eq!(k.to_string().parse::<InitSystem>().unwrap(), k);
    }
    assert_eq!("rc.d".parse::<InitSystem>().unwrap(), InitSystem::RcD);
    let e = "upstart".parse::<InitSystem>().unwrap_err().to_string();
    assert_eq!(
        e,
        "unknown service file kind \"upstart\": use systemd, openrc, launchd or rc.d"
    );
}

#[test]
fn default_env_files_follow_each_system() {
    assert_eq!(
        InitSystem::Systemd.default_env_file("conduit-web"),
        PathBuf::from("/etc/conduit/conduit-web.env")
    );
    assert_eq!(
        InitSystem::RcD.default_env_file("conduit-web"),
        PathBuf::from("/usr/local/etc/conduit/conduit-web.env")
    );
}

#[test]
fn shell_words_round_trip_through_sh() {
    let words = ["plain", "", "a b", "it's", r#""$HOME" `id` \"#, "100%", "ü"];
    let quoted = sh_words(words);
    assert_eq!(
        quoted,
        r#"plain '' 'a b' 'it'\''s' '"$HOME" `id` \' 100% 'ü'"#
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s\\n' {quoted}"))
        .output()
        .unwrap();
    let got: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(got, words);
}

/// A change that spoils a spec, and the error every format must report for it.
type Spoiled = (fn(&mut ServiceSpec), &'static str);

#[test]
fn bad_specs_are_refused_with_the_reason() {
    let cases: [Spoiled; 6] = [
        (
            |s| s.name = "-web".into(),
            "invalid service name \"-web\": use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ),
        (
            |s| s.user = "ana smith".into(),
            "invalid service user \"ana smith\": use an account name of letters, digits, '.', '_' or '-'",
        ),
        (
            |s| s.home = "conduit-home".into(),
            "the CONDUIT_HOME path conduit-home is relative: a service needs an absolute path",
        ),
        (
            |s| s.args.push("two\nlines".into()),
            "\"two\\nlines\" contains a control character, which service files cannot carry",
        ),
        (
            |s| s.env_file = Some("/etc/x\nExecStartPre=/bin/sh".into()),
            "the environment file path \"/etc/x\\nExecStartPre=/bin/sh\" holds the control \
             character '\\n', which service files cannot carry; give a path without it",
        ),
        (
            |s| s.env.push(("1X".into(), "y".into())),
            "invalid environment variable name \"1X\": use letters, digits and '_'",
        ),
    ];
    for (spoil, want) in cases {
        let mut spec = sample_spec();
        spoil(&mut spec);
        for kind in InitSystem::ALL {
            assert_eq!(render(kind, &spec).unwrap_err().to_string(), want, "{kind}");
        }
    }
}
