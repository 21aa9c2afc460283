//! From run results (JSON lines written by `quorumkv-ycsb run`) to what a reader compares: a
//! Markdown report (one table per workload, the quorumkv/etcd throughput ratios) and SVG
//! charts per workload (throughput by client count; latency percentiles, one panel per client
//! count).
//!
//! Results are grouped by (workload, store, mode, clients); a later line for the same group
//! replaces an earlier one, so a rerun of one case overwrites it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use node::client::latency::CURVE_PERCENTILES;

use super::driver::RunResult;
use super::svg::{self, Panel, Series};
use super::workload::Workload;

/// The store and mode every ratio compares against etcd.
pub const RATIO_STORE: &str = "quorumkv";
pub const RATIO_PEER: &str = "etcd";

/// Parses a results file: one `RunResult` per non-empty line.
pub fn parse_results(text: &str) -> Result<Vec<RunResult>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| format!("results line {}: {e}", i + 1))
        })
        .collect()
}

fn series_name(r: &RunResult) -> String {
    format!("{} ({})", r.store, r.mode)
}

/// The latest result per (workload, store, mode, clients).
fn latest(results: &[RunResult]) -> BTreeMap<(Workload, String, String, usize), &RunResult> {
    let mut map = BTreeMap::new();
    for r in results {
        map.insert((r.workload, r.store.clone(), r.mode.clone(), r.clients), r);
    }
    map
}

fn fmt_thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `quorumkv ops/s / etcd ops/s` for one workload and client count, against one etcd mode.
pub fn ratio(
    results: &[RunResult],
    workload: Workload,
    clients: usize,
    etcd_mode: &str,
) -> Option<f64> {
    let map = latest(results);
    let ours = map
        .iter()
        .find(|((w, s, _, c), _)| *w == workload && s == RATIO_STORE && *c == clients)?
        .1;
    let peer = map.get(&(
        workload,
        RATIO_PEER.to_string(),
        etcd_mode.to_string(),
        clients,
    ))?;
    (peer.ops_per_s > 0.0).then(|| ours.ops_per_s / peer.ops_per_s)
}

