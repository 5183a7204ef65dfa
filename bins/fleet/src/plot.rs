//! Plots of the fleet runs against N (SVG, plotters).

use std::path::Path;

use plotters::prelude::*;

use super::Error;
use super::fleet::Row;

type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series<'_>],
) -> Result<(), Error> {
    let x_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(1.0, f64::max)
        * 1.05;
    let y_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()?;
    for (label, color, points) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(*label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Writes `fleet-latency.svg`, `fleet-memory.svg` and (with open-loop windows)
/// `fleet-open-loop.svg` into `dir`.
pub fn write(dir: &Path, rows: &[Row]) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    let points = |f: &dyn Fn(&Row) -> f64| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (r.nodes as f64, f(r))).collect()
    };
    let secs = |d: std::time::Duration| d.as_secs_f64();
    chart(
        &dir.join("fleet-latency.svg"),
        "cloudcore: latency against fleet size",
        "edge nodes (N)",
        "seconds",
        &[
            (
                "fan-out, pod create → edge, p50",
                BLUE,
                points(&|r| secs(r.fanout.p50)),
            ),
            ("fan-out, p99", CYAN, points(&|r| secs(r.fanout.p99))),
            ("register, p99", RED, points(&|r| secs(r.connect.p99))),
            ("storm resync, p99", GREEN, points(&|r| secs(r.storm.p99))),
        ],
    )?;
    let target = rows.iter().map(|r| (r.nodes as f64, 40.0)).collect();
    chart(
        &dir.join("fleet-memory.svg"),
        "cloudcore: resident memory per edge node against fleet size",
        "edge nodes (N)",
        "KiB per node (RSS − idle RSS) / N",
        &[
            (
                "connected, no pods",
                BLUE,
                points(&|r| r.per_node(r.connected_rss)),
            ),
            (
                "after the fan-out, pods held",
                MAGENTA,
                points(&|r| r.per_node(r.steady_rss)),
            ),
            ("target: 40 KiB per idle node", BLACK, target),
        ],
    )?;
    // The open-loop windows of the largest fleet that ran them.
    if let Some(row) = rows.iter().rev().find(|r| !r.open_loop.is_empty()) {
        let ms = |f: &dyn Fn(&super::fleet::OpenLoop) -> std::time::Duration| -> Vec<(f64, f64)> {
            row.open_loop
                .iter()
                .map(|w| (f64::from(w.rate), f(w).as_secs_f64() * 1000.0))
                .collect()
        };
        let goal = row
            .open_loop
            .iter()
            .map(|w| (f64::from(w.rate), 100.0))
            .collect();
        chart(
            &dir.join("fleet-open-loop.svg"),
            &format!(
                "open loop at {} nodes: pod create due → at its edge",
                row.nodes
            ),
            "creates per second",
            "milliseconds",
            &[
                ("p50", BLUE, ms(&|w| w.latency.p50)),
                ("p99", RED, ms(&|w| w.latency.p99)),
                ("max", MAGENTA, ms(&|w| w.latency.max)),
                ("goal: p99 < 100 ms", BLACK, goal),
            ],
        )?;
    }
    Ok(())
}

/// Writes `datastore.svg` into `dir`: creates per second and p99 latency against requests in
/// flight, redb and etcd side by side.
pub fn datastore(dir: &Path, rows: &[super::datastore::Row]) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    let points = |store: &str, f: &dyn Fn(&super::datastore::Row) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.store == store)
            .map(|r| (r.concurrency as f64, f(r)))
            .collect()
    };
    let stores: Vec<&str> = rows.iter().fold(Vec::new(), |mut v, r| {
        if !v.contains(&r.store) {
            v.push(r.store);
        }
        v
    });
    let colors = [BLUE, RED, GREEN, MAGENTA];
    let throughput: Vec<Series<'_>> = stores
        .iter()
        .zip(colors)
        .map(|(s, c)| (*s, c, points(s, &|r| r.per_sec)))
        .collect();
    chart(
        &dir.join("datastore.svg"),
        "the embedded API's creates: redb and etcd",
        "creates in flight",
        "creates per second",
        &throughput,
    )?;
    let p99: Vec<Series<'_>> = stores
        .iter()
        .zip(colors)
        .map(|(s, c)| (*s, c, points(s, &|r| r.latency.1.as_secs_f64() * 1000.0)))
        .collect();
    chart(
        &dir.join("datastore-p99.svg"),
        "the embedded API's creates: p99 latency, redb and etcd",
        "creates in flight",
        "milliseconds",
        &p99,
    )
}
