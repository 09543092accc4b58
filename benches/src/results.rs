//! What a benchmark measured, in one shape for every benchmark: metrics, the raw samples
//! of each subject (a network mode, a storage, the host), and comparisons of subjects with
//! their reference against targets. [`Results::to_json`] renders it as `report.json`,
//! whose schema is `benches/schema/report.schema.json` ([`SCHEMA`]).
//!
//! Nothing here measures or draws; the benchmark modules fill [`Results`] in, and
//! [`crate::plot`] and [`crate::summary`] read it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bee_vm::qemu::Accel;
use serde_json::{json, Value};

use crate::machine::Host;
use crate::text::median_of;
use crate::Kind;

/// The version of `report.json`'s schema; raised when a field changes meaning or goes.
pub const SCHEMA_VERSION: u32 = 1;

/// The JSON Schema every `report.json` validates against.
pub const SCHEMA: &str = include_str!("../schema/report.schema.json");

/// What the report says when the guests ran under software emulation.
pub const TCG_NOTE: &str = "the guests ran under TCG (software emulation, no KVM): the \
    ratios measure emulation overhead, and TCG overhead is not the paper's figure";

/// What the report says when the guests ran under KVM.
pub const KVM_NOTE: &str = "the guests ran under KVM, as in the paper";

/// Which way a metric improves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// More is better (bandwidth, GFLOP/s).
    Higher,
    /// Less is better (time, latency, memory).
    Lower,
}

/// A quantity a benchmark measures, such as TCP bandwidth between two nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Short name, used in file names: lower-case letters, digits and `_`.
    pub id: &'static str,
    /// A title for tables and plots.
    pub title: String,
    /// The unit of the samples.
    pub unit: &'static str,
    /// Which way it improves.
    pub better: Better,
    /// What the series' `x` means, for metrics measured over a parameter (all-to-all
    /// time over the number of nodes); `None` for one value per subject.
    pub x_label: Option<&'static str>,
}

/// The raw samples of one metric for one subject (and one `x`, if the metric has one).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The [`Metric::id`].
    pub metric: &'static str,
    /// What was measured: `native`, `reference`, a mode's name.
    pub subject: String,
    /// The parameter, for metrics that have an `x_label`.
    pub x: Option<f64>,
    /// Every sample, in the order measured.
    pub samples: Vec<f64>,
}

impl Series {
    /// The median of the samples; NaN for none.
    pub fn median(&self) -> f64 {
        median_of(&self.samples)
    }
}

/// How a comparison is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// Whether the ratio (with a reference) or the median itself is judged.
    pub on: TargetOn,
    /// Met when the value is at least `value` (`true`) or below it (`false`).
    pub at_least: bool,
    /// The bound.
    pub value: f64,
}

/// What a [`Target`] is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetOn {
    /// The subject's median over the reference's median.
    Ratio,
    /// The subject's median.
    Median,
}

impl Target {
    /// Whether `value` meets the target.
    pub fn met_by(&self, value: f64) -> bool {
        if self.at_least {
            value >= self.value
        } else {
            value < self.value
        }
    }

    /// The target as text: `>= 0.9x`, `< 30 MiB`.
    pub fn describe(&self, unit: &str) -> String {
        let op = if self.at_least { ">=" } else { "<" };
        match self.on {
            TargetOn::Ratio => format!("{op} {}x", self.value),
            TargetOn::Median => format!("{op} {} {unit}", self.value),
        }
    }
}

/// A subject's median set against its reference's, or against a bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The [`Metric::id`].
    pub metric: &'static str,
    /// The subject compared.
    pub subject: String,
    /// The series' `x`, for metrics that have one.
    pub x: Option<f64>,
    /// The subject it is compared with, if any.
    pub reference: Option<String>,
    /// The target, if there is one.
    pub target: Option<Target>,
}

/// What the network-mode advisor recommends for one application, from the series of one
/// metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// The `bee.toml` of the application, as given.
    pub file: String,
    /// The [`Metric::id`] the pick is made on.
    pub metric: &'static str,
    /// The recommended subject (a network mode's name).
    pub mode: String,
    /// The next best subject, if more than one was measured.
    pub runner_up: Option<String>,
    /// The runner-up's median over the recommended one's, less 1.
    pub margin: Option<f64>,
    /// Whether the pick stands out of the noise (see `advisor::recommend`).
    pub clear: bool,
    /// The pick and its evidence, in a sentence.
    pub reason: String,
}

