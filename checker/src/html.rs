//! A self-contained HTML report: the verdict, the explanation, and the history drawn as a
//! timeline per client (inline SVG and CSS; no scripts, no network). Time runs left to right
//! by event order (real-time order is what linearizability depends on); each op is a bar from
//! its invocation to its completion, unknown outcomes run to the right edge, dashed. The op
//! that cannot be placed is red; the ops of the minimal failing sub-history are outlined.

use crate::explain::{describe, Explanation};
use crate::history::{History, OkValue, OpId, OpRecord, Outcome};
use crate::linearizability::Verdict;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

/// Most ops drawn in one timeline; larger histories show the ops nearest the failure.
pub const MAX_TIMELINE_OPS: usize = 400;

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}\
.ok{color:#1a7f37}.bad{color:#c62828}.unknown{color:#b26a00}\
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;font-size:.9em}\
svg text{font-size:11px;font-family:monospace}.legend span{display:inline-block;padding:0 8px;margin-right:6px}\
.timeline{overflow-x:auto;border:1px solid #ddd;padding:4px}";

/// A complete HTML document with one section per checked history.
pub fn html_document(title: &str, sections: &[String]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n\
         <p class=\"legend\"><span style=\"background:#cde9d6\">ok</span><span style=\"background:#e0e0e0\">failed (no effect)</span>\
         <span style=\"background:#ffe0b2;border:1px dashed #b26a00\">unknown outcome</span>\
         <span style=\"background:#ef9a9a;border:2px solid #c62828\">cannot be placed</span>\
         <span style=\"border:2px solid #1565c0\">in the minimal failing sub-history</span></p>\n",
        escape(title),
        escape(title)
    );
    for section in sections {
        out.push_str(section);
    }
    out.push_str("</body></html>\n");
    out
}

/// The report for one history as a complete HTML document.
pub fn render_html(
    title: &str,
    history: &History,
    verdict: &Verdict,
    explanation: Option<&Explanation>,
) -> String {
    html_document(title, &[html_section(title, history, verdict, explanation)])
}

/// The report for one history, to embed in `html_document`.
pub fn html_section(
    name: &str,
    history: &History,
    verdict: &Verdict,
    explanation: Option<&Explanation>,
) -> String {
    let mut out = String::new();
    let (class, text) = match verdict {
        Verdict::Linearizable => ("ok", "linearizable".to_string()),
        Verdict::NotLinearizable(v) => ("bad", format!("NOT linearizable (key {})", v.key)),
        Verdict::Unknown { reason } => ("unknown", format!("unknown ({reason})")),
    };
    let _ = writeln!(
        out,
        "<h2>{}: <span class=\"{class}\">{}</span></h2>",
        escape(name),
        escape(&text)
    );
    let _ = writeln!(
        out,
        "<p>{} operations, {} keys.</p>",
        history.len(),
        history.keys().len()
    );
    match explanation {
        Some(e) => explanation_section(&mut out, history, e),
        None => {
            let shown: Vec<&OpRecord> = history.ops().iter().take(MAX_TIMELINE_OPS).collect();
            if shown.len() < history.len() {
                let _ = writeln!(out, "<p>Showing the first {} operations.</p>", shown.len());
            }
            timeline(&mut out, &shown, None, &BTreeSet::new());
        }
    }
    out
}

fn explanation_section(out: &mut String, history: &History, e: &Explanation) {
    let _ = writeln!(out, "<p><b>Key:</b> {}</p>", escape(&e.key));
    let _ = writeln!(out, "<p><b>Why:</b> {}</p>", escape(&e.reason));
    let _ = writeln!(
        out,
        "<p><b>Longest linearizable prefix:</b> the first {} events of this key ({} ops).</p>",
        e.prefix_events,
        e.prefix_ops.len()
    );
    let minimal: BTreeSet<OpId> = e.minimal_ops.iter().copied().collect();
    let _ = writeln!(
        out,
        "<h3>Minimal failing sub-history ({} ops{})</h3>",
        minimal.len(),
        if e.minimal_is_one_minimal {
            ""
        } else {
            ", shrinking stopped at the budget"
        }
    );
    out.push_str("<table><tr><th>op</th><th>process</th><th>operation</th><th>invoked</th><th>completed</th></tr>\n");
    for id in &e.minimal_ops {
        if let Some(r) = history.op(*id) {
            let completed = r
                .completion
                .as_ref()
                .map_or("never".to_string(), |c| c.time_ns.to_string());
            let style = if *id == e.failing_op {
                " style=\"background:#ef9a9a\""
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "<tr{style}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                r.id,
                r.process,
                escape(&describe(r)),
                r.invoke_ns,
                completed
            );
        }
    }
    out.push_str("</table>\n");
    let minimal_records: Vec<&OpRecord> = e
        .minimal_ops
        .iter()
        .filter_map(|id| history.op(*id))
        .collect();
    timeline(out, &minimal_records, Some(e.failing_op), &minimal);
    let failing_seq = history
        .op(e.failing_op)
        .and_then(|r| r.completion.as_ref())
        .map_or(u64::MAX, |c| c.seq);
    let key_ops: Vec<&OpRecord> = history
        .ops()
        .iter()
        .filter(|r| r.key == e.key && r.invoke_seq <= failing_seq)
        .collect();
    let skip = key_ops.len().saturating_sub(MAX_TIMELINE_OPS);
    let _ = writeln!(
        out,
        "<h3>Key {} up to the failure ({} ops{})</h3>",
        escape(&e.key),
        key_ops.len() - skip,
        if skip > 0 {
            format!(", the last {MAX_TIMELINE_OPS}")
        } else {
            String::new()
        }
    );
    timeline(out, &key_ops[skip..], Some(e.failing_op), &minimal);
}

