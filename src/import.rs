//! `finmatch import FILE.csv`: streams financing needs from a CSV file through
//! FinancingService.ImportNeeds, with a progress bar and a report of every rejected row.
//!
//! How it goes:
//! 1. The file is read once to hash its content and to collect each credit code's first row.
//! 2. Each distinct credit code is registered with EnterpriseService.CreateEnterprise from that
//!    row (name, region, industry, size). ALREADY_EXISTS names the registered enterprise, whose
//!    id is used as it is: an existing enterprise is never changed by an import. A code that
//!    cannot be registered rejects all its rows with the reason.
//! 3. The rows are read again and streamed as ImportNeeds items, each with the idempotency key
//!    `import-<first 32 hex digits of the file's SHA-256>-<row>`, so running the same file again
//!    (with the same credential) replays every row and adds nothing.
//! 4. Rows the client cannot parse are not sent; they are reported with the server's rejections.
//!    The report is printed and written as CSV to `<FILE>.import-report.csv`.
//!
//! Rows are numbered as a spreadsheet numbers them: the header is row 1.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::ReceiverStream;
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

/// Items buffered between the file reader and the gRPC stream.
const STREAM_BUFFER: usize = 256;
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
    /// ErrorInfo reason, when the server gave one.
    pub reason: String,
    pub message: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub rows: u64,
    /// Rows stored by this run.
    pub accepted: i64,
    /// Rows an earlier run (or an earlier row with the same key) had stored already.
    pub replayed: i64,
    /// Ordered by row.
    pub rejected: Vec<Rejection>,
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
    csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(file)
        .with_context(|| format!("opening {}", file.display()))
}

/// Runs an import against the server at `server` (e.g. http://127.0.0.1:50051) as `token`.
pub async fn run(file: &Path, server: &str, token: &str) -> anyhow::Result<Report> {
    let digest = content_digest(
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
    )?;
    let channel = Channel::from_shared(server.to_owned())
        .context("the server must be a URL such as http://127.0.0.1:50051")?
        .connect()
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let bearer: Bearer = format!("Bearer {token}")
        .parse()
        .context("the token is not valid metadata")?;

    // Pass 1: every credit code's first row.
    let mut csv = reader(file)?;
    let columns = Columns::from_header(csv.headers()?)?;
    let mut first_rows: Vec<pb::Enterprise> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut rows = 0u64;
    for (i, record) in csv.records().enumerate() {
        rows += 1;
        if let Ok(record) = record
            && let Ok(parsed) = parse_row(&columns, &record, i as u64 + 2)
            && seen.insert(parsed.enterprise.credit_code.clone())
        {
            first_rows.push(parsed.enterprise);
        }
    }

    let bar = ProgressBar::new(first_rows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")?
            .progress_chars("=> "),
    );
    bar.set_message("enterprises");
    let enterprises = EnterpriseServiceClient::new(channel.clone());
    let mut registrations = futures::stream::iter(first_rows)
        .map(|enterprise| {
            let mut client = enterprises.clone();
            let bearer = &bearer;
            async move {
                let code = enterprise.credit_code.clone();
                (code, register(&mut client, bearer, enterprise).await)
            }
        })
        .buffer_unordered(REGISTRATIONS_IN_FLIGHT);
    let mut enterprise_ids: HashMap<String, Result<String, Rejection>> = HashMap::new();
    while let Some((code, outcome)) = registrations.next().await {
        enterprise_ids.insert(code, outcome?);
        bar.inc(1);
    }
    drop(registrations);

    // Pass 2: the needs, streamed as they are read.
    bar.set_position(0);
    bar.set_length(rows);
    bar.set_message("needs");
    let (sender, receiver) = tokio::sync::mpsc::channel(STREAM_BUFFER);
    let reading = {
        let file = file.to_owned();
        let bar = bar.clone();
        tokio::task::spawn_blocking(move || {
            read_items(&file, &digest, &enterprise_ids, &sender, &bar)
        })
    };
    let mut financing =
        FinancingServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let response = financing
        .import_needs(with_token(
            tonic::Request::new(ReceiverStream::new(receiver)),
            &bearer,
        ))
        .await;
    let (sent_rows, mut rejected) = reading.await.context("reading the file")??;
    bar.finish_and_clear();
    let response = response
        .map_err(|s| {
            anyhow::anyhow!(
                "ImportNeeds failed: {}: {}",
                code_name(s.code()),
                s.message()
            )
        })?
        .into_inner();

    for rejection in response.rejected {
        let Some(sent) = usize::try_from(rejection.index)
            .ok()
            .and_then(|i| sent_rows.get(i))
        else {
            bail!(
                "the server rejected item {} which was not sent",
                rejection.index
            );
        };
        let error = rejection.error.unwrap_or_default();
        let mut message = error.message;
        for violation in error.field_violations {
            message.push_str(&format!("; {}: {}", violation.field, violation.description));
        }
        rejected.push(Rejection {
            row: sent.0,
            credit_code: sent.1.clone(),
            code: code_name(tonic::Code::from_i32(error.code)).to_owned(),
            reason: error.reason,
            message,
        });
    }
    rejected.sort_by_key(|r| r.row);
    let report = Report {
        rows,
        accepted: response.accepted,
        replayed: response.replayed,
        rejected,
    };
    write_report(&report_path(file), &report)?;
    Ok(report)
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
    client: &mut EnterpriseServiceClient<Channel>,
    bearer: &Bearer,
    enterprise: pb::Enterprise,
) -> anyhow::Result<Result<String, Rejection>> {
    use tonic_types::StatusExt;
    let code = enterprise.credit_code.clone();
    // Twice at most: a concurrent registration of the same code may answer ALREADY_EXISTS
    // without naming the winner; the second attempt finds it.
    for _ in 0..2 {
        let request = with_token(
            tonic::Request::new(pb::CreateEnterpriseRequest {
                enterprise: Some(enterprise.clone()),
            }),
            bearer,
        );
        match client.create_enterprise(request).await {
            Ok(response) => {
                return Ok(Ok(response.into_inner().enterprise.unwrap_or_default().id));
            }
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                let existing = status
                    .get_details_resource_info()
                    .map(|info| info.resource_name)
                    .unwrap_or_default();
                if !existing.is_empty() {
                    return Ok(Ok(existing));
                }
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                        | tonic::Code::Unavailable
                ) =>
            {
                bail!(
                    "CreateEnterprise failed: {}: {}",
                    code_name(status.code()),
                    status.message()
                );
            }
            Err(status) => {
                let mut message = format!("enterprise: {}", status.message());
                if let Some(bad) = status.get_details_bad_request() {
                    for v in bad.field_violations {
                        message.push_str(&format!("; {}: {}", v.field, v.description));
                    }
                }
                return Ok(Err(Rejection {
                    row: 0,
                    credit_code: code,
                    code: code_name(status.code()).to_owned(),
                    reason: String::new(),
                    message,
                }));
            }
        }
    }
    bail!("CreateEnterprise for {code} answered ALREADY_EXISTS without naming the enterprise")
}

