//! SVG figures that any browser opens: line charts (training curves, ROC) and the classic
//! figure of the margin-loss papers, normalised embeddings on the circle or sphere.

use std::fmt::Write;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 420.0;
const MARGIN: (f64, f64, f64, f64) = (70.0, 30.0, 40.0, 55.0); // left, right, top, bottom

/// Ten distinguishable colours (matplotlib's tab10), cycled for more classes.
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// The colour of class (or series) `i`.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// A tick label: whole numbers as such, others to four significant digits.
fn tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round())
    } else {
        let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 8) as usize;
        format!("{v:.digits$}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn svg_open(width: f64, height: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        width / 2.0,
        escape(title)
    )
}

/// A named series of `(x, y)` points.
pub struct Series<'a> {
    /// The legend's label.
    pub name: &'a str,
    /// The points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// A line chart. With `log_x`, the x axis is logarithmic (points with x ≤ 0 are dropped).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
) -> String {
    let tx = |x: f64| if log_x { x.log10() } else { x };
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|&(x, y)| (!log_x || x > 0.0) && x.is_finite() && y.is_finite())
        .map(|(x, y)| (tx(x), y))
        .collect();
    let bounds = |v: Vec<f64>| {
        let (lo, hi) = v
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if hi - lo < 1e-12 {
            (lo - 0.5, hi + 0.5)
        } else {
            (lo, hi)
        }
    };
    let (x0, x1) = bounds(all.iter().map(|p| p.0).collect());
    let (y0, y1) = bounds(all.iter().map(|p| p.1).collect());
    let (left, right, top, bottom) = MARGIN;
    let (pw, ph) = (WIDTH - left - right, HEIGHT - top - bottom);
    let px = |x: f64| left + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| top + ph - (y - y0) / (y1 - y0) * ph;
    let mut svg = svg_open(WIDTH, HEIGHT, title);
    let _ = writeln!(
        svg,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>"
    );
    // x ticks: whole decades on a log axis, five even steps otherwise; y: five even steps
    let x_ticks: Vec<f64> = if log_x {
        (x0.ceil() as i32..=x1.floor() as i32)
            .map(f64::from)
            .collect()
    } else {
        (0..=4).map(|k| x0 + k as f64 / 4.0 * (x1 - x0)).collect()
    };
    for xv in x_ticks {
        let label = if log_x { format!("1e{xv}") } else { tick(xv) };
        let _ = writeln!(
            svg,
            "<line x1=\"{0}\" y1=\"{top}\" x2=\"{0}\" y2=\"{1}\" stroke=\"#ddd\"/>\
             <text x=\"{0}\" y=\"{2}\" text-anchor=\"middle\">{label}</text>",
            px(xv),
            top + ph,
            top + ph + 16.0
        );
    }
    for k in 0..=4 {
        let yv = y0 + k as f64 / 4.0 * (y1 - y0);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#ddd\"/>\
             <text x=\"{2}\" y=\"{3}\" text-anchor=\"end\">{4}</text>",
            py(yv),
            left + pw,
            left - 6.0,
            py(yv) + 4.0,
            tick(yv)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>",
        left + pw / 2.0,
        HEIGHT - 12.0,
        escape(x_label),
        top + ph / 2.0,
        top + ph / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|&&(x, y)| (!log_x || x > 0.0) && x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.2},{:.2}", px(tx(x)), py(y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>",
            colour(i),
            path.join(" "),
            left + 10.0,
            top + 16.0 + 15.0 * i as f64,
            colour(i),
            escape(s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Normalised embeddings coloured by class: on the unit circle for 2-D points; for 3-D, the
/// sphere seen from a fixed oblique direction (front hemisphere solid, back faded).
///
/// # Panics
/// When points are not all of dimension 2 or 3.
#[track_caller]
pub fn embedding_figure(title: &str, points: &[Vec<f64>], labels: &[usize]) -> String {
    let dim = points.first().map_or(2, Vec::len);
    assert!(
        (dim == 2 || dim == 3) && points.iter().all(|p| p.len() == dim),
        "embedding_figure: points must all be 2-D or all 3-D"
    );
    let size = 520.0;
    let (cx, cy, r) = (size / 2.0, size / 2.0 + 10.0, size / 2.0 - 50.0);
    let mut svg = svg_open(size, size + 20.0, title);
    let _ = writeln!(
        svg,
        "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"{r}\" fill=\"none\" stroke=\"#888\"/>"
    );
    // a fixed view: rotate 35° about x, then 30° about y, and look down the z axis
    let (a, b) = (35f64.to_radians(), 30f64.to_radians());
    let project = |p: &[f64]| -> (f64, f64, f64) {
        let norm = p.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        let (x, y, z) = (
            p[0] / norm,
            p[1] / norm,
            if dim == 3 { p[2] / norm } else { 0.0 },
        );
        if dim == 2 {
            return (x, y, 1.0);
        }
        let (y, z) = (y * a.cos() - z * a.sin(), y * a.sin() + z * a.cos());
        let (x, z) = (x * b.cos() + z * b.sin(), -x * b.sin() + z * b.cos());
        (x, y, z)
    };
    let mut order: Vec<(f64, f64, f64, usize)> = points
        .iter()
        .zip(labels)
        .map(|(p, &l)| {
            let (x, y, z) = project(p);
            (x, y, z, l)
        })
        .collect();
    order.sort_by(|p, q| p.2.total_cmp(&q.2)); // back to front
    for (x, y, z, l) in order {
        let opacity = if z >= 0.0 { 0.85 } else { 0.2 };
        let _ = writeln!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.2\" fill=\"{}\" fill-opacity=\"{opacity}\"/>",
            cx + r * x,
            cy - r * y,
            colour(l)
        );
    }
    svg.push_str("</svg>\n");
    svg
}
