//! The SVG every figure is written in: a white page with a title, text, lines, dots and one
//! kind of legend box.

use std::fmt::Write;

/// Body text size, px.
pub(super) const FONT_SIZE: f64 = 12.0;
/// Title size and line height, px.
const TITLE_SIZE: f64 = 15.0;
const TITLE_LINE: f64 = 19.0;
/// The estimated advance of one character of a sans-serif font, in ems (0.6 covers DejaVu Sans
/// and Helvetica digits and lower case; SVG gives no way to measure text when writing it).
const CHAR_WIDTH: f64 = 0.6;
/// Height of one legend row, px.
const LEGEND_ROW: f64 = 17.0;
/// Inner margin of the legend box, px.
const LEGEND_PAD: f64 = 7.0;
/// Width of a legend's sample (a line or a dot) and the gap after it, px.
const LEGEND_SAMPLE: f64 = 22.0;
const LEGEND_GAP: f64 = 6.0;

/// The estimated width of `text` at `size` px.
pub(super) fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * CHAR_WIDTH * size
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// How a text is aligned on its anchor point.
#[derive(Clone, Copy)]
pub(super) enum Anchor {
    Start,
    Middle,
    End,
}

impl Anchor {
    fn name(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        }
    }
}

/// What a legend row shows before its label.
#[derive(Clone, Copy)]
pub(super) enum Sample {
    /// A line, solid or dashed, with a dot on it when the series draws its points.
    Line { dashed: bool, dot: bool },
    /// A dot of the given opacity.
    Dot { opacity: f64 },
}

/// One row of a legend.
pub(super) struct LegendRow {
    pub colour: &'static str,
    pub sample: Sample,
    pub label: String,
}

/// A legend: an optional heading over its rows.
pub(super) struct Legend {
    pub heading: Option<String>,
    pub rows: Vec<LegendRow>,
}

impl Legend {
    /// The legend box's width and height, px.
    pub fn size(&self) -> (f64, f64) {
        let widest_label = self
            .rows
            .iter()
            .map(|r| LEGEND_SAMPLE + LEGEND_GAP + text_width(&r.label, FONT_SIZE))
            .chain(self.heading.iter().map(|h| text_width(h, FONT_SIZE)))
            .fold(0.0, f64::max);
        let rows = self.rows.len() + usize::from(self.heading.is_some());
        (
            widest_label + 2.0 * LEGEND_PAD,
            rows as f64 * LEGEND_ROW + 2.0 * LEGEND_PAD - 4.0,
        )
    }
}

/// An SVG document being written.
pub(super) struct Svg {
    out: String,
    width: f64,
    title_bottom: f64,
}

