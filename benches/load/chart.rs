//! The latency chart: p99 against offered load, one line per series (PNG, plotters).

use std::path::Path;

use serde::Serialize;

/// One open-loop measurement of a series.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct CurvePoint {
    pub series: String,
    pub fraction: f64,
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// p99 latency against offered load, one line per series, titled `title`. Draws `curve` to `path`; without the DejaVu font it says so and draws nothing.
pub fn chart(curve: &[CurvePoint], path: &Path, title: &str) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let Ok(font) = std::fs::read(FONT) else {
        eprintln!("{FONT} not found: no chart drawn");
        return Ok(());
    };
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("the font does not load"))?;
    let mut series: Vec<&str> = curve.iter().map(|p| p.series.as_str()).collect();
    series.dedup();
    series.sort();
    series.dedup();
    let max_rate = curve.iter().map(|p| p.rate).fold(1.0, f64::max);
    let max_p99 = curve.iter().map(|p| p.p99_us / 1000.0).fold(0.1, f64::max);
    let min_p99 = curve
        .iter()
        .map(|p| p.p99_us / 1000.0)
        .fold(f64::INFINITY, f64::min)
        .clamp(0.01, max_p99);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0.0..max_rate * 1.05,
            (min_p99 * 0.8..max_p99 * 1.25).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("offered load (requests/s)")
        .y_desc("p99 latency (ms, log scale)")
        .draw()?;
    for (i, name) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut points: Vec<(f64, f64)> = curve
            .iter()
            .filter(|p| p.series == *name)
            .map(|p| (p.rate, p.p99_us / 1000.0))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
