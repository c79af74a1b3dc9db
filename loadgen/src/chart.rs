//! PNG charts of a run's time series: one or more panels stacked on a shared time axis, each with
//! its own y axis and legend, and dashed vertical markers for events (the on-sale, sold out, an
//! injected fault) drawn across every panel and labelled above the first.
//!
//! Text is drawn with subsets of DejaVu Sans embedded in the binary (`loadgen/assets/`, with its
//! licence and how it was cut), so a chart looks the same on a machine without a single system
//! font, and plotters needs neither fontconfig nor freetype.

use std::{ops::Range, path::Path, sync::OnceLock};

use anyhow::Context as _;
use plotters::{
    coord::Shift,
    prelude::*,
    style::{
        FontStyle,
        text_anchor::{HPos, Pos, VPos},
    },
};

/// One named line: `points` are `(seconds since the run started, value)`. A non-finite value or
/// time (a second with no samples, say) leaves a gap in the line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// Shown in the panel's legend; an empty name has no legend entry.
    pub name: String,
    /// In time order.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series named `name`.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
        }
    }
}

/// An event at `at` seconds: a dashed vertical line on every panel, `label` above the first one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Marker {
    /// Seconds since the run started.
    pub at: f64,
    /// A few words: "on-sale", "sold out", "kill -9 booking-worker".
    pub label: String,
}

impl Marker {
    /// A marker at `at` seconds.
    pub fn new(at: f64, label: impl Into<String>) -> Self {
        Self {
            at,
            label: label.into(),
        }
    }
}

/// One plot area: series sharing a unit, so one y axis.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Panel {
    /// The y axis title, with its unit: "queue length (fans)", "latency (ms)".
    pub y_label: String,
    /// Drawn in order, each in its own colour.
    pub series: Vec<Series>,
}

impl Panel {
    /// A panel whose y axis is titled `y_label`.
    pub fn new(y_label: impl Into<String>, series: Vec<Series>) -> Self {
        Self {
            y_label: y_label.into(),
            series,
        }
    }
}

/// A chart: panels stacked top to bottom on one time axis, markers across all of them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Chart {
    /// Above everything.
    pub title: String,
    /// The shared x axis title, under the bottom panel: "time since start (s)".
    pub x_label: String,
    /// Top to bottom; a chart without panels is drawn as one empty panel.
    pub panels: Vec<Panel>,
    /// Events, drawn on every panel.
    pub markers: Vec<Marker>,
}

impl Chart {
    /// The image size in pixels: 1200×600 for one panel, taller for more.
    pub fn size(&self) -> (u32, u32) {
        let panels = u32::try_from(self.panels.len().max(1)).unwrap_or(u32::MAX);
        (WIDTH, 600_u32.max(panels.saturating_mul(270).saturating_add(160)))
    }
}

/// Draws `chart` into a PNG file at `path` (which must end in `.png`), of [`Chart::size`].
pub fn render_png(chart: &Chart, path: &Path) -> anyhow::Result<()> {
    // The bitmap backend picks its encoder from the file extension.
    anyhow::ensure!(
        path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("png")),
        "a chart is written as PNG, to a path ending in .png: {}",
        path.display()
    );
    register_fonts()?;
    let root = BitMapBackend::new(path, chart.size()).into_drawing_area();
    draw(chart, &root).map_err(|e| anyhow::anyhow!("cannot draw the chart {:?}: {e}", chart.title))?;
    root.present()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot write the chart {}", path.display()))
}

/// An axis tick label: at most two decimals (three significant digits below 1), thousands as
/// `k`, `M`, `G`, `T` (`1500` is `1.5k`), so that large counts keep the y axis narrow.
pub fn format_tick(value: f64) -> String {
    if !value.is_finite() {
        return String::new();
    }
    let magnitude = value.abs();
    let (scaled, suffix) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(unit, _)| magnitude >= *unit)
        .map_or((value, ""), |(unit, suffix)| (value / unit, suffix));
    let decimals = if scaled.abs() >= 1.0 || scaled == 0.0 {
        2
    } else {
        // Small values keep three significant digits: 0.00125 stays 0.00125.
        usize::try_from((-scaled.abs().log10()).ceil() as i64 + 2)
            .unwrap_or(2)
            .min(12)
    };
    let mut text = format!("{scaled:.decimals$}");
    if text.contains('.') {
        text.truncate(text.trim_end_matches('0').trim_end_matches('.').len());
    }
    if text == "-0" {
        text = "0".to_owned();
    }
    text.push_str(suffix);
    text
}

