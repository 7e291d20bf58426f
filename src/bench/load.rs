//! The closed-loop load runner: `concurrency` workers, each with one call in flight, spread over
//! the connections; a warm-up whose calls are not measured; per-worker HDR histograms merged at
//! the end (no shared state on the hot path but one relaxed counter for the progress line).

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::SeedableRng as _;
use rand::rngs::SmallRng;
use tonic::transport::Channel;

use super::client::Channels;
use crate::proto::financing_service_client::FinancingServiceClient;
use crate::proto::partner_service_client::PartnerServiceClient;
use tonic_health::pb::health_client::HealthClient;

/// The RPCs the scenarios make; a decision is counted by its kind, so approvals and declines
/// can be checked against the rows each leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Check,
    SubmitNeed,
    GetNeed,
    PreviewMatches,
    AcknowledgeReferral,
    Approve,
    Decline,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::Check,
        Op::SubmitNeed,
        Op::GetNeed,
        Op::PreviewMatches,
        Op::AcknowledgeReferral,
        Op::Approve,
        Op::Decline,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Op::Check => "Health/Check",
            Op::SubmitNeed => "SubmitNeed",
            Op::GetNeed => "GetNeed",
            Op::PreviewMatches => "PreviewMatches",
            Op::AcknowledgeReferral => "AcknowledgeReferral",
            Op::Approve => "DecideReferral(approve)",
            Op::Decline => "DecideReferral(decline)",
        }
    }
}

/// Latencies in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// gRPC codes 0..=16.
pub const CODES: usize = 17;

/// What one kind of call did.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Latency of the calls that completed inside the measured window, successful or not.
    pub latency: Histogram<u64>,
    pub measured_ok: u64,
    pub measured_errors: [u64; CODES],
    /// Every call, warm-up and drain included: what the database must show.
    pub total_ok: u64,
    pub total_errors: [u64; CODES],
}

impl OpStats {
    fn new() -> Self {
        Self {
            latency: latency_histogram(),
            measured_ok: 0,
            measured_errors: [0; CODES],
            total_ok: 0,
            total_errors: [0; CODES],
        }
    }

    fn add(&mut self, other: &OpStats) {
        self.latency.add(&other.latency).expect("same bounds");
        self.measured_ok += other.measured_ok;
        self.total_ok += other.total_ok;
        for i in 0..CODES {
            self.measured_errors[i] += other.measured_errors[i];
            self.total_errors[i] += other.total_errors[i];
        }
    }

    pub fn measured_calls(&self) -> u64 {
        self.measured_ok + self.measured_errors.iter().sum::<u64>()
    }

    pub fn total_calls(&self) -> u64 {
        self.total_ok + self.total_errors.iter().sum::<u64>()
    }
}

/// The measured window, and why it ended before its time if it did.
pub struct Clock {
    pub started: Instant,
    pub warm_end: Instant,
    pub end: Instant,
    stopped: AtomicBool,
    stop: Mutex<Option<(Instant, String)>>,
}

impl Clock {
    pub fn new(warmup: Duration, duration: Duration) -> Self {
        let started = Instant::now();
        Self {
            started,
            warm_end: started + warmup,
            end: started + warmup + duration,
            stopped: AtomicBool::new(false),
            stop: Mutex::new(None),
        }
    }

    /// Ends the run early (the first reason wins): the window closes now.
    pub fn stop(&self, reason: &str) {
        let mut stop = self.stop.lock().expect("not poisoned");
        if stop.is_none() {
            *stop = Some((Instant::now(), reason.to_owned()));
        }
        self.stopped.store(true, Ordering::Release);
    }

    pub fn running(&self) -> bool {
        !self.stopped.load(Ordering::Acquire) && Instant::now() < self.end
    }

    /// When the window closes (or closed).
    fn window_end(&self) -> Instant {
        if self.stopped.load(Ordering::Acquire)
            && let Some((at, _)) = &*self.stop.lock().expect("not poisoned")
        {
            return (*at).min(self.end);
        }
        self.end
    }

    fn stop_reason(&self) -> Option<(Instant, String)> {
        self.stop.lock().expect("not poisoned").clone()
    }
}

/// One worker: its clients, its random numbers, its statistics.
pub struct Worker {
    pub rng: SmallRng,
    pub financing: FinancingServiceClient<Channel>,
    pub partner: PartnerServiceClient<Channel>,
    pub health: HealthClient<Channel>,
    stats: Vec<OpStats>,
    clock: Arc<Clock>,
    progress: Arc<AtomicU64>,
}

