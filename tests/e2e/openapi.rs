//! Keeps `docs/api/openapi.json` true: the answers of a running router are checked
//! against the document's schemas by a small validator for the subset the document
//! uses (`type`, `properties`, `required`, `additionalProperties`, `items`, `enum`,
//! `const`, `allOf`, `oneOf`, `$ref`, numeric `minimum`/`maximum`).

use serde_json::Value;

pub struct Doc {
    pub root: Value,
}

impl Doc {
    pub fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api/openapi.json");
        let text = std::fs::read_to_string(path).expect("read docs/api/openapi.json");
        Self {
            root: serde_json::from_str(&text).expect("openapi.json is JSON"),
        }
    }

    /// The documented paths.
    pub fn paths(&self) -> Vec<String> {
        self.root["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect()
    }

    /// The schema of a GET answer of `path` with `status` and `media` type.
    pub fn response_schema(&self, path: &str, status: u16, media: &str) -> Value {
        let mut r = self.root["paths"][path]["get"]["responses"][status.to_string()].clone();
        if let Some(reference) = r["$ref"].as_str() {
            r = self.resolve(reference).clone();
        }
        let s = r["content"][media]["schema"].clone();
        assert!(
            !s.is_null(),
            "no {status} {media} answer documented for GET {path}"
        );
        s
    }

    fn resolve(&self, reference: &str) -> &Value {
        let mut v = &self.root;
        for part in reference.trim_start_matches("#/").split('/') {
            v = &v[part];
        }
        assert!(!v.is_null(), "dangling $ref {reference}");
        v
    }

    /// Checks `value` against `schema`; returns every mismatch with its JSON path.
    pub fn check(&self, schema: &Value, value: &Value) -> Vec<String> {
        let mut errors = Vec::new();
        self.walk(schema, value, "$", &mut errors);
        errors
    }

    fn walk(&self, schema: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
        if let Some(r) = schema["$ref"].as_str() {
            return self.walk(self.resolve(r), v, at, out);
        }
        if let Some(all) = schema["allOf"].as_array() {
            for s in all {
                self.walk(s, v, at, out);
            }
        }
        if let Some(one) = schema["oneOf"].as_array() {
            let ok = one
                .iter()
                .filter(|s| {
                    let mut e = Vec::new();
                    self.walk(s, v, at, &mut e);
                    e.is_empty()
                })
                .count();
            if ok != 1 {
                out.push(format!("{at}: matches {ok} of oneOf, not exactly 1: {v}"));
            }
        }
        if let Some(c) = schema.get("const")
            && c != v
        {
            out.push(format!("{at}: expected {c}, found {v}"));
        }
        if let Some(e) = schema["enum"].as_array()
            && !e.contains(v)
        {
            out.push(format!("{at}: {v} is not one of {e:?}"));
        }
        if let Some(t) = schema.get("type") {
            let types: Vec<&str> = match t {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !types.iter().any(|t| is_type(t, v)) {
                out.push(format!("{at}: expected {types:?}, found {v}"));
                return;
            }
        }
        if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), v.as_f64())
            && n < min
        {
            out.push(format!("{at}: {n} is below {min}"));
        }
        if let (Some(max), Some(n)) = (schema["maximum"].as_f64(), v.as_f64())
            && n > max
        {
            out.push(format!("{at}: {n} is above {max}"));
        }
        if let Value::Object(o) = v {
            let props = schema["properties"].as_object();
            for req in schema["required"].as_array().into_iter().flatten() {
                let k = req.as_str().unwrap_or_default();
                if !o.contains_key(k) {
                    out.push(format!("{at}: missing {k}"));
                }
            }
            for (k, val) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => self.walk(s, val, &format!("{at}.{k}"), out),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            out.push(format!("{at}: {k} is not documented"))
                        }
                        Some(s @ Value::Object(_)) => self.walk(s, val, &format!("{at}.{k}"), out),
                        _ => {}
                    },
                }
            }
        }
        if let (Value::Array(items), Some(s)) = (v, schema.get("items")) {
            for (i, item) in items.iter().enumerate() {
                self.walk(s, item, &format!("{at}[{i}]"), out);
            }
        }
    }
}

fn is_type(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "string" => v.is_string(),
        "integer" => v.is_u64() || v.is_i64(),
        "number" => v.is_number(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        _ => false,
    }
}

#[test]
fn the_validator_catches_drift() {
    let doc = Doc::load();
    let schema = serde_json::json!({"$ref": "#/components/schemas/Pagination"});
    let good = serde_json::json!({"page": 1, "per_page": 50, "total": 0, "total_pages": 0});
    assert_eq!(doc.check(&schema, &good), Vec::<String>::new());
    let bad = serde_json::json!({"page": 0, "per_page": 50, "total": "x", "extra": 1});
    assert_eq!(
        doc.check(&schema, &bad),
        vec![
            "$: missing total_pages",
            "$: extra is not documented",
            "$.page: 0 is below 1",
            "$.total: expected [\"integer\"], found \"x\"",
        ]
    );
}
