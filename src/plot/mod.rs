//! SVG figures that any browser opens: line charts (training curves, ROC) and the classic
//! figure of the margin-loss papers, normalised embeddings on the circle or sphere.
//!
//! Every chart lays out its axes with one function: ticks at round
//! values ([`nice_ticks`], 1-2-5 steps; [`log_ticks`], whole decades), labels written from the
//! step's decimals, whole-number ticks on an integer axis (epochs). A chart of several series
//! has a legend, placed in the corner of the plot its curves cross least; the embedding figure
//! has one naming each class.
//!
//! ```
//! use margrad::plot::{Axis, Series, line_chart};
//!
//! let loss = [(1.0, 27.8), (2.0, 19.6), (3.0, 16.0)];
//! let svg = line_chart(
//!     "Training loss",
//!     Axis::integer("epoch"),
//!     Axis::linear("mean loss per sample (nats)"),
//!     &[Series::new("loss", loss.to_vec())],
//! );
//! assert!(svg.starts_with("<svg") && svg.contains(">epoch</text>"));
//! ```

mod axis;
mod svg;

pub use axis::{Scale, log_ticks, nice_ticks};

use axis::AxisLayout;
use svg::{Anchor, FONT_SIZE, Legend, LegendRow, Sample, Svg, text_width};

/// Size of a line chart, px.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 420.0;
/// Space between the title and the plot, right of the plot, and below it (tick labels, axis
/// label), px.
const BELOW_TITLE: f64 = 14.0;
const RIGHT: f64 = 22.0;
const BOTTOM: f64 = 52.0;
/// A series of at most this many points draws a dot on each (so a single point shows).
const MAX_DOTTED_POINTS: usize = 30;

/// The radius of the embedding figure's circle or sphere, px.
const RADIUS: f64 = 210.0;

/// Points along each great circle drawn on the sphere.
const GREAT_CIRCLE_STEPS: usize = 120;

/// Ten distinguishable colours (matplotlib's tab10), cycled for more classes.
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// The colour of reference curves (chance level, bounds).
const REFERENCE_COLOUR: &str = "#888888";

/// The colour of class (or series) `i`: matplotlib's ten, cycled.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// One axis of a line chart: its label (say the unit: `"accuracy (%)"`) and its scale.
#[derive(Clone, Copy, Debug)]
pub struct Axis<'a> {
    /// The label written along the axis.
    pub label: &'a str,
    /// How values map to positions.
    pub scale: Scale,
}

impl<'a> Axis<'a> {
    /// A linear axis.
    pub fn linear(label: &'a str) -> Self {
        Axis {
            label,
            scale: Scale::Linear,
        }
    }

    /// A linear axis whose ticks are whole numbers (epochs).
    pub fn integer(label: &'a str) -> Self {
        Axis {
            label,
            scale: Scale::Integer,
        }
    }

    /// A base-10 logarithmic axis (ticks at decades; values ≤ 0 drawn at its low end).
    pub fn log(label: &'a str) -> Self {
        Axis {
            label,
            scale: Scale::Log,
        }
    }
}

/// A named series of `(x, y)` points.
#[derive(Clone, Debug)]
pub struct Series<'a> {
    /// The legend's label.
    pub name: &'a str,
    /// The points, in drawing order; non-finite ones are left out.
    pub points: Vec<(f64, f64)>,
    /// A reference curve (chance level, a bound): drawn grey and dashed, and not given one of
    /// the data colours.
    pub reference: bool,
}

impl<'a> Series<'a> {
    /// A data series, drawn in the next palette colour.
    pub fn new(name: &'a str, points: Vec<(f64, f64)>) -> Self {
        Series {
            name,
            points,
            reference: false,
        }
    }

    /// A reference curve, drawn grey and dashed.
    pub fn reference(name: &'a str, points: Vec<(f64, f64)>) -> Self {
        Series {
            name,
            points,
            reference: true,
        }
    }
}

