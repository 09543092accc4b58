//! The report's figures, drawn with `plotters` as PNG and SVG in the manner of the paper's
//! evaluation: one figure per metric with a bar per subject (the reference in grey, every
//! raw sample a dot on its bar), lines over the parameter for metrics that have one
//! (all-to-all time over the number of nodes), and one figure of the ratios to the
//! reference with each target marked.
//!
//! Text is rendered with DejaVu Sans, read at run time from [`FONT`] (Debian's
//! `fonts-dejavu-core`), so that no C font library is linked.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::results::{Results, TargetOn};

/// The font every figure's text is drawn with.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The family name the figures ask plotters for.
const FAMILY: &str = "sans-serif";

/// Size of every figure, in pixels.
const SIZE: (u32, u32) = (900, 540);

/// The reference's colour.
const REFERENCE_COLOR: RGBColor = RGBColor(150, 150, 150);

/// The subjects' colours, in order (a colour-blind safe set).
const COLORS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
];

/// A target line's colour.
const TARGET_COLOR: RGBColor = RGBColor(200, 0, 0);

/// One bar: a subject's median and its samples.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bar {
    pub(crate) label: String,
    pub(crate) value: f64,
    pub(crate) samples: Vec<f64>,
    pub(crate) reference: bool,
    /// A target drawn across the bar.
    pub(crate) target: Option<f64>,
}

/// One line: a subject's medians over the parameter, and its samples.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line {
    pub(crate) label: String,
    pub(crate) reference: bool,
    pub(crate) medians: Vec<(f64, f64)>,
    pub(crate) samples: Vec<(f64, f64)>,
}

/// What one figure shows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Chart {
    /// A bar per subject; `parity` draws a line at 1 (ratio figures).
    Bars { bars: Vec<Bar>, parity: bool },
    /// A line per subject over `x_label`.
    Lines { x_label: String, lines: Vec<Line> },
}

/// A figure, before it is drawn.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Figure {
    /// The file name without extension.
    pub(crate) name: String,
    pub(crate) title: String,
    pub(crate) y_label: String,
    pub(crate) chart: Chart,
}

/// The figures of `results`: one per metric with samples, and the ratios if any.
pub(crate) fn figures(results: &Results) -> Vec<Figure> {
    let references: Vec<&str> =
        results.comparisons.iter().filter_map(|c| c.reference.as_deref()).collect();
    let mut figures = Vec::new();
    for metric in &results.metrics {
        let series: Vec<_> = results
            .series
            .iter()
            .filter(|s| s.metric == metric.id && !s.samples.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let chart = match metric.x_label {
            None => Chart::Bars {
                bars: series
                    .iter()
                    .map(|s| Bar {
                        label: s.subject.clone(),
                        value: s.median(),
                        samples: s.samples.clone(),
                        reference: references.contains(&s.subject.as_str()),
                        target: results
                            .comparisons
                            .iter()
                            .find(|c| c.metric == metric.id && c.subject == s.subject)
                            .and_then(|c| c.target)
                            .filter(|t| t.on == TargetOn::Median)
                            .map(|t| t.value),
                    })
                    .collect(),
                parity: false,
            },
            Some(x_label) => {
                let mut lines: Vec<Line> = Vec::new();
                for s in &series {
                    let x = s.x.unwrap_or(0.0);
                    let index = match lines.iter().position(|l| l.label == s.subject) {
                        Some(index) => index,
                        None => {
                            lines.push(Line {
                                label: s.subject.clone(),
                                reference: references.contains(&s.subject.as_str()),
                                medians: Vec::new(),
                                samples: Vec::new(),
                            });
                            lines.len() - 1
                        }
                    };
                    lines[index].medians.push((x, s.median()));
                    lines[index].samples.extend(s.samples.iter().map(|&v| (x, v)));
                }
                Chart::Lines { x_label: x_label.to_owned(), lines }
            }
        };
        figures.push(Figure {
            name: metric.id.to_owned(),
            title: metric.title.clone(),
            y_label: metric.unit.to_owned(),
            chart,
        });
    }

    let ratios: Vec<Bar> = results
        .comparisons
        .iter()
        .filter(|c| c.reference.is_some())
        .filter_map(|c| {
            let ratio = results.ratio(c);
            let metric = results.metric(c.metric)?;
            let at = match (c.x, metric.x_label) {
                (Some(x), Some(x_label)) => format!(" at {x} {x_label}"),
                (Some(x), None) => format!(" at {x}"),
                (None, _) => String::new(),
            };
            ratio.is_finite().then(|| Bar {
                label: format!("{} {}{at}", c.subject, metric.id.replace('_', " ")),
                value: ratio,
                samples: Vec::new(),
                reference: false,
                target: c.target.filter(|t| t.on == TargetOn::Ratio).map(|t| t.value),
            })
        })
        .collect();
    if !ratios.is_empty() {
        figures.push(Figure {
            name: "ratios".to_owned(),
            title: format!(
                "{} benchmark: ratio to the reference (red: target)",
                results.kind.name()
            ),
            y_label: "x reference".to_owned(),
            chart: Chart::Bars { bars: ratios, parity: true },
        });
    }
    figures
}

/// Draws every figure of `results` into `dir` as `NAME.png` and `NAME.svg`, and returns
/// the files written.
pub fn write_all(results: &Results, dir: &Path) -> Result<Vec<PathBuf>> {
    load_font()?;
    let mut written = Vec::new();
    for figure in figures(results) {
        let png = dir.join(format!("{}.png", figure.name));
        {
            let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
            draw(&root, &figure).map_err(|err| anyhow!("cannot draw {}: {err}", png.display()))?;
        }
        written.push(png);

        let svg = dir.join(format!("{}.svg", figure.name));
        {
            let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
            draw(&root, &figure).map_err(|err| anyhow!("cannot draw {}: {err}", svg.display()))?;
        }
        written.push(svg);
    }
    Ok(written)
}

/// Fails, naming the package to install, when the plots' font cannot be loaded: a
/// benchmark checks it before it measures for minutes.
pub fn check_font() -> Result<()> {
    load_font()
}

/// Reads [`FONT`] and hands it to plotters, once per process.
fn load_font() -> Result<()> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        let bytes = std::fs::read(FONT).map_err(|err| {
            format!(
                "cannot read the plots' font {FONT} ({err}): install it with \
                 `apt-get install fonts-dejavu-core`"
            )
        })?;
        // plotters keeps fonts for the whole process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT} is not a font plotters can read"))
    });
    match loaded {
        Ok(()) => Ok(()),
        Err(message) => bail!("{message}"),
    }
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Draws `figure` on `root` and writes it out.
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, figure: &Figure) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    match &figure.chart {
        Chart::Bars { bars, parity } => draw_bars(root, figure, bars, *parity)?,
        Chart::Lines { x_label, lines } => draw_lines(root, figure, x_label, lines)?,
    }
    root.present()
}

