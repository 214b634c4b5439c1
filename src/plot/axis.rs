//! Axes: the range a chart shows and its ticks, at round values.
//!
//! A linear axis puts its ticks at the multiples of a step `m·10^e` with `m` in {1, 2, 5}, the
//! step giving the count of ticks inside the data's range closest to five; an integer axis does
//! the same with a step of at least 1; a logarithmic axis puts them at whole decades `10^k`.
//! Labels are written from the step's decimal digits, never from a float's rounding, so they
//! read `0.05, 0.10, 0.15`, not `0.15000000000000002`.

/// How an axis maps values to positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Linear; ticks at multiples of 1, 2 or 5 × 10^e.
    Linear,
    /// Linear over whole numbers (epochs, counts); ticks at whole multiples of 1, 2 or 5 × 10^e.
    Integer,
    /// Base-10 logarithmic; ticks at whole decades. A value ≤ 0 has no place on it and is drawn
    /// at the axis' low end.
    Log,
}

/// How many ticks an axis aims for.
const TARGET_TICKS: i64 = 5;

/// A range narrower than this, relative to its magnitude, is drawn as a constant: below it the
/// ticks would be steps of a few units in the last place of an `f64`.
const RELATIVE_RESOLUTION: f64 = 1e-9;

/// A log axis labels every decade up to this many decades, and every second, third, ... beyond
/// (so at most six labels).
const MAX_DECADE_STEPS: usize = 5;

/// The share of the data's span left empty at each end of a linear axis.
const PADDING: f64 = 0.04;

/// A tick step `mantissa · 10^exponent`, `mantissa` in {1, 2, 5}.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Step {
    mantissa: i64,
    exponent: i32,
}

impl Step {
    fn value(self) -> f64 {
        decimal(self.mantissa, self.exponent)
    }
}

/// `digits · 10^exponent` as the `f64` nearest to that decimal number.
fn decimal(digits: i64, exponent: i32) -> f64 {
    format!("{digits}e{exponent}")
        .parse()
        .expect("a valid float literal")
}

/// `digits · 10^exponent` written out in fixed point with exactly `max(0, −exponent)`
/// decimals: `(5, −2)` → `0.05`, `(10, −2)` → `0.10`, `(−15, −1)` → `-1.5`, `(2, 3)` → `2000`.
fn fixed_point(digits: i64, exponent: i32) -> String {
    let sign = if digits < 0 { "-" } else { "" };
    let magnitude = digits.unsigned_abs().to_string();
    if exponent >= 0 {
        return format!("{sign}{magnitude}{}", "0".repeat(exponent as usize));
    }
    let decimals = exponent.unsigned_abs() as usize;
    let padded = format!("{magnitude:0>width$}", width = decimals + 1);
    let (whole, fraction) = padded.split_at(padded.len() - decimals);
    format!("{sign}{whole}.{fraction}")
}

/// The multiples of `step` in `[lo, hi]`, as whole numbers of steps; a bound within a
/// billionth of a step of a multiple counts as on it (`0.7 / 0.1` is `6.999999999999999`).
fn multiples(lo: f64, hi: f64, step: f64) -> std::ops::RangeInclusive<i64> {
    const SLACK: f64 = 1e-9;
    (lo / step - SLACK).ceil() as i64..=(hi / step + SLACK).floor() as i64
}

/// The 1-2-5 step whose multiples inside `[lo, hi]` (`lo < hi`) number closest to
/// [`TARGET_TICKS`], a tick missing counting twice a tick too many (seven ticks read better than
/// three); on a tie the larger step. With `whole`, no step below 1.
fn choose_step(lo: f64, hi: f64, whole: bool) -> Step {
    let around = ((hi - lo) / TARGET_TICKS as f64).log10().floor() as i32;
    let mut best: Option<(i64, Step)> = None;
    for exponent in around - 1..=around + 1 {
        for mantissa in [1, 2, 5] {
            let step = Step { mantissa, exponent };
            if whole && exponent < 0 {
                continue;
            }
            let count = multiples(lo, hi, step.value()).count() as i64;
            let miss = if count < TARGET_TICKS {
                2 * (TARGET_TICKS - count)
            } else {
                count - TARGET_TICKS
            };
            // candidates come in increasing order, so `<=` keeps the larger step on a tie
            if best.is_none_or(|(best_miss, _)| miss <= best_miss) {
                best = Some((miss, step));
            }
        }
    }
    best.expect("at least the candidates with exponent ≥ 0").1
}

