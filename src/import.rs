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
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use crate::grpc::metrics::code_name;
use crate::grpc::pb;
use crate::grpc::pb::enterprise_service_client::EnterpriseServiceClient;
use crate::grpc::pb::financing_service_client::FinancingServiceClient;

/// The columns, in any order; a header row naming each is required.
pub const COLUMNS: [&str; 12] = [
    "credit_code",
    "enterprise_name",
    "region_code",
    "industry_code",
    "size",
    "amount_yuan",
    "term_months",
    "purpose",
    "collateral",
    "max_rate_bps",
    "needed_by",
    "consent",
];

/// CreateEnterprise calls in flight at once (a file may name many thousand enterprises).
const REGISTRATIONS_IN_FLIGHT: usize = 16;

/// One data row, mapped to what the server takes.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRow {
    /// Spreadsheet row number (the header is row 1).
    pub row: u64,
    /// The enterprise to register when its credit code is unknown.
    pub enterprise: pb::Enterprise,
    /// The need, without enterprise_id (known once the enterprise is registered).
    pub need: pb::Need,
}

/// A row that was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub row: u64,
    pub credit_code: String,
    /// gRPC code name (INVALID_ARGUMENT, …), or PARSE for a row the client could not read.
    pub code: String,
    /// ErrorInfo reason when the server gave one; for INVALID_ARGUMENT the file's columns at
    /// fault (`needed_by`, `amount_yuan`), `;`-separated.
    pub reason: String,
    pub message: String,
}

/// Where a stored row's need went, as the server reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub need_id: String,
    /// The need's status when it was stored, by its wire name: `NEED_STATUS_ROUTED`,
    /// `NEED_STATUS_UNMATCHED` or `NEED_STATUS_SUBMITTED` (no consent: kept from every bank).
    pub status: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub rows: u64,
    /// Items stored by this run's calls.
    pub accepted: i64,
    /// Items this run sent that an earlier run (or an earlier row with the same key) had stored.
    pub replayed: i64,
    /// Rows the previous report of the same file marks stored; not sent again.
    pub earlier: u64,
    /// Of every stored row (this run's or an earlier run's): routed to at least one bank.
    pub routed: u64,
    /// Of every stored row: no product fits the need (UNMATCHED).
    pub unmatched: u64,
    /// Of every stored row: kept from the banks for want of consent (SUBMITTED).
    pub unrouted: u64,
    /// Ordered by row.
    pub rejected: Vec<Rejection>,
    /// Rows not settled because the run stopped early.
    pub pending: u64,
    /// Why the run stopped early.
    pub failure: Option<String>,
}

/// Column positions of one file.
#[derive(Debug, Clone)]
pub struct Columns(HashMap<&'static str, usize>);

impl Columns {
    /// Finds every column in the header row (names compared trimmed and case-insensitively).
    pub fn from_header(header: &csv::StringRecord) -> anyhow::Result<Self> {
        let mut positions = HashMap::new();
        let mut missing = Vec::new();
        for name in COLUMNS {
            match header
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(name))
            {
                Some(i) => {
                    positions.insert(name, i);
                }
                None => missing.push(name),
            }
        }
        if !missing.is_empty() {
            bail!(
                "the header lacks the column(s) {}; expected: {}",
                missing.join(", "),
                COLUMNS.join(", ")
            );
        }
        Ok(Self(positions))
    }

    fn get<'r>(&self, record: &'r csv::StringRecord, name: &str) -> &'r str {
        self.0
            .get(name)
            .and_then(|&i| record.get(i))
            .unwrap_or("")
            .trim()
    }
}