/// The top of the value axis: a little above the largest value shown.
fn axis_top(values: impl Iterator<Item = f64>) -> f64 {
    let largest = values.filter(|v| v.is_finite()).fold(0.0, f64::max);
    if largest > 0.0 {
        largest * 1.15
    } else {
        1.0
    }
}

fn color_of(index: usize, reference: bool) -> RGBColor {
    if reference {
        REFERENCE_COLOR
    } else {
        COLORS[index % COLORS.len()]
    }
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    figure: &Figure,
    bars: &[Bar],
    parity: bool,
) -> DrawResult<DB> {
    let values = bars
        .iter()
        .flat_map(|b| std::iter::once(b.value).chain(b.samples.iter().copied()).chain(b.target));
    let top = axis_top(values.chain(parity.then_some(1.0)));
    // A lone bar gets an empty slot on each side, so that it is not as wide as the chart.
    let pad = u32::from(bars.len() == 1);
    let slots = bars.len() as u32 + 2 * pad;
    let slot = |i: usize| i as u32 + pad;
    let mut chart = ChartBuilder::on(root)
        .caption(&figure.title, (FAMILY, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72)
        // A discrete range holds both its ends: 0..slots - 1 is one segment per slot.
        .build_cartesian_2d((0..slots - 1).into_segmented(), 0.0..top)?;
    let label = |value: &SegmentValue<u32>| match value {
        SegmentValue::CenterOf(s) => s
            .checked_sub(pad)
            .and_then(|i| bars.get(i as usize))
            .map_or(String::new(), |b| b.label.clone()),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(slots as usize)
        .x_label_formatter(&label)
        .y_desc(&figure.y_label)
        .label_style((FAMILY, if bars.len() > 4 { 12 } else { 15 }))
        .axis_desc_style((FAMILY, 16))
        .draw()?;

    let mut colors = 0;
    chart.draw_series(bars.iter().enumerate().map(|(i, bar)| {
        let color = color_of(colors, bar.reference);
        colors += usize::from(!bar.reference);
        let corners =
            [(SegmentValue::Exact(slot(i)), 0.0), (SegmentValue::Exact(slot(i) + 1), bar.value)];
        let mut rectangle = Rectangle::new(corners, color.filled());
        rectangle.set_margin(0, 0, 14, 14);
        rectangle
    }))?;
    let samples = bars.iter().enumerate().flat_map(|(i, bar)| {
        bar.samples.iter().map(move |&v| (SegmentValue::CenterOf(slot(i)), v))
    });
    chart.draw_series(samples.map(|point| Circle::new(point, 3, BLACK.filled())))?;
    let targets = bars.iter().enumerate().filter_map(|(i, bar)| {
        bar.target.map(|t| {
            PathElement::new(
                vec![(SegmentValue::Exact(slot(i)), t), (SegmentValue::Exact(slot(i) + 1), t)],
                TARGET_COLOR.stroke_width(3),
            )
        })
    });
    chart.draw_series(targets)?;
    if parity {
        let line = vec![(SegmentValue::Exact(0), 1.0), (SegmentValue::Exact(slots), 1.0)];
        chart.draw_series(std::iter::once(PathElement::new(line, BLACK.stroke_width(1))))?;
    }
    Ok(())
}

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    figure: &Figure,
    x_label: &str,
    lines: &[Line],
) -> DrawResult<DB> {
    let xs = lines.iter().flat_map(|l| l.medians.iter().map(|&(x, _)| x));
    let (low, high) =
        xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (low, high) = if low < high { (low - 0.25, high + 0.25) } else { (low - 1.0, low + 1.0) };
    let values = lines.iter().flat_map(|l| l.samples.iter().chain(&l.medians).map(|&(_, y)| y));
    let top = axis_top(values);
    let mut chart = ChartBuilder::on(root)
        .caption(&figure.title, (FAMILY, 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(low..high, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(&figure.y_label)
        // Only whole numbers of nodes are labelled.
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-9 {
                format!("{x:.0}")
            } else {
                String::new()
            }
        })
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 16))
        .draw()?;

    let mut colors = 0;
    for line in lines {
        let color = color_of(colors, line.reference);
        colors += usize::from(!line.reference);
        chart
            .draw_series(LineSeries::new(line.medians.iter().copied(), color.stroke_width(3)))?
            .label(&line.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart.draw_series(line.samples.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::synthetic;
    use crate::results::{Comparison, Series, Target};

    #[test]
    fn figures_show_each_metric_and_the_ratios() {
        let figures = figures(&synthetic());
        let names: Vec<&str> = figures.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["bandwidth", "all_to_all", "memory", "ratios"]);

        let Chart::Bars { bars, parity: false } = &figures[0].chart else { panic!() };
        let labels: Vec<&str> = bars.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["reference", "p2p-tree"], "subjects without samples are left out");
        assert!(bars[0].reference && !bars[1].reference);
        assert_eq!(bars[1].value, 190.0);
        assert_eq!(bars[1].samples, [200.0, 180.0]);

        let Chart::Lines { x_label, lines } = &figures[1].chart else { panic!() };
        assert_eq!(x_label, "nodes");
        assert_eq!(lines[1].medians, [(2.0, 2.5), (3.0, 9.0)]);

        let Chart::Bars { bars, .. } = &figures[2].chart else { panic!() };
        assert_eq!(bars[0].target, Some(30.0));

        let Chart::Bars { bars, parity: true } = &figures[3].chart else { panic!() };
        assert_eq!(bars.len(), 1, "a ratio that is not a number is not drawn");
        assert_eq!(bars[0].label, "p2p-tree bandwidth");
        assert_eq!(bars[0].target, Some(0.5));
    }

    #[test]
    fn ratios_over_a_parameter_name_their_x() {
        let mut results = synthetic();
        results.series.push(Series {
            metric: "all_to_all",
            subject: "reference".to_owned(),
            x: Some(3.0),
            samples: vec![3.0],
        });
        results.comparisons = vec![Comparison {
            metric: "all_to_all",
            subject: "p2p-tree".to_owned(),
            x: Some(3.0),
            reference: Some("reference".to_owned()),
            target: Some(Target { on: TargetOn::Ratio, at_least: false, value: 1.5 }),
        }];
        let figures = figures(&results);
        let ratios = figures.iter().find(|f| f.name == "ratios").unwrap();
        let Chart::Bars { bars, parity: true } = &ratios.chart else { panic!() };
        assert_eq!(bars.len(), 1);
        assert_eq!(bars[0].label, "p2p-tree all to all at 3 nodes");
        assert_eq!(bars[0].value, 3.0);
        assert_eq!(bars[0].target, Some(1.5));
    }

    #[test]
    fn every_figure_is_written_as_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_all(&synthetic(), dir.path()).unwrap();
        assert_eq!(written.len(), 8);
        for path in &written {
            let bytes = std::fs::read(path).unwrap();
            match path.extension().and_then(|e| e.to_str()) {
                Some("png") => assert!(bytes.starts_with(b"\x89PNG"), "{}", path.display()),
                _ => {
                    let text = String::from_utf8(bytes).unwrap();
                    assert!(text.starts_with("<svg") && text.contains("</text>"), "{text}");
                }
            }
        }
    }
}
