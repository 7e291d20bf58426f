//! `finmatch bench`: the load tool of DESIGN §7, a tonic client against a running server.
//!
//! `bench seed` creates the catalogue (lenders, products, one LENDER credential per lender)
//! through the public API and writes a state file; the scenarios (`submit`, `get`, `preview`,
//! `decide`, `noop`, `mixed`, `watch`) read it, prepare what they consume in a setup phase
//! before the clock starts, run a closed loop of `--concurrency` calls in flight over
//! `--connections` HTTP/2 connections, and report calls/s, errors by gRPC code and latency
//! percentiles from HDR histograms, as a table on stdout and as JSON (`--json FILE`).
//!
//! Requests a scenario consumes (one new enterprise per SubmitNeed, one referral per decision)
//! are prepared for `--max-calls` calls when it is given, else for `--expected-rate` calls per
//! second over warm-up plus duration; a run that uses them up ends there and says so (its
//! measured window ends with it, so its calls/s stay right).

mod client;
pub mod data;
mod load;
mod report;
mod scenarios;
mod seed;
mod state;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub use client::ConnectArgs;
pub use load::{Op, Plan};
pub use report::{Latency, OpReport, Report, Setup, WatchReport};
pub use state::State;

use report::Frame;
use scenarios::SetupContext;