static REGULAR: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
static BOLD: &[u8] = include_bytes!("../assets/DejaVuSans-Bold-subset.ttf");
const FONT: &str = "sans-serif";

/// Makes the embedded fonts plotters' "sans-serif", once per process.
fn register_fonts() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, REGULAR).is_ok()
            && plotters::style::register_font(FONT, FontStyle::Bold, BOLD).is_ok()
    });
    anyhow::ensure!(registered, "the embedded chart font cannot be read");
    Ok(())
}

const WIDTH: u32 = 1200;
/// Space for the title above the marker labels.
const TITLE_HEIGHT: i32 = 50;
const TITLE_SIZE: f64 = 24.0;
/// Left of the y axis title.
const LEFT_MARGIN: i32 = 16;
/// Right of the plot areas, so the last x tick label fits.
const RIGHT_MARGIN: i32 = 36;
/// The y axis title and tick labels.
const Y_LABEL_AREA: i32 = 84;
/// The x tick labels and axis title, under the bottom panel only.
const X_LABEL_AREA: i32 = 52;
const BOTTOM_MARGIN: i32 = 8;
/// Between stacked panels.
const PANEL_GAP: i32 = 14;
const MARKER_LABEL_SIZE: f64 = 14.0;
const LEGEND_TEXT_SIZE: f64 = 14.0;
/// Between the legend and the plot's top-right corner.
const LEGEND_MARGIN: i32 = 8;
/// Inside the legend's frame.
const LEGEND_PADDING: i32 = 8;
const LEGEND_ROW_HEIGHT: i32 = 20;
/// The coloured line before each name.
const LEGEND_SWATCH: i32 = 22;
const LEGEND_SWATCH_GAP: i32 = 6;
const LEGEND_ENTRY_GAP: i32 = 18;
const MARKER_ROW_HEIGHT: i32 = 20;
/// Marker labels beyond this many rows overlap instead of pushing the panels down.
const MARKER_ROWS: usize = 8;

const INK: RGBColor = RGBColor(34, 34, 34);
const MUTED_INK: RGBColor = RGBColor(85, 85, 85);
const AXIS: RGBColor = RGBColor(140, 140, 140);
const GRID: RGBColor = RGBColor(228, 228, 228);
const MARKER: RGBColor = RGBColor(110, 110, 110);
/// Tableau 10: distinct and still readable by most colour-blind viewers.
const PALETTE: [RGBColor; 10] = [
    RGBColor(78, 121, 167),
    RGBColor(242, 142, 43),
    RGBColor(225, 87, 89),
    RGBColor(89, 161, 79),
    RGBColor(176, 122, 161),
    RGBColor(118, 183, 178),
    RGBColor(237, 201, 72),
    RGBColor(156, 117, 95),
    RGBColor(255, 157, 167),
    RGBColor(186, 176, 172),
];

/// Where a marker's label goes in the band above the first panel.
struct MarkerLabel<'a> {
    text: &'a str,
    /// The marker's x in pixels.
    line_x: i32,
    /// The label's left edge in pixels.
    text_x: i32,
    row: usize,
}