/// Everything one benchmark measured, before it is written out.
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    /// Which benchmark.
    pub kind: Kind,
    /// The accelerator the guests ran under.
    pub accel: Accel,
    /// Whether the reduced set ran.
    pub quick: bool,
    /// Runs of each measurement.
    pub runs: u32,
    /// How the benchmark was set up (sizes, durations, node counts), as JSON.
    pub settings: Value,
    /// The metrics, in report order.
    pub metrics: Vec<Metric>,
    /// Every series of every metric.
    pub series: Vec<Series>,
    /// The comparisons, in report order.
    pub comparisons: Vec<Comparison>,
    /// What a reader needs to know to read the figures (methods, caveats).
    pub notes: Vec<String>,
    /// The benchmark's own table, as printed.
    pub table: String,
    /// The network-mode advisor's picks, one per application; none for every other
    /// benchmark.
    pub recommendations: Vec<Recommendation>,
}

impl Results {
    /// The metric with this id.
    pub fn metric(&self, id: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.id == id)
    }

    /// The series of `metric` for `subject` at `x`.
    pub fn series_of(&self, metric: &str, subject: &str, x: Option<f64>) -> Option<&Series> {
        self.series.iter().find(|s| s.metric == metric && s.subject == subject && s.x == x)
    }

    /// The ratio of a comparison: the subject's median over the reference's; NaN without
    /// a reference or a sample.
    pub fn ratio(&self, comparison: &Comparison) -> f64 {
        let median = |subject: &str| {
            self.series_of(comparison.metric, subject, comparison.x)
                .map_or(f64::NAN, Series::median)
        };
        match &comparison.reference {
            Some(reference) => median(&comparison.subject) / median(reference),
            None => f64::NAN,
        }
    }

    /// Whether a comparison met its target; `None` without a target or a value to judge.
    pub fn met(&self, comparison: &Comparison) -> Option<bool> {
        let target = comparison.target?;
        let value = match target.on {
            TargetOn::Ratio => self.ratio(comparison),
            TargetOn::Median => self
                .series_of(comparison.metric, &comparison.subject, comparison.x)
                .map_or(f64::NAN, Series::median),
        };
        value.is_finite().then(|| target.met_by(value))
    }

    /// The note on the accelerator, for the report and the summary.
    pub fn accel_note(&self) -> &'static str {
        match self.accel {
            Accel::Kvm => KVM_NOTE,
            Accel::Tcg => TCG_NOTE,
        }
    }

    /// `report.json`: these results with the host, bee's version and when they were taken.
    pub fn to_json(&self, host: &Host, started: SystemTime, took: Duration) -> Value {
        let metrics: Vec<Value> = self
            .metrics
            .iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "title": m.title,
                    "unit": m.unit,
                    "better": match m.better { Better::Higher => "higher", Better::Lower => "lower" },
                    "x_label": m.x_label,
                })
            })
            .collect();
        let series: Vec<Value> = self
            .series
            .iter()
            .map(|s| {
                json!({
                    "metric": s.metric,
                    "subject": s.subject,
                    "x": s.x,
                    "samples": s.samples,
                    "median": finite(s.median()),
                })
            })
            .collect();
        let comparisons: Vec<Value> =
            self.comparisons.iter().map(|c| self.comparison_json(c)).collect();
        let mut report = json!({
            "schema_version": SCHEMA_VERSION,
            "benchmark": self.kind.name(),
            "bee_version": env!("CARGO_PKG_VERSION"),
            "started_at": utc_timestamp(started),
            "duration_s": took.as_secs_f64(),
            "quick": self.quick,
            "runs": self.runs,
            "machine": {
                "cpu_model": host.cpu_model,
                "cores": host.cores,
                "memory_bytes": host.memory_bytes,
                "kernel": host.kernel,
            },
            "qemu": {
                "accelerator": self.accel.as_str(),
                "version": host.qemu_version,
            },
            "accelerator_note": self.accel_note(),
            "settings": self.settings,
            "metrics": metrics,
            "series": series,
            "comparisons": comparisons,
            "notes": self.notes,
        });
        let picks: Vec<Value> = self
            .recommendations
            .iter()
            .map(|pick| {
                json!({
                "file": pick.file,
                "metric": pick.metric,
                "mode": pick.mode,
                "runner_up": pick.runner_up,
                "margin": pick.margin.and_then(finite),
                "clear": pick.clear,
                "reason": pick.reason,
                })
            })
            .collect();
        if !picks.is_empty() {
            report["recommendations"] = Value::Array(picks);
        }
        report
    }

    fn comparison_json(&self, comparison: &Comparison) -> Value {
        let target = comparison.target.map(|t| {
            json!({
                "on": match t.on { TargetOn::Ratio => "ratio", TargetOn::Median => "median" },
                "op": if t.at_least { ">=" } else { "<" },
                "value": t.value,
            })
        });
        json!({
            "metric": comparison.metric,
            "subject": comparison.subject,
            "x": comparison.x,
            "reference": comparison.reference,
            "ratio": finite(self.ratio(comparison)),
            "target": target,
            "met": self.met(comparison),
        })
    }
}