/// A line chart of `series` over the axes `x` and `y`, `title` above it. Ticks sit at round
/// values inside the data's range ([`nice_ticks`], [`log_ticks`]); a series of at most 30
/// points draws a dot on each point, so a one-epoch run still shows; with two or more series a
/// legend names them, in the corner of the plot the curves cross least. Non-finite points are
/// left out; on a log axis, points at or below 0 are drawn at the axis' low end (a FAR of 0 on
/// a ROC's log axis).
pub fn line_chart(title: &str, x: Axis, y: Axis, series: &[Series]) -> String {
    let finite = |s: &Series| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .copied()
            .filter(|(px, py)| px.is_finite() && py.is_finite())
            .collect()
    };
    let kept: Vec<Vec<(f64, f64)>> = series.iter().map(finite).collect();
    let x_axis = AxisLayout::new(kept.iter().flatten().map(|p| p.0), x.scale);
    let y_axis = AxisLayout::new(kept.iter().flatten().map(|p| p.1), y.scale);
    let widest_y_label = y_axis
        .ticks
        .iter()
        .map(|t| text_width(&t.label, FONT_SIZE))
        .fold(0.0, f64::max);
    let mut svg = Svg::new(WIDTH, title);
    let (top, left) = (svg.title_bottom() + BELOW_TITLE, 40.0 + widest_y_label);
    let (pw, ph) = (WIDTH - left - RIGHT, HEIGHT - top - BOTTOM);
    let px = |v: f64| left + x_axis.fraction(v) * pw;
    let py = |v: f64| top + ph - y_axis.fraction(v) * ph;
    let (bottom, right) = (top + ph, left + pw);
    for t in &x_axis.ticks {
        let at = px(t.value);
        svg.line((at, top), (at, bottom), "#e6e6e6", 1.0);
        svg.line((at, bottom), (at, bottom + 5.0), "#444", 1.0);
        svg.text("x-tick", (at, bottom + 19.0), Anchor::Middle, &t.label);
    }
    for &m in &x_axis.minor {
        svg.line((px(m), bottom), (px(m), bottom + 3.0), "#444", 1.0);
    }
    for t in &y_axis.ticks {
        let at = py(t.value);
        svg.line((left, at), (right, at), "#e6e6e6", 1.0);
        svg.line((left - 5.0, at), (left, at), "#444", 1.0);
        svg.text("y-tick", (left - 8.0, at + 4.0), Anchor::End, &t.label);
    }
    for &m in &y_axis.minor {
        svg.line((left - 3.0, py(m)), (left, py(m)), "#444", 1.0);
    }
    svg.raw(&format!(
        "<rect x=\"{left:.1}\" y=\"{top:.1}\" width=\"{pw:.1}\" height=\"{ph:.1}\" fill=\"none\" stroke=\"#444\"/>\n\
         <clipPath id=\"plot-area\"><rect x=\"{left:.1}\" y=\"{top:.1}\" width=\"{pw:.1}\" height=\"{ph:.1}\"/></clipPath>"
    ));
    svg.text(
        "axis-label",
        (left + pw / 2.0, HEIGHT - 12.0),
        Anchor::Middle,
        x.label,
    );
    svg.vertical_text("axis-label", (16.0, top + ph / 2.0), y.label);

    let mut rows = Vec::new();
    let mut pixels = Vec::new(); // every drawn point, for placing the legend
    let mut data_series = 0;
    for (s, points) in series.iter().zip(&kept) {
        let colour = if s.reference {
            REFERENCE_COLOUR
        } else {
            data_series += 1;
            colour(data_series - 1)
        };
        let drawn: Vec<(f64, f64)> = points.iter().map(|&(a, b)| (px(a), py(b))).collect();
        let path: Vec<String> = drawn
            .iter()
            .map(|(a, b)| format!("{a:.1},{b:.1}"))
            .collect();
        let (width, dash) = if s.reference {
            (1.5, " stroke-dasharray=\"5 3\"")
        } else {
            (2.0, "")
        };
        svg.raw(&format!(
            "<polyline clip-path=\"url(#plot-area)\" fill=\"none\" stroke=\"{colour}\" \
             stroke-width=\"{width}\" stroke-linejoin=\"round\"{dash} points=\"{}\"/>",
            path.join(" ")
        ));
        let dotted = drawn.len() <= MAX_DOTTED_POINTS;
        if dotted {
            for &p in &drawn {
                svg.dot(p, 3.0, colour, 1.0);
            }
        }
        rows.push(LegendRow {
            colour,
            sample: Sample::Line {
                dashed: s.reference,
                dot: dotted,
            },
            label: s.name.to_string(),
        });
        pixels.extend(along(&drawn));
    }
    if series.len() > 1 {
        let legend = Legend {
            heading: None,
            rows,
        };
        let corner = emptiest_corner(legend.size(), (left, top, pw, ph), &pixels);
        svg.legend(&legend, corner);
    }
    svg.finish(HEIGHT)
}

