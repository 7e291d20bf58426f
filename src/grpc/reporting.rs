//! ReportingService: the bureau's figures.

use tonic::{Request, Response, Status};

use super::auth::principal;
use super::convert::{self, Bridge};
use crate::domain::{IndustryPrefix, RegionPrefix, Violations};
use crate::proto as pb;
use crate::service::App;
use crate::service::reporting::{NeedFigures, Summary, SummaryQuery};

/// by_industry groups by this many characters when the request leaves it 0 (the division).
const DEFAULT_INDUSTRY_GROUP_LENGTH: i32 = 3;
/// by_region groups by this many digits when the request leaves it 0 (the county).
const DEFAULT_REGION_GROUP_LENGTH: i32 = 6;

pub struct ReportingHandler {
    app: App,
}

impl ReportingHandler {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl pb::reporting_service_server::ReportingService for ReportingHandler {
    async fn get_summary(
        &self,
        request: Request<pb::GetSummaryRequest>,
    ) -> Result<Response<pb::GetSummaryResponse>, Status> {
        let who = principal(&request)?;
        let query = SummaryQuery::try_from(request.get_ref())?;
        let summary = self.app.get_summary(&who, query).await?;
        Ok(Response::new(to_pb(summary)))
    }
}

/// The request as a [`SummaryQuery`], every bad field reported.
impl TryFrom<&pb::GetSummaryRequest> for SummaryQuery {
    type Error = Violations;

    fn try_from(body: &pb::GetSummaryRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let from = convert::instant("period_from", body.period_from.as_ref(), &mut v);
        let to = convert::instant("period_to", body.period_to.as_ref(), &mut v);
        if let (Some(from), Some(to)) = (from, to)
            && to <= from
        {
            v.add("period_to", "must be after period_from");
        }
        let region_prefix = convert::optional(
            "region_prefix",
            &body.region_prefix,
            RegionPrefix::parse,
            &mut v,
        );
        let industry_prefix = convert::optional(
            "industry_prefix",
            &body.industry_prefix,
            IndustryPrefix::parse,
            &mut v,
        );
        let industry_group_length = match body.industry_group_length {
            0 => DEFAULT_INDUSTRY_GROUP_LENGTH,
            n @ 1..=5 => n,
            _ => {
                v.add("industry_group_length", "must be 0 (default 3) or 1 to 5");
                0
            }
        };
        let region_group_length = match body.region_group_length {
            0 => DEFAULT_REGION_GROUP_LENGTH,
            n @ (2 | 4 | 6) => n,
            _ => {
                v.add("region_group_length", "must be 0 (default 6), 2, 4 or 6");
                0
            }
        };
        let (region_prefix, industry_prefix) = v.values((region_prefix, industry_prefix))?;
        Ok(SummaryQuery {
            from,
            to,
            region_prefix,
            industry_prefix,
            industry_group_length,
            region_group_length,
        })
    }
}

fn to_pb(summary: Summary) -> pb::GetSummaryResponse {
    let totals = summary.totals;
    pb::GetSummaryResponse {
        enterprises: totals.enterprises,
        needs: totals.needs,
        demand_minor: totals.demand_minor,
        routed_needs: totals.routed_needs,
        approved_needs: totals.approved_needs,
        approved_minor: totals.approved_minor,
        funded_needs: totals.funded_needs,
        disbursed_minor: totals.disbursed_minor,
        funding_rate_bps: summary.funding_rate_bps,
        median_time_to_first_answer: summary.median_time_to_first_answer.map(duration),
        by_lender: summary
            .by_lender
            .into_iter()
            .map(|l| pb::LenderSummary {
                lender_id: l.lender_id.to_string(),
                lender_name: l.lender_name,
                referrals: l.referrals,
                approvals: l.approvals,
                declines: l.declines,
                declines_by_reason: l
                    .declines_by_reason
                    .into_iter()
                    .map(|(reason, count)| pb::DeclineReasonCount {
                        reason: pb::DeclineReason::from_domain(reason),
                        count,
                    })
                    .collect(),
                expirations: l.expirations,
                open_referrals: l.open_referrals,
                approved_minor: l.approved_minor,
                disbursed_minor: l.disbursed_minor,
                median_response_time: l.median_response_time.map(duration),
            })
            .collect(),
        by_industry: summary
            .by_industry
            .into_iter()
            .map(|(industry_prefix, f)| industry(industry_prefix, f))
            .collect(),
        by_region: summary
            .by_region
            .into_iter()
            .map(|(region_prefix, f)| region(region_prefix, f))
            .collect(),
        by_program: summary
            .by_program
            .into_iter()
            .map(|p| pb::ProgramSummary {
                program_id: p.program_id.to_string(),
                code: p.code,
                name: p.name,
                enterprises: p.enterprises,
                allocations: p.allocations,
                allocated_minor: p.allocated_minor,
                confirmed_minor: p.confirmed_minor,
                subsidy_minor: p.subsidy_minor,
                total_quota_minor: p.total_quota_minor,
                remaining_minor: p.remaining_minor,
            })
            .collect(),
        as_of: convert::timestamp(summary.as_of),
    }
}

fn industry(industry_prefix: String, f: NeedFigures) -> pb::IndustrySummary {
    pb::IndustrySummary {
        industry_prefix,
        enterprises: f.enterprises,
        needs: f.needs,
        demand_minor: f.demand_minor,
        routed_needs: f.routed_needs,
        approved_needs: f.approved_needs,
        approved_minor: f.approved_minor,
        funded_needs: f.funded_needs,
        disbursed_minor: f.disbursed_minor,
    }
}

fn region(region_prefix: String, f: NeedFigures) -> pb::RegionSummary {
    pb::RegionSummary {
        region_prefix,
        enterprises: f.enterprises,
        needs: f.needs,
        demand_minor: f.demand_minor,
        routed_needs: f.routed_needs,
        approved_needs: f.approved_needs,
        approved_minor: f.approved_minor,
        funded_needs: f.funded_needs,
        disbursed_minor: f.disbursed_minor,
    }
}

fn duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
