//! `conduit config show`: the effective configuration, every value with its origin.
//!
//! Values come from serializing the typed tree, so what is shown is what Conduit will
//! use (defaults filled in, relative paths resolved), and secrets, which serialize as
//! `***`, cannot leak whatever the format.

use serde::Serialize;
use toml::{Table, Value};

use super::schema::{Key, Schema};
use super::{Loaded, Origin, Role};

/// How `show` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// TOML-like lines, each value followed by `# origin`.
    #[default]
    Text,
    /// One JSON object: `{"file": …, "router": {"host": {"value": …, "origin": …}}, …}`.
    Json,
}

/// One `[section]` or `[[tunnels]]` table to print.
struct Block {
    header: String,
    /// JSON: the section name, or `None` for a tunnel.
    section: Option<&'static str>,
    rows: Vec<Row>,
}

struct Row {
    key: &'static str,
    value: Option<Value>,
    origin: Origin,
}

pub(crate) fn render<T: Serialize>(role: Role, loaded: &Loaded<T>, format: Format) -> String {
    let tree = match Value::try_from(&loaded.config) {
        Ok(Value::Table(t)) => t,
        // The tree is plain data; serializing it cannot fail.
        _ => Table::new(),
    };
    let blocks = blocks(role, &tree, loaded);
    match format {
        Format::Text => text(&loaded.file.display().to_string(), &blocks),
        Format::Json => json(
            &loaded.file.display().to_string(),
            &blocks,
            Schema::of(role).tunnels.is_some(),
        ),
    }
}

fn blocks<T>(role: Role, tree: &Table, loaded: &Loaded<T>) -> Vec<Block> {
    let schema = Schema::of(role);
    let rows = |prefix: &str, table: Option<&Table>, keys: &'static [Key]| -> Vec<Row> {
        keys.iter()
            .map(|k| Row {
                key: k.name,
                value: table.and_then(|t| t.get(k.name)).map(|v| match k.secret {
                    // Already `***` from the tree's serializer; kept here too so no
                    // future secret field can slip through unmasked.
                    true => Value::String("***".into()),
                    false => v.clone(),
                }),
                origin: loaded.origins.get(&format!("{prefix}.{}", k.name)).clone(),
            })
            .collect()
    };
    let mut out: Vec<Block> = schema
        .sections
        .iter()
        .map(|s| Block {
            header: format!("[{}]", s.name),
            section: Some(s.name),
            rows: rows(s.name, tree.get(s.name).and_then(Value::as_table), s.keys),
        })
        .collect();
    if let Some(keys) = schema.tunnels {
        let tunnels = tree.get("tunnels").and_then(Value::as_array);
        for (i, t) in tunnels.into_iter().flatten().enumerate() {
            out.push(Block {
                header: "[[tunnels]]".into(),
                section: None,
                rows: rows(&format!("tunnels[{i}]"), t.as_table(), keys),
            });
        }
    }
    out
}

fn text(file: &str, blocks: &[Block]) -> String {
    let mut s = format!(
        "# effective configuration from {file}; each value's origin follows it, secrets \
         print as ***\n"
    );
    for b in blocks {
        s.push('\n');
        s.push_str(&b.header);
        s.push('\n');
        let lines: Vec<(String, String)> = b
            .rows
            .iter()
            .map(|r| {
                let v = r
                    .value
                    .as_ref()
                    .map_or("(not set)".into(), Value::to_string);
                (format!("{} = {v}", r.key), r.origin.to_string())
            })
            .collect();
        let width = lines
            .iter()
            .map(|(l, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        for (line, origin) in lines {
            s.push_str(&format!("{line:width$}  # {origin}\n"));
        }
    }
    s
}

fn json(file: &str, blocks: &[Block], has_tunnels: bool) -> String {
    use serde_json::{Map, Value as Json, json};
    let mut root = Map::new();
    root.insert("file".into(), Json::String(file.into()));
    let mut tunnels = Vec::new();
    for b in blocks {
        let mut obj = Map::new();
        for r in &b.rows {
            let value = r
                .value
                .as_ref()
                .and_then(|v| serde_json::to_value(v).ok())
                .unwrap_or(Json::Null);
            obj.insert(
                r.key.into(),
                json!({ "value": value, "origin": r.origin.to_string() }),
            );
        }
        match b.section {
            Some(name) => {
                root.insert(name.into(), Json::Object(obj));
            }
            None => tunnels.push(Json::Object(obj)),
        }
    }
    if has_tunnels {
        root.insert("tunnels".into(), Json::Array(tunnels));
    }
    let mut out = serde_json::to_string_pretty(&Json::Object(root)).unwrap_or_default();
    out.push('\n');
    out
}