/// `text` broken into lines no wider than `width` at `size` px: after a colon first (a title's
/// "what: of which run"), then between words (a word wider than that stays whole on its own
/// line).
fn wrap(text: &str, width: f64, size: f64) -> Vec<String> {
    if text_width(text, size) <= width {
        return vec![text.to_string()];
    }
    let mut lines: Vec<String> = Vec::new();
    for part in text.split_inclusive(": ") {
        let mut line = String::new();
        for word in part.split_whitespace() {
            if !line.is_empty() && text_width(&format!("{line} {word}"), size) > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}

impl Svg {
    /// A page `width` px wide with `title` centred at the top, on as many lines as it needs
    /// (its height is given when it is finished).
    pub fn new(width: f64, title: &str) -> Svg {
        let mut out = String::new();
        let mut baseline = 6.0;
        for line in wrap(title, width - 24.0, TITLE_SIZE) {
            baseline += TITLE_LINE;
            let _ = writeln!(
                out,
                "<text class=\"title\" x=\"{}\" y=\"{baseline}\" text-anchor=\"middle\" \
                 font-size=\"{TITLE_SIZE}\">{}</text>",
                width / 2.0,
                escape(&line)
            );
        }
        Svg {
            out,
            width,
            title_bottom: baseline + TITLE_SIZE * 0.3,
        }
    }

    /// Where the title ends, px from the top.
    pub fn title_bottom(&self) -> f64 {
        self.title_bottom
    }

    /// Any element, written as given (for shapes with attributes of their own).
    pub fn raw(&mut self, element: &str) {
        self.out.push_str(element);
        self.out.push('\n');
    }

    /// `content` at `(x, y)` (the baseline), of the given class, rotated by `rotate` degrees
    /// about its anchor.
    pub fn text(&mut self, class: &str, (x, y): (f64, f64), anchor: Anchor, content: &str) {
        let _ = writeln!(
            self.out,
            "<text class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"{}\">{}</text>",
            anchor.name(),
            escape(content)
        );
    }

    /// `content` turned a quarter anticlockwise, centred on `(x, y)` (a vertical axis' label).
    pub fn vertical_text(&mut self, class: &str, (x, y): (f64, f64), content: &str) {
        let _ = writeln!(
            self.out,
            "<text class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" text-anchor=\"middle\" \
             transform=\"rotate(-90 {x:.1} {y:.1})\">{}</text>",
            escape(content)
        );
    }

    /// A straight line.
    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, width: f64) {
        let _ = writeln!(
            self.out,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" stroke=\"{stroke}\" \
             stroke-width=\"{width}\"/>"
        );
    }

    /// A dot of radius `r`.
    pub fn dot(&mut self, (x, y): (f64, f64), r: f64, fill: &str, opacity: f64) {
        let _ = writeln!(
            self.out,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r}\" fill=\"{fill}\" fill-opacity=\"{opacity}\"/>"
        );
    }

    /// `legend` in a box whose top-left corner is `(x, y)`.
    pub fn legend(&mut self, legend: &Legend, (x, y): (f64, f64)) {
        let (w, h) = legend.size();
        let _ = writeln!(
            self.out,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"white\" \
             fill-opacity=\"0.9\" stroke=\"#bbb\"/>"
        );
        let mut row_y = y + LEGEND_PAD + FONT_SIZE * 0.5;
        if let Some(heading) = &legend.heading {
            self.text(
                "legend-heading",
                (x + LEGEND_PAD, row_y + 4.0),
                Anchor::Start,
                heading,
            );
            row_y += LEGEND_ROW;
        }
        for row in &legend.rows {
            let (sx, sy) = (x + LEGEND_PAD, row_y);
            match row.sample {
                Sample::Line { dashed, dot } => {
                    let dash = if dashed {
                        " stroke-dasharray=\"5 3\""
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        self.out,
                        "<line x1=\"{sx:.1}\" y1=\"{sy:.1}\" x2=\"{:.1}\" y2=\"{sy:.1}\" \
                         stroke=\"{}\" stroke-width=\"2\"{dash}/>",
                        sx + LEGEND_SAMPLE,
                        row.colour
                    );
                    if dot {
                        self.dot((sx + LEGEND_SAMPLE / 2.0, sy), 3.0, row.colour, 1.0);
                    }
                }
                Sample::Dot { opacity } => {
                    self.dot((sx + LEGEND_SAMPLE / 2.0, sy), 4.0, row.colour, opacity);
                }
            }
            self.text(
                "legend",
                (sx + LEGEND_SAMPLE + LEGEND_GAP, sy + 4.0),
                Anchor::Start,
                &row.label,
            );
            row_y += LEGEND_ROW;
        }
    }

    /// The finished document, `height` px high on a white background.
    pub fn finish(self, height: f64) -> String {
        let width = self.width;
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             viewBox=\"0 0 {width} {height}\" font-family=\"DejaVu Sans, Helvetica, Arial, \
             sans-serif\" font-size=\"{FONT_SIZE}\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{}</svg>\n",
            self.out
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_title_wraps_between_words() {
        let title = "Top-1 accuracy per epoch: combined (s = 30, m1 = 1, m2 = 0.3, m3 = 0.2) on \
                     synthetic identities";
        // after the colon first
        assert_eq!(
            wrap(title, 640.0, TITLE_SIZE),
            [
                "Top-1 accuracy per epoch:",
                "combined (s = 30, m1 = 1, m2 = 0.3, m3 = 0.2) on synthetic identities"
            ]
        );
        // then between words
        let lines = wrap(title, 616.0, TITLE_SIZE);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines.join(" "), title);
        assert!(lines.iter().all(|l| text_width(l, TITLE_SIZE) <= 616.0));
        assert_eq!(wrap("short", 616.0, TITLE_SIZE), ["short"]);
        let svg = Svg::new(640.0, title);
        assert!(svg.title_bottom() > Svg::new(640.0, "short").title_bottom());
    }
}