fn label(record: &OpRecord) -> String {
    let op = match &record.op {
        crate::history::Op::Read => "R".to_string(),
        crate::history::Op::Write { value } => format!("W {value}"),
        crate::history::Op::Cas { expected, new } => format!("cas {expected}→{new}"),
        crate::history::Op::Delete => "del".to_string(),
        crate::history::Op::Add { element } => format!("add {element}"),
        crate::history::Op::ReadSet => "R set".to_string(),
    };
    match record.outcome() {
        Outcome::Ok(OkValue::Read(Some(v))) => format!("{op} {v}"),
        Outcome::Ok(OkValue::Read(None)) => format!("{op} nil"),
        Outcome::Ok(OkValue::CasMismatch) => format!("{op} ✗"),
        _ => op,
    }
}

fn timeline(out: &mut String, ops: &[&OpRecord], failing: Option<OpId>, minimal: &BTreeSet<OpId>) {
    if ops.is_empty() {
        out.push_str("<p>(no operations)</p>\n");
        return;
    }
    let mut seqs: Vec<u64> = ops
        .iter()
        .flat_map(|r| std::iter::once(r.invoke_seq).chain(r.completion.as_ref().map(|c| c.seq)))
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let rank: HashMap<u64, usize> = seqs.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    let lanes: BTreeMap<u64, usize> = ops
        .iter()
        .map(|r| r.process)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(i, p)| (p, i))
        .collect();
    let step = (1400 / seqs.len().max(1)).clamp(8, 60) as f64;
    let (left, lane_height) = (90.0, 30.0);
    let width = left + step * (seqs.len() + 2) as f64;
    let height = lane_height * lanes.len() as f64 + 10.0;
    let _ = writeln!(
        out,
        "<div class=\"timeline\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\">"
    );
    for (process, lane) in &lanes {
        let y = *lane as f64 * lane_height;
        let _ = writeln!(
            out,
            "<text x=\"4\" y=\"{:.0}\">process {process}</text><line x1=\"{left}\" x2=\"{width:.0}\" y1=\"{:.0}\" y2=\"{:.0}\" stroke=\"#eee\"/>",
            y + 18.0,
            y + 24.0,
            y + 24.0
        );
    }
    for r in ops {
        let lane = lanes.get(&r.process).copied().unwrap_or(0) as f64;
        let x0 = left + step * rank.get(&r.invoke_seq).copied().unwrap_or(0) as f64;
        let x1 = match &r.completion {
            Some(c) if !matches!(c.outcome, Outcome::Info) => {
                left + step * rank.get(&c.seq).copied().unwrap_or(0) as f64
            }
            _ => width - 4.0,
        };
        let (fill, mut stroke, dash) = match r.outcome() {
            Outcome::Ok(_) => ("#cde9d6", "#1a7f37", ""),
            Outcome::Fail => ("#e0e0e0", "#888", ""),
            Outcome::Info => ("#ffe0b2", "#b26a00", " stroke-dasharray=\"4 3\""),
        };
        let mut fill = fill;
        let mut stroke_width = 1.0;
        if minimal.contains(&r.id) {
            stroke = "#1565c0";
            stroke_width = 2.0;
        }
        if Some(r.id) == failing {
            fill = "#ef9a9a";
            stroke = "#c62828";
            stroke_width = 3.0;
        }
        let y = lane * lane_height + 4.0;
        let w = (x1 - x0).max(step * 0.6);
        let text = label(r);
        let _ = writeln!(
            out,
            "<g><title>{}</title><rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"20\" rx=\"3\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"{stroke_width}\"{dash}/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            escape(&format!("{} [key {}; invoked {} ns]", describe(r), r.key, r.invoke_ns)),
            x0 + 3.0,
            y + 14.0,
            if w > 7.0 * text.chars().count() as f64 { escape(&text) } else { String::new() }
        );
    }
    out.push_str("</svg></div>\n");
}
