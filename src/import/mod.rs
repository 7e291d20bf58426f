//! `finmatch import FILE.csv`: streams financing needs from a CSV file through
//! FinancingService.ImportNeeds, with a progress bar and a report of every row.
//!
//! How it goes:
//! 1. The file is read once to hash its content and to collect each credit code's first row.
//!    The previous report of the same file, if any, says which rows are stored already: those
//!    are not sent again (resume).
//! 2. Each distinct credit code still to send is registered with
//!    EnterpriseService.CreateEnterprise from that row (name, region, industry, size).
//!    ALREADY_EXISTS names the registered enterprise, whose id is used as it is: an existing
//!    enterprise is never changed by an import. A code that cannot be registered rejects all its
//!    rows with the reason.
//! 3. The rows are read again and sent as ImportNeeds items, each with the idempotency key
//!    `import-<first 32 hex digits of the file's SHA-256>-<row>`, so running the same file again
//!    (with the same credential) replays every row and adds nothing. They go in chunks of at most
//!    1,000 items, one ImportNeeds call each: a response lists at most 1,000 rejections, so each
//!    names every rejection of its chunk. The enterprises are dealt round-robin to
//!    [`Options::calls_in_flight`] lanes, each with at most one call in flight: the rows of one
//!    enterprise go in one lane, in file order, so a later row of an enterprise is never stored
//!    before an earlier one. A chunk that fails with UNAVAILABLE,
//!    RESOURCE_EXHAUSTED or a transport error is sent again (same keys) a bounded number of
//!    times with backoff.
//! 4. Rows the client cannot parse are not sent; they are reported with the server's rejections.
//!    The report, one line per row with its outcome, is written as CSV to
//!    `<FILE>.import-report.csv` however the run ends; a summary is printed.
//!
//! Rows are numbered as a spreadsheet numbers them: the header is row 1.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::Channel;

use crate::proto as pb;
use crate::proto::code_name;
use crate::proto::enterprise_service_client::EnterpriseServiceClient;
use crate::proto::financing_service_client::FinancingServiceClient;

mod calls;
mod report;
mod rows;

use calls::{Bearer, columns_at_fault, import_chunk, register};
pub use report::{Outcome, Placement, REPORT_COLUMNS, Rejection, Report, report_path};
use report::{earlier_outcomes, write_report};
use rows::reader;
pub use rows::{
    COLUMNS, Columns, ImportRow, content_digest, csv_reader, idempotency_key, parse_row,
    yuan_to_minor,
};

/// CreateEnterprise calls in flight at once (a file may name many thousand enterprises).
const REGISTRATIONS_IN_FLIGHT: usize = 16;

/// How an import runs; the default is what `finmatch import` does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Items per ImportNeeds call. At most the 1,000 rejections a response lists, so that every
    /// call names every rejection of its chunk.
    pub chunk_items: usize,
    /// Retries of a call that failed with UNAVAILABLE, RESOURCE_EXHAUSTED or a transport error
    /// (the server restarting, a dropped connection); any other error ends the import.
    pub retries: u32,
    /// Wait before the first retry, doubled for each further one up to [`MAX_BACKOFF`].
    pub first_backoff: Duration,
    /// ImportNeeds calls in flight at once, each with the rows of its own enterprises. The server
    /// stores one stream's items one wave after another; with three, the database writes one
    /// stream's wave while the server scores another's.
    pub calls_in_flight: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            chunk_items: CHUNK_ITEMS_MAX,
            retries: 5,
            first_backoff: Duration::from_millis(250),
            calls_in_flight: 3,
        }
    }
}

