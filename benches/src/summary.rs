//! `summary.md`: the ratios and verdicts of a run in Markdown, with the host, the
//! accelerator, the benchmark's own table and links to the plots.

use std::time::{Duration, SystemTime};

use crate::machine::Host;
use crate::results::{utc_timestamp, Results};
use crate::text::fixed;

/// The summary of `results`; `plots` are the file names of the figures, in order.
pub fn render(
    results: &Results,
    host: &Host,
    started: SystemTime,
    took: Duration,
    plots: &[String],
) -> String {
    let quick = if results.quick { " --quick" } else { "" };
    let mut out = format!("# bee bench {}{quick}\n\n", results.kind.name());
    out += &format!(
        "- started {}, took {:.0} s, {} run(s) of each measurement\n",
        utc_timestamp(started),
        took.as_secs_f64(),
        results.runs
    );
    out += &format!("- bee {}, QEMU {}\n", env!("CARGO_PKG_VERSION"), host.qemu_version);
    out += &format!("- host: {}\n", host.line());
    out += &format!("- accelerator: **{}**: {}\n\n", results.accel.as_str(), results.accel_note());
    for pick in &results.recommendations {
        let clear = if pick.clear { "clear" } else { "not clear" };
        out += &format!(
            "**Recommended network mode for {}: {}** ({clear}): {}\n\n",
            pick.file, pick.mode, pick.reason
        );
    }

    out += "| metric | subject | median | reference | ratio | target | verdict |\n";
    out += "|---|---|---:|---|---:|---|---|\n";
    for comparison in &results.comparisons {
        let Some(metric) = results.metric(comparison.metric) else { continue };
        let median = results
            .series_of(comparison.metric, &comparison.subject, comparison.x)
            .map_or(f64::NAN, |s| s.median());
        let subject = match comparison.x {
            Some(x) => format!("{} ({} = {x})", comparison.subject, metric.x_label.unwrap_or("x")),
            None => comparison.subject.clone(),
        };
        let target = comparison.target.map_or("none".to_owned(), |t| t.describe(metric.unit));
        let verdict = match results.met(comparison) {
            Some(true) => "met",
            Some(false) => "**missed**",
            None if comparison.target.is_some() => "not measured",
            None => "-",
        };
        out += &format!(
            "| {} | {subject} | {} {} | {} | {} | {target} | {verdict} |\n",
            metric.title,
            fixed(median, 2),
            metric.unit,
            comparison.reference.as_deref().unwrap_or("-"),
            fixed(results.ratio(comparison), 2),
        );
    }

    out += "\n```text\n";
    out += &results.table;
    out += "```\n";
    if !results.notes.is_empty() {
        out += "\nNotes:\n\n";
        for note in &results.notes {
            out += &format!("- {note}\n");
        }
    }
    if !plots.is_empty() {
        out += "\nPlots (every raw sample is a dot; the figures are also in PNG):\n\n";
        for plot in plots.iter().filter(|p| p.ends_with(".svg")) {
            out += &format!("![{plot}]({plot})\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::{host, synthetic};
    use crate::results::TCG_NOTE;

    #[test]
    fn summary_lists_ratios_verdicts_and_the_accelerator() {
        let summary = render(
            &synthetic(),
            &host(),
            SystemTime::UNIX_EPOCH,
            Duration::from_secs(90),
            &["bandwidth.png".to_owned(), "bandwidth.svg".to_owned()],
        );
        assert!(summary.starts_with("# bee bench network --quick\n"), "{summary}");
        assert!(summary.contains(&format!("accelerator: **tcg**: {TCG_NOTE}")), "{summary}");
        assert!(summary.contains(
            "| bandwidth title | p2p-tree | 190.00 Mbit/s | reference | 0.49 | >= 0.5x | **missed** |"
        ), "{summary}");
        assert!(
            summary.contains("| multicast | - Mbit/s | reference | - | >= 0.5x | not measured |")
        );
        assert!(summary.contains("| memory title | bee | 12.50 MiB | - | - | < 30 MiB | met |"));
        assert!(summary.contains("```text\npath  Mbit/s\n```"));
        assert!(summary.contains("![bandwidth.svg](bandwidth.svg)\n"));
        assert!(!summary.contains("![bandwidth.png]"));
        assert!(!summary.contains("Recommended"));
    }

    #[test]
    fn an_advisors_summary_leads_with_the_recommendation() {
        let advised = Results {
            recommendations: vec![crate::results::tests::recommendation()],
            ..synthetic()
        };
        let summary = render(&advised, &host(), SystemTime::UNIX_EPOCH, Duration::ZERO, &[]);
        assert!(summary.contains(
            "**Recommended network mode for app.toml: p2p-tree** (clear): p2p-tree: faster\n\n| metric"
        ), "{summary}");
    }
}