/// The points of a polyline and nine more evenly along each of its segments (a segment that
/// crosses a box with no vertex in it still counts as crossing it).
fn along(polyline: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = polyline.to_vec();
    for w in polyline.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        out.extend((1..10).map(|k| {
            let t = f64::from(k) / 10.0;
            (x0 + t * (x1 - x0), y0 + t * (y1 - y0))
        }));
    }
    out
}

/// The top-left corner of a `(w, h)` legend in the corner of the plot `(left, top, width,
/// height)` that the fewest of `pixels` fall in: top right, top left, bottom right or bottom
/// left, the first on a tie.
fn emptiest_corner(
    (w, h): (f64, f64),
    (left, top, width, height): (f64, f64, f64, f64),
    pixels: &[(f64, f64)],
) -> (f64, f64) {
    const INSET: f64 = 8.0;
    let (x_right, y_bottom) = (left + width - INSET - w, top + height - INSET - h);
    let (x_left, y_top) = (left + INSET, top + INSET);
    let corners = [
        (x_right, y_top),
        (x_left, y_top),
        (x_right, y_bottom),
        (x_left, y_bottom),
    ];
    let covered = |&(x, y): &(f64, f64)| {
        pixels
            .iter()
            .filter(|&&(a, b)| {
                (x - INSET..=x + w + INSET).contains(&a) && (y - INSET..=y + h + INSET).contains(&b)
            })
            .count()
    };
    let mut best = corners[0];
    let mut fewest = covered(&best);
    for c in &corners[1..] {
        let n = covered(c);
        if n < fewest {
            (best, fewest) = (*c, n);
        }
    }
    best
}