/// The Markdown report; `preamble` (machine, versions, command) goes first.
pub fn markdown(results: &[RunResult], preamble: &str) -> String {
    let map = latest(results);
    let mut out = String::new();
    if !preamble.trim().is_empty() {
        out.push_str(preamble.trim_end());
        out.push_str("\n\n");
    }
    let workloads: BTreeSet<Workload> = map.keys().map(|k| k.0).collect();
    let clients: BTreeSet<usize> = map.keys().map(|k| k.3).collect();
    let etcd_modes: BTreeSet<&str> = map
        .keys()
        .filter(|k| k.1 == RATIO_PEER)
        .map(|k| k.2.as_str())
        .collect();
    if !etcd_modes.is_empty() && map.keys().any(|k| k.1 == RATIO_STORE) {
        let _ = writeln!(
            out,
            "## Throughput ratio {RATIO_STORE} / {RATIO_PEER}\n\n{RATIO_STORE} ops/s divided by {RATIO_PEER} ops/s in the same run (above 1: {RATIO_STORE} faster).\n"
        );
        let mut header = "| workload | clients |".to_string();
        let mut rule = "|---|---:|".to_string();
        for mode in &etcd_modes {
            let _ = write!(header, " vs {RATIO_PEER} {mode} |");
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for w in &workloads {
            for c in &clients {
                let cells: Vec<String> = etcd_modes
                    .iter()
                    .map(|m| {
                        ratio(results, *w, *c, m).map_or("-".to_string(), |r| format!("{r:.2}"))
                    })
                    .collect();
                let _ = writeln!(out, "| {} | {c} | {} |", w.letter(), cells.join(" | "));
            }
        }
        out.push('\n');
    }
    for w in &workloads {
        let _ = writeln!(out, "## Workload {} ({})\n", w.letter(), w.description());
        let _ = writeln!(
            out,
            "| store | mode | clients | ops/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for ((_, store, mode, c), r) in map.iter().filter(|(k, _)| k.0 == *w) {
            let _ = writeln!(
                out,
                "| {store} | {mode} | {c} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                fmt_thousands(r.ops_per_s),
                r.latency.p50_ms,
                r.latency.p90_ms,
                r.latency.p99_ms,
                r.latency.p999_ms,
                r.latency.max_ms,
                r.errors
            );
        }
        let letter = w.letter().to_lowercase();
        let _ = writeln!(
            out,
            "\n![throughput, workload {l}](throughput-{letter}.svg)\n![latency, workload {l}](latency-{letter}.svg)\n",
            l = w.letter()
        );
    }
    let problems: Vec<&RunResult> = map.values().filter(|r| r.errors > 0).copied().collect();
    if !problems.is_empty() {
        let _ = writeln!(out, "## Errors\n");
        for r in problems {
            let _ = writeln!(
                out,
                "- {} workload {} {} clients: {} errors, first: {}",
                series_name(r),
                r.workload.letter(),
                r.clients,
                r.errors,
                r.first_error.as_deref().unwrap_or("?")
            );
        }
    }
    out
}

/// `(file name, SVG text)` of every chart: throughput and latency per workload.
pub fn charts(results: &[RunResult]) -> Vec<(String, String)> {
    let map = latest(results);
    let workloads: BTreeSet<Workload> = map.keys().map(|k| k.0).collect();
    let mut files = Vec::new();
    for w in workloads {
        let rows: Vec<&RunResult> = map
            .iter()
            .filter(|(k, _)| k.0 == w)
            .map(|(_, r)| *r)
            .collect();
        let clients: Vec<usize> = rows
            .iter()
            .map(|r| r.clients)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut names: Vec<String> = Vec::new();
        for r in &rows {
            if !names.contains(&series_name(r)) {
                names.push(series_name(r));
            }
        }
        let throughput = Panel {
            title: w.description().to_string(),
            categories: clients.iter().map(|c| c.to_string()).collect(),
            x_label: "clients".to_string(),
            y_label: "ops/s".to_string(),
            log_y: false,
            series: names
                .iter()
                .map(|name| Series {
                    name: name.clone(),
                    points: rows
                        .iter()
                        .filter(|r| &series_name(r) == name)
                        .filter_map(|r| {
                            Some((clients.iter().position(|c| *c == r.clients)?, r.ops_per_s))
                        })
                        .collect(),
                })
                .collect(),
        };
        let letter = w.letter().to_lowercase();
        files.push((
            format!("throughput-{letter}.svg"),
            svg::render(
                &format!("YCSB {} ({})", w.letter(), w.description()),
                &[throughput],
            ),
        ));
        let percentile_labels: Vec<String> = CURVE_PERCENTILES
            .iter()
            .map(|p| {
                if *p >= 100.0 {
                    "max".to_string()
                } else {
                    format!("p{p}")
                }
            })
            .collect();
        let latency_panels: Vec<Panel> = clients
            .iter()
            .map(|c| Panel {
                title: if *c == 1 {
                    "1 client".to_string()
                } else {
                    format!("{c} clients")
                },
                categories: percentile_labels.clone(),
                x_label: "percentile".to_string(),
                y_label: "latency ms (log)".to_string(),
                log_y: true,
                series: rows
                    .iter()
                    .filter(|r| r.clients == *c)
                    .map(|r| Series {
                        name: series_name(r),
                        points: r
                            .latency_curve
                            .iter()
                            .filter_map(|(p, ms)| {
                                Some((
                                    CURVE_PERCENTILES
                                        .iter()
                                        .position(|q| (q - p).abs() < 1e-9)?,
                                    *ms,
                                ))
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        files.push((
            format!("latency-{letter}.svg"),
            svg::render(
                &format!("YCSB {}: latency percentiles", w.letter()),
                &latency_panels,
            ),
        ));
    }
    files
}

/// Writes `results.md` and the charts into `dir`; returns the paths written.
pub fn write_report(
    results: &[RunResult],
    preamble: &str,
    dir: &Path,
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let md = dir.join("results.md");
    std::fs::write(&md, markdown(results, preamble))?;
    written.push(md);
    for (name, text) in charts(results) {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use node::client::latency::LatencySummary;

    fn result(
        store: &str,
        mode: &str,
        workload: Workload,
        clients: usize,
        ops_per_s: f64,
    ) -> RunResult {
        RunResult {
            store: store.into(),
            mode: mode.into(),
            workload,
            clients,
            target_ops_per_s: None,
            record_count: 1000,
            value_bytes: 256,
            warmup_s: 1.0,
            duration_s: 2.0,
            ops: (ops_per_s * 2.0) as u64,
            ops_per_s,
            errors: 0,
            not_found: 0,
            behind_schedule: 0,
            first_error: None,
            latency: LatencySummary {
                count: 10,
                mean_ms: 1.0,
                p50_ms: 1.0,
                p90_ms: 2.0,
                p99_ms: 3.0,
                p999_ms: 4.0,
                max_ms: 5.0,
            },
            // Whole numbers: they survive a JSON round trip exactly.
            latency_curve: CURVE_PERCENTILES
                .iter()
                .enumerate()
                .map(|(i, p)| (*p, i as f64 + 1.0))
                .collect(),
            per_operation: BTreeMap::new(),
        }
    }

    fn sample() -> Vec<RunResult> {
        let mut v = Vec::new();
        for (c, k) in [(1, 1.0), (16, 10.0)] {
            v.push(result(
                "quorumkv",
                "linearizable",
                Workload::A,
                c,
                1500.0 * k,
            ));
            v.push(result("etcd", "linearizable", Workload::A, c, 600.0 * k));
            v.push(result("etcd", "serializable", Workload::A, c, 1000.0 * k));
            v.push(result(
                "redis",
                "appendfsync always",
                Workload::C,
                c,
                9000.0 * k,
            ));
        }
        v
    }

    #[test]
    fn results_round_trip_and_later_lines_replace_earlier_ones() {
        let mut rows = sample();
        let text: String = rows
            .iter()
            .map(|r| serde_json::to_string(r).expect("json") + "\n")
            .collect();
        assert_eq!(parse_results(&text).expect("parses"), rows);
        assert!(parse_results("{not json}\n").is_err());
        rows.push(result("quorumkv", "linearizable", Workload::A, 1, 3000.0));
        assert_eq!(ratio(&rows, Workload::A, 1, "linearizable"), Some(5.0));
    }

    #[test]
    fn markdown_has_tables_ratios_and_chart_links() {
        let md = markdown(&sample(), "# Title\nmachine: test");
        assert!(md.starts_with("# Title\nmachine: test\n"));
        assert!(md.contains("| A | 1 | 2.50 | 1.50 |"), "{md}");
        assert!(md.contains("| A | 16 | 2.50 | 1.50 |"), "{md}");
        assert!(
            md.contains(
                "| quorumkv | linearizable | 16 | 15,000 | 1.00 | 2.00 | 3.00 | 4.00 | 5.00 | 0 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| redis | appendfsync always | 1 | 9,000 |"),
            "{md}"
        );
        assert!(md.contains("](throughput-a.svg)") && md.contains("](latency-c.svg)"));
        assert!(!md.contains("## Errors"));
        // No quorumkv result for C: its ratio is a dash, not a number.
        assert!(md.contains("| C | 1 | - | - |"), "{md}");
    }

    #[test]
    fn errors_are_listed() {
        let mut rows = sample();
        rows[0].errors = 3;
        rows[0].first_error = Some("quorumkv: no quorum".into());
        let md = markdown(&rows, "");
        assert!(md.contains("## Errors") && md.contains("3 errors, first: quorumkv: no quorum"));
    }

    #[test]
    fn charts_cover_every_workload_and_series() {
        let files = charts(&sample());
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "throughput-a.svg",
                "latency-a.svg",
                "throughput-c.svg",
                "latency-c.svg"
            ]
        );
        let (_, throughput_a) = &files[0];
        assert_eq!(throughput_a.matches("<polyline").count(), 3);
        assert!(throughput_a.contains("etcd (serializable)"));
        // Latency of A: one panel per client count, three series in each.
        let (_, latency_a) = &files[1];
        assert_eq!(latency_a.matches("<polyline").count(), 6);
        assert!(latency_a.contains("16 clients") && latency_a.contains(">p99.9<"));
        let dir = std::env::temp_dir().join(format!("ycsb-report-{}", std::process::id()));
        let written = write_report(&sample(), "", &dir).expect("writes");
        assert_eq!(written.len(), 5);
        assert!(written.iter().all(|p| p.is_file()));
        let _ = std::fs::remove_dir_all(dir);
    }
}