impl Worker {
    fn new(id: usize, channel: Channel, clock: Arc<Clock>, progress: Arc<AtomicU64>) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(0xbe4c_0000 + id as u64),
            financing: FinancingServiceClient::new(channel.clone()),
            partner: PartnerServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            stats: Op::ALL.iter().map(|_| OpStats::new()).collect(),
            clock,
            progress,
        }
    }

    /// Records a call that started at `started` and has just ended.
    pub fn record(&mut self, op: Op, started: Instant, result: Result<(), tonic::Code>) {
        let now = Instant::now();
        let stats = &mut self.stats[op as usize];
        let measured = now >= self.clock.warm_end && now <= self.clock.window_end();
        match result {
            Ok(()) => {
                stats.total_ok += 1;
                if measured {
                    stats.measured_ok += 1;
                }
            }
            Err(code) => {
                stats.total_errors[code as usize] += 1;
                if measured {
                    stats.measured_errors[code as usize] += 1;
                }
            }
        }
        if measured {
            let micros = now.duration_since(started).as_micros() as u64;
            stats.latency.saturating_record(micros.max(1));
        }
        self.progress.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a workload's call did to the run.
pub enum Step {
    Continue,
    /// The prepared requests are used up: the run ends here.
    Exhausted(&'static str),
}

/// A scenario's calls.
pub trait Workload: Send + Sync + 'static {
    /// One unit of work (one or more RPCs, each recorded with [`Worker::record`]).
    fn call(&self, worker: &mut Worker) -> impl Future<Output = Step> + Send;
}

/// How long and how hard.
#[derive(Debug, Clone)]
pub struct Plan {
    pub label: String,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Workload calls (warm-up included) after which the run ends.
    pub max_calls: Option<u64>,
}

/// What a run measured.
pub struct Outcome {
    /// Indexed like [`Op::ALL`].
    pub stats: Vec<OpStats>,
    /// Length of the measured window.
    pub measured: Duration,
    pub stopped_early: Option<String>,
}

impl Outcome {
    pub fn op(&self, op: Op) -> &OpStats {
        &self.stats[op as usize]
    }
}

/// Runs `workload` by `plan` over `channels`.
pub async fn run<W: Workload>(workload: Arc<W>, channels: &Channels, plan: &Plan) -> Outcome {
    let clock = Arc::new(Clock::new(plan.warmup, plan.duration));
    let progress = Arc::new(AtomicU64::new(0));
    let budget = plan.max_calls.map(|n| Arc::new(AtomicU64::new(n)));
    let reporter = tokio::spawn(report_progress(
        plan.label.clone(),
        clock.clone(),
        progress.clone(),
    ));
    let mut workers = Vec::with_capacity(plan.concurrency);
    for id in 0..plan.concurrency.max(1) {
        let mut worker = Worker::new(id, channels.get(id), clock.clone(), progress.clone());
        let workload = workload.clone();
        let budget = budget.clone();
        workers.push(tokio::spawn(async move {
            while worker.clock.running() {
                if let Some(budget) = &budget
                    && budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_err()
                {
                    worker.clock.stop("reached --max-calls");
                    break;
                }
                if let Step::Exhausted(what) = workload.call(&mut worker).await {
                    worker.clock.stop(what);
                    break;
                }
            }
            worker.stats
        }));
    }
    let mut stats: Vec<OpStats> = Op::ALL.iter().map(|_| OpStats::new()).collect();
    for worker in workers {
        let worker_stats = worker.await.expect("a bench worker panicked");
        for (total, one) in stats.iter_mut().zip(&worker_stats) {
            total.add(one);
        }
    }
    reporter.abort();
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    let stop = clock.stop_reason();
    let window_end = match &stop {
        Some((at, _)) => (*at).min(clock.end),
        None => clock.end,
    };
    Outcome {
        stats,
        measured: window_end.saturating_duration_since(clock.warm_end),
        stopped_early: stop.filter(|(at, _)| *at < clock.end).map(|(at, reason)| {
            format!(
                "{reason} after {:.1} s",
                at.duration_since(clock.started).as_secs_f64()
            )
        }),
    }
}

/// Once a second, overwriting one line, while stderr is a terminal; otherwise a plain line
/// every five seconds.
async fn report_progress(label: String, clock: Arc<Clock>, progress: Arc<AtomicU64>) {
    let terminal = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    let mut seconds = 0u64;
    loop {
        tick.tick().await;
        seconds += 1;
        let done = progress.load(Ordering::Relaxed);
        let now = Instant::now();
        let phase = if now < clock.warm_end {
            "warm-up"
        } else {
            "measuring"
        };
        let left = clock.end.saturating_duration_since(now).as_secs();
        let line = format!(
            "{label}: {phase}, {done} calls, {}/s, {left} s left",
            done - last
        );
        last = done;
        if terminal {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if seconds.is_multiple_of(5) {
            eprintln!("{line}");
        }
    }
}
