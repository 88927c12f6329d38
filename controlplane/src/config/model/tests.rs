//! The typed tree against the schema, secrets and defaults.

use toml::{Table, Value};

use super::*;
use crate::config::Role;
use crate::config::schema::{Kind, Schema};

fn sample(kind: Kind) -> Value {
    match kind {
        Kind::Str | Kind::Path | Kind::KeyOrPath => Value::String("x".into()),
        Kind::Int { min, .. } => Value::Integer(min),
        Kind::Bool => Value::Boolean(true),
        Kind::Choice(words) => Value::String(words[0].into()),
        Kind::List | Kind::KeyList => Value::Array(vec![Value::String("x".into())]),
        Kind::Suites => Value::Array(vec![Value::String("TLS_AES_256_GCM_SHA384".into())]),
    }
}

fn full(role: Role) -> Table {
    let schema = Schema::of(role);
    let mut doc = Table::new();
    for s in schema.sections {
        let t: Table = s
            .keys
            .iter()
            .map(|k| (k.name.to_owned(), sample(k.kind)))
            .collect();
        doc.insert(s.name.into(), Value::Table(t));
    }
    if let Some(keys) = schema.tunnels {
        let t: Table = keys
            .iter()
            .map(|k| (k.name.to_owned(), sample(k.kind)))
            .collect();
        doc.insert("tunnels".into(), Value::Array(vec![Value::Table(t)]));
    }
    doc
}

fn round_trip(role: Role, doc: Table) -> Table {
    let v = Value::Table(doc);
    let back = match role {
        Role::Client => Value::try_from(v.try_into::<Config>().unwrap()),
        Role::Router => Value::try_from(v.try_into::<RouterConfig>().unwrap()),
    };
    match back.unwrap() {
        Value::Table(t) => t,
        other => panic!("{other:?}"),
    }
}

/// The schema and the typed tree name the same keys: every schema key deserializes
/// (deny_unknown_fields would refuse one the tree lacks), and a tree with every
/// field set serializes to exactly the schema's keys (a field the schema lacks
/// would show up).
#[test]
fn schema_and_typed_tree_agree() {
    for role in [Role::Client, Role::Router] {
        let doc = full(role);
        let back = round_trip(role, doc.clone());
        let keys = |t: &Table| -> Vec<String> {
            let mut v = Vec::new();
            for (s, inner) in t {
                match inner {
                    Value::Table(i) => v.extend(i.keys().map(|k| format!("{s}.{k}"))),
                    Value::Array(a) => {
                        for item in a {
                            v.extend(
                                item.as_table()
                                    .unwrap()
                                    .keys()
                                    .map(|k| format!("{s}[].{k}")),
                            );
                        }
                    }
                    _ => v.push(s.clone()),
                }
            }
            v.sort();
            v
        };
        assert_eq!(keys(&back), keys(&doc), "{role:?}");
    }
}

/// Every word a `Choice` accepts is a variant of the typed enum.
#[test]
fn every_choice_word_deserializes() {
    let schema = Schema::of(Role::Client);
    for s in schema.sections {
        for k in s.keys {
            if let Kind::Choice(words) = k.kind {
                for w in words {
                    let doc: Table =
                        toml::from_str(&format!("[{}]\n{} = {w:?}", s.name, k.name)).unwrap();
                    let back = round_trip(Role::Client, doc);
                    assert_eq!(back[s.name][k.name].as_str(), Some(*w));
                }
            }
        }
    }
}

#[test]
fn secrets_serialize_masked() {
    let mut c = Config::default();
    c.security.token = Some(Secret::new("hunter2".into()));
    let text = toml::to_string(&c).unwrap();
    assert!(text.contains("token = \"***\""), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn defaults_fill_from_home() {
    let home = Home::at("/h".into());
    let mut c = Config::default();
    c.fill_defaults(&home);
    assert_eq!(
        c.security.private_key_path,
        Some(PathBuf::from("/h/keys/client.key"))
    );
    let mut r = RouterConfig::default();
    r.fill_defaults(&home);
    assert_eq!(
        r.router.private_key_path,
        Some(PathBuf::from("/h/keys/router.key"))
    );
    assert_eq!(
        r.router.authorized_keys,
        Some(PathBuf::from("/h/authorized_clients"))
    );
    assert_eq!(r.router.bind, "0.0.0.0:9999");
    assert_eq!(PerformanceConfig::default().dataplane_options().workers, 0);
}
