//! Line plots as PNG (plotters, bitmap backend; text in DejaVu Sans when the
//! system has it, else a plot without labels).

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::{Error, Result};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a sans-serif font once; false when none is found.
fn font() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        FONT_PATHS.iter().any(|p| match std::fs::read(p) {
            // plotters keeps fonts for the life of the process.
            Ok(bytes) => {
                plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
                    .is_ok()
            }
            Err(_) => false,
        })
    })
}

/// One named series of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn err(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("plot: {e}"))
}

/// A line plot with points, one colour per series, written to `path` (PNG).
pub fn line_plot(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    let with_text = font();
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        return Err(Error::Other("plot: no points".into()));
    }
    let (xpad, ypad) = ((x1 - x0).max(1e-3) * 0.05, (y1 - y0).max(1e-3) * 0.08);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16).x_label_area_size(if with_text { 44 } else { 8 }).y_label_area_size(if with_text {
        60
    } else {
        8
    });
    if with_text {
        builder.caption(title, ("sans-serif", 22));
    }
    let mut chart = builder.build_cartesian_2d((x0 - xpad)..(x1 + xpad), (y0 - ypad)..(y1 + ypad)).map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if with_text {
        mesh.x_desc(x_label).y_desc(y_label).label_style(("sans-serif", 15));
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(err)?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK, RGBColor(230, 140, 0)];
    for (i, s) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let drawn = chart.draw_series(LineSeries::new(s.points.iter().cloned(), color.stroke_width(2))).map_err(err)?;
        if with_text {
            drawn.label(s.name.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        chart.draw_series(s.points.iter().map(|&(x, y)| Circle::new((x, y), 4, color.filled()))).map_err(err)?;
    }
    if with_text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::MiddleRight)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
