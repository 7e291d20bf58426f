//! Read-only aggregates for ReportingService.GetSummary and the metric gauges.
//!
//! The summary queries share one definition of the cohort (the needs created in the period whose
//! enterprise matches the prefixes) and are meant to run in one REPEATABLE READ transaction, so
//! every breakdown is computed from the same rows as the totals. The indexes they use come with
//! the initial schema: needs (created_at), enterprises (region_code / industry_code
//! text_pattern_ops), referrals (need_id, lender_id), disbursements (need_id) and allocations
//! (program_id, created_at).

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Connection;
use crate::domain::{AllocationStatus, DeclineReason, NeedStatus, ReferralStatus};
use diesel::QueryResult;

/// Which needs a summary covers. Prefixes are validated codes (digits, or a letter and digits),
/// so they carry no LIKE wildcards; empty = any.
#[derive(Debug, Clone)]
pub struct CohortFilter {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub region_prefix: String,
    pub industry_prefix: String,
}

/// The cohort, binds $1 (from), $2 (to), $3 (region prefix), $4 (industry prefix); every query
/// over it takes the statuses it counts as binds after these.
const COHORT: &str = "\
    cohort AS ( \
        SELECT n.id, n.enterprise_id, n.amount_minor, n.status, e.region_code, e.industry_code \
        FROM needs n JOIN enterprises e ON e.id = n.enterprise_id \
        WHERE ($1::timestamptz IS NULL OR n.created_at >= $1::timestamptz) \
          AND n.created_at < coalesce($2::timestamptz, now()) \
          AND e.region_code LIKE $3 || '%' \
          AND e.industry_code LIKE $4 || '%')";

/// Live allocations counted by the program breakdown: the binds of [`COHORT`], then $5, the live
/// statuses ([`AllocationStatus::is_live`]).
const LIVE_ALLOCATIONS: &str = "\
    live AS ( \
        SELECT a.program_id, a.enterprise_id, a.amount_minor, a.status, a.subsidy_minor \
        FROM allocations a JOIN enterprises e ON e.id = a.enterprise_id \
        WHERE a.status = ANY($5::text[]) \
          AND ($1::timestamptz IS NULL OR a.created_at >= $1::timestamptz) \
          AND a.created_at < coalesce($2::timestamptz, now()) \
          AND e.region_code LIKE $3 || '%' \
          AND e.industry_code LIKE $4 || '%')";

macro_rules! with_cohort {
    ($query:expr, $filter:expr) => {
        diesel::sql_query($query)
            .bind::<Nullable<Timestamptz>, _>($filter.from)
            .bind::<Nullable<Timestamptz>, _>($filter.to)
            .bind::<Text, _>($filter.region_prefix.as_str())
            .bind::<Text, _>($filter.industry_prefix.as_str())
    };
}

/// Need figures of one group: `dimension` is `total` (group ""), `industry` or `region`.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct NeedGroupRow {
    #[diesel(sql_type = Text)]
    pub dimension: String,
    #[diesel(sql_type = Text)]
    pub group_key: String,
    #[diesel(sql_type = BigInt)]
    pub enterprises: i64,
    #[diesel(sql_type = BigInt)]
    pub needs: i64,
    #[diesel(sql_type = BigInt)]
    pub demand_minor: i64,
    #[diesel(sql_type = BigInt)]
    pub routed_needs: i64,
    #[diesel(sql_type = BigInt)]
    pub approved_needs: i64,
    #[diesel(sql_type = BigInt)]
    pub approved_minor: i64,
    #[diesel(sql_type = BigInt)]
    pub funded_needs: i64,
    #[diesel(sql_type = BigInt)]
    pub disbursed_minor: i64,
}

