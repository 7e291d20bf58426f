//! The result of a scenario: a table on stdout and the same figures as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::load::{CODES, Op, OpStats, Outcome, latency_histogram};
use crate::proto::code_name;

/// Latency percentiles in milliseconds (from microsecond counts).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| micros as f64 / 1_000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1_000.0,
        }
    }
}

/// One kind of call.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// Calls that completed inside the measured window.
    pub calls: u64,
    pub successes: u64,
    /// Successes per measured second.
    pub calls_per_sec: f64,
    /// Failures inside the window, by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    pub latency_ms: Latency,
    /// Successes over the whole run (warm-up and the calls in flight at the end included):
    /// what the database must show.
    pub total_successes: u64,
    pub total_errors: BTreeMap<String, u64>,
}

/// What the setup did before the clock started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Setup {
    pub secs: f64,
    /// Enterprises registered.
    pub enterprises: u64,
    /// Needs submitted (for GetNeed ids and for referrals to decide).
    pub needs: u64,
    /// Setup SubmitNeed calls that failed (their enterprises are not used).
    pub needs_failed: u64,
    /// Referrals those needs were routed to.
    pub referrals: u64,
}

/// The watch scenario's delivery figures.
#[derive(Debug, Clone, Serialize)]
pub struct WatchReport {
    /// Streams asked for and opened.
    pub streams: usize,
    pub opened: usize,
    /// Streams that failed to open or ended with an error, by gRPC code name.
    pub stream_errors: BTreeMap<String, u64>,
    /// Events received on all streams.
    pub events: u64,
    /// Events older than the moment the streams were open (history replayed by the server),
    /// not in the delay figures.
    pub backlog_events: u64,
    /// Deliveries the run's own referrals should have caused: for each referral that a
    /// successful SubmitNeed of the run returned, the number of streams of its lender.
    pub expected_deliveries: u64,
    /// Deliveries of those referrals' CREATED events.
    pub delivered: u64,
    /// Receive time minus the event's `time`, over the events of the run.
    pub delay_ms: Latency,
}

/// Everything a scenario reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub server: String,
    pub connections: usize,
    pub concurrency: usize,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    /// The measured window (shorter than the duration when the run stopped early).
    pub measured_secs: f64,
    pub stopped_early: Option<String>,
    /// Calls that completed inside the measured window, all kinds.
    pub calls: u64,
    pub successes: u64,
    pub calls_per_sec: f64,
    pub errors: BTreeMap<String, u64>,
    pub latency_ms: Latency,
    /// Per kind of call, only those made.
    pub ops: BTreeMap<String, OpReport>,
    pub setup: Setup,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchReport>,
}

fn codes(counts: &[u64; CODES]) -> BTreeMap<String, u64> {
    counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(code, n)| (code_name(tonic::Code::from(code as i32)).to_owned(), *n))
        .collect()
}

/// The frame of a report: what was run, how hard.
pub struct Frame<'a> {
    pub scenario: &'a str,
    pub server: &'a str,
    pub connections: usize,
    pub concurrency: usize,
    pub warmup: std::time::Duration,
    pub duration: std::time::Duration,
}

impl Report {
    pub fn new(frame: Frame<'_>, outcome: &Outcome, setup: Setup) -> Self {
        let secs = outcome.measured.as_secs_f64();
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let mut all = latency_histogram();
        let mut all_errors = [0u64; CODES];
        let mut ops = BTreeMap::new();
        for op in Op::ALL {
            let stats: &OpStats = outcome.op(op);
            if stats.total_calls() == 0 {
                continue;
            }
            all.add(&stats.latency).expect("same bounds");
            for (sum, n) in all_errors.iter_mut().zip(stats.measured_errors) {
                *sum += n;
            }
            ops.insert(
                op.name().to_owned(),
                OpReport {
                    calls: stats.measured_calls(),
                    successes: stats.measured_ok,
                    calls_per_sec: rate(stats.measured_ok),
                    errors: codes(&stats.measured_errors),
                    latency_ms: Latency::of(&stats.latency),
                    total_successes: stats.total_ok,
                    total_errors: codes(&stats.total_errors),
                },
            );
        }
        let successes: u64 = ops.values().map(|o| o.successes).sum();
        Self {
            scenario: frame.scenario.to_owned(),
            server: frame.server.to_owned(),
            connections: frame.connections,
            concurrency: frame.concurrency,
            warmup_secs: frame.warmup.as_secs_f64(),
            duration_secs: frame.duration.as_secs_f64(),
            measured_secs: secs,
            stopped_early: outcome.stopped_early.clone(),
            calls: ops.values().map(|o| o.calls).sum(),
            successes,
            calls_per_sec: rate(successes),
            errors: codes(&all_errors),
            latency_ms: Latency::of(&all),
            ops,
            setup,
            watch: None,
        }
    }

    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} in flight over {} connection(s) to {}; {:.1} s measured after {:.1} s warm-up",
            self.scenario,
            self.concurrency,
            self.connections,
            self.server,
            self.measured_secs,
            self.warmup_secs
        );
        if let Some(why) = &self.stopped_early {
            let _ = writeln!(out, "stopped early: {why}");
        }
        let _ = writeln!(
            out,
            "{:<24} {:>10} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "call", "calls/s", "ok", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        let row = |out: &mut String, name: &str, rate: f64, ok: u64, calls: u64, l: &Latency| {
            let _ = writeln!(
                out,
                "{:<24} {:>10.1} {:>9} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                name,
                rate,
                ok,
                calls - ok,
                l.p50,
                l.p90,
                l.p99,
                l.max
            );
        };
        for (name, op) in &self.ops {
            row(
                &mut out,
                name,
                op.calls_per_sec,
                op.successes,
                op.calls,
                &op.latency_ms,
            );
        }
        if self.ops.len() > 1 {
            row(
                &mut out,
                "all",
                self.calls_per_sec,
                self.successes,
                self.calls,
                &self.latency_ms,
            );
        }
        if !self.errors.is_empty() {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            let _ = writeln!(out, "errors: {}", list.join(", "));
        }
        let totals: Vec<String> = self
            .ops
            .iter()
            .map(|(name, op)| {
                let failed: u64 = op.total_errors.values().sum();
                format!("{name} {} ok, {failed} failed", op.total_successes)
            })
            .collect();
        let _ = writeln!(
            out,
            "whole run (warm-up and drain included): {}",
            totals.join("; ")
        );
        let s = &self.setup;
        if s.enterprises > 0 || s.needs > 0 {
            let _ = writeln!(
                out,
                "setup ({:.1} s, not measured): {} enterprises, {} needs ({} failed), {} referrals",
                s.secs, s.enterprises, s.needs, s.needs_failed, s.referrals
            );
        }
        if let Some(w) = &self.watch {
            let _ = writeln!(
                out,
                "watch: {}/{} streams open; {} events ({} backlog); {} of {} expected deliveries; \
                 delay ms p50 {:.1} p99 {:.1} max {:.1}",
                w.opened,
                w.streams,
                w.events,
                w.backlog_events,
                w.delivered,
                w.expected_deliveries,
                w.delay_ms.p50,
                w.delay_ms.p99,
                w.delay_ms.max
            );
            if !w.stream_errors.is_empty() {
                let _ = writeln!(out, "watch stream errors: {:?}", w.stream_errors);
            }
        }
        out
    }
}