/// Maps one record to an enterprise and a need; every problem of the row in one message.
/// Values the server validates anyway (codes, dates, ranges) are passed on as they are, so its
/// field violations name them.
pub fn parse_row(
    columns: &Columns,
    record: &csv::StringRecord,
    row: u64,
) -> Result<ImportRow, String> {
    let field = |name| columns.get(record, name);
    let mut problems = Vec::new();

    let size = word::<pb::EnterpriseSize>(field("size"), "ENTERPRISE_SIZE_")
        .map_err(|e| problems.push(format!("size: {e}")))
        .unwrap_or(0);
    let amount_minor = yuan_to_minor(field("amount_yuan"))
        .map_err(|e| problems.push(format!("amount_yuan: {e}")))
        .unwrap_or(0);
    let term_months = field("term_months")
        .parse::<i32>()
        .map_err(|_| problems.push("term_months: not a whole number of months".to_owned()))
        .unwrap_or(0);
    let purpose = word::<pb::Purpose>(field("purpose"), "PURPOSE_")
        .map_err(|e| problems.push(format!("purpose: {e}")))
        .unwrap_or(0);
    let mut collateral = Vec::new();
    for part in field("collateral")
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match word::<pb::Collateral>(part, "COLLATERAL_") {
            Ok(value) => collateral.push(value),
            Err(e) => problems.push(format!("collateral: {e}")),
        }
    }
    let max_rate_bps = match field("max_rate_bps") {
        "" => None,
        raw => raw
            .parse::<i32>()
            .map_err(|_| problems.push("max_rate_bps: not a whole number of basis points".into()))
            .ok(),
    };
    let consent_to_share = match field("consent").to_ascii_lowercase().as_str() {
        "yes" => true,
        "no" => false,
        other => {
            problems.push(format!("consent: {other:?} is neither yes nor no"));
            false
        }
    };
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(ImportRow {
        row,
        enterprise: pb::Enterprise {
            credit_code: field("credit_code").to_owned(),
            name: field("enterprise_name").to_owned(),
            region_code: field("region_code").to_owned(),
            industry_code: field("industry_code").to_owned(),
            size,
            ..Default::default()
        },
        need: pb::Need {
            amount_minor,
            term_months,
            purpose,
            collateral,
            max_rate_bps,
            needed_by: field("needed_by").to_owned(),
            consent_to_share,
            channel: pb::Channel::Bureau as i32,
            ..Default::default()
        },
    })
}

/// A lower-case word (`working_capital`, `working capital`, `real-estate`) as the proto enum
/// value whose name is `prefix` + the upper-case word.
fn word<E: EnumName>(raw: &str, prefix: &str) -> Result<i32, String> {
    let wanted = format!(
        "{prefix}{}",
        raw.trim().to_ascii_uppercase().replace([' ', '-'], "_")
    );
    (1..64)
        .filter_map(|n| E::try_from(n).ok().map(|e| (n, e)))
        .find(|(_, e)| e.name() == wanted)
        .map(|(n, _)| n)
        .ok_or_else(|| format!("{raw:?} is not one of {}", E::words(prefix).join(", ")))
}

/// The proto name of an enum value, and the lower-case words of all of them.
trait EnumName: Sized + TryFrom<i32> {
    fn name(&self) -> &'static str;

    fn words(prefix: &str) -> Vec<String> {
        (1..64)
            .filter_map(|n| Self::try_from(n).ok())
            .map(|e| e.name().trim_start_matches(prefix).to_ascii_lowercase())
            .collect()
    }
}

macro_rules! enum_name {
    ($($t:ty),+) => {
        $(impl EnumName for $t {
            fn name(&self) -> &'static str {
                self.as_str_name()
            }
        })+
    };
}
enum_name!(pb::EnterpriseSize, pb::Purpose, pb::Collateral);

