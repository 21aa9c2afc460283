//! `quorumkv-check`: checks history files (native JSONL or Jepsen EDN) and prints one verdict
//! line per file and a summary. Exit status: 0 all linearizable (or valid sets), 1 any violation,
//! else 2 if any file is unknown (budget) or unreadable. Argument parsing and wiring only: the
//! checking lives in the library.
#![forbid(unsafe_code)]

use checker::{
    check_kv, check_set, explain, html_document, html_section, parse_edn, Budget, CheckOptions,
    History, HistoryError, ImportModel, Verdict, Violation,
};
use clap::{Parser, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Model {
    /// Registers per key (Jepsen independent `[key value]` tuples detected).
    Kv,
    /// A single register.
    Register,
    /// Grow-only sets (`add`, read of all elements).
    Set,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Jsonl,
    Edn,
}

/// Checks recorded histories for linearizability (kv, register) or set anomalies (set).
#[derive(Parser, Debug)]
#[command(name = "quorumkv-check", version)]
struct Args {
    #[arg(long, value_enum, default_value = "kv")]
    model: Model,
    /// Every register's value before the history: an integer, or `nil` (absent).
    #[arg(long, default_value = "nil", value_parser = parse_initial)]
    initial_value: Initial,
    /// Input format; by default from the extension (.edn; .jsonl, .ndjson, .json).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Time budget per file, in seconds; past it the verdict is `unknown`.
    #[arg(long, default_value_t = 60.0)]
    timeout_s: f64,
    /// Budget for the search's memo tables per file, in MiB.
    #[arg(long, default_value_t = 1024)]
    max_memory_mib: usize,
    /// Write a self-contained HTML report (timelines, explanations) to this file.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Print one JSON object per file and one for the summary instead of text.
    #[arg(long)]
    json: bool,
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug)]
struct Initial(Option<i64>);

fn parse_initial(text: &str) -> Result<Initial, String> {
    if text == "nil" {
        return Ok(Initial(None));
    }
    text.parse()
        .map(|v| Initial(Some(v)))
        .map_err(|_| format!("expected an integer or nil, found {text:?}"))
}

/// The result for one file.
enum FileResult {
    Linearizable,
    Valid,
    Violation {
        key: String,
        detail: String,
        json: serde_json::Value,
    },
    Unknown(String),
    Unreadable(String),
}