fn draw<DB: DrawingBackend>(
    chart: &Chart,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (width, height) = root.dim_in_pixel();
    let (width, height) = (
        i32::try_from(width).unwrap_or(i32::MAX),
        i32::try_from(height).unwrap_or(i32::MAX),
    );
    // `FontDesc::style` keeps the regular glyphs: the style has to be given when the font is made.
    let title_style = (FONT, TITLE_SIZE, FontStyle::Bold)
        .into_font()
        .color(&INK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    root.draw(&Text::new(
        chart.title.as_str(),
        (width / 2, TITLE_HEIGHT / 2 + 2),
        title_style,
    ))?;

    let x_range = x_range(chart);
    let plot_left = LEFT_MARGIN + Y_LABEL_AREA;
    let plot_right = width - RIGHT_MARGIN;
    let labels = place_marker_labels(root, &chart.markers, &x_range, plot_left..plot_right)?;
    let rows = labels.iter().map(|label| label.row + 1).max().unwrap_or(0);
    let band = if rows == 0 {
        12
    } else {
        i32::try_from(rows).unwrap_or(1) * MARKER_ROW_HEIGHT + 12
    };

    let empty = [Panel::default()];
    let panels = if chart.panels.is_empty() {
        &empty[..]
    } else {
        &chart.panels[..]
    };
    let count = i32::try_from(panels.len()).unwrap_or(i32::MAX);
    let plots_top = TITLE_HEIGHT + band;
    let plots_bottom = height - BOTTOM_MARGIN - X_LABEL_AREA;
    let plot_height = ((plots_bottom - plots_top - (count - 1) * PANEL_GAP) / count).max(20);

    let marker_label_style = (FONT, MARKER_LABEL_SIZE)
        .into_font()
        .color(&INK)
        .pos(Pos::new(HPos::Left, VPos::Top));
    for label in &labels {
        let row_top = TITLE_HEIGHT + i32::try_from(label.row).unwrap_or(0) * MARKER_ROW_HEIGHT;
        root.draw(&Text::new(
            label.text,
            (label.text_x, row_top),
            marker_label_style.clone(),
        ))?;
        // A thin lead from under the label to the first plot's top edge, where the dashes begin.
        root.draw(&PathElement::new(
            vec![
                (label.line_x, row_top + MARKER_ROW_HEIGHT - 4),
                (label.line_x, plots_top),
            ],
            MARKER.mix(0.6).stroke_width(1),
        ))?;
    }

    let tick_style = (FONT, 14).into_font().color(&MUTED_INK);
    let axis_title_style = (FONT, 15).into_font().color(&INK);
    let legend_style = TextStyle::from((FONT, LEGEND_TEXT_SIZE).into_font()).color(&INK);
    let format = |value: &f64| format_tick(*value);
    let mut colours = PALETTE.iter().cycle();
    for (index, panel) in panels.iter().enumerate() {
        let last = index + 1 == panels.len();
        let top = plots_top + i32::try_from(index).unwrap_or(0) * (plot_height + PANEL_GAP);
        let area_height = plot_height + if last { X_LABEL_AREA } else { 0 };
        let area = root
            .clone()
            .shrink((LEFT_MARGIN, top), (width - LEFT_MARGIN, area_height));
        let legend = layout_legend(root, panel, plot_right - plot_left - 2 * LEGEND_MARGIN)?;
        let y_range = y_range(panel, legend.height + LEGEND_MARGIN, plot_height);
        let mut plot = ChartBuilder::on(&area)
            .margin_right(RIGHT_MARGIN)
            .y_label_area_size(Y_LABEL_AREA)
            .x_label_area_size(if last { X_LABEL_AREA } else { 0 })
            .build_cartesian_2d(x_range.clone(), y_range.clone())?;

        let mut mesh = plot.configure_mesh();
        mesh.bold_line_style(GRID.stroke_width(1))
            .light_line_style(TRANSPARENT)
            .axis_style(AXIS.stroke_width(1))
            .x_labels(12)
            .y_labels(6)
            .label_style(tick_style.clone())
            .axis_desc_style(axis_title_style.clone())
            .x_label_formatter(&format)
            .y_label_formatter(&format)
            .y_desc(panel.y_label.as_str());
        if last {
            mesh.x_desc(chart.x_label.as_str());
        }
        mesh.draw()?;

        // Markers first, so the data lines run over them.
        for marker in chart.markers.iter().filter(|marker| marker.at.is_finite()) {
            plot.draw_series(DashedLineSeries::new(
                [(marker.at, y_range.start), (marker.at, y_range.end)],
                6,
                4,
                MARKER.stroke_width(1),
            ))?;
        }

        let mut legend_colours = Vec::with_capacity(panel.series.len());
        for series in &panel.series {
            let colour = *colours.next().unwrap_or(&PALETTE[0]);
            let runs = finite_runs(&series.points);
            plot.draw_series(
                runs.iter()
                    .filter(|run| run.len() > 1)
                    .map(|run| PathElement::new(run.clone(), colour.stroke_width(2))),
            )?;
            // A point with no neighbour would draw nothing as a line.
            plot.draw_series(
                runs.iter()
                    .filter(|run| run.len() == 1)
                    .map(|run| Circle::new(run[0], 3, colour.filled())),
            )?;
            if !series.name.is_empty() {
                legend_colours.push(colour);
            }
        }

        let (plot_x, plot_y) = plot.plotting_area().get_pixel_range();
        draw_legend(
            root,
            &legend,
            &legend_colours,
            (plot_x.end - LEGEND_MARGIN, plot_y.start + LEGEND_MARGIN),
            &legend_style,
        )?;
    }
    Ok(())
}

/// A legend laid out in rows of `(name, x offset)` entries, each row right-aligned.
struct Legend<'a> {
    rows: Vec<Vec<(&'a str, i32)>>,
    /// The widest row, with padding.
    width: i32,
    /// With padding; 0 for no legend.
    height: i32,
}

/// Lays out the names of `panel`'s named series side by side, wrapping to keep within `max_width`
/// pixels: one row in the usual case, so the legend costs little height.
fn layout_legend<'a, DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panel: &'a Panel,
    max_width: i32,
) -> Result<Legend<'a>, DrawingAreaErrorKind<DB::ErrorType>> {
    let style = TextStyle::from((FONT, LEGEND_TEXT_SIZE).into_font());
    let mut rows: Vec<Vec<(&str, i32)>> = Vec::new();
    let mut row_widths: Vec<i32> = Vec::new();
    for series in panel.series.iter().filter(|series| !series.name.is_empty()) {
        let text_width = i32::try_from(root.estimate_text_size(&series.name, &style)?.0).unwrap_or(0);
        let entry = LEGEND_SWATCH + LEGEND_SWATCH_GAP + text_width;
        match (rows.last_mut(), row_widths.last_mut()) {
            (Some(row), Some(width)) if *width + LEGEND_ENTRY_GAP + entry + 2 * LEGEND_PADDING <= max_width => {
                row.push((&series.name, *width + LEGEND_ENTRY_GAP));
                *width += LEGEND_ENTRY_GAP + entry;
            }
            _ => {
                rows.push(vec![(&series.name, 0)]);
                row_widths.push(entry);
            }
        }
    }
    let width = row_widths.iter().max().map_or(0, |widest| widest + 2 * LEGEND_PADDING);
    let height = if rows.is_empty() {
        0
    } else {
        i32::try_from(rows.len()).unwrap_or(1) * LEGEND_ROW_HEIGHT + 2 * LEGEND_PADDING - 6
    };
    Ok(Legend { rows, width, height })
}