/// Yuan with at most two decimals (`1500000`, `1500000.5`, `1500000.50`) in fen, without floats.
pub fn yuan_to_minor(raw: &str) -> Result<i64, String> {
    let (whole, fraction) = raw.split_once('.').unwrap_or((raw, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(fraction.is_empty() || digits(fraction)) || fraction.len() > 2 {
        return Err(format!(
            "{raw:?} is not an amount in yuan with at most 2 decimals"
        ));
    }
    let fen = format!("{fraction:0<2}");
    whole
        .parse::<i64>()
        .ok()
        .and_then(|y| y.checked_mul(100))
        .and_then(|m| m.checked_add(fen.parse::<i64>().unwrap_or(0)))
        .ok_or_else(|| format!("{raw:?} is too large"))
}

/// First 32 hex digits of the SHA-256 of the file's bytes.
pub fn content_digest(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buffer = [0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(&hasher.finalize()[..16]))
}

/// The idempotency key of a row: the same file gives the same keys, another file other keys.
pub fn idempotency_key(digest: &str, row: u64) -> String {
    format!("import-{digest}-{row}")
}

/// Where the report of `file` is written.
pub fn report_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".import-report.csv");
    PathBuf::from(name)
}

fn reader(file: &Path) -> anyhow::Result<csv::Reader<std::fs::File>> {
    let file = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    Ok(csv_reader(file))
}

/// How every pass reads the file: the first record is the header, fields are trimmed.
pub fn csv_reader<R: Read>(input: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(input)
}

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
pub const CHUNK_ITEMS_MAX: usize = crate::grpc::financing::LISTED_REJECTIONS_MAX;
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

/// What became of one data row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not settled: not sent yet, or sent in a call that failed.
    Pending,
    /// Stored by this run.
    Accepted,
    /// Stored before (an earlier run, or an earlier row with the same key); nothing added.
    Replayed,
    /// Stored, by this run or before: its call reported both accepted and replayed items (a
    /// retried or resumed chunk), so which one this row was is not known.
    Stored,
    /// Not stored; see its rejection.
    Rejected,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Accepted => "accepted",
            Outcome::Replayed => "replayed",
            Outcome::Stored => "stored",
            Outcome::Rejected => "rejected",
        }
    }
}

/// The rows an earlier report of the same file marks stored, by row number, with where their needs
/// went when the report says. A report of another file (other idempotency keys), of an older
/// format or that cannot be read marks nothing.
fn earlier_outcomes(
    report_file: &Path,
    digest: &str,
) -> HashMap<u64, (Outcome, Option<Placement>)> {
    let mut done = HashMap::new();
    let Ok(mut csv) = csv::Reader::from_path(report_file) else {
        return done;
    };
    let Ok(header) = csv.headers().cloned() else {
        return done;
    };
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(row_at), Some(outcome_at), Some(key_at)) =
        (column("row"), column("outcome"), column("idempotency_key"))
    else {
        return done;
    };
    let (status_at, need_at) = (column("status"), column("need_id"));
    for record in csv.records().map_while(Result::ok) {
        let Some(row) = record.get(row_at).and_then(|r| r.parse::<u64>().ok()) else {
            continue;
        };
        let outcome = match record.get(outcome_at) {
            Some("accepted") => Outcome::Accepted,
            Some("replayed") => Outcome::Replayed,
            Some("stored") => Outcome::Stored,
            _ => continue,
        };
        if record.get(key_at) == Some(idempotency_key(digest, row).as_str()) {
            let field = |at: Option<usize>| at.and_then(|at| record.get(at)).unwrap_or_default();
            let placement = match (field(need_at), field(status_at)) {
                ("", _) | (_, "") => None,
                (need_id, status) => Some(Placement {
                    need_id: need_id.to_owned(),
                    status: status.to_owned(),
                }),
            };
            done.insert(row, (outcome, placement));
        }
    }
    done
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

