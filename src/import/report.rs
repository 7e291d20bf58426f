//! What an import did: each row's outcome, the report file written beside the input (and read
//! back to resume), and the printed summary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Columns, Import, idempotency_key, reader};
use crate::proto as pb;

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

/// Where the report of `file` is written.
pub fn report_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".import-report.csv");
    PathBuf::from(name)
}

/// The rows an earlier report of the same file marks stored, by row number, with where their needs
/// went when the report says. A report of another file (other idempotency keys), of an older
/// format or that cannot be read marks nothing.
pub(super) fn earlier_outcomes(
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

/// Writes the report: a line per row of the file, in file order, with its outcome. Written
/// beside the file under a temporary name, then renamed, so an interrupted write never loses the
/// previous report that a resume reads.
pub(super) fn write_report(
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
pub(super) fn placement_note(status: &str, earlier: bool) -> &'static str {
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
pub(super) const SUMMARY_REJECTIONS: usize = 20;