/// The totals and the industry and region groups in one pass over the cohort (GROUPING SETS),
/// so each group set partitions exactly the rows the totals count. Always returns the total row.
pub async fn need_groups(
    conn: &mut Connection,
    filter: &CohortFilter,
    industry_group_length: i32,
    region_group_length: i32,
) -> QueryResult<Vec<NeedGroupRow>> {
    let query = format!(
        "WITH {COHORT}, \
         facts AS ( \
            SELECT c.enterprise_id, c.amount_minor, c.status, \
                   left(c.industry_code, $5) AS industry_group, \
                   left(c.region_code, $6) AS region_group, \
                   EXISTS (SELECT 1 FROM referrals r WHERE r.need_id = c.id) AS routed, \
                   ap.approvals > 0 AS approved, \
                   coalesce(ap.approved_minor, 0) AS approved_minor, \
                   coalesce(d.disbursed_minor, 0) AS disbursed_minor \
            FROM cohort c \
            CROSS JOIN LATERAL ( \
                SELECT count(*) AS approvals, sum(r.approved_amount_minor) AS approved_minor \
                FROM referrals r \
                WHERE r.need_id = c.id AND r.approved_amount_minor IS NOT NULL) ap \
            CROSS JOIN LATERAL ( \
                SELECT sum(d.amount_minor) AS disbursed_minor \
                FROM disbursements d WHERE d.need_id = c.id) d) \
         SELECT CASE GROUPING(industry_group, region_group) \
                    WHEN 3 THEN 'total' WHEN 1 THEN 'industry' ELSE 'region' END AS dimension, \
                coalesce(industry_group, region_group, '') AS group_key, \
                count(DISTINCT enterprise_id) AS enterprises, \
                count(*) AS needs, \
                coalesce(sum(amount_minor), 0)::bigint AS demand_minor, \
                count(*) FILTER (WHERE routed) AS routed_needs, \
                count(*) FILTER (WHERE approved) AS approved_needs, \
                coalesce(sum(approved_minor), 0)::bigint AS approved_minor, \
                count(*) FILTER (WHERE status = $7) AS funded_needs, \
                coalesce(sum(disbursed_minor), 0)::bigint AS disbursed_minor \
         FROM facts \
         GROUP BY GROUPING SETS ((), (industry_group), (region_group)) \
         ORDER BY 1, 2"
    );
    with_cohort!(query, filter)
        .bind::<Integer, _>(industry_group_length)
        .bind::<Integer, _>(region_group_length)
        .bind::<Text, _>(NeedStatus::Funded)
        .load(conn)
        .await
}

/// The snapshot's time and the median time to a first answer over the cohort's referrals.
#[derive(Debug, Clone, QueryableByName)]
pub struct SnapshotRow {
    #[diesel(sql_type = Timestamptz)]
    pub as_of: DateTime<Utc>,
    /// Microseconds; None when no referral was answered.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub median_first_answer_micros: Option<i64>,
}

pub async fn snapshot(conn: &mut Connection, filter: &CohortFilter) -> QueryResult<SnapshotRow> {
    let query = format!(
        "WITH {COHORT} \
         SELECT now() AS as_of, \
                (SELECT round(1e6 * percentile_cont(0.5) WITHIN GROUP ( \
                            ORDER BY extract(epoch FROM r.first_response_at - r.created_at)::float8) \
                       )::bigint \
                 FROM referrals r JOIN cohort c ON c.id = r.need_id \
                 WHERE r.first_response_at IS NOT NULL) AS median_first_answer_micros"
    );
    with_cohort!(query, filter).get_result(conn).await
}

/// Figures of one lender over the cohort's referrals.
#[derive(Debug, Clone, QueryableByName)]
pub struct LenderGroupRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub lender_id: Uuid,
    #[diesel(sql_type = Text)]
    pub lender_name: String,
    #[diesel(sql_type = BigInt)]
    pub referrals: i64,
    #[diesel(sql_type = BigInt)]
    pub approvals: i64,
    #[diesel(sql_type = BigInt)]
    pub declines: i64,
    #[diesel(sql_type = BigInt)]
    pub expirations: i64,
    #[diesel(sql_type = BigInt)]
    pub open_referrals: i64,
    #[diesel(sql_type = BigInt)]
    pub approved_minor: i64,
    #[diesel(sql_type = BigInt)]
    pub disbursed_minor: i64,
    /// Microseconds; None when the lender answered none.
    #[diesel(sql_type = Nullable<BigInt>)]
    pub median_response_micros: Option<i64>,
}

/// Lenders with at least one referral in the cohort, ordered by name.
pub async fn lender_groups(
    conn: &mut Connection,
    filter: &CohortFilter,
) -> QueryResult<Vec<LenderGroupRow>> {
    let query = format!(
        "WITH {COHORT}, \
         paid AS ( \
            SELECT d.lender_id, sum(d.amount_minor)::bigint AS disbursed_minor \
            FROM disbursements d JOIN cohort c ON c.id = d.need_id \
            GROUP BY d.lender_id) \
         SELECT r.lender_id, l.name AS lender_name, \
                count(*) AS referrals, \
                count(*) FILTER (WHERE r.approved_amount_minor IS NOT NULL) AS approvals, \
                count(*) FILTER (WHERE r.status = $5) AS declines, \
                count(*) FILTER (WHERE r.status = $6) AS expirations, \
                count(*) FILTER (WHERE r.status = ANY($7::text[])) AS open_referrals, \
                coalesce(sum(r.approved_amount_minor), 0)::bigint AS approved_minor, \
                coalesce(paid.disbursed_minor, 0) AS disbursed_minor, \
                round(1e6 * percentile_cont(0.5) WITHIN GROUP ( \
                    ORDER BY extract(epoch FROM r.first_response_at - r.created_at)::float8) \
                )::bigint AS median_response_micros \
         FROM referrals r \
         JOIN cohort c ON c.id = r.need_id \
         JOIN lenders l ON l.id = r.lender_id \
         LEFT JOIN paid ON paid.lender_id = r.lender_id \
         GROUP BY r.lender_id, l.name, paid.disbursed_minor \
         ORDER BY l.name, r.lender_id"
    );
    with_cohort!(query, filter)
        .bind::<Text, _>(ReferralStatus::Declined)
        .bind::<Text, _>(ReferralStatus::Expired)
        .bind::<Array<Text>, _>(super::referrals::open_statuses())
        .load(conn)
        .await
}