/// Sends one chunk in one ImportNeeds call, retried as [`Options`] says.
async fn import_chunk(
    client: FinancingServiceClient<Channel>,
    bearer: &Bearer,
    chunk: Chunk,
    options: &Options,
) -> Answer {
    let first_row = chunk.rows[0] + 2;
    let response = with_retries(options, || {
        let mut client = client.clone();
        let request = with_token(
            tonic::Request::new(tokio_stream::iter(chunk.items.clone())),
            bearer,
        );
        async move { client.import_needs(request).await }
    })
    .await
    .map_err(|s| {
        anyhow::anyhow!(
            "ImportNeeds of the chunk from row {first_row} failed: {}: {}",
            code_name(s.code()),
            s.message()
        )
    })?
    .into_inner();
    Ok((chunk, response))
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

/// Calls `call` until it succeeds, fails with an error a retry cannot mend, or has been retried
/// `options.retries` times; the waits double from `options.first_backoff`.
async fn with_retries<T, F, Fut>(options: &Options, mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut backoff = options.first_backoff;
    let mut attempt = 0;
    loop {
        match call().await {
            Err(status) if attempt < options.retries && retryable(&status) => {
                tracing::warn!(
                    code = code_name(status.code()),
                    message = status.message(),
                    "call failed, retrying in {backoff:?}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Whether a failed call may succeed when made again: the server unavailable or shedding load, or
/// the connection failing under the call.
fn retryable(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    use tonic::Code;
    if matches!(status.code(), Code::Unavailable | Code::ResourceExhausted) {
        return true;
    }
    // tonic reports a broken connection as UNKNOWN "transport error" with the transport error as
    // its source, or as an h2 error whose message says so.
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<tonic::transport::Error>() {
            return true;
        }
        source = error.source();
    }
    matches!(
        status.code(),
        Code::Internal | Code::Unknown | Code::Cancelled
    ) && status.message().starts_with("h2 protocol error")
}

type Bearer = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

fn with_token<T>(mut request: tonic::Request<T>, bearer: &Bearer) -> tonic::Request<T> {
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    request
}

/// Registers an enterprise, or finds it registered; Err(rejection template) when it cannot be.
async fn register(
    client: EnterpriseServiceClient<Channel>,
    bearer: &Bearer,
    enterprise: pb::Enterprise,
    options: &Options,
) -> anyhow::Result<Result<String, Rejection>> {
    use tonic_types::StatusExt;
    let code = enterprise.credit_code.clone();
    let created = with_retries(options, || {
        let mut client = client.clone();
        let request = with_token(
            tonic::Request::new(pb::CreateEnterpriseRequest {
                enterprise: Some(enterprise.clone()),
            }),
            bearer,
        );
        async move { client.create_enterprise(request).await }
    })
    .await;
    match created {
        Ok(response) => Ok(Ok(response.into_inner().enterprise.unwrap_or_default().id)),
        // Registered already: the refusal names the enterprise.
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            match status.get_details_resource_info() {
                Some(info) if !info.resource_name.is_empty() => Ok(Ok(info.resource_name)),
                _ => bail!(
                    "CreateEnterprise for {code} answered ALREADY_EXISTS without naming the \
                     enterprise: {}",
                    status.message()
                ),
            }
        }
        Err(status)
            if retryable(&status)
                || matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
        {
            bail!(
                "CreateEnterprise failed: {}: {}",
                code_name(status.code()),
                status.message()
            );
        }
        Err(status) => {
            let reason = match (
                status.get_details_error_info(),
                status.get_details_bad_request(),
            ) {
                (Some(info), _) => info.reason,
                (None, Some(bad)) => {
                    columns_at_fault(bad.field_violations.iter().map(|v| v.field.as_str()))
                }
                (None, None) => String::new(),
            };
            Ok(Err(Rejection {
                row: 0,
                credit_code: code,
                code: code_name(status.code()).to_owned(),
                reason,
                // The message states every field violation already.
                message: status.message().to_owned(),
            }))
        }
    }
}

/// The file's columns a request's bad fields come from (`need.needed_by` → `needed_by`,
/// `need.amount_minor` → `amount_yuan`, `enterprise.region_code` → `region_code`), in order,
/// each once, `;`-separated; a field no column feeds is named as the server named it.
fn columns_at_fault<'a>(fields: impl Iterator<Item = &'a str>) -> String {
    let mut columns: Vec<&str> = Vec::new();
    for field in fields {
        let bare = field
            .trim_start_matches("need.")
            .trim_start_matches("enterprise.");
        let bare = bare.split_once('[').map_or(bare, |(name, _)| name);
        let column = match bare {
            "amount_minor" => "amount_yuan",
            "consent_to_share" => "consent",
            "name" => "enterprise_name",
            "size" | "region_code" | "industry_code" | "credit_code" | "term_months"
            | "purpose" | "collateral" | "max_rate_bps" | "needed_by" => bare,
            _ => field,
        };
        if !columns.contains(&column) {
            columns.push(column);
        }
    }
    columns.join(";")
}

/// Writes the report: a line per row of the file, in file order, with its outcome. Written
/// beside the file under a temporary name, then renamed, so an interrupted write never loses the
/// previous report that a resume reads.
fn write_report(
    file: &Path,
    digest: &str,
    path: &Path,
    import: &Import,
    failure: Option<&str>,
) -> anyhow::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".partial");
    let temporary = PathBuf::from(temporary);
    let mut out = csv::Writer::from_path(&temporary)
        .with_context(|| format!("writing the report {}", temporary.display()))?;
    out.write_record(REPORT_COLUMNS)?;
    let mut csv = reader(file)?;
    let columns = Columns::from_header(csv.headers()?)?;
    let pending = match failure {
        Some(failure) => format!("not settled: {failure}"),
        None => "not settled".to_owned(),
    };
    for (i, record) in csv.records().enumerate().take(import.outcomes.len()) {
        let row = i as u64 + 2;
        let credit_code = record
            .as_ref()
            .map(|r| columns.get(r, "credit_code").to_owned())
            .unwrap_or_default();
        let outcome = import.outcomes[i];
        let placement = import.placements[i].as_ref();
        let (status, need_id) =
            placement.map_or(("", ""), |p| (p.status.as_str(), p.need_id.as_str()));
        let (code, reason, message) = match outcome {
            Outcome::Rejected => {
                let r = &import.rejections[&row];
                (r.code.as_str(), r.reason.as_str(), r.message.as_str())
            }
            Outcome::Pending => ("", "", pending.as_str()),
            _ => ("", "", placement_note(status, import.earlier[i])),
        };
        out.write_record([
            row.to_string().as_str(),
            &credit_code,
            outcome.as_str(),
            status,
            need_id,
            code,
            reason,
            message,
            &idempotency_key(digest, row),
        ])?;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&temporary, path)
        .with_context(|| format!("writing the report {}", path.display()))?;
    Ok(())
}

/// What a stored row's status means for the bureau, in the report's message column.
fn placement_note(status: &str, earlier: bool) -> &'static str {
    let routed = pb::NeedStatus::Routed.as_str_name();
    let unmatched = pb::NeedStatus::Unmatched.as_str_name();
    let unrouted = pb::NeedStatus::Submitted.as_str_name();
    match (status, earlier) {
        (s, false) if s == routed => "routed to banks",
        (s, true) if s == routed => "stored by an earlier run; routed to banks",
        (s, false) if s == unmatched => "no product fits this need: sent to no bank",
        (s, true) if s == unmatched => {
            "stored by an earlier run; no product fits this need: sent to no bank"
        }
        (s, false) if s == unrouted => "no consent to share: kept from every bank",
        (s, true) if s == unrouted => {
            "stored by an earlier run; no consent to share: kept from every bank"
        }
        (_, true) => "stored by an earlier run",
        (_, false) => "",
    }
}