/// Draws `legend` with its top-right corner at `top_right`, `colours` in the order of its entries.
fn draw_legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    legend: &Legend<'_>,
    colours: &[RGBColor],
    (right, top): (i32, i32),
    style: &TextStyle<'_>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    if legend.rows.is_empty() {
        return Ok(());
    }
    let left = right - legend.width;
    let corners = [(left, top), (right, top + legend.height)];
    root.draw(&Rectangle::new(corners, WHITE.mix(0.92).filled()))?;
    root.draw(&Rectangle::new(corners, GRID.stroke_width(1)))?;
    let text_style = style.pos(Pos::new(HPos::Left, VPos::Center));
    let mut colours = colours.iter();
    for (index, row) in legend.rows.iter().enumerate() {
        let middle =
            top + LEGEND_PADDING + i32::try_from(index).unwrap_or(0) * LEGEND_ROW_HEIGHT + LEGEND_ROW_HEIGHT / 2 - 3;
        for (name, offset) in row {
            let colour = *colours.next().unwrap_or(&PALETTE[0]);
            let x = left + LEGEND_PADDING + offset;
            root.draw(&PathElement::new(
                vec![(x, middle), (x + LEGEND_SWATCH, middle)],
                colour.stroke_width(3),
            ))?;
            root.draw(&Text::new(
                *name,
                (x + LEGEND_SWATCH + LEGEND_SWATCH_GAP, middle),
                text_style.clone(),
            ))?;
        }
    }
    Ok(())
}

