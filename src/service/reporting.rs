//! Figures for the bureau (ReportingService.GetSummary) and for the metric gauges.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{App, Error, Principal, Result};
use crate::domain::{DeclineReason, IndustryPrefix, NeedStatus, RegionPrefix};
use crate::storage::reporting::{self as queries, CohortFilter, NeedGroupRow};

/// The cohort and groupings of a summary, validated by the caller.
#[derive(Debug, Clone)]
pub struct SummaryQuery {
    /// Inclusive; None = from the beginning.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive; None = now.
    pub to: Option<DateTime<Utc>>,
    pub region_prefix: Option<RegionPrefix>,
    pub industry_prefix: Option<IndustryPrefix>,
    /// 1 to 5 characters of industry_code.
    pub industry_group_length: i32,
    /// 2, 4 or 6 digits of region_code.
    pub region_group_length: i32,
}

impl SummaryQuery {
    /// Every need, grouped as an empty GetSummary request groups them.
    pub fn everything() -> Self {
        SummaryQuery {
            from: None,
            to: None,
            region_prefix: None,
            industry_prefix: None,
            industry_group_length: 3,
            region_group_length: 6,
        }
    }
}

/// Need figures of the cohort or of one of its groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NeedFigures {
    pub enterprises: i64,
    pub needs: i64,
    pub demand_minor: i64,
    pub routed_needs: i64,
    pub approved_needs: i64,
    pub approved_minor: i64,
    pub funded_needs: i64,
    pub disbursed_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LenderFigures {
    pub lender_id: Uuid,
    pub lender_name: String,
    pub referrals: i64,
    pub approvals: i64,
    pub declines: i64,
    /// Ordered by reason; reasons without a decline are left out.
    pub declines_by_reason: Vec<(DeclineReason, i64)>,
    pub expirations: i64,
    pub open_referrals: i64,
    pub approved_minor: i64,
    pub disbursed_minor: i64,
    pub median_response_time: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramFigures {
    pub program_id: Uuid,
    pub code: String,
    pub name: String,
    pub enterprises: i64,
    pub allocations: i64,
    pub allocated_minor: i64,
    pub confirmed_minor: i64,
    pub subsidy_minor: i64,
    pub total_quota_minor: i64,
    pub remaining_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub totals: NeedFigures,
    /// disbursed_minor × 10000 / demand_minor, rounded half-up; 0 without demand.
    pub funding_rate_bps: i32,
    pub median_time_to_first_answer: Option<Duration>,
    pub by_lender: Vec<LenderFigures>,
    /// (industry_code prefix, figures), ordered by prefix.
    pub by_industry: Vec<(String, NeedFigures)>,
    /// (region_code prefix, figures), ordered by prefix.
    pub by_region: Vec<(String, NeedFigures)>,
    pub by_program: Vec<ProgramFigures>,
    pub as_of: DateTime<Utc>,
}

/// Values of the business gauges exported as metrics.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Every status, zero included.
    pub needs_by_status: Vec<(&'static str, i64)>,
    /// Every lender, zero included.
    pub open_referrals_by_lender: Vec<(String, i64)>,
    /// Program code → remaining quota, minor units.
    pub remaining_minor_by_program: Vec<(String, i64)>,
}

impl App {
    /// Totals and breakdowns of the cohort, all read from one REPEATABLE READ snapshot so the
    /// breakdowns add up to the totals even while needs are being submitted.
    #[tracing::instrument(skip(self, who))]
    pub async fn get_summary(&self, who: &Principal, query: SummaryQuery) -> Result<Summary> {
        who.require("GetSummary")?;
        let filter = CohortFilter {
            from: query.from,
            to: query.to,
            region_prefix: query
                .region_prefix
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            industry_prefix: query
                .industry_prefix
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
        };
        let (groups, snapshot, lenders, declines, programs) = self
            .conn()
            .await?
            .build_transaction()
            .read_only()
            .repeatable_read()
            .run(async move |conn| {
                let groups = queries::need_groups(
                    conn,
                    &filter,
                    query.industry_group_length,
                    query.region_group_length,
                )
                .await?;
                let snapshot = queries::snapshot(conn, &filter).await?;
                let lenders = queries::lender_groups(conn, &filter).await?;
                let declines = queries::declines(conn, &filter).await?;
                let programs = queries::program_groups(conn, &filter).await?;
                Ok::<_, diesel::result::Error>((groups, snapshot, lenders, declines, programs))
            })
            .await?;

        let (totals, by_industry, by_region) = need_figures(groups)?;
        let by_lender = lenders
            .into_iter()
            .map(|row| lender_figures(row, &declines))
            .collect();
        let by_program = programs.into_iter().map(program_figures).collect();
        Ok(Summary {
            funding_rate_bps: funding_rate_bps(totals.disbursed_minor, totals.demand_minor),
            totals,
            median_time_to_first_answer: micros(snapshot.median_first_answer_micros),
            by_lender,
            by_industry,
            by_region,
            by_program,
            as_of: snapshot.as_of,
        })
    }

    /// Current values of the business gauges (needs by status, open referrals by lender,
    /// remaining quota by program). For the metrics exporter, not an RPC: no principal.
    pub async fn metric_gauges(&self) -> Result<Gauges> {
        let mut conn = self.conn().await?;
        let counted = queries::needs_by_status(&mut conn).await?;
        let needs_by_status = NeedStatus::ALL
            .iter()
            .map(|status| {
                let count = counted
                    .iter()
                    .find(|row| row.key == status.as_str())
                    .map_or(0, |row| row.count);
                (status.as_str(), count)
            })
            .collect();
        let open_referrals_by_lender = queries::open_referrals_by_lender(&mut conn)
            .await?
            .into_iter()
            .map(|row| (row.key, row.count))
            .collect();
        let remaining_minor_by_program = queries::remaining_by_program(&mut conn)
            .await?
            .into_iter()
            .map(|row| (row.key, row.count))
            .collect();
        Ok(Gauges {
            needs_by_status,
            open_referrals_by_lender,
            remaining_minor_by_program,
        })
    }
}

/// Figures by group key (an industry or region code prefix).
type Breakdown = Vec<(String, NeedFigures)>;

/// The totals and the industry and region breakdowns of [`queries::need_groups`]'s rows.
fn need_figures(groups: Vec<queries::NeedGroupRow>) -> Result<(NeedFigures, Breakdown, Breakdown)> {
    let mut totals = NeedFigures::default();
    let mut by_industry = Vec::new();
    let mut by_region = Vec::new();
    for row in groups {
        let key = row.group_key.clone();
        match row.dimension.as_str() {
            "total" => totals = figures(row),
            "industry" => by_industry.push((key, figures(row))),
            "region" => by_region.push((key, figures(row))),
            other => {
                return Err(Error::Internal(anyhow::anyhow!(
                    "unexpected summary dimension {other}"
                )));
            }
        }
    }
    Ok((totals, by_industry, by_region))
}

/// A lender's figures, with its declines by reason in the proto's order.
fn lender_figures(row: queries::LenderGroupRow, declines: &[queries::DeclineRow]) -> LenderFigures {
    let mut declines_by_reason: Vec<(DeclineReason, i64)> = declines
        .iter()
        .filter(|d| d.lender_id == row.lender_id)
        .map(|d| (d.reason, d.count))
        .collect();
    declines_by_reason.sort_by_key(|(reason, _)| reason_rank(*reason));
    LenderFigures {
        lender_id: row.lender_id,
        lender_name: row.lender_name,
        referrals: row.referrals,
        approvals: row.approvals,
        declines: row.declines,
        declines_by_reason,
        expirations: row.expirations,
        open_referrals: row.open_referrals,
        approved_minor: row.approved_minor,
        disbursed_minor: row.disbursed_minor,
        median_response_time: micros(row.median_response_micros),
    }
}

fn program_figures(row: queries::ProgramGroupRow) -> ProgramFigures {
    ProgramFigures {
        program_id: row.program_id,
        code: row.code,
        name: row.name,
        enterprises: row.enterprises,
        allocations: row.allocations,
        allocated_minor: row.allocated_minor,
        confirmed_minor: row.confirmed_minor,
        subsidy_minor: row.subsidy_minor,
        total_quota_minor: row.total_quota_minor,
        remaining_minor: row.remaining_minor,
    }
}

fn figures(row: NeedGroupRow) -> NeedFigures {
    NeedFigures {
        enterprises: row.enterprises,
        needs: row.needs,
        demand_minor: row.demand_minor,
        routed_needs: row.routed_needs,
        approved_needs: row.approved_needs,
        approved_minor: row.approved_minor,
        funded_needs: row.funded_needs,
        disbursed_minor: row.disbursed_minor,
    }
}

/// Position of a reason in the canonical order (the proto's enum order).
fn reason_rank(reason: DeclineReason) -> usize {
    DeclineReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(usize::MAX)
}

fn micros(value: Option<i64>) -> Option<Duration> {
    value.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0)))
}

/// `disbursed × 10000 / demand`, rounded half-up, in integer arithmetic; 0 without demand.
pub fn funding_rate_bps(disbursed_minor: i64, demand_minor: i64) -> i32 {
    if demand_minor <= 0 {
        return 0;
    }
    let rate = (i128::from(disbursed_minor) * 10_000 + i128::from(demand_minor) / 2)
        / i128::from(demand_minor);
    i32::try_from(rate).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn funding_rate_rounds_half_up_in_basis_points() {
        assert_eq!(funding_rate_bps(0, 0), 0);
        assert_eq!(funding_rate_bps(137, 3_560), 385); // 384.83 → 385
        assert_eq!(funding_rate_bps(1, 20_000), 1); // 0.5 → 1
        assert_eq!(funding_rate_bps(1, 20_001), 0); // 0.49998 → 0
        assert_eq!(funding_rate_bps(5, 5), 10_000);
        assert_eq!(
            funding_rate_bps(13_700_000_000, 356_000_000_000),
            funding_rate_bps(137, 3_560)
        );
    }
}