/// The columns of the report file.
pub const REPORT_COLUMNS: [&str; 9] = [
    "row",
    "credit_code",
    "outcome",
    "status",
    "need_id",
    "code",
    "reason",
    "message",
    "idempotency_key",
];

impl Report {
    /// The summary printed at the end of an import: the counts and the first rejections.
    pub fn summary(&self, report_file: &Path) -> String {
        let mut text = format!(
            "{} row(s): {} accepted, {} already imported, {} rejected",
            self.rows,
            self.accepted,
            self.replayed,
            self.rejected.len()
        );
        if self.earlier > 0 {
            text.push_str(&format!(", {} stored by an earlier run", self.earlier));
        }
        if self.pending > 0 {
            text.push_str(&format!(", {} pending", self.pending));
        }
        text.push('\n');
        let placed = self.routed + self.unmatched + self.unrouted;
        if placed > 0 {
            text.push_str(&format!(
                "  of the stored needs: {} routed to banks, {} UNMATCHED (no product fits), {} not \
                 routed (no consent to share)\n",
                self.routed, self.unmatched, self.unrouted
            ));
        }
        for r in self.rejected.iter().take(SUMMARY_REJECTIONS) {
            let reason = if r.reason.is_empty() {
                String::new()
            } else {
                format!(" [{}]", r.reason)
            };
            text.push_str(&format!(
                "  row {}: {}{}: {}\n",
                r.row, r.code, reason, r.message
            ));
        }
        if self.rejected.len() > SUMMARY_REJECTIONS {
            text.push_str(&format!(
                "  … and {} more rejected row(s), listed in the report\n",
                self.rejected.len() - SUMMARY_REJECTIONS
            ));
        }
        text.push_str(&format!("report written to {}", report_file.display()));
        text
    }
}