/// Axis ranges are kept within ±this, so that their span and headroom stay finite: plotters never
/// finishes laying out ticks on an infinite range. Larger values are drawn off the chart.
const EXTREME: f64 = f64::MAX / 4.0;

/// Seconds from 0 (or an earlier point) to the last point or marker.
fn x_range(chart: &Chart) -> Range<f64> {
    let xs = chart
        .panels
        .iter()
        .flat_map(|panel| &panel.series)
        .flat_map(|series| &series.points)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(x, _)| *x)
        .chain(chart.markers.iter().map(|marker| marker.at).filter(|at| at.is_finite()))
        .map(|x| x.clamp(-EXTREME, EXTREME));
    let (low, high) = xs.fold((0.0_f64, 0.0_f64), |(low, high), x| (low.min(x), high.max(x)));
    if high - low > 0.0 { low..high } else { low..low + 1.0 }
}

/// From 0 (or the lowest value) to the highest value, leaving the top `reserved` of the
/// `plot_height` pixels to the legend so that it never hides a line.
fn y_range(panel: &Panel, reserved: i32, plot_height: i32) -> Range<f64> {
    let (low, high) = panel
        .series
        .iter()
        .flat_map(|series| &series.points)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(_, y)| y.clamp(-EXTREME, EXTREME))
        .fold((0.0_f64, 0.0_f64), |(low, high), y| (low.min(y), high.max(y)));
    // All zero (or nothing): 0 to 1, rather than a range of nothing.
    let high = if high > low { high } else { low + 1.0 };
    let span = high - low;
    let low = if low < 0.0 { low - span * 0.05 } else { low };
    // At least 6% headroom, at most as much again as the data (a legend taller than half a panel).
    let reserved = f64::from(reserved.max(0) + 6);
    let headroom = (reserved / (f64::from(plot_height) - reserved).max(reserved)).max(0.06);
    low..high + span * headroom
}

/// The series' points split where a value or time is not finite.
fn finite_runs(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    points
        .split(|(x, y)| !x.is_finite() || !y.is_finite())
        .filter(|run| !run.is_empty())
        .map(<[_]>::to_vec)
        .collect()
}