type SentRow = (u64, String);

/// Reads the rows and sends an item per good row; returns (row, credit code) per item sent, in
/// order, and the rows rejected before sending.
fn read_items(
    file: &Path,
    digest: &str,
    enterprise_ids: &HashMap<String, Result<String, Rejection>>,
    sender: &tokio::sync::mpsc::Sender<pb::ImportNeedsRequest>,
    bar: &ProgressBar,
) -> anyhow::Result<(Vec<SentRow>, Vec<Rejection>)> {
    let mut csv = reader(file)?;
    let columns = Columns::from_header(csv.headers()?)?;
    let mut sent = Vec::new();
    let mut rejected = Vec::new();
    for (i, record) in csv.records().enumerate() {
        bar.inc(1);
        let row = i as u64 + 2;
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
                rejected.push(parse_error(String::new(), e.to_string()));
                continue;
            }
        };
        let parsed = match parse_row(&columns, &record, row) {
            Ok(parsed) => parsed,
            Err(message) => {
                let code = columns.get(&record, "credit_code").to_owned();
                rejected.push(parse_error(code, message));
                continue;
            }
        };
        let credit_code = parsed.enterprise.credit_code;
        match enterprise_ids.get(&credit_code) {
            Some(Ok(enterprise_id)) => {
                let item = pb::ImportNeedsRequest {
                    idempotency_key: idempotency_key(digest, row),
                    need: Some(pb::Need {
                        enterprise_id: enterprise_id.clone(),
                        ..parsed.need
                    }),
                };
                if sender.blocking_send(item).is_err() {
                    // The call ended early; its status says why.
                    break;
                }
                sent.push((row, credit_code));
            }
            Some(Err(template)) => rejected.push(Rejection {
                row,
                ..template.clone()
            }),
            None => bail!("row {row} changed while the file was being imported"),
        }
    }
    Ok((sent, rejected))
}

/// Writes one line per rejected row under a header.
fn write_report(path: &Path, report: &Report) -> anyhow::Result<()> {
    let mut out = csv::Writer::from_path(path)
        .with_context(|| format!("writing the report {}", path.display()))?;
    out.write_record(["row", "credit_code", "code", "reason", "message"])?;
    for r in &report.rejected {
        out.write_record([
            r.row.to_string().as_str(),
            &r.credit_code,
            &r.code,
            &r.reason,
            &r.message,
        ])?;
    }
    out.flush()?;
    Ok(())
}

impl Report {
    /// The summary printed at the end of an import.
    pub fn summary(&self, report_file: &Path) -> String {
        let mut text = format!(
            "{} row(s): {} accepted, {} already imported, {} rejected\n",
            self.rows,
            self.accepted,
            self.replayed,
            self.rejected.len()
        );
        for r in &self.rejected {
            let reason = if r.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", r.reason)
            };
            text.push_str(&format!(
                "  row {}: {}{}: {}\n",
                r.row, r.code, reason, r.message
            ));
        }
        text.push_str(&format!("report written to {}", report_file.display()));
        text
    }
}

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