/// The range `[lo, hi]` widened when it is a single value or narrower than
/// [`RELATIVE_RESOLUTION`] of its magnitude: by ±0.5 on an integer axis (so the value's own
/// tick is the only one), by ±10% of the value otherwise (±1 around zero).
fn widened(lo: f64, hi: f64, whole: bool) -> (f64, f64) {
    if hi - lo > RELATIVE_RESOLUTION * lo.abs().max(hi.abs()) {
        return (lo, hi);
    }
    let centre = lo + (hi - lo) / 2.0;
    let half = if whole {
        0.5
    } else if centre == 0.0 {
        1.0
    } else {
        0.1 * centre.abs()
    };
    (centre - half, centre + half)
}

/// Round tick values inside `[lo, hi]`: the multiples of a step 1, 2 or 5 × 10^e, about five
/// of them (`nice_ticks(0.04333, 0.2825)` is `[0.05, 0.10, 0.15, 0.20, 0.25]`). A single value
/// or a range too narrow to resolve in `f64` is widened by 10% of the value (±1 around 0)
/// first; a range with `lo > hi` is read as `[hi, lo]`. Empty for non-finite bounds.
pub fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) {
        return Vec::new();
    }
    linear_ticks(lo.min(hi), lo.max(hi), false)
        .into_iter()
        .map(|t| t.value)
        .collect()
}

/// The decades `10^k` from the one at or below `lo` to the one at or above `hi`, both positive
/// (`log_ticks(3.3e-4, 1.0)` is `[1e-4, 1e-3, 1e-2, 1e-1, 1]`); at least two. Empty when a
/// bound is not positive and finite.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi > 0.0 && lo.is_finite() && hi.is_finite()) {
        return Vec::new();
    }
    let (first, last) = decades(lo.min(hi), lo.max(hi));
    (first..=last).map(|k| decimal(1, k)).collect()
}

/// The decade exponents at or below `lo` and at or above `hi` (`0 < lo ≤ hi`), at least one
/// decade apart.
fn decades(lo: f64, hi: f64) -> (i32, i32) {
    let first = lo.log10().floor() as i32;
    let last = (hi.log10().ceil() as i32).max(first + 1);
    (first, last)
}

/// One labelled tick of an axis.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Tick {
    /// Where it stands, in data units.
    pub value: f64,
    /// Its label: the value in fixed point with the step's decimals, or `10ᵏ`.
    pub label: String,
}

/// Labelled ticks at the multiples of the chosen step inside `[lo, hi]` (widened first when
/// narrower than the resolution).
fn linear_ticks(lo: f64, hi: f64, whole: bool) -> Vec<Tick> {
    if !(lo.is_finite() && hi.is_finite()) {
        return Vec::new();
    }
    let (lo, hi) = widened(lo, hi, whole);
    let step = choose_step(lo, hi, whole);
    multiples(lo, hi, step.value())
        .map(|k| Tick {
            value: decimal(k * step.mantissa, step.exponent),
            label: fixed_point(k * step.mantissa, step.exponent),
        })
        .collect()
}

/// `10` followed by the exponent in superscript digits: `10⁻⁴`, `10⁰`.
fn decade_label(exponent: i32) -> String {
    const SUPERSCRIPT: [char; 10] = ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'];
    let sign = if exponent < 0 { "⁻" } else { "" };
    let digits: String = exponent
        .unsigned_abs()
        .to_string()
        .chars()
        .map(|d| SUPERSCRIPT[d.to_digit(10).expect("a decimal digit") as usize])
        .collect();
    format!("10{sign}{digits}")
}

