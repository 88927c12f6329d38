//! `conduit stats`: traffic of the tunnels on this machine (through each one's control
//! API), or, with `--router`, of a router's clients (through its REST API).

use anyhow::Result;
use conduit_controlplane::Home;
use conduit_controlplane::control::{self, pb};
use conduit_controlplane::registry::{Entry, Registry};
use futures::future::join_all;
use serde_json::{Value, json};

use super::config::plural;
use super::tunnels::{ANSWER_WITHIN, NO_ANSWER, bytes, survey, unreadable};
use super::{api_client, runtime, say};
use crate::args::{StatsArgs, StatsFormat};
use crate::exit::Usage;
use crate::output;

pub(crate) fn run(home: &Home, a: &StatsArgs) -> Result<()> {
    let rt = runtime(1)?;
    if a.api.router.is_some() {
        return rt.block_on(router(a));
    }
    rt.block_on(local(home, a))
}

async fn local(home: &Home, a: &StatsArgs) -> Result<()> {
    if a.format == StatsFormat::Prometheus {
        let registry = Registry::new(home);
        registry.readable().map_err(anyhow::Error::msg)?;
        let entries = registry.entries();
        let asked = join_all(entries.iter().map(metrics_of)).await;
        let mut texts = Vec::new();
        let mut unread = Vec::new();
        for (e, m) in entries.iter().zip(asked) {
            match m {
                Ok(text) => texts.push(text),
                Err(why) => unread.push((e.name.clone(), e.tunnel_id.clone(), why)),
            }
        }
        output::write(merge_expositions(&texts));
        return unreadable("stats", &unread);
    }
    let seen = survey(home, false).await?;
    let rows: Vec<Value> = seen
        .iter()
        .map(|s| match &s.status {
            Ok(st) => {
                let t = st.tunnel.clone().unwrap_or_default();
                json!({"id": s.entry.tunnel_id, "name": s.entry.name,
                       "bytes": {"in": st.bytes_in, "out": st.bytes_out},
                       "connections": {"active": t.active_connections, "total": st.connections_total,
                                       "failed": st.connections_failed}})
            }
            Err(e) => json!({"id": s.entry.tunnel_id, "name": s.entry.name, "error": e}),
        })
        .collect();
    let unread: Vec<(String, String, String)> = seen
        .iter()
        .filter_map(|s| {
            let why = s.status.as_ref().err()?;
            Some((s.entry.name.clone(), s.entry.tunnel_id.clone(), why.clone()))
        })
        .collect();
    if a.format == StatsFormat::Json {
        say(serde_json::to_string_pretty(&rows)?);
        return unreadable("stats", &unread);
    }
    if rows.is_empty() {
        say("no tunnels running");
        return Ok(());
    }
    let read: Vec<Value> = rows
        .into_iter()
        .filter(|r| r.get("error").is_none())
        .collect();
    if !read.is_empty() {
        table("TUNNEL", &read);
    }
    unreadable("stats", &unread)
}

/// One tunnel's metrics in the Prometheus text format.
async fn metrics_of(e: &Entry) -> Result<String, String> {
    let mut c = control::connect(&e.control_socket)
        .await
        .map_err(|err| err.to_string())?;
    match tokio::time::timeout(ANSWER_WITHIN, c.get_metrics(pb::MetricsRequest {})).await {
        Ok(Ok(m)) => Ok(m.into_inner().prometheus),
        Ok(Err(s)) => Err(format!("{NO_ANSWER}: {}", s.message())),
        Err(_) => Err(NO_ANSWER.to_owned()),
    }
}