/// Normalised embeddings coloured by class: on the unit circle for 2-D points; for 3-D, the
/// sphere seen from a fixed oblique direction (near hemisphere solid, far hemisphere pale), with
/// its three coordinate great circles for depth.
/// A legend headed `legend_heading` (say `"digit"`) names each class by its label, in its
/// colour; with classes sharing a colour (more than ten), it says so instead.
///
/// # Panics
/// When points are not all of dimension 2 or 3, or there are not as many labels as points.
#[track_caller]
pub fn embedding_figure(
    title: &str,
    points: &[Vec<f64>],
    labels: &[usize],
    legend_heading: &str,
) -> String {
    let dim = points.first().map_or(2, Vec::len);
    assert!(
        (dim == 2 || dim == 3) && points.iter().all(|p| p.len() == dim),
        "embedding_figure: points must all be 2-D or all 3-D"
    );
    assert_eq!(
        points.len(),
        labels.len(),
        "embedding_figure: {} points but {} labels",
        points.len(),
        labels.len()
    );
    let mut classes: Vec<usize> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let colours_distinct = {
        let mut used: Vec<&str> = classes.iter().map(|&c| colour(c)).collect();
        used.sort_unstable();
        used.dedup();
        used.len() == classes.len()
    };
    let far_side = "far hemisphere (pale)";
    let legend = if colours_distinct {
        let mut rows: Vec<LegendRow> = classes
            .iter()
            .map(|&c| LegendRow {
                colour: colour(c),
                sample: Sample::Dot { opacity: 0.85 },
                label: c.to_string(),
            })
            .collect();
        if dim == 3 {
            rows.push(LegendRow {
                colour: REFERENCE_COLOUR,
                sample: Sample::Dot { opacity: 0.25 },
                label: far_side.to_string(),
            });
        }
        Legend {
            heading: Some(legend_heading.to_string()),
            rows,
        }
    } else {
        Legend {
            heading: Some(format!(
                "{} classes ({legend_heading}); colours repeat every {}",
                classes.len(),
                PALETTE.len()
            )),
            rows: Vec::new(),
        }
    };
    let (legend_w, _) = legend.size();
    let mut svg = Svg::new(2.0 * (RADIUS + 40.0) + legend_w + 20.0, title);
    let (cx, cy) = (RADIUS + 40.0, svg.title_bottom() + 30.0 + RADIUS);
    svg.raw(&format!(
        "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"{RADIUS}\" fill=\"none\" stroke=\"#888\"/>"
    ));
    // a fixed view: rotate 35° about x, then 30° about y, and look down the z axis
    let (a, b) = (35f64.to_radians(), 30f64.to_radians());
    let project = |p: &[f64]| -> (f64, f64, f64) {
        let norm = p.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        let (x, y) = (p[0] / norm, p[1] / norm);
        if dim == 2 {
            return (x, y, 1.0);
        }
        let z = p[2] / norm;
        let (y, z) = (y * a.cos() - z * a.sin(), y * a.sin() + z * a.cos());
        let (x, z) = (x * b.cos() + z * b.sin(), -x * b.sin() + z * b.cos());
        (x, y, z)
    };
    let to_page = |x: f64, y: f64| (cx + RADIUS * x, cy - RADIUS * y);
    if dim == 3 {
        // the three coordinate great circles, near halves solid and far halves dashed, for depth
        for (i, j) in [(0, 1), (1, 2), (0, 2)] {
            let circle: Vec<(f64, f64, f64)> = (0..=GREAT_CIRCLE_STEPS)
                .map(|k| {
                    let t = std::f64::consts::TAU * k as f64 / GREAT_CIRCLE_STEPS as f64;
                    let mut p = [0.0; 3];
                    (p[i], p[j]) = (t.cos(), t.sin());
                    project(&p)
                })
                .collect();
            for half in circle.chunk_by(|p, q| (p.2 >= 0.0) == (q.2 >= 0.0)) {
                let path: Vec<String> = half
                    .iter()
                    .map(|&(x, y, _)| {
                        let (a, b) = to_page(x, y);
                        format!("{a:.1},{b:.1}")
                    })
                    .collect();
                let style = if half[0].2 >= 0.0 {
                    "stroke=\"#c8c8c8\""
                } else {
                    "stroke=\"#dcdcdc\" stroke-dasharray=\"3 3\""
                };
                svg.raw(&format!(
                    "<polyline fill=\"none\" {style} points=\"{}\"/>",
                    path.join(" ")
                ));
            }
        }
    }
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
        let opacity = if z >= 0.0 { 0.85 } else { 0.25 };
        svg.dot(to_page(x, y), 2.2, colour(l), opacity);
    }
    svg.legend(&legend, (cx + RADIUS + 40.0, cy - RADIUS));
    svg.finish(cy + RADIUS + 30.0)
}

#[cfg(test)]
mod tests {
    use super::axis::round_labels;
    use super::*;

    /// The text of every `<text class="{class}" ...>` element.
    fn texts(svg: &str, class: &str) -> Vec<String> {
        let open = format!("<text class=\"{class}\"");
        svg.split(&open)
            .skip(1)
            .map(|rest| {
                let body = &rest[rest.find('>').expect("a closed tag") + 1..];
                body[..body.find("</text>").expect("an end tag")].to_string()
            })
            .collect()
    }

    /// The tick labels of the x axis and of the y axis.
    fn ticks(svg: &str) -> (Vec<String>, Vec<String>) {
        (texts(svg, "x-tick"), texts(svg, "y-tick"))
    }

    fn curve(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
        points.to_vec()
    }

