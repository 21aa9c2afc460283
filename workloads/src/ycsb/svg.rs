//! Line charts as standalone SVG text, written by hand (no plotting dependency): one or more
//! panels side by side, each with categorical x positions, a linear or log10 y axis and one
//! polyline per series, plus one legend for all panels. A series keeps its colour across
//! panels (colours follow the order in which series names first appear).
//!
//! Invariants: every coordinate written is finite and inside the view box; every text is
//! XML-escaped.

use std::fmt::Write;

const PANEL_WIDTH: f64 = 440.0;
const PANEL_HEIGHT: f64 = 300.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 50.0;
const MARGIN_BOTTOM: f64 = 50.0;
const LEGEND_ROW_HEIGHT: f64 = 18.0;
const TITLE_HEIGHT: f64 = 30.0;
const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    /// `(category index, value)`; values that are not finite and positive on a log axis are
    /// skipped.
    pub points: Vec<(usize, f64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub title: String,
    pub categories: Vec<String>,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The y range and tick values of a panel.
fn y_axis(panel: &Panel) -> (f64, f64, Vec<f64>) {
    let values: Vec<f64> = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite() && (!panel.log_y || *v > 0.0))
        .collect();
    if panel.log_y {
        let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = values.iter().cloned().fold(0.0, f64::max);
        let (low, high) = if values.is_empty() {
            (0, 1)
        } else {
            (
                min.log10().floor() as i32,
                (max.log10().ceil() as i32).max(min.log10().floor() as i32 + 1),
            )
        };
        let ticks = (low..=high).map(|e| 10f64.powi(e)).collect();
        (10f64.powi(low), 10f64.powi(high), ticks)
    } else {
        let max = values.iter().cloned().fold(0.0, f64::max);
        let step = nice_step(max / 5.0);
        let top = (max / step).ceil().max(1.0) * step;
        let ticks = (0..=((top / step).round() as usize))
            .map(|i| i as f64 * step)
            .collect();
        (0.0, top, ticks)
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn tick_label(value: f64) -> String {
    if value >= 1000.0 {
        format!("{}k", value / 1000.0)
    } else if value >= 1.0 || value == 0.0 {
        format!("{value}")
    } else {
        format!("{value:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

fn panel_svg(out: &mut String, panel: &Panel, x0: f64, y0: f64, colours: &[String]) {
    let (left, top) = (x0 + MARGIN_LEFT, y0 + MARGIN_TOP);
    let width = PANEL_WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let height = PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let (y_min, y_max, ticks) = y_axis(panel);
    let scale = |v: f64| -> f64 {
        let f = if panel.log_y {
            (v.log10() - y_min.log10()) / (y_max.log10() - y_min.log10())
        } else {
            (v - y_min) / (y_max - y_min)
        };
        top + height - f.clamp(0.0, 1.0) * height
    };
    let slots = panel.categories.len().max(1) as f64;
    let x_at = |i: usize| left + (i as f64 + 0.5) * width / slots;
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12" font-weight="bold">{}</text>"#,
        x0 + PANEL_WIDTH / 2.0,
        y0 + 25.0,
        escape(&panel.title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{left:.1}" y="{top:.1}" width="{width:.1}" height="{height:.1}" fill="none" stroke="#888"/>"##
    );
    for tick in &ticks {
        let y = scale(*tick);
        let _ = writeln!(
            out,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
            left + width,
            left - 5.0,
            y + 4.0,
            escape(&tick_label(*tick))
        );
    }
    for (i, category) in panel.categories.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
            x_at(i),
            top + height + 16.0,
            escape(category)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12">{}</text>"#,
        left + width / 2.0,
        top + height + 36.0,
        escape(&panel.x_label)
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle" font-size="12">{}</text>"#,
        x0 + 16.0,
        top + height / 2.0,
        escape(&panel.y_label)
    );
    for series in &panel.series {
        let colour = colour_of(colours, &series.name);
        let points: Vec<(f64, f64)> = series
            .points
            .iter()
            .filter(|(i, v)| {
                *i < panel.categories.len() && v.is_finite() && (!panel.log_y || *v > 0.0)
            })
            .map(|(i, v)| (x_at(*i), scale(*v)))
            .collect();
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
            path.join(" "),
            escape(&series.name)
        );
        for (x, y) in points {
            let _ = writeln!(
                out,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#
            );
        }
    }
}

fn colour_of<'a>(names: &'a [String], name: &str) -> &'a str {
    let index = names.iter().position(|n| n == name).unwrap_or(0);
    PALETTE[index % PALETTE.len()]
}

/// A whole SVG document: `title`, the panels in one row, then the legend.
pub fn render(title: &str, panels: &[Panel]) -> String {
    let mut names: Vec<String> = Vec::new();
    for series in panels.iter().flat_map(|p| &p.series) {
        if !names.contains(&series.name) {
            names.push(series.name.clone());
        }
    }
    let width = PANEL_WIDTH * panels.len().max(1) as f64;
    let legend_top = TITLE_HEIGHT + PANEL_HEIGHT + 10.0;
    let height = legend_top + LEGEND_ROW_HEIGHT * names.len() as f64 + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (i, panel) in panels.iter().enumerate() {
        panel_svg(
            &mut out,
            panel,
            i as f64 * PANEL_WIDTH,
            TITLE_HEIGHT,
            &names,
        );
    }
    for (i, name) in names.iter().enumerate() {
        let y = legend_top + i as f64 * LEGEND_ROW_HEIGHT;
        let colour = colour_of(&names, name);
        let _ = writeln!(
            out,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            MARGIN_LEFT,
            y + 9.0,
            MARGIN_LEFT + 24.0,
            y + 9.0,
            MARGIN_LEFT + 30.0,
            y + 13.0,
            escape(name)
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(log_y: bool) -> Panel {
        Panel {
            title: "A <update heavy>".to_string(),
            categories: vec!["1".into(), "16".into(), "64".into()],
            x_label: "clients".into(),
            y_label: "ops/s".into(),
            log_y,
            series: vec![
                Series {
                    name: "quorumkv & co".into(),
                    points: vec![(0, 1000.0), (1, 8000.0), (2, 12000.0)],
                },
                Series {
                    name: "etcd".into(),
                    points: vec![(0, 0.0), (1, f64::NAN), (2, 4000.0)],
                },
            ],
        }
    }

    /// Every number in the document's attributes, as written.
    fn numbers(svg: &str) -> Vec<f64> {
        svg.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .filter_map(|t| t.parse::<f64>().ok())
            .collect()
    }

    #[test]
    fn renders_escaped_finite_and_inside_the_box() {
        for log_y in [false, true] {
            let svg = render("throughput & more", &[panel(log_y), panel(log_y)]);
            assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
            assert!(svg.contains("quorumkv &amp; co") && svg.contains("A &lt;update heavy&gt;"));
            assert!(!svg.contains("NaN") && !svg.contains("inf"));
            assert_eq!(svg.matches("<polyline").count(), 4);
            assert_eq!(
                svg.matches("<polyline").count(),
                svg.matches("</polyline>").count()
            );
            let (width, height) = (
                2.0 * PANEL_WIDTH,
                TITLE_HEIGHT + PANEL_HEIGHT + 10.0 + 2.0 * LEGEND_ROW_HEIGHT + 10.0,
            );
            // Numbers that are not coordinates: the namespace and the hex colours.
            let mut body = svg.replace("http://www.w3.org/2000/svg", "");
            for colour in PALETTE.iter().chain(&["#888"]) {
                body = body.replace(colour, "");
            }
            let outside: Vec<f64> = numbers(&body)
                .into_iter()
                .filter(|n| n.abs() > width.max(height) + 1.0)
                .collect();
            assert!(outside.is_empty(), "{outside:?}");
        }
    }

    #[test]
    fn a_series_keeps_its_colour_and_points_follow_values() {
        let svg = render("t", &[panel(false)]);
        let line = |name: &str| {
            svg.lines()
                .find(|l| l.contains("<polyline") && l.contains(name))
                .unwrap_or_default()
                .to_string()
        };
        let quorumkv = line("quorumkv");
        assert!(quorumkv.contains(PALETTE[0]) && line("etcd").contains(PALETTE[1]));
        // Higher values sit higher (smaller y); the NaN point is dropped.
        let ys: Vec<f64> = quorumkv
            .split("points=\"")
            .nth(1)
            .map(|p| p.split('"').next().unwrap_or_default())
            .unwrap_or_default()
            .split(' ')
            .filter_map(|xy| xy.split(',').nth(1)?.parse().ok())
            .collect();
        assert_eq!(ys.len(), 3);
        assert!(ys[0] > ys[1] && ys[1] > ys[2], "{ys:?}");
        assert_eq!(line("etcd").matches(',').count(), 2);
    }

    #[test]
    fn axes_get_round_ticks() {
        assert_eq!(nice_step(1800.0), 2000.0);
        assert_eq!(nice_step(0.3), 0.5);
        let (low, high, ticks) = y_axis(&panel(true));
        assert_eq!((low, high), (1000.0, 100_000.0));
        assert_eq!(ticks.len(), 3);
        let (low, high, ticks) = y_axis(&panel(false));
        assert_eq!(low, 0.0);
        assert!(high >= 12000.0 && ticks.len() >= 2);
        assert_eq!(tick_label(2000.0), "2k");
        assert_eq!(tick_label(0.25), "0.25");
    }
}