fn read_history(path: &Path, args: &Args) -> Result<History, String> {
    let format = match args.format {
        Some(f) => f,
        None => match path.extension().and_then(|e| e.to_str()) {
            Some("edn") => Format::Edn,
            Some("jsonl" | "ndjson" | "json") => Format::Jsonl,
            _ => return Err("expected a .edn or .jsonl file name, or --format".into()),
        },
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let located = |e: HistoryError| match e {
        HistoryError::Malformed { line, message } => {
            format!("{}:{line}: {message}", path.display())
        }
        other => format!("{}: {other}", path.display()),
    };
    let history = match format {
        Format::Jsonl => History::from_jsonl(&text).map_err(located)?,
        Format::Edn => {
            let model = match args.model {
                Model::Kv => ImportModel::Kv,
                Model::Register => ImportModel::Register,
                Model::Set => ImportModel::Set,
            };
            parse_edn(&text, model).map_err(located)?
        }
    };
    if args.model == Model::Register && history.keys().len() > 1 {
        return Err(format!(
            "{}: expected a single register, found {} keys",
            path.display(),
            history.keys().len()
        ));
    }
    Ok(history)
}

fn options(args: &Args) -> CheckOptions {
    CheckOptions {
        budget: Budget {
            time_limit: Some(Duration::from_secs_f64(args.timeout_s.max(0.0))),
            max_memory_bytes: args.max_memory_mib.saturating_mul(1 << 20),
            max_steps_per_key: None,
        },
        initial_value: args.initial_value.0,
        parallel: true,
    }
}

fn check_file(path: &Path, args: &Args, html: &mut Vec<String>) -> FileResult {
    let history = match read_history(path, args) {
        Ok(h) => h,
        Err(message) => return FileResult::Unreadable(message),
    };
    let name = path.display().to_string();
    if args.model == Model::Set {
        let report = check_set(&history);
        if args.html.is_some() {
            html.push(set_html_section(&name, &report));
        }
        let json = serde_json::to_value(&report).unwrap_or_default();
        return match report.anomalies.first() {
            None => FileResult::Valid,
            Some(first) => FileResult::Violation {
                key: set_anomaly_key(first).to_string(),
                detail: format!("{} anomalies; first: {first}", report.anomalies.len()),
                json,
            },
        };
    }
    let options = options(args);
    let verdict = check_kv(&history, &options);
    let result = match &verdict {
        Verdict::Linearizable => FileResult::Linearizable,
        Verdict::Unknown { reason } => FileResult::Unknown(reason.clone()),
        Verdict::NotLinearizable(Violation { key }) => {
            let explanation = explain(&history, &Violation { key: key.clone() }, &options);
            if args.html.is_some() {
                html.push(html_section(
                    &name,
                    &history,
                    &verdict,
                    explanation.as_ref(),
                ));
            }
            let detail = explanation.as_ref().map_or_else(
                || "no explanation within the budget".into(),
                |e| e.reason.clone(),
            );
            let json = serde_json::to_value(&explanation).unwrap_or_default();
            return FileResult::Violation {
                key: key.clone(),
                detail,
                json,
            };
        }
    };
    if args.html.is_some() {
        html.push(html_section(&name, &history, &verdict, None));
    }
    result
}

/// The set check has no timeline: a list of the anomalies found (at most `MAX_HTML_ANOMALIES`).
fn set_html_section(name: &str, report: &checker::SetReport) -> String {
    const MAX_HTML_ANOMALIES: usize = 100;
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut out = format!(
        "<h2>{}: {}</h2>\n<p>{} keys, {} reads checked, {} acknowledged adds, {} unknown adds present.</p>\n<ul>\n",
        escape(name),
        if report.is_valid() { "valid set" } else { "NOT valid" },
        report.keys,
        report.reads_checked,
        report.acknowledged_adds,
        report.unknown_adds_present
    );
    for anomaly in report.anomalies.iter().take(MAX_HTML_ANOMALIES) {
        out.push_str(&format!("<li>{}</li>\n", escape(&anomaly.to_string())));
    }
    out.push_str("</ul>\n");
    out
}

fn set_anomaly_key(anomaly: &checker::SetAnomaly) -> &str {
    use checker::SetAnomaly::*;
    match anomaly {
        Lost { key, .. }
        | NeverAdded { key, .. }
        | FailedAddObserved { key, .. }
        | VisibleBeforeAdd { key, .. } => key,
    }
}

/// Prints a line; false when stdout is gone (e.g. piped into `head`), so the caller stops.
fn emit(line: &str) -> bool {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}").is_ok()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    let mut html = Vec::new();
    let mut counts = [0usize; 4]; // linearizable/valid, not, unknown, unreadable
    for path in &args.files {
        let file = path.display().to_string();
        let result = check_file(path, &args, &mut html);
        let (index, verdict, text, extra) = match &result {
            FileResult::Linearizable => (
                0,
                "linearizable",
                "linearizable".to_string(),
                serde_json::Value::Null,
            ),
            FileResult::Valid => (
                0,
                "valid",
                "valid (set: no lost, unexpected or premature elements)".into(),
                serde_json::Value::Null,
            ),
            FileResult::Violation { key, detail, json } => (
                1,
                "not_linearizable",
                format!("NOT linearizable (key {key}, {detail})"),
                json.clone(),
            ),
            FileResult::Unknown(reason) => (
                2,
                "unknown",
                format!("unknown ({reason})"),
                serde_json::Value::Null,
            ),
            FileResult::Unreadable(reason) => (
                3,
                "unreadable",
                format!("unreadable ({reason})"),
                serde_json::Value::Null,
            ),
        };
        counts[index] += 1;
        let line = if args.json {
            serde_json::json!({ "file": file, "verdict": verdict, "message": text, "details": extra }).to_string()
        } else {
            format!("{file}: {text}")
        };
        if !emit(&line) {
            return ExitCode::from(2);
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    if let Some(out) = &args.html {
        if let Err(e) = std::fs::write(out, html_document("quorumkv-check report", &html)) {
            eprintln!("{}: cannot write the HTML report: {e}", out.display());
            counts[3] += 1;
        }
    }
    let [good, bad, unknown, unreadable] = counts;
    if args.json {
        let summary = serde_json::json!({ "files": args.files.len(), "linearizable": good, "not_linearizable": bad,
            "unknown": unknown, "unreadable": unreadable, "elapsed_s": elapsed_s });
        emit(&serde_json::json!({ "summary": summary }).to_string());
    } else {
        emit(&format!(
            "summary: {} files: {good} linearizable, {bad} NOT linearizable, {unknown} unknown, {unreadable} unreadable in {elapsed_s:.3} s",
            args.files.len()
        ));
    }
    if bad > 0 {
        ExitCode::from(1)
    } else if unknown + unreadable > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}