#[derive(Debug, Clone, QueryableByName)]
pub struct DeclineRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub lender_id: Uuid,
    #[diesel(sql_type = Text)]
    pub reason: DeclineReason,
    #[diesel(sql_type = BigInt)]
    pub count: i64,
}

/// Declined referrals of the cohort per lender and reason.
pub async fn declines(
    conn: &mut Connection,
    filter: &CohortFilter,
) -> QueryResult<Vec<DeclineRow>> {
    let query = format!(
        "WITH {COHORT} \
         SELECT r.lender_id, r.decline_reason AS reason, count(*) AS count \
         FROM referrals r JOIN cohort c ON c.id = r.need_id \
         WHERE r.status = $5 \
         GROUP BY r.lender_id, r.decline_reason \
         ORDER BY r.lender_id, r.decline_reason"
    );
    with_cohort!(query, filter)
        .bind::<Text, _>(ReferralStatus::Declined)
        .load(conn)
        .await
}

#[derive(Debug, Clone, QueryableByName)]
pub struct ProgramGroupRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub program_id: Uuid,
    #[diesel(sql_type = Text)]
    pub code: String,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = BigInt)]
    pub enterprises: i64,
    #[diesel(sql_type = BigInt)]
    pub allocations: i64,
    #[diesel(sql_type = BigInt)]
    pub allocated_minor: i64,
    #[diesel(sql_type = BigInt)]
    pub confirmed_minor: i64,
    #[diesel(sql_type = BigInt)]
    pub subsidy_minor: i64,
    #[diesel(sql_type = BigInt)]
    pub total_quota_minor: i64,
    #[diesel(sql_type = BigInt)]
    pub remaining_minor: i64,
}

/// Every program with its live allocations created in the period by matching enterprises,
/// ordered by code; quota figures are the program's own, unfiltered.
pub async fn program_groups(
    conn: &mut Connection,
    filter: &CohortFilter,
) -> QueryResult<Vec<ProgramGroupRow>> {
    let query = format!(
        "WITH {LIVE_ALLOCATIONS} \
         SELECT p.id AS program_id, p.code, p.name, \
                count(DISTINCT live.enterprise_id) AS enterprises, \
                count(live.program_id) AS allocations, \
                coalesce(sum(live.amount_minor), 0)::bigint AS allocated_minor, \
                coalesce(sum(live.amount_minor) FILTER (WHERE live.status = $6), 0)::bigint \
                    AS confirmed_minor, \
                coalesce(sum(live.subsidy_minor), 0)::bigint AS subsidy_minor, \
                p.total_quota_minor, \
                p.total_quota_minor - p.reserved_minor - p.confirmed_minor AS remaining_minor \
         FROM programs p LEFT JOIN live ON live.program_id = p.id \
         GROUP BY p.id \
         ORDER BY p.code"
    );
    with_cohort!(query, filter)
        .bind::<Array<Text>, _>(super::statuses(
            AllocationStatus::ALL,
            AllocationStatus::is_live,
        ))
        .bind::<Text, _>(AllocationStatus::Confirmed)
        .load(conn)
        .await
}

#[derive(Debug, Clone, QueryableByName)]
pub struct CountRow {
    #[diesel(sql_type = Text)]
    pub key: String,
    #[diesel(sql_type = BigInt)]
    pub count: i64,
}

/// Needs per status (statuses with none are absent).
pub async fn needs_by_status(conn: &mut Connection) -> QueryResult<Vec<CountRow>> {
    diesel::sql_query(
        "SELECT status AS key, count(*) AS count FROM needs GROUP BY status ORDER BY status",
    )
    .load(conn)
    .await
}

/// Open referrals of every lender (0 for a lender with none, so a gauge drops back to zero).
pub async fn open_referrals_by_lender(conn: &mut Connection) -> QueryResult<Vec<CountRow>> {
    diesel::sql_query(
        "SELECT l.id::text AS key, count(r.id) AS count \
         FROM lenders l LEFT JOIN referrals r ON r.lender_id = l.id \
             AND r.status = ANY($1::text[]) \
         GROUP BY l.id ORDER BY l.id",
    )
    .bind::<Array<Text>, _>(super::referrals::open_statuses())
    .load(conn)
    .await
}

/// Remaining quota (total − reserved − confirmed) per program code.
pub async fn remaining_by_program(conn: &mut Connection) -> QueryResult<Vec<CountRow>> {
    diesel::sql_query(
        "SELECT code AS key, total_quota_minor - reserved_minor - confirmed_minor AS count \
         FROM programs ORDER BY code",
    )
    .load(conn)
    .await
}