/// The most items per call: the rejections an ImportNeedsResponse lists at most.
pub const CHUNK_ITEMS_MAX: usize = crate::proto::LISTED_REJECTIONS_MAX;
/// The most ImportNeeds calls an import has in flight at once.
pub const CALLS_IN_FLIGHT_MAX: usize = 8;
/// The longest wait between two attempts of a call.
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Runs an import against the server at `server` (e.g. http://127.0.0.1:50051) as `token`, with
/// the default options and no way to interrupt it but dropping the future.
pub async fn run(file: &Path, server: &str, token: &str) -> anyhow::Result<Report> {
    run_with(
        file,
        server,
        token,
        &Options::default(),
        std::future::pending(),
    )
    .await
}

/// Runs an import until it is done or `stop` completes (Ctrl-C). Whatever happens after the file
/// has been read, the report is written: every row with its outcome, rows not settled as
/// `pending` with the reason the run stopped. A failed run is an `Err` naming the report; run the
/// same file again to resume: rows the report marks stored are not sent again, the others are
/// sent with the same keys, so nothing is stored twice.
pub async fn run_with(
    file: &Path,
    server: &str,
    token: &str,
    options: &Options,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        (1..=CHUNK_ITEMS_MAX).contains(&options.chunk_items),
        "chunk_items must be between 1 and {CHUNK_ITEMS_MAX}"
    );
    anyhow::ensure!(
        (1..=CALLS_IN_FLIGHT_MAX).contains(&options.calls_in_flight),
        "calls_in_flight must be between 1 and {CALLS_IN_FLIGHT_MAX}"
    );
    let digest = content_digest(
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
    )?;
    let report_file = report_path(file);
    let earlier = earlier_outcomes(&report_file, &digest);

    // Pass 1: count the rows; every credit code's first row among those still to send.
    let mut csv = reader(file)?;
    let columns = Columns::from_header(csv.headers()?)?;
    let mut first_rows: Vec<pb::Enterprise> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut rows = 0u64;
    for (i, record) in csv.records().enumerate() {
        rows += 1;
        let row = i as u64 + 2;
        if let Ok(record) = record
            && !earlier.contains_key(&row)
            && let Ok(parsed) = parse_row(&columns, &record, row)
            && seen.insert(parsed.enterprise.credit_code.clone())
        {
            first_rows.push(parsed.enterprise);
        }
    }
    let mut import = Import::new(rows, &earlier);

    let bar = ProgressBar::new(first_rows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")?
            .progress_chars("=> "),
    );
    let outcome = {
        let work = import.run(file, &digest, first_rows, server, token, options, &bar);
        tokio::select! {
            outcome = work => outcome,
            () = stop => Err(anyhow::anyhow!("interrupted")),
        }
    };
    bar.finish_and_clear();
    let failure = outcome.err().map(|e| format!("{e:#}"));
    write_report(file, &digest, &report_file, &import, failure.as_deref())?;
    let report = import.report(failure);
    match &report.failure {
        None => Ok(report),
        Some(failure) => bail!(
            "{failure}; {} of {} row(s) settled, the others are pending in {}: run the same \
             import again to resume",
            report.rows - report.pending,
            report.rows,
            report_file.display()
        ),
    }
}

/// The state of an import while it runs: one outcome per data row.
struct Import {
    outcomes: Vec<Outcome>,
    /// Where each stored row's need went, when the server (or the earlier report) said.
    placements: Vec<Option<Placement>>,
    /// Rows an earlier run stored (their outcome is the earlier one); not sent again.
    earlier: Vec<bool>,
    rejections: HashMap<u64, Rejection>,
    accepted: i64,
    replayed: i64,
}

/// Items of one ImportNeeds call, with the data rows (0-based) and credit codes they come from.
#[derive(Default)]
struct Chunk {
    rows: Vec<usize>,
    credit_codes: Vec<String>,
    items: Vec<pb::ImportNeedsRequest>,
}

/// An answered ImportNeeds call: the chunk it sent and the response, or why it failed.
type Answer = anyhow::Result<(Chunk, pb::ImportNeedsResponse)>;

/// The lanes of an import: the chunk each is filling, whether its call is in flight, and the
/// calls in flight, each answering with its lane.
struct Calls<'c> {
    chunks: Vec<Chunk>,
    busy: Vec<bool>,
    in_flight: futures::stream::FuturesUnordered<futures::future::BoxFuture<'c, (usize, Answer)>>,
}

impl Calls<'_> {
    fn new(lanes: usize) -> Self {
        Self {
            chunks: (0..lanes).map(|_| Chunk::default()).collect(),
            busy: vec![false; lanes],
            in_flight: futures::stream::FuturesUnordered::new(),
        }
    }
}

impl Import {
    fn new(rows: u64, earlier: &HashMap<u64, (Outcome, Option<Placement>)>) -> Self {
        let rows = rows as usize;
        let mut import = Self {
            outcomes: vec![Outcome::Pending; rows],
            placements: vec![None; rows],
            earlier: vec![false; rows],
            rejections: HashMap::new(),
            accepted: 0,
            replayed: 0,
        };
        for (&row, (outcome, placement)) in earlier {
            if let Some(i) = (row as usize).checked_sub(2).filter(|&i| i < rows) {
                import.outcomes[i] = *outcome;
                import.placements[i] = placement.clone();
                import.earlier[i] = true;
            }
        }
        import
    }

    fn reject(&mut self, i: usize, rejection: Rejection) {
        self.outcomes[i] = Outcome::Rejected;
        self.rejections.insert(rejection.row, rejection);
    }