    #[test]
    fn every_number_on_an_axis_is_round() {
        let epochs: Vec<(f64, f64)> = (1..=40)
            .map(|e| (f64::from(e), 0.04333 + 0.2392 * f64::from(e - 1) / 39.0))
            .collect();
        let svg = line_chart(
            "t",
            Axis::integer("epoch"),
            Axis::linear("y"),
            &[Series::new("a", epochs)],
        );
        let (x, y) = ticks(&svg);
        assert_eq!(x, ["10", "20", "30", "40"]);
        assert_eq!(y, ["0.05", "0.10", "0.15", "0.20", "0.25"]);
        // the losses of a run of the trainer: no 27.83, 24.35, ...
        let losses = [27.83, 19.64, 16.06, 14.50, 13.89];
        let svg = line_chart(
            "t",
            Axis::integer("epoch"),
            Axis::linear("loss"),
            &[Series::new(
                "loss",
                losses
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| (i as f64 + 1.0, l))
                    .collect(),
            )],
        );
        let (x, y) = ticks(&svg);
        assert_eq!(x, ["1", "2", "3", "4", "5"]);
        assert!(round_labels(&y), "{y:?}");
        assert!(y.len() >= 4, "{y:?}");
    }

    #[test]
    fn every_number_on_any_axis_is_round_whatever_the_data() {
        // a seeded stream of ranges: offsets and spans from 1e-6 to 1e6, some constant
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for case in 0..500 {
            let magnitude = 10f64.powf(next() * 12.0 - 6.0);
            let offset = (next() - 0.5) * magnitude * 10.0;
            let span = if case % 10 == 0 {
                0.0
            } else {
                magnitude * next()
            };
            let epochs = 1 + (next() * 300.0) as usize;
            let points: Vec<(f64, f64)> = (0..epochs)
                .map(|e| (e as f64 + 1.0, offset + span * next()))
                .collect();
            let svg = line_chart(
                "t",
                Axis::integer("epoch"),
                Axis::linear("y"),
                &[Series::new("a", points)],
            );
            let (x, y) = ticks(&svg);
            assert!(round_labels(&x) && !x.is_empty(), "case {case}: {x:?}");
            assert!(round_labels(&y) && y.len() >= 3, "case {case}: {y:?}");
            assert!(x.iter().all(|l| !l.contains('.')), "case {case}: {x:?}");
        }
    }

    #[test]
    fn a_single_epoch_shows_its_point_and_one_whole_tick() {
        let svg = line_chart(
            "t",
            Axis::integer("epoch"),
            Axis::linear("accuracy (%)"),
            &[
                Series::new("train", curve(&[(1.0, 14.81)])),
                Series::new("test", curve(&[(1.0, 17.27)])),
            ],
        );
        let (x, y) = ticks(&svg);
        assert_eq!(x, ["1"]);
        assert!(round_labels(&y), "{y:?}");
        assert_eq!(svg.matches("<circle").count(), 2 + 2); // the two points, the legend's dots
        assert_eq!(texts(&svg, "legend"), ["train", "test"]);
    }

    #[test]
    fn a_constant_series_gets_ticks_around_its_value() {
        let svg = line_chart(
            "t",
            Axis::integer("epoch"),
            Axis::linear("loss"),
            &[Series::new(
                "loss",
                curve(&[(1.0, 0.5), (2.0, 0.5), (3.0, 0.5)]),
            )],
        );
        let (x, y) = ticks(&svg);
        assert_eq!(x, ["1", "2", "3"]);
        assert_eq!(y, ["0.46", "0.48", "0.50", "0.52", "0.54"]);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn a_roc_on_a_log_axis_has_decades_and_keeps_its_zero_far_points() {
        let roc = curve(&[
            (0.0, 0.0),
            (0.0, 0.01),
            (1.0 / 3000.0, 0.02),
            (0.1, 0.7),
            (1.0, 1.0),
        ]);
        let chance = curve(&[(1e-4, 1e-4), (1.0, 1.0)]);
        let svg = line_chart(
            "ROC",
            Axis::log("false accept rate"),
            Axis::linear("true accept rate"),
            &[Series::new("ROC", roc), Series::reference("chance", chance)],
        );
        let (x, y) = ticks(&svg);
        assert_eq!(x, ["10⁻⁴", "10⁻³", "10⁻²", "10⁻¹", "10⁰"]);
        assert!(round_labels(&y), "{y:?}");
        // the points at FAR 0 are drawn at the axis' left end, not dropped and not at -inf
        let polyline = svg.split("<polyline").nth(1).unwrap();
        let points = polyline.split("points=\"").nth(1).unwrap();
        let points = &points[..points.find('"').unwrap()];
        assert_eq!(points.split(' ').count(), 5);
        assert!(!svg.contains("inf") && !svg.contains("NaN"));
        assert!(svg.contains("stroke-dasharray"));
        assert_eq!(texts(&svg, "legend"), ["ROC", "chance"]);
    }

    #[test]
    fn one_series_has_no_legend_and_several_have_one_naming_each() {
        let a = curve(&[(1.0, 1.0), (2.0, 2.0)]);
        let one = line_chart(
            "t",
            Axis::integer("epoch"),
            Axis::linear("y"),
            &[Series::new("only", a.clone())],
        );
        assert!(texts(&one, "legend").is_empty());
        let two = line_chart(
            "t",
            Axis::integer("epoch"),
            Axis::linear("y"),
            &[
                Series::new("train <batches>", a.clone()),
                Series::new("test", a),
            ],
        );
        assert_eq!(texts(&two, "legend"), ["train &lt;batches&gt;", "test"]);
        assert_eq!(texts(&two, "axis-label"), ["epoch", "y"]);
        assert_eq!(texts(&two, "title"), ["t"]);
    }

    #[test]
    fn the_legend_goes_to_the_corner_the_curves_leave_empty() {
        let plot = (0.0, 0.0, 100.0, 100.0);
        // a curve along the top edge: the legend goes to the bottom right
        let top: Vec<(f64, f64)> = (0..=100).map(|x| (f64::from(x), 5.0)).collect();
        assert_eq!(emptiest_corner((30.0, 20.0), plot, &top), (62.0, 72.0));
        // along the right edge: bottom left is as full; top left is the first empty corner
        let right: Vec<(f64, f64)> = (0..=100).map(|y| (95.0, f64::from(y))).collect();
        assert_eq!(emptiest_corner((30.0, 20.0), plot, &right), (8.0, 8.0));
        // a segment crossing a corner with no vertex in it still counts
        let crossing = along(&[(0.0, 30.0), (30.0, 0.0)]);
        assert_eq!(emptiest_corner((30.0, 20.0), plot, &crossing), (62.0, 8.0));
        let diagonal = along(&[(0.0, 20.0), (100.0, 20.0)]);
        assert_eq!(emptiest_corner((30.0, 20.0), plot, &diagonal), (62.0, 72.0));
    }

    #[test]
    fn the_embedding_legend_names_each_class_in_its_colour() {
        let points: Vec<Vec<f64>> = (0..30)
            .map(|i| {
                let t = f64::from(i) * 0.2;
                vec![t.cos(), t.sin(), 0.3]
            })
            .collect();
        let labels: Vec<usize> = (0..30).map(|i| i % 10).collect();
        let svg = embedding_figure("e", &points, &labels, "digit");
        assert_eq!(texts(&svg, "legend-heading"), ["digit"]);
        let named = texts(&svg, "legend");
        let mut expected: Vec<String> = (0..10).map(|d| d.to_string()).collect();
        expected.push("far hemisphere (pale)".to_string());
        assert_eq!(named, expected);
        // each class's legend dot, the last shape before its label, has the class's colour
        let rows: Vec<&str> = svg.split("<text class=\"legend\"").collect();
        for (d, before) in rows[..10].iter().enumerate() {
            let fill = before.rsplit("fill=\"").next().unwrap();
            assert!(fill.starts_with(colour(d)), "class {d}: {fill}");
        }
        // the sphere's three great circles, each in a near (solid) and a far (dashed) part
        // (a part that wraps past the circle's starting point comes in two pieces)
        let far = svg.matches("stroke-dasharray").count();
        let near = svg.matches("<polyline").count() - far;
        assert!(
            (3..=6).contains(&far) && (3..=6).contains(&near),
            "{near} {far}"
        );
        // only the classes present, and neither far side nor great circles on the circle
        let svg = embedding_figure("e", &[vec![1.0, 0.0], vec![0.0, 1.0]], &[7, 2], "digit");
        assert_eq!(texts(&svg, "legend"), ["2", "7"]);
        assert!(!svg.contains("<polyline"));
    }

    #[test]
    fn more_classes_than_colours_say_so() {
        let points: Vec<Vec<f64>> = (0..40).map(|i| vec![f64::from(i), 1.0]).collect();
        let labels: Vec<usize> = (0..40).collect();
        let svg = embedding_figure("e", &points, &labels, "identity");
        assert!(texts(&svg, "legend").is_empty());
        assert_eq!(
            texts(&svg, "legend-heading"),
            ["40 classes (identity); colours repeat every 10"]
        );
    }

    #[test]
    #[should_panic(expected = "embedding_figure: 2 points but 1 labels")]
    fn embedding_labels_must_match_points() {
        embedding_figure("e", &[vec![1.0, 0.0], vec![0.0, 1.0]], &[0], "digit");
    }
}