/// `finmatch bench …`
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Create ≥ 50 lenders and ≥ 1,000 active products through the API (on a server whose
    /// database has no lender yet) and a LENDER credential per lender; write the state file.
    Seed(SeedArgs),
    /// SubmitNeed, each call a new enterprise's need (enterprises registered in the setup).
    Submit(LoadArgs),
    /// GetNeed of random needs submitted in the setup (`--pool` of them).
    Get(LoadArgs),
    /// PreviewMatches of an unsaved need of a random setup enterprise, default page.
    Preview(LoadArgs),
    /// Banks acknowledge, then approve or decline, referrals routed in the setup.
    Decide(DecideArgs),
    /// grpc.health.v1.Health/Check: the cost of a tonic unary call that does no work.
    Noop(LoadArgs),
    /// A weighted mix of submit, get, preview and decide.
    Mixed(MixedArgs),
    /// `--streams` WatchReferrals streams over the lenders, open while the submit load runs.
    Watch(WatchArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Lenders to create.
    #[arg(long, default_value_t = 50)]
    pub lenders: usize,
    /// Active products to create, spread over the lenders.
    #[arg(long, default_value_t = 1000)]
    pub products: usize,
    /// The state file to write.
    #[arg(long, default_value = "bench-state.json")]
    pub state: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The state file `bench seed` wrote.
    #[arg(long, default_value = "bench-state.json")]
    pub state: PathBuf,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Length of the measured window (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Calls before the measured window, not counted.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// End after this many calls (warm-up included); sizes what the setup prepares.
    #[arg(long)]
    pub max_calls: Option<u64>,
    /// Without --max-calls, prepare consumed requests for this many calls per second over
    /// warm-up plus duration.
    #[arg(long, default_value_t = 300.0)]
    pub expected_rate: f64,
    /// Needs (get) or enterprises (preview) the setup creates to draw from at random.
    #[arg(long, default_value_t = 300)]
    pub pool: u64,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DecideArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Percentage of referrals declined (the others are approved within the product's ranges).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub decline_percent: u32,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MixedArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// Relative weight of SubmitNeed calls.
    #[arg(long, default_value_t = 4)]
    pub submit_weight: u32,
    /// Relative weight of GetNeed calls.
    #[arg(long, default_value_t = 3)]
    pub get_weight: u32,
    /// Relative weight of PreviewMatches calls.
    #[arg(long, default_value_t = 2)]
    pub preview_weight: u32,
    /// Relative weight of acknowledge-and-decide calls.
    #[arg(long, default_value_t = 1)]
    pub decide_weight: u32,
    /// Percentage of referrals declined.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub decline_percent: u32,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    /// WatchReferrals streams, spread over the lenders.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// The cursor the streams start after (the event log's latest cursor, so no history is
    /// replayed; older events are counted as backlog and kept out of the delay figures).
    #[arg(long, default_value_t = 0)]
    pub after_cursor: i64,
    /// How long to wait after the load for late deliveries.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub settle: Duration,
}

/// `10s`, `500ms`, `2m`, or plain seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((raw, "s"), |i| raw.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration such as 10s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1_000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{raw:?}: the unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{raw:?}: {e}"))
}

/// `finmatch bench` alone, for callers that hold its arguments as words (tests, scripts).
#[derive(Debug, clap::Parser)]
#[command(name = "bench")]
struct Standalone {
    #[command(subcommand)]
    command: BenchCommand,
}

/// Parses `["bench", "submit", "--concurrency", "4", …]` as the command line would.
pub fn parse<I, T>(words: I) -> Result<BenchCommand, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    <Standalone as clap::Parser>::try_parse_from(words).map(|s| s.command)
}

/// What a bench command produced.
pub enum Outcome {
    Seeded(State),
    Ran(Box<Report>),
}

/// Runs a bench command, prints its table (and writes its JSON), and returns its result.
pub async fn run(command: BenchCommand) -> anyhow::Result<Outcome> {
    let outcome = execute(command).await?;
    match &outcome {
        Outcome::Seeded(state) => println!(
            "seeded {} lenders and {} products (one LENDER credential each lender)",
            state.lenders.len(),
            state.products.len()
        ),
        Outcome::Ran(report) => print!("{}", report.table()),
    }
    Ok(outcome)
}

/// Runs a bench command without printing its result.
pub async fn execute(command: BenchCommand) -> anyhow::Result<Outcome> {
    match command {
        BenchCommand::Seed(args) => {
            let channels = args.connect.connect().await?;
            let operator = args.connect.operator()?;
            let state = seed::seed(
                &channels,
                &operator,
                &args.connect.address.server,
                args.lenders,
                args.products,
                &args.state,
            )
            .await?;
            Ok(Outcome::Seeded(state))
        }
        BenchCommand::Noop(args) => {
            let channels = args.connect.connect().await?;
            let outcome =
                load::run(Arc::new(scenarios::Noop), &channels, &plan("noop", &args)).await;
            finish("noop", &args, &outcome, Setup::default(), None)
        }
        BenchCommand::Submit(args) => {
            let mut ready = Ready::new(&args).await?;
            let n = ready.consumed(&args, 1.0);
            let workload = ready.setup().submit(n).await?;
            ready.measure("submit", &args, workload).await
        }
        BenchCommand::Get(args) => {
            let mut ready = Ready::new(&args).await?;
            let workload = ready.setup().get(args.pool).await?;
            ready.measure("get", &args, workload).await
        }
        BenchCommand::Preview(args) => {
            let mut ready = Ready::new(&args).await?;
            let workload = ready.setup().preview(args.pool).await?;
            ready.measure("preview", &args, workload).await
        }
        BenchCommand::Decide(args) => {
            let mut ready = Ready::new(&args.load).await?;
            let n = ready.consumed(&args.load, 0.5);
            let workload = ready.setup().decide(n, args.decline_percent).await?;
            ready.measure("decide", &args.load, workload).await
        }
        BenchCommand::Mixed(args) => mixed(args).await,
        BenchCommand::Watch(args) => watch_scenario(args).await,
    }
}

fn plan(label: &str, args: &LoadArgs) -> Plan {
    Plan {
        label: label.to_owned(),
        concurrency: args.concurrency.max(1),
        warmup: args.warmup,
        duration: args.duration,
        max_calls: args.max_calls,
    }
}

fn finish(
    scenario: &str,
    args: &LoadArgs,
    outcome: &load::Outcome,
    setup: Setup,
    watch: Option<WatchReport>,
) -> anyhow::Result<Outcome> {
    let mut report = Report::new(
        Frame {
            scenario,
            server: &args.connect.address.server,
            connections: args.connect.connections.max(1),
            concurrency: args.concurrency.max(1),
            warmup: args.warmup,
            duration: args.duration,
        },
        outcome,
        setup,
    );
    report.watch = watch;
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    Ok(Outcome::Ran(Box::new(report)))
}

fn write_json(path: &Path, report: &Report) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Connections, operator and state of a scenario that needs setup.
struct Ready {
    channels: client::Channels,
    operator: client::Bearer,
    state: State,
    state_path: PathBuf,
    run: String,
    setup: Setup,
    setup_started: Instant,
}

impl Ready {
    async fn new(args: &LoadArgs) -> anyhow::Result<Self> {
        let state = State::load(&args.state)?;
        let operator = args.connect.operator()?;
        let channels = args.connect.connect().await?;
        Ok(Self {
            channels,
            operator,
            state,
            state_path: args.state.clone(),
            run: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            setup: Setup::default(),
            setup_started: Instant::now(),
        })
    }

    /// How many consumed requests to prepare for `share` of the calls.
    fn consumed(&self, args: &LoadArgs, share: f64) -> u64 {
        let calls = match args.max_calls {
            Some(n) => n as f64,
            None => args.expected_rate * (args.warmup + args.duration).as_secs_f64(),
        };
        (calls * share).ceil().max(1.0) as u64
    }

    fn setup(&mut self) -> SetupContext<'_> {
        SetupContext {
            channels: &self.channels,
            operator: self.operator.clone(),
            state: &mut self.state,
            state_path: &self.state_path,
            run: self.run.clone(),
            today: chrono::Utc::now().date_naive(),
            setup: &mut self.setup,
        }
    }

    async fn measure<W: load::Workload>(
        &mut self,
        scenario: &str,
        args: &LoadArgs,
        workload: W,
    ) -> anyhow::Result<Outcome> {
        let setup = self.finish_setup();
        let outcome = load::run(Arc::new(workload), &self.channels, &plan(scenario, args)).await;
        finish(scenario, args, &outcome, setup, None)
    }

    fn finish_setup(&mut self) -> Setup {
        let mut setup = self.setup.clone();
        setup.secs = self.setup_started.elapsed().as_secs_f64();
        setup
    }
}