    /// Registers the enterprises, then sends the rows still to send in chunks.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &mut self,
        file: &Path,
        digest: &str,
        first_rows: Vec<pb::Enterprise>,
        server: &str,
        token: &str,
        options: &Options,
        bar: &ProgressBar,
    ) -> anyhow::Result<()> {
        let channel = Channel::from_shared(server.to_owned())
            .context("the server must be a URL such as http://127.0.0.1:50051")?
            .connect()
            .await
            .with_context(|| format!("connecting to {server}"))?;
        let bearer: Bearer = format!("Bearer {token}")
            .parse()
            .context("the token is not valid metadata")?;

        bar.set_message("enterprises");
        let enterprises = EnterpriseServiceClient::new(channel.clone());
        let mut registrations = futures::stream::iter(first_rows)
            .map(|enterprise| {
                let client = enterprises.clone();
                let bearer = &bearer;
                async move {
                    let code = enterprise.credit_code.clone();
                    (code, register(client, bearer, enterprise, options).await)
                }
            })
            .buffer_unordered(REGISTRATIONS_IN_FLIGHT);
        // Each enterprise's id and lane, dealt round-robin as the registrations come back.
        let lanes = options.calls_in_flight;
        let mut enterprise_ids: HashMap<String, Result<(String, usize), Rejection>> =
            HashMap::new();
        while let Some((code, outcome)) = registrations.next().await {
            let lane = enterprise_ids.len() % lanes;
            enterprise_ids.insert(code, outcome?.map(|id| (id, lane)));
            bar.inc(1);
        }
        drop(registrations);

        bar.set_position(0);
        bar.set_length(self.outcomes.len() as u64);
        bar.set_message("needs");
        let financing = FinancingServiceClient::new(channel);
        let mut csv = reader(file)?;
        let columns = Columns::from_header(csv.headers()?)?;
        let mut calls = Calls::new(lanes);
        let mut read = 0;
        for (i, record) in csv.records().enumerate() {
            let row = i as u64 + 2;
            read += 1;
            anyhow::ensure!(
                i < self.outcomes.len(),
                "the file grew while it was being imported"
            );
            if self.outcomes[i] != Outcome::Pending {
                bar.inc(1);
                continue;
            }
            let parse_error = |credit_code: String, message: String| Rejection {
                row,
                credit_code,
                code: "PARSE".into(),
                reason: String::new(),
                message,
            };
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    self.reject(i, parse_error(String::new(), e.to_string()));
                    bar.inc(1);
                    continue;
                }
            };
            let parsed = match parse_row(&columns, &record, row) {
                Ok(parsed) => parsed,
                Err(message) => {
                    let code = columns.get(&record, "credit_code").to_owned();
                    self.reject(i, parse_error(code, message));
                    bar.inc(1);
                    continue;
                }
            };
            let credit_code = parsed.enterprise.credit_code;
            let lane = match enterprise_ids.get(&credit_code) {
                Some(Ok((enterprise_id, lane))) => {
                    let chunk = &mut calls.chunks[*lane];
                    chunk.rows.push(i);
                    chunk.items.push(pb::ImportNeedsRequest {
                        idempotency_key: idempotency_key(digest, row),
                        need: Some(pb::Need {
                            enterprise_id: enterprise_id.clone(),
                            ..parsed.need
                        }),
                    });
                    chunk.credit_codes.push(credit_code);
                    *lane
                }
                Some(Err(template)) => {
                    self.reject(
                        i,
                        Rejection {
                            row,
                            ..template.clone()
                        },
                    );
                    bar.inc(1);
                    continue;
                }
                None => bail!("row {row} changed while the file was being imported"),
            };
            if calls.chunks[lane].items.len() == options.chunk_items {
                self.send(&mut calls, lane, &financing, &bearer, options, bar)
                    .await?;
            }
        }
        anyhow::ensure!(
            read == self.outcomes.len(),
            "the file shrank while it was being imported"
        );
        for lane in 0..lanes {
            self.send(&mut calls, lane, &financing, &bearer, options, bar)
                .await?;
        }
        while let Some((_, outcome)) = calls.in_flight.next().await {
            let (chunk, response) = outcome?;
            self.record(chunk, response, bar)?;
        }
        Ok(())
    }

    /// Sends the chunk of `lane` once the lane's previous call has answered (recording the
    /// outcomes of every call that answers meanwhile); an empty chunk is not sent.
    async fn send<'c>(
        &mut self,
        calls: &mut Calls<'c>,
        lane: usize,
        client: &FinancingServiceClient<Channel>,
        bearer: &'c Bearer,
        options: &'c Options,
        bar: &ProgressBar,
    ) -> anyhow::Result<()> {
        while calls.busy[lane] {
            let Some((answered, outcome)) = calls.in_flight.next().await else {
                unreachable!("a busy lane has its call in flight");
            };
            calls.busy[answered] = false;
            let (chunk, response) = outcome?;
            self.record(chunk, response, bar)?;
        }
        let chunk = std::mem::take(&mut calls.chunks[lane]);
        if chunk.items.is_empty() {
            return Ok(());
        }
        calls.busy[lane] = true;
        let call = import_chunk(client.clone(), bearer, chunk, options);
        calls
            .in_flight
            .push(Box::pin(async move { (lane, call.await) }));
        Ok(())
    }

    /// Records the outcome of each row of an answered call.
    fn record(
        &mut self,
        chunk: Chunk,
        response: pb::ImportNeedsResponse,
        bar: &ProgressBar,
    ) -> anyhow::Result<()> {
        let sent = chunk.items.len() as i64;
        let first_row = chunk.rows[0] + 2;
        anyhow::ensure!(
            response.accepted + response.replayed + response.rejected_total == sent
                && response.rejected.len() as i64 == response.rejected_total,
            "the server answered {} accepted, {} replayed and {} rejected ({} listed) for the {sent} \
             item(s) from row {first_row}",
            response.accepted,
            response.replayed,
            response.rejected_total,
            response.rejected.len()
        );
        let stored = match (response.accepted, response.replayed) {
            (_, 0) => Outcome::Accepted,
            (0, _) => Outcome::Replayed,
            _ => Outcome::Stored,
        };
        for &i in &chunk.rows {
            self.outcomes[i] = stored;
        }
        // Each stored item listed (all of them: a chunk is no longer than the list) says whether
        // it was accepted or replayed, and where its need went.
        for item in response.stored {
            let Some(&i) = usize::try_from(item.index)
                .ok()
                .and_then(|n| chunk.rows.get(n))
            else {
                bail!("the server stored item {} which was not sent", item.index);
            };
            self.outcomes[i] = if item.replayed {
                Outcome::Replayed
            } else {
                Outcome::Accepted
            };
            let status = pb::NeedStatus::try_from(item.status)
                .map_or("NEED_STATUS_UNSPECIFIED", |s| s.as_str_name());
            self.placements[i] = Some(Placement {
                need_id: item.need_id,
                status: status.to_owned(),
            });
        }
        for (rejection, item) in response.rejected.into_iter().map(|r| {
            let item = usize::try_from(r.index)
                .ok()
                .filter(|&n| n < chunk.rows.len());
            (r, item)
        }) {
            let Some(n) = item else {
                bail!(
                    "the server rejected item {} which was not sent",
                    rejection.index
                );
            };
            let i = chunk.rows[n];
            let error = rejection.error.unwrap_or_default();
            let reason = if error.reason.is_empty() {
                columns_at_fault(error.field_violations.iter().map(|v| v.field.as_str()))
            } else {
                error.reason
            };
            let credit_code = chunk.credit_codes[n].clone();
            self.reject(
                i,
                Rejection {
                    row: i as u64 + 2,
                    credit_code,
                    code: code_name(tonic::Code::from_i32(error.code)).to_owned(),
                    reason,
                    // The message states every field violation already.
                    message: error.message,
                },
            );
        }
        self.accepted += response.accepted;
        self.replayed += response.replayed;
        bar.inc(sent as u64);
        Ok(())
    }

    fn report(&self, failure: Option<String>) -> Report {
        let mut rejected: Vec<Rejection> = self.rejections.values().cloned().collect();
        rejected.sort_by_key(|r| r.row);
        let placed = |status: &str| {
            self.placements
                .iter()
                .flatten()
                .filter(|p| p.status == status)
                .count() as u64
        };
        Report {
            rows: self.outcomes.len() as u64,
            accepted: self.accepted,
            replayed: self.replayed,
            earlier: self.earlier.iter().filter(|&&e| e).count() as u64,
            routed: placed(pb::NeedStatus::Routed.as_str_name()),
            unmatched: placed(pb::NeedStatus::Unmatched.as_str_name()),
            unrouted: placed(pb::NeedStatus::Submitted.as_str_name()),
            rejected,
            pending: self
                .outcomes
                .iter()
                .filter(|&&o| o == Outcome::Pending)
                .count() as u64,
            failure,
        }
    }
}

#[cfg(test)]
mod tests;