async fn router(a: &StatsArgs) -> Result<()> {
    if a.history {
        if a.format == StatsFormat::Prometheus {
            return Err(Usage(
                "--history prints a table or JSON, not Prometheus text: drop --format \
                 prometheus, or --history to get the router's metrics"
                    .into(),
            )
            .into());
        }
        return history(a).await;
    }
    if a.format == StatsFormat::Prometheus {
        output::write(api_client::metrics(&a.api).await?);
        return Ok(());
    }
    let d = api_client::all_pages(&a.api, "/api/v1/stats/traffic", "id").await?;
    if a.format == StatsFormat::Json {
        say(serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    say(format_args!(
        "router: in {}  out {}  connections {} open, {} total, {} failed",
        bytes(d["bytes"]["in"].as_u64().unwrap_or(0)),
        bytes(d["bytes"]["out"].as_u64().unwrap_or(0)),
        d["connections"]["active"],
        d["connections"]["total"],
        d["connections"]["failed"],
    ));
    let items = d["items"].as_array().cloned().unwrap_or_default();
    if !items.is_empty() {
        table("CLIENT", &items);
    }
    Ok(())
}

/// `--history`: every page of the router's samples in the window, printed oldest
/// first, and the summary.
async fn history(a: &StatsArgs) -> Result<()> {
    let path = match a.window {
        Some(w) => format!("/api/v1/stats/history?window_secs={}", w.as_secs().max(1)),
        None => "/api/v1/stats/history".to_owned(),
    };
    // Each sample once by its time: one taken between two pages' requests shifts them.
    let first = api_client::all_pages(&a.api, &path, "at").await?;
    if a.format != StatsFormat::Table {
        say(serde_json::to_string_pretty(&first)?);
        return Ok(());
    }
    let items = first["items"].as_array().cloned().unwrap_or_default();
    let every = first["interval_secs"].as_u64().unwrap_or(0);
    if items.is_empty() {
        // None in the window: are there any at all? (A longer window helps only then.)
        let any = match a.window {
            Some(_) => {
                let all = api_client::data(&a.api, "/api/v1/stats/history?per_page=1").await?;
                all["pagination"]["total"].as_u64().is_none_or(|n| n > 0)
            }
            None => false,
        };
        match a.window.filter(|_| any) {
            Some(w) => say(format_args!(
                "no samples in the last {}: the router takes one every {every}s \
                 (api.history_interval_secs); give a longer --window",
                humantime::format_duration(w)
            )),
            None => say(format_args!(
                "no samples yet: the router takes one every {every}s (api.history_interval_secs)"
            )),
        }
        return Ok(());
    }
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let rate = |v: &Value| bits(v.as_f64().unwrap_or(0.0));
    let mut lines = vec![
        [
            "AT", "IN/S", "OUT/S", "IN", "OUT", "OPENED", "FAILED", "OPEN",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in items.iter().rev() {
        lines.push(vec![
            s["at"].as_str().unwrap_or("?").to_owned(),
            rate(&s["rate_bps"]["in"]),
            rate(&s["rate_bps"]["out"]),
            bytes(n(&s["bytes"]["in"])),
            bytes(n(&s["bytes"]["out"])),
            n(&s["connections"]["opened"]).to_string(),
            n(&s["connections"]["failed"]).to_string(),
            n(&s["connections"]["active"]).to_string(),
        ]);
    }
    print_columns(&lines);
    let t = &first["summary"];
    say(format_args!(
        "{} of {every}s from {} to {}: in {} (mean {}, peak {}), out {} (mean {}, peak {}); \
         streams: {} opened, {} failed, up to {} open when sampled",
        plural(
            usize::try_from(n(&t["samples"])).unwrap_or(usize::MAX),
            "sample"
        ),
        t["from"].as_str().unwrap_or("?"),
        t["to"].as_str().unwrap_or("?"),
        bytes(n(&t["bytes"]["in"])),
        rate(&t["rate_bps"]["in"]["mean"]),
        rate(&t["rate_bps"]["in"]["peak"]),
        bytes(n(&t["bytes"]["out"])),
        rate(&t["rate_bps"]["out"]["mean"]),
        rate(&t["rate_bps"]["out"]["peak"]),
        n(&t["connections"]["opened"]),
        n(&t["connections"]["failed"]),
        n(&t["connections"]["peak_active"]),
    ));
    Ok(())
}

/// A rate in bits a second, as `12.3 Mbit/s`.
fn bits(bps: f64) -> String {
    const UNITS: [&str; 5] = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
    let mut v = bps;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[0])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// One line per row: name, bytes in/out, connections.
fn table(what: &str, rows: &[Value]) {
    print_columns(&table_lines(what, rows));
}

/// The table's cells, its header first.
fn table_lines(what: &str, rows: &[Value]) -> Vec<Vec<String>> {
    let mut lines = vec![
        [what, "IN", "OUT", "OPEN", "TOTAL", "FAILED"]
            .map(String::from)
            .to_vec(),
    ];
    let named = |r: &Value| {
        r["name"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    for r in rows {
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let id = r["id"].as_str().unwrap_or("?");
        let name = match named(r) {
            // Two rows of one name (a client's old and new key during a rotation):
            // told apart by id.
            Some(name)
                if rows
                    .iter()
                    .filter(|o| named(o).as_ref() == Some(&name))
                    .count()
                    > 1 =>
            {
                format!("{name} ({id})")
            }
            Some(name) => name,
            None => id.to_owned(),
        };
        lines.push(vec![
            name,
            bytes(n(&r["bytes"]["in"])),
            bytes(n(&r["bytes"]["out"])),
            n(&r["connections"]["active"]).to_string(),
            n(&r["connections"]["total"]).to_string(),
            n(&r["connections"]["failed"]).to_string(),
        ]);
    }
    lines
}

/// Prints `lines` in columns as wide as their widest cell.
fn print_columns(lines: &[Vec<String>]) {
    let cols = lines[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            lines
                .iter()
                .filter_map(|l| l.get(i))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say(cells.join("  ").trim_end());
    }
}

/// Several expositions as one: each family's `# HELP`/`# TYPE` once, its samples from
/// every text together (a scraper refuses a family declared twice).
pub(crate) fn merge_expositions(texts: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut families: std::collections::HashMap<String, (Vec<String>, Vec<String>)> =
        std::collections::HashMap::new();
    for t in texts {
        let mut current = String::new();
        for line in t.lines() {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or(line.strip_prefix("# TYPE "))
            {
                current = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let f = families.entry(current.clone()).or_insert_with(|| {
                    order.push(current.clone());
                    Default::default()
                });
                if !f.0.iter().any(|l| l == line) {
                    f.0.push(line.to_owned());
                }
            } else if !line.is_empty() {
                families
                    .entry(current.clone())
                    .or_default()
                    .1
                    .push(line.to_owned());
            }
        }
    }
    let mut out = String::new();
    for name in order {
        if let Some((head, samples)) = families.get(&name) {
            for l in head.iter().chain(samples) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's old and new keys (a rotation) share a name: told apart by id; a
    /// row without a name shows its id.
    #[test]
    fn rows_of_one_name_show_their_ids() {
        let rows = [
            json!({"id": "aa", "name": "laptop"}),
            json!({"id": "bb", "name": "laptop"}),
            json!({"id": "cc", "name": "gw"}),
            json!({"id": "dd", "name": ""}),
        ];
        let first: Vec<String> = table_lines("CLIENT", &rows)
            .into_iter()
            .map(|l| l[0].clone())
            .collect();
        assert_eq!(first, ["CLIENT", "laptop (aa)", "laptop (bb)", "gw", "dd"]);
    }

    #[test]
    fn rates_read_in_bits_a_second() {
        assert_eq!(bits(0.0), "0 bit/s");
        assert_eq!(bits(999.0), "999 bit/s");
        assert_eq!(bits(24_000.0), "24.0 kbit/s");
        assert_eq!(bits(9_870_000_000.0), "9.9 Gbit/s");
    }

    #[test]
    fn merged_expositions_declare_each_family_once() {
        let a = "# HELP x X.\n# TYPE x counter\nx{tunnel=\"a\"} 1\n# HELP y Y.\n# TYPE y gauge\ny{tunnel=\"a\"} 0\n";
        let b = a.replace("\"a\"", "\"b\"");
        assert_eq!(
            merge_expositions(&[a.to_owned(), b]),
            "# HELP x X.\n# TYPE x counter\nx{tunnel=\"a\"} 1\nx{tunnel=\"b\"} 1\n\
             # HELP y Y.\n# TYPE y gauge\ny{tunnel=\"a\"} 0\ny{tunnel=\"b\"} 0\n"
        );
    }
}