async fn mixed(args: MixedArgs) -> anyhow::Result<Outcome> {
    let weights = [
        args.submit_weight,
        args.get_weight,
        args.preview_weight,
        args.decide_weight,
    ];
    let total: u32 = weights.iter().sum();
    if total == 0 {
        bail!("at least one weight must be positive");
    }
    let load = &args.load;
    let mut ready = Ready::new(load).await?;
    // 20% over each share: the mix is drawn at random per call.
    let share = |w: u32| f64::from(w) / f64::from(total) * 1.2;
    let submit_n = ready.consumed(load, share(weights[0]));
    let decide_n = ready.consumed(load, share(weights[3]));
    let submit = if weights[0] > 0 {
        Some(ready.setup().submit(submit_n).await?)
    } else {
        None
    };
    let get = if weights[1] > 0 {
        Some(ready.setup().get(load.pool).await?)
    } else {
        None
    };
    let preview = if weights[2] > 0 {
        Some(ready.setup().preview(load.pool).await?)
    } else {
        None
    };
    let decide = if weights[3] > 0 {
        Some(ready.setup().decide(decide_n, args.decline_percent).await?)
    } else {
        None
    };
    let mut cumulative = [0u32; 4];
    let mut sum = 0;
    for (c, w) in cumulative.iter_mut().zip(weights) {
        sum += w;
        *c = sum;
    }
    let workload = scenarios::Mixed {
        submit,
        get,
        preview,
        decide,
        cumulative,
    };
    ready.measure("mixed", load, workload).await
}

async fn watch_scenario(args: WatchArgs) -> anyhow::Result<Outcome> {
    let load = &args.load;
    let mut ready = Ready::new(load).await?;
    let n = ready.consumed(load, 1.0);
    let mut workload = ready.setup().submit(n).await?;
    let counts = Arc::new(scenarios::ReferralCounts::new(&ready.state));
    workload.referrals = Some(counts.clone());

    let lenders: Vec<client::Bearer> = ready
        .state
        .lenders
        .iter()
        .map(|l| client::bearer(&l.token))
        .collect::<anyhow::Result<_>>()?;
    if lenders.is_empty() {
        bail!("the state file has no lenders");
    }
    let stream_channels = ConnectArgs {
        connections: args.streams.div_ceil(watch::STREAMS_PER_CONNECTION).max(1),
        ..load.connect.clone()
    }
    .connect()
    .await?;
    let watchers = watch::open(&stream_channels, &lenders, args.streams, args.after_cursor).await;
    if watchers.opened() == 0 && args.streams > 0 {
        bail!("no watch stream could be opened");
    }
    let setup = ready.finish_setup();
    let outcome = load::run(Arc::new(workload), &ready.channels, &plan("watch", load)).await;
    let referrals: Vec<u64> = counts
        .counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let report = watchers.finish(args.settle, &referrals).await;
    finish("watch", load, &outcome, setup, Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