/// Puts each label right of its marker (left of it near the right edge), in the first row where
/// it overlaps no earlier label.
fn place_marker_labels<'a, DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    markers: &'a [Marker],
    x_range: &Range<f64>,
    plot: Range<i32>,
) -> Result<Vec<MarkerLabel<'a>>, DrawingAreaErrorKind<DB::ErrorType>> {
    let style = TextStyle::from((FONT, MARKER_LABEL_SIZE).into_font());
    let mut sorted: Vec<&Marker> = markers.iter().filter(|marker| marker.at.is_finite()).collect();
    sorted.sort_by(|a, b| a.at.total_cmp(&b.at));
    let mut row_ends: Vec<i32> = Vec::new();
    let mut labels = Vec::with_capacity(sorted.len());
    for marker in sorted {
        let fraction = (marker.at - x_range.start) / (x_range.end - x_range.start);
        let line_x = plot.start + (fraction * f64::from(plot.end - plot.start)).round() as i32;
        let text_width = i32::try_from(root.estimate_text_size(&marker.label, &style)?.0).unwrap_or(0);
        let text_x = if line_x + 5 + text_width <= plot.end + RIGHT_MARGIN - 4 {
            line_x + 5
        } else {
            line_x - 5 - text_width
        };
        let row = match row_ends.iter().position(|end| *end + 10 <= text_x) {
            Some(row) => row,
            None if row_ends.len() < MARKER_ROWS => {
                row_ends.push(i32::MIN);
                row_ends.len() - 1
            }
            None => (0..row_ends.len()).min_by_key(|row| row_ends[*row]).unwrap_or(0),
        };
        row_ends[row] = text_x + text_width;
        labels.push(MarkerLabel {
            text: &marker.label,
            line_x,
            text_x,
            row,
        });
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in the temporary directory, removed when dropped.
    struct TempPng(std::path::PathBuf);

    impl TempPng {
        fn new(name: &str) -> Self {
            let unique = format!(
                "floodgate-chart-{}-{name}-{}.png",
                std::process::id(),
                uuid::Uuid::new_v4()
            );
            Self(std::env::temp_dir().join(unique))
        }
    }

    impl Drop for TempPng {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Renders `chart` and returns the PNG's width and height from its `IHDR` chunk.
    fn rendered_size(chart: &Chart, name: &str) -> (u32, u32) {
        let file = TempPng::new(name);
        render_png(chart, &file.0).unwrap();
        let png = std::fs::read(&file.0).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&png[12..16], b"IHDR", "the first chunk is the header");
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        (width, height)
    }

    /// A minute of an on-sale: a queue that builds and drains, steady admissions, a fault.
    fn on_sale() -> Chart {
        let seconds = || (0..=60).map(f64::from);
        let queue = seconds().map(|t| {
            (
                t,
                if t < 10.0 {
                    t * 4000.0
                } else {
                    (40_000.0 - (t - 10.0) * 800.0).max(0.0)
                },
            )
        });
        let admitted = seconds().map(|t| {
            (
                t,
                if (10.0..50.0).contains(&t) && !(25.0..28.0).contains(&t) {
                    800.0
                } else {
                    0.0
                },
            )
        });
        Chart {
            title: "Flash sale: waiting room".into(),
            x_label: "time since start (s)".into(),
            panels: vec![
                Panel::new("queue length (fans)", vec![Series::new("in queue", queue.collect())]),
                Panel::new("admissions (fans/s)", vec![Series::new("admitted", admitted.collect())]),
            ],
            markers: vec![
                Marker::new(10.0, "on-sale"),
                Marker::new(25.0, "admission controller paused"),
                Marker::new(28.0, "resumed"),
                Marker::new(50.0, "sold out"),
            ],
        }
    }

    #[test]
    fn a_one_panel_chart_with_markers_is_a_1200_by_600_png() {
        let mut chart = on_sale();
        chart.panels.truncate(1);
        assert_eq!(chart.size(), (1200, 600));
        assert_eq!(rendered_size(&chart, "one-panel"), (1200, 600));
    }

    #[test]
    fn a_two_panel_chart_is_a_png_of_its_announced_size() {
        let chart = on_sale();
        assert_eq!(chart.size(), (1200, 700));
        assert_eq!(rendered_size(&chart, "two-panels"), chart.size());
    }

    #[test]
    fn empty_and_degenerate_input_renders_without_error() {
        let panel = |series: Series| Chart {
            title: "degenerate".into(),
            x_label: "time since start (s)".into(),
            panels: vec![Panel::new("value", vec![series])],
            markers: vec![],
        };
        let charts = [
            Chart::default(),
            Chart {
                markers: vec![Marker::new(0.0, "start"), Marker::new(f64::NAN, "never")],
                ..Chart::default()
            },
            panel(Series::new("empty", vec![])),
            panel(Series::new("one point", vec![(3.0, 7.0)])),
            panel(Series::new("all zero", (0..30).map(|t| (f64::from(t), 0.0)).collect())),
            panel(Series::new("constant", vec![(5.0, 42.0), (5.0, 42.0)])),
            panel(Series::new("negative", vec![(0.0, -3.0), (1.0, -1.0)])),
            panel(Series::new(
                "nan",
                vec![(0.0, f64::NAN), (1.0, 2.0), (f64::NAN, 3.0), (3.0, f64::INFINITY)],
            )),
            panel(Series::new(
                "huge",
                vec![(0.0, 0.0), (1.0, 3.2e12), (2.0, f64::MAX / 4.0)],
            )),
            panel(Series::new("", vec![(0.0, 1e-7), (1.0, 2e-7)])),
            panel(Series::new(
                "extremes",
                vec![(0.0, -f64::MAX), (1.0, f64::MAX), (f64::MAX, 1.0)],
            )),
            panel(Series::new("extreme times", vec![(-f64::MAX, 0.0), (f64::MAX, 1.0)])),
            panel(Series::new("tiny", vec![(0.0, 0.0), (1e-300, 1e-300)])),
        ];
        for (index, chart) in charts.iter().enumerate() {
            let (width, height) = rendered_size(chart, &format!("degenerate-{index}"));
            assert_eq!((width, height), chart.size(), "chart {index}");
        }
    }

    #[test]
    fn the_y_axis_starts_at_zero_and_an_all_zero_panel_still_has_a_range() {
        let panel = |points: Vec<(f64, f64)>| Panel::new("value", vec![Series::new("s", points)]);
        let flat = y_range(&panel(vec![(0.0, 0.0), (1.0, 0.0)]), 0, 400);
        assert_eq!(flat.start, 0.0);
        assert!(flat.end >= 1.0, "{flat:?}");
        let rising = y_range(&panel(vec![(0.0, 50.0), (1.0, 100.0)]), 44, 400);
        assert_eq!(rising.start, 0.0);
        // The legend's 44 + 6 pixels are left above the highest value.
        let top_of_data = 400.0 * 100.0 / rising.end;
        assert!((top_of_data - 350.0).abs() < 1.0, "{rising:?}");
        let empty = y_range(&Panel::default(), 0, 400);
        assert_eq!(empty.start, 0.0);
        assert!(empty.end > 0.0);
    }

    #[test]
    fn the_embedded_font_draws_the_title() {
        register_fonts().unwrap();
        let chart = Chart {
            title: "Title".into(),
            ..Chart::default()
        };
        let (width, height) = chart.size();
        let mut pixels = vec![0_u8; (width * height * 3) as usize];
        draw(
            &chart,
            &BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area(),
        )
        .unwrap();
        let row = (width * 3) as usize;
        let title_band = &pixels[..row * TITLE_HEIGHT as usize];
        assert!(title_band.iter().any(|byte| *byte < 128), "some dark title pixels");
    }

    #[test]
    fn a_path_not_ending_in_png_is_refused() {
        let error = render_png(&Chart::default(), Path::new("chart.jpg")).unwrap_err();
        assert!(error.to_string().contains(".png"), "{error}");
    }

    #[test]
    fn tick_labels_are_short_with_thousands_as_suffixes() {
        let cases = [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (2.5, "2.5"),
            (0.1 + 0.2, "0.3"),
            (0.25, "0.25"),
            (0.00125, "0.00125"),
            (999.0, "999"),
            (1000.0, "1k"),
            (1500.0, "1.5k"),
            (12_500.0, "12.5k"),
            (250_000.0, "250k"),
            (2_000_000.0, "2M"),
            (3.25e9, "3.25G"),
            (4e12, "4T"),
            (-1500.0, "-1.5k"),
            (f64::NAN, ""),
            (f64::INFINITY, ""),
        ];
        for (value, label) in cases {
            assert_eq!(format_tick(value), label, "{value}");
        }
    }

    #[test]
    fn marker_labels_that_would_overlap_go_to_another_row() {
        register_fonts().unwrap();
        let mut pixels = vec![0_u8; 1200 * 600 * 3];
        let root = BitMapBackend::with_buffer(&mut pixels, (1200, 600)).into_drawing_area();
        let markers = [
            Marker::new(10.0, "kill -9 booking-worker"),
            Marker::new(11.0, "restarted"),
            Marker::new(50.0, "sold out"),
        ];
        let labels = place_marker_labels(&root, &markers, &(0.0..60.0), 100..1164).unwrap();
        let rows: Vec<usize> = labels.iter().map(|label| label.row).collect();
        assert_eq!(rows, [0, 1, 0]);
        assert!(labels[2].text_x > labels[0].line_x);
    }
}