/// A number for JSON: `null` when it is not finite (a ratio to nothing, say).
pub(crate) fn finite(value: f64) -> Option<f64> {
    Some(value).filter(|v| v.is_finite())
}

/// `time` as UTC in RFC 3339, to the second: `2026-12-04T01:30:00Z`.
pub fn utc_timestamp(time: SystemTime) -> String {
    let (date, clock) = utc_parts(time);
    format!("{}-{:02}-{:02}T{:02}:{:02}:{:02}Z", date.0, date.1, date.2, clock.0, clock.1, clock.2)
}

/// `time` as UTC for a directory name: `20261204T013000Z`.
pub fn compact_timestamp(time: SystemTime) -> String {
    let (date, clock) = utc_parts(time);
    format!("{}{:02}{:02}T{:02}{:02}{:02}Z", date.0, date.1, date.2, clock.0, clock.1, clock.2)
}

/// (year, month, day) and (hour, minute, second) of `time` in UTC; times before 1970 count
/// as 1970.
fn utc_parts(time: SystemTime) -> ((i64, u32, u32), (u64, u64, u64)) {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    (civil_date(days), (rest / 3600, rest % 3600 / 60, rest % 60))
}

/// The Gregorian date `days` after 1970-01-01 (Howard Hinnant's days-to-civil algorithm).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Results of a made-up run: two subjects against a reference, a metric over `x`, and
    /// an absolute target.
    pub(crate) fn synthetic() -> Results {
        let metric = |id, unit, better, x_label| Metric {
            id,
            title: format!("{id} title"),
            unit,
            better,
            x_label,
        };
        let series = |metric, subject: &str, x, samples: &[f64]| Series {
            metric,
            subject: subject.to_owned(),
            x,
            samples: samples.to_vec(),
        };
        let compare = |metric, subject: &str, reference: Option<&str>, target| Comparison {
            metric,
            subject: subject.to_owned(),
            x: None,
            reference: reference.map(str::to_owned),
            target,
        };
        let ratio_at_least = |value| Some(Target { on: TargetOn::Ratio, at_least: true, value });
        Results {
            kind: Kind::Network,
            accel: Accel::Tcg,
            quick: true,
            runs: 2,
            settings: json!({ "nodes": 3 }),
            metrics: vec![
                metric("bandwidth", "Mbit/s", Better::Higher, None),
                metric("all_to_all", "s", Better::Lower, Some("nodes")),
                metric("memory", "MiB", Better::Lower, None),
            ],
            series: vec![
                series("bandwidth", "reference", None, &[400.0, 380.0]),
                series("bandwidth", "p2p-tree", None, &[200.0, 180.0]),
                series("bandwidth", "multicast", None, &[]),
                series("all_to_all", "reference", Some(2.0), &[1.5]),
                series("all_to_all", "p2p-tree", Some(2.0), &[2.5]),
                series("all_to_all", "p2p-tree", Some(3.0), &[9.0]),
                series("memory", "bee", None, &[12.5]),
            ],
            comparisons: vec![
                compare("bandwidth", "p2p-tree", Some("reference"), ratio_at_least(0.5)),
                compare("bandwidth", "multicast", Some("reference"), ratio_at_least(0.5)),
                compare(
                    "memory",
                    "bee",
                    None,
                    Some(Target { on: TargetOn::Median, at_least: false, value: 30.0 }),
                ),
            ],
            notes: vec!["made up".to_owned()],
            table: "path  Mbit/s\n".to_owned(),
            recommendations: Vec::new(),
        }
    }

    pub(crate) fn host() -> Host {
        Host {
            cpu_model: "Test CPU".to_owned(),
            cores: 2,
            memory_bytes: 1 << 34,
            kernel: "6.1.0-test".to_owned(),
            qemu_version: "7.2.22".to_owned(),
        }
    }

    #[test]
    fn ratios_and_verdicts_follow_medians_and_targets() {
        let results = synthetic();
        let [tree, multicast, memory] = &results.comparisons[..] else { panic!() };
        assert_eq!(results.ratio(tree), 190.0 / 390.0);
        assert_eq!(results.met(tree), Some(false));
        assert!(results.ratio(multicast).is_nan());
        assert_eq!(results.met(multicast), None);
        assert_eq!(results.met(memory), Some(true));
        assert_eq!(memory.target.unwrap().describe("MiB"), "< 30 MiB");
        assert_eq!(tree.target.unwrap().describe(""), ">= 0.5x");
    }

    #[test]
    fn report_json_carries_samples_machine_and_accelerator() {
        let started = UNIX_EPOCH + Duration::from_secs(1_796_347_800);
        let json = synthetic().to_json(&host(), started, Duration::from_millis(1500));
        assert_eq!(json["schema_version"], SCHEMA_VERSION);
        assert_eq!(json["benchmark"], "network");
        assert_eq!(json["started_at"], "2026-12-04T01:30:00Z");
        assert_eq!(json["duration_s"], 1.5);
        assert_eq!(json["qemu"]["accelerator"], "tcg");
        assert_eq!(json["accelerator_note"], TCG_NOTE);
        assert_eq!(json["machine"]["cores"], 2);
        assert_eq!(json["series"][0]["samples"], json!([400.0, 380.0]));
        assert_eq!(json["series"][0]["median"], 390.0);
        assert_eq!(json["series"][2]["median"], Value::Null);
        assert_eq!(json["comparisons"][0]["met"], false);
        assert_eq!(
            json["comparisons"][0]["target"],
            json!({"on": "ratio", "op": ">=", "value": 0.5})
        );
        assert_eq!(json["comparisons"][1]["ratio"], Value::Null);
        assert_eq!(json["metrics"][1]["x_label"], "nodes");
    }

    /// What the advisor would say of the synthetic results.
    pub(crate) fn recommendation() -> Recommendation {
        Recommendation {
            file: "app.toml".to_owned(),
            metric: "bandwidth",
            mode: "p2p-tree".to_owned(),
            runner_up: Some("multicast".to_owned()),
            margin: Some(0.25),
            clear: true,
            reason: "p2p-tree: faster".to_owned(),
        }
    }

    #[test]
    fn only_an_advisors_report_has_a_recommendation() {
        let json = synthetic().to_json(&host(), UNIX_EPOCH, Duration::ZERO);
        assert!(json.get("recommendations").is_none());
        let advised = Results { recommendations: vec![recommendation()], ..synthetic() };
        let json = advised.to_json(&host(), UNIX_EPOCH, Duration::ZERO);
        assert_eq!(
            json["recommendations"],
            json!([{"file": "app.toml", "metric": "bandwidth", "mode": "p2p-tree", "runner_up": "multicast",
                   "margin": 0.25, "clear": true, "reason": "p2p-tree: faster"}])
        );
    }

    #[test]
    fn report_json_validates_against_the_committed_schema() {
        let schema: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
        let validator = jsonschema::validator_for(&schema).expect("the schema is valid");
        for accel in [Accel::Tcg, Accel::Kvm] {
            let results = Results { accel, ..synthetic() };
            let report = results.to_json(&host(), SystemTime::now(), Duration::from_secs(3));
            let errors: Vec<String> =
                validator.iter_errors(&report).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "report does not validate: {errors:?}");
        }

        let advised = Results { recommendations: vec![recommendation()], ..synthetic() };
        let report = advised.to_json(&host(), SystemTime::now(), Duration::from_secs(3));
        let errors: Vec<String> = validator.iter_errors(&report).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "an advisor's report does not validate: {errors:?}");
        let mut wrong = report.clone();
        wrong["recommendations"][0]["mode"] = json!("ethernet");
        assert_eq!(validator.iter_errors(&wrong).count(), 1);

        let mut broken = synthetic().to_json(&host(), SystemTime::now(), Duration::ZERO);
        broken["schema_version"] = json!(2);
        broken["series"][0]["samples"] = json!(["fast"]);
        broken.as_object_mut().unwrap().remove("machine");
        assert_eq!(validator.iter_errors(&broken).count(), 3);
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661);
        assert_eq!(utc_timestamp(leap_day), "2000-02-29T01:01:01Z");
        assert_eq!(compact_timestamp(leap_day), "20000229T010101Z");
    }
}