/// Rejections the printed summary lists (the report file has them all).
const SUMMARY_REJECTIONS: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "credit_code,enterprise_name,region_code,industry_code,size,amount_yuan,\
                          term_months,purpose,collateral,max_rate_bps,needed_by,consent";

    fn rows(body: &str) -> (Columns, Vec<csv::StringRecord>) {
        let text = format!("{HEADER}\n{body}");
        let mut csv = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let columns = Columns::from_header(csv.headers().unwrap()).unwrap();
        let records = csv.records().map(Result::unwrap).collect();
        (columns, records)
    }

    #[test]
    fn a_row_maps_to_an_enterprise_and_a_need() {
        let (columns, records) = rows(
            "91421300MA4912345X, Suizhou Valve Co. ,421303,C3443,small,1500000.5,12,\
             working_capital,credit; real_estate,435,2020-04-30,yes\n",
        );
        let row = parse_row(&columns, &records[0], 2).unwrap();
        assert_eq!(row.row, 2);
        assert_eq!(row.enterprise.credit_code, "91421300MA4912345X");
        assert_eq!(row.enterprise.name, "Suizhou Valve Co.");
        assert_eq!(row.enterprise.region_code, "421303");
        assert_eq!(row.enterprise.industry_code, "C3443");
        assert_eq!(row.enterprise.size, pb::EnterpriseSize::Small as i32);
        assert_eq!(row.need.amount_minor, 150_000_050);
        assert_eq!(row.need.term_months, 12);
        assert_eq!(row.need.purpose, pb::Purpose::WorkingCapital as i32);
        assert_eq!(
            row.need.collateral,
            vec![
                pb::Collateral::Credit as i32,
                pb::Collateral::RealEstate as i32
            ]
        );
        assert_eq!(row.need.max_rate_bps, Some(435));
        assert_eq!(row.need.needed_by, "2020-04-30");
        assert!(row.need.consent_to_share);
        assert_eq!(row.need.channel, pb::Channel::Bureau as i32);
        assert_eq!(row.need.enterprise_id, "");
    }

    #[test]
    fn columns_may_come_in_any_order_and_rate_may_be_empty() {
        let text = "consent,needed_by,max_rate_bps,collateral,purpose,term_months,amount_yuan,\
                    size,industry_code,region_code,enterprise_name,credit_code\n\
                    NO,2020-05-31,,Guarantee,raw materials,6,80000,MICRO,C27,421381,Guangshui Co,X\n";
        let mut csv = csv::ReaderBuilder::new().from_reader(text.as_bytes());
        let columns = Columns::from_header(csv.headers().unwrap()).unwrap();
        let record = csv.records().next().unwrap().unwrap();
        let row = parse_row(&columns, &record, 2).unwrap();
        assert_eq!(row.enterprise.credit_code, "X");
        assert_eq!(row.enterprise.size, pb::EnterpriseSize::Micro as i32);
        assert_eq!(row.need.purpose, pb::Purpose::RawMaterials as i32);
        assert_eq!(row.need.collateral, vec![pb::Collateral::Guarantee as i32]);
        assert_eq!(row.need.max_rate_bps, None);
        assert_eq!(row.need.amount_minor, 8_000_000);
        assert!(!row.need.consent_to_share);
    }

    #[test]
    fn a_bad_row_names_every_bad_column() {
        let (columns, records) = rows(
            "X,Name,421303,C27,huge,12.345,twelve,gambling,credit;gold,high,2020-04-30,maybe\n",
        );
        let message = parse_row(&columns, &records[0], 7).unwrap_err();
        for column in [
            "size:",
            "amount_yuan:",
            "term_months:",
            "purpose:",
            "collateral:",
            "max_rate_bps:",
            "consent:",
        ] {
            assert!(message.contains(column), "{column} in {message}");
        }
        assert!(
            message.contains("\"gold\" is not one of credit, guarantee, real_estate"),
            "{message}"
        );
    }

    #[test]
    fn a_header_without_a_column_is_refused_naming_it() {
        let header = csv::StringRecord::from(vec!["credit_code", "enterprise_name"]);
        let error = Columns::from_header(&header).unwrap_err().to_string();
        assert!(error.contains("region_code"), "{error}");
        assert!(error.contains("consent"), "{error}");
        assert!(
            !error.contains("lacks the column(s) credit_code"),
            "{error}"
        );
    }

    #[test]
    fn yuan_convert_to_fen_exactly() {
        assert_eq!(yuan_to_minor("0"), Ok(0));
        assert_eq!(yuan_to_minor("1"), Ok(100));
        assert_eq!(yuan_to_minor("1.5"), Ok(150));
        assert_eq!(yuan_to_minor("1.05"), Ok(105));
        assert_eq!(yuan_to_minor("3560000000"), Ok(356_000_000_000));
        assert!(yuan_to_minor("1.005").is_err());
        assert!(yuan_to_minor("-1").is_err());
        assert!(yuan_to_minor("1e6").is_err());
        assert!(yuan_to_minor("").is_err());
        assert!(yuan_to_minor(".5").is_err());
        assert!(yuan_to_minor("99999999999999999999").is_err());
    }

    #[test]
    fn keys_are_stable_per_file_and_row_and_differ_between_files() {
        let a = content_digest(&b"credit_code\nX\n"[..]).unwrap();
        let again = content_digest(&b"credit_code\nX\n"[..]).unwrap();
        let b = content_digest(&b"credit_code\nY\n"[..]).unwrap();
        assert_eq!(a.len(), 32);
        assert_eq!(a, again);
        assert_ne!(a, b);
        assert_eq!(idempotency_key(&a, 2), format!("import-{a}-2"));
        assert_ne!(idempotency_key(&a, 2), idempotency_key(&a, 3));
        assert_ne!(idempotency_key(&a, 2), idempotency_key(&b, 2));
        assert!(idempotency_key(&a, u64::MAX).len() <= 128);
    }

    #[test]
    fn the_report_sits_beside_the_input() {
        assert_eq!(
            report_path(Path::new("/data/needs.csv")),
            PathBuf::from("/data/needs.csv.import-report.csv")
        );
    }

    #[test]
    fn the_sample_file_parses_without_a_bad_row() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/needs-sample.csv");
        let mut csv = reader(&path).unwrap();
        let columns = Columns::from_header(csv.headers().unwrap()).unwrap();
        let mut count = 0;
        for (i, record) in csv.records().enumerate() {
            let row = parse_row(&columns, &record.unwrap(), i as u64 + 2);
            assert!(row.is_ok(), "row {}: {:?}", i + 2, row);
            let code = row.unwrap().enterprise.credit_code;
            assert!(crate::domain::CreditCode::parse(&code).is_ok(), "{code}");
            count += 1;
        }
        assert!(count >= 5, "{count} rows");
    }
}