/// An axis laid out for a set of values: the range it spans, its labelled ticks and, on a log
/// axis, the unlabelled minor ticks (2–9 × each decade).
#[derive(Clone, Debug)]
pub(super) struct AxisLayout {
    scale: Scale,
    /// The ends of the axis, in data units for a linear axis, in decades for a log axis.
    lo: f64,
    hi: f64,
    /// The labelled ticks.
    pub ticks: Vec<Tick>,
    /// Unlabelled minor ticks, in data units.
    pub minor: Vec<f64>,
}

impl AxisLayout {
    /// The axis for `values` (the finite ones; with none, the axis spans 0 to 1, or 10⁻¹ to
    /// 10⁰ on a log axis). A linear axis spans the values' range plus a margin of 4% at each
    /// end, with its ticks inside the values' range; a log axis spans whole decades around the
    /// positive values, with a labelled tick at every decade, or every second, third, ... when
    /// that makes more than six.
    pub fn new(values: impl IntoIterator<Item = f64>, scale: Scale) -> AxisLayout {
        let finite = values.into_iter().filter(|v| v.is_finite());
        match scale {
            Scale::Log => {
                let (lo, hi) = extent(finite.filter(|&v| v > 0.0)).unwrap_or((0.1, 1.0));
                let (first, last) = decades(lo, hi);
                let stride = ((last - first) as usize).div_ceil(MAX_DECADE_STEPS).max(1);
                let ticks = (first..=last)
                    .filter(|k| ((k - first) as usize).is_multiple_of(stride))
                    .map(|k| Tick {
                        value: decimal(1, k),
                        label: decade_label(k),
                    })
                    .collect();
                let minor = if last - first <= 6 {
                    (first..last)
                        .flat_map(|k| (2..=9).map(move |m| decimal(m, k)))
                        .collect()
                } else {
                    Vec::new()
                };
                AxisLayout {
                    scale,
                    lo: f64::from(first),
                    hi: f64::from(last),
                    ticks,
                    minor,
                }
            }
            Scale::Linear | Scale::Integer => {
                let whole = scale == Scale::Integer;
                let (lo, hi) = extent(finite).unwrap_or((0.0, 1.0));
                let ticks = linear_ticks(lo, hi, whole);
                let (lo, hi) = widened(lo, hi, whole);
                let pad = PADDING * (hi - lo);
                AxisLayout {
                    scale,
                    lo: lo - pad,
                    hi: hi + pad,
                    ticks,
                    minor: Vec::new(),
                }
            }
        }
    }

    /// Where `value` falls along the axis: 0 at its low end, 1 at its high end. On a log axis
    /// a value ≤ 0 falls at 0.
    pub fn fraction(&self, value: f64) -> f64 {
        let v = match self.scale {
            Scale::Log if value <= 0.0 => return 0.0,
            Scale::Log => value.log10(),
            Scale::Linear | Scale::Integer => value,
        };
        (v - self.lo) / (self.hi - self.lo)
    }
}

/// The smallest and largest of `values`, if any.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((v.min(lo), v.max(hi))),
    })
}

