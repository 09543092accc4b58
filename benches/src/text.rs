//! What every benchmark prints: progress lines on stderr, and a table built from medians
//! of samples, with ratios and whether targets were met.
//!
//! Nothing here measures; the benchmark modules hand their samples in. Every progress
//! line starts with the time since the benchmark started, `[mm:ss]`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Result;
use bee_vm::qemu::Accel;

/// Runs one measurement, printing its result (`show`) or that it failed as progress.
pub(crate) fn step<T>(
    what: &str,
    measure: impl FnOnce() -> Result<T>,
    show: impl FnOnce(&T) -> String,
) -> Result<T> {
    eprint!("bee bench: {}   {what}: ", clock());
    match measure() {
        Ok(value) => {
            eprintln!("{}", show(&value));
            Ok(value)
        }
        Err(err) => {
            eprintln!("failed");
            Err(err.context(what.to_owned()))
        }
    }
}

/// A progress line on stderr that is not a measurement.
pub(crate) fn progress(line: &str) {
    eprintln!("bee bench: {} {line}", clock());
}

/// When the first progress line was printed.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// The time since the first progress line, `[mm:ss]`.
fn clock() -> String {
    elapsed_text(STARTED.get_or_init(Instant::now).elapsed())
}

fn elapsed_text(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    format!("[{:02}:{:02}]", secs / 60, secs % 60)
}

/// A duration as the tables show it.
pub(crate) fn secs(elapsed: &Duration) -> String {
    format!("{:.1} s", elapsed.as_secs_f64())
}

/// The first line of a benchmark's table: `what` ran under `accel`, `runs` runs of each
/// measurement, and what else sets the numbers apart (`details`).
pub(crate) fn heading(what: &str, accel: Accel, runs: u32, details: &[&str]) -> String {
    let mut within = vec![format!("accelerator: {}", accel.as_str()), format!("runs: {runs}")];
    within.extend(details.iter().map(|d| d.to_string()));
    format!("{what} ({})\n", within.join(", "))
}

/// How a target fared, in the tables.
pub(crate) fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "missed"
    }
}

/// One line of a two-column report: a label, a right-aligned value and an optional note.
pub(crate) fn row(label: &str, value: &str, note: &str) -> String {
    let line = format!("{label:<32}{value:>10}  {note}");
    format!("{}\n", line.trim_end())
}

/// The median of durations (the mean of the middle two for an even count; zero for none).
pub(crate) fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

/// The median of numbers, as [`median`] takes it; NaN for none.
pub(crate) fn median_of(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// A number with `decimals` decimals, or `-` when it is not finite.
pub(crate) fn fixed(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "-".to_owned()
    }
}

/// KiB to MiB.
pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// A table of text cells under a header row, columns two spaces apart, each as wide as
/// its widest cell; trailing spaces are trimmed.
#[derive(Debug)]
pub(crate) struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and alignments, and no rows yet.
    pub(crate) fn new(columns: &[(&str, Align)]) -> Table {
        let columns = columns.iter().map(|(name, align)| (name.to_string(), *align)).collect();
        Table { columns, rows: Vec::new() }
    }

    /// Adds a row; missing cells at its end are left blank, extra ones are dropped.
    pub(crate) fn push(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The header and the rows, one line each.
    pub(crate) fn render(&self) -> String {
        let cell = |row: &[String], column: usize| row.get(column).cloned().unwrap_or_default();
        let header: Vec<String> = self.columns.iter().map(|(name, _)| name.clone()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|c| lines.iter().map(|row| cell(row, c).chars().count()).max().unwrap_or(0))
            .collect();

        let mut out = String::new();
        for row in lines {
            let cells: Vec<String> = self
                .columns
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, ((_, align), &width))| match align {
                    Align::Left => format!("{:<width$}", cell(row, c)),
                    Align::Right => format!("{:>width$}", cell(row, c)),
                })
                .collect();
            out += cells.join("  ").trim_end();
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_count_is_mean_of_middle_two() {
        let secs = [4, 1, 3, 2].map(Duration::from_secs);
        assert_eq!(median(&secs), Duration::from_millis(2500));
        assert_eq!(median_of(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median_of(&[5.0, 1.0, 3.0]), 3.0);
        assert!(median_of(&[]).is_nan());
    }

    #[test]
    fn elapsed_time_is_minutes_and_seconds() {
        assert_eq!(elapsed_text(Duration::from_millis(59_999)), "[00:59]");
        assert_eq!(elapsed_text(Duration::from_secs(3725)), "[62:05]");
    }

    #[test]
    fn table_aligns_columns_and_trims_lines() {
        let mut table = Table::new(&[("name", Align::Left), ("value", Align::Right)]);
        table.push(vec!["a".into(), "1.50".into()]);
        table.push(vec!["longer name".into(), "12.00".into()]);
        table.push(vec!["no value".into()]);
        let expected = "\
name         value
a             1.50
longer name  12.00
no value
";
        assert_eq!(table.render(), expected);
    }

    #[test]
    fn a_heading_names_the_accelerator_the_runs_and_the_details() {
        assert_eq!(
            heading("deploy benchmark", Accel::Tcg, 3, &[]),
            "deploy benchmark (accelerator: tcg, runs: 3)\n"
        );
        assert_eq!(
            heading("storage benchmark", Accel::Kvm, 1, &["files of 128 MiB", "guests with 1GiB"]),
            "storage benchmark (accelerator: kvm, runs: 1, files of 128 MiB, guests with 1GiB)\n"
        );
    }

    #[test]
    fn fixed_shows_a_dash_for_what_is_not_a_number() {
        assert_eq!(fixed(0.456, 2), "0.46");
        assert_eq!(fixed(f64::NAN, 2), "-");
        assert_eq!(fixed(f64::INFINITY, 1), "-");
    }
}