/// Whether tick labels are round: decimal numbers that are consecutive whole multiples of one
/// step 1, 2 or 5 × 10^e (checked in exact decimal arithmetic, not in floats).
#[cfg(test)]
pub(super) fn round_labels<S: AsRef<str>>(labels: &[S]) -> bool {
    // each label as (digits, number of decimals)
    let parsed: Option<Vec<(i128, u32)>> = labels
        .iter()
        .map(|l| {
            let l = l.as_ref();
            let (whole, fraction) = l.split_once('.').unwrap_or((l, ""));
            let digits = format!("{whole}{fraction}").parse().ok()?;
            Some((digits, fraction.len() as u32))
        })
        .collect();
    let Some(parsed) = parsed else {
        return false;
    };
    let decimals = parsed.iter().map(|p| p.1).max().unwrap_or(0);
    let values: Vec<i128> = parsed
        .iter()
        .map(|&(d, n)| d * 10i128.pow(decimals - n))
        .collect();
    let Some(step) = values.get(1).map(|v| v - values[0]) else {
        return true;
    };
    let mut mantissa = step;
    while mantissa > 0 && mantissa % 10 == 0 {
        mantissa /= 10;
    }
    [1, 2, 5].contains(&mantissa)
        && values.windows(2).all(|w| w[1] - w[0] == step)
        && values.iter().all(|v| v % step == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks_are_round_steps_inside_the_range() {
        assert_eq!(nice_ticks(0.04333, 0.2825), [0.05, 0.10, 0.15, 0.20, 0.25]);
        // seven ticks rather than three (15, 20, 25): a tick missing counts double
        assert_eq!(
            nice_ticks(13.89, 27.83),
            [14.0, 16.0, 18.0, 20.0, 22.0, 24.0, 26.0]
        );
        assert_eq!(nice_ticks(0.0, 1.0), [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(nice_ticks(-3.7, 4.2), [-2.0, 0.0, 2.0, 4.0]);
        for (lo, hi) in [
            (36.69, 31.51),
            (0.1113, 0.6825),
            (1.0, 40.0),
            (-1e-7, 3e-7),
            (12345.0, 12346.5),
            (0.98889, 0.98890),
        ] {
            let ticks = nice_ticks(lo, hi);
            assert!((4..=8).contains(&ticks.len()), "{lo}..{hi}: {ticks:?}");
            let labels: Vec<String> = linear_ticks(lo.min(hi), lo.max(hi), false)
                .into_iter()
                .map(|t| t.label)
                .collect();
            assert!(round_labels(&labels), "{lo}..{hi}: {labels:?}");
            let (lo, hi) = (lo.min(hi), lo.max(hi));
            assert!(ticks.iter().all(|t| (lo..=hi).contains(t)), "{ticks:?}");
        }
    }

    #[test]
    fn the_roundness_check_refuses_what_is_not_round() {
        assert!(round_labels(&["0.05", "0.10", "0.15"]));
        assert!(round_labels(&["-20", "0", "20"]));
        assert!(round_labels(&["10"]));
        assert!(!round_labels(&["13.89", "17.38", "20.86"])); // data-driven
        assert!(!round_labels(&["0.3", "0.6", "0.9"])); // a step of 3
        assert!(!round_labels(&["0.05", "0.25", "0.45"])); // step 0.2, values off its multiples
        assert!(!round_labels(&["1", "2", "4"])); // uneven
        assert!(!round_labels(&["1e-3"]));
    }

    #[test]
    fn a_single_value_or_an_unresolvable_range_gets_ticks_around_it() {
        assert_eq!(nice_ticks(0.5, 0.5), [0.46, 0.48, 0.5, 0.52, 0.54]);
        assert_eq!(nice_ticks(0.0, 0.0), [-1.0, -0.5, 0.0, 0.5, 1.0]);
        assert_eq!(
            nice_ticks(36.29, 36.29),
            [33.0, 34.0, 35.0, 36.0, 37.0, 38.0, 39.0]
        );
        // a range of a few ulps is a constant, not steps of 1e-16
        let ticks = nice_ticks(1.0, 1.0 + 4.0 * f64::EPSILON);
        assert_eq!(ticks, [0.9, 0.95, 1.0, 1.05, 1.1]);
        assert!(nice_ticks(f64::NAN, 1.0).is_empty());
        assert!(nice_ticks(0.0, f64::INFINITY).is_empty());
    }

    #[test]
    fn integer_axes_step_by_whole_numbers() {
        let labels = |lo, hi| -> Vec<String> {
            linear_ticks(lo, hi, true)
                .into_iter()
                .map(|t| t.label)
                .collect()
        };
        assert_eq!(labels(1.0, 1.0), ["1"]); // one epoch: its own tick, no 0.75 or 1.25
        assert_eq!(labels(1.0, 2.0), ["1", "2"]);
        assert_eq!(labels(1.0, 5.0), ["1", "2", "3", "4", "5"]);
        assert_eq!(labels(1.0, 40.0), ["10", "20", "30", "40"]);
        assert_eq!(labels(1.0, 20.0), ["5", "10", "15", "20"]);
        assert_eq!(
            labels(1.0, 300.0),
            ["50", "100", "150", "200", "250", "300"]
        );
    }

    #[test]
    fn labels_are_the_steps_decimals_not_float_noise() {
        let labels: Vec<String> = linear_ticks(0.04333, 0.2825, false)
            .into_iter()
            .map(|t| t.label)
            .collect();
        assert_eq!(labels, ["0.05", "0.10", "0.15", "0.20", "0.25"]);
        let labels: Vec<String> = linear_ticks(0.1, 0.7, false)
            .into_iter()
            .map(|t| t.label)
            .collect();
        assert_eq!(labels, ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"]);
        assert_eq!(fixed_point(-15, -1), "-1.5");
        assert_eq!(fixed_point(-5, -3), "-0.005");
        assert_eq!(fixed_point(0, -2), "0.00");
        assert_eq!(fixed_point(2, 3), "2000");
    }

    #[test]
    fn log_ticks_are_decades() {
        assert_eq!(log_ticks(3.3e-4, 1.0), [1e-4, 1e-3, 1e-2, 1e-1, 1.0]);
        assert_eq!(log_ticks(0.02, 0.05), [1e-2, 1e-1]); // at least one decade
        assert_eq!(log_ticks(1.0, 1.0), [1.0, 10.0]);
        assert_eq!(log_ticks(10.0, 1000.0), [10.0, 100.0, 1000.0]);
        assert!(log_ticks(0.0, 1.0).is_empty());
        let axis = AxisLayout::new([0.0, 0.0, 1.0 / 3000.0, 0.5, 1.0], Scale::Log);
        let labels: Vec<&str> = axis.ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["10⁻⁴", "10⁻³", "10⁻²", "10⁻¹", "10⁰"]);
        assert_eq!(axis.minor.len(), 4 * 8);
        // a FAR of 0 has no place on a log axis: it is drawn at the axis' low end
        assert_eq!(axis.fraction(0.0), 0.0);
        assert_eq!(axis.fraction(1e-4), 0.0);
        assert_eq!(axis.fraction(1.0), 1.0);
    }

    #[test]
    fn many_decades_label_every_second_or_third() {
        let axis = AxisLayout::new([1e-12, 1.0], Scale::Log);
        let labels: Vec<&str> = axis.ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["10⁻¹²", "10⁻⁹", "10⁻⁶", "10⁻³", "10⁰"]);
        assert!(axis.minor.is_empty());
        // no positive value at all: a default decade, every point at the low end
        let axis = AxisLayout::new([0.0, -1.0], Scale::Log);
        assert_eq!(axis.ticks.len(), 2);
    }

    #[test]
    fn a_linear_axis_pads_its_range_and_keeps_ticks_inside() {
        let axis = AxisLayout::new([13.89, 27.83, f64::NAN], Scale::Linear);
        assert!(axis.fraction(13.89) > 0.0 && axis.fraction(27.83) < 1.0);
        assert!((axis.fraction(13.89) - 0.04 / 1.08).abs() < 1e-12);
        for t in &axis.ticks {
            assert!((0.0..=1.0).contains(&axis.fraction(t.value)));
        }
        // one epoch: the point in the middle, its tick under it
        let axis = AxisLayout::new([1.0], Scale::Integer);
        assert_eq!(axis.fraction(1.0), 0.5);
        assert_eq!(axis.ticks.len(), 1);
        // nothing finite: a unit axis
        let axis = AxisLayout::new([f64::NAN], Scale::Linear);
        assert!(!axis.ticks.is_empty());
    }
}
