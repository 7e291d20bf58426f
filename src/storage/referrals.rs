//! Referrals, their events, and products' daily usage.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Date, Jsonb, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Connection;
use super::schema::{product_daily_usage, referral_events, referrals};
use crate::domain::{DeclineReason, ReferralEventKind, ReferralStatus};

/// The statuses of a referral still in play ([`ReferralStatus::is_open`]).
pub fn open_statuses() -> Vec<ReferralStatus> {
    super::statuses(ReferralStatus::ALL, ReferralStatus::is_open)
}

/// The statuses of a referral waiting for the lender's decision, which expires at its deadline
/// ([`ReferralStatus::is_undecided`]).
pub fn undecided_statuses() -> Vec<ReferralStatus> {
    super::statuses(ReferralStatus::ALL, ReferralStatus::is_undecided)
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = referrals)]
pub struct ReferralRow {
    pub id: Uuid,
    pub need_id: Uuid,
    pub lender_id: Uuid,
    pub product_id: Uuid,
    pub status: ReferralStatus,
    pub score: i32,
    pub factors: serde_json::Value,
    pub sla_deadline: DateTime<Utc>,
    pub decline_reason: Option<DeclineReason>,
    pub decline_note: Option<String>,
    pub info_request: Option<String>,
    pub approved_amount_minor: Option<i64>,
    pub approved_rate_bps: Option<i32>,
    pub approved_term_months: Option<i32>,
    pub first_response_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = referrals)]
pub struct NewReferral {
    /// A scoped id (`domain::ids`), carrying the enterprise's routing key.
    pub id: Uuid,
    pub need_id: Uuid,
    pub lender_id: Uuid,
    pub product_id: Uuid,
    pub status: ReferralStatus,
    pub score: i32,
    pub factors: serde_json::Value,
    pub sla_deadline: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = referral_events)]
pub struct NewReferralEvent {
    pub referral_id: Uuid,
    pub lender_id: Uuid,
    pub need_id: Uuid,
    pub kind: ReferralEventKind,
    pub status: ReferralStatus,
    pub detail: serde_json::Value,
}

/// A lender's record over a period, as counted in SQL.
#[derive(Debug, Clone, QueryableByName)]
pub struct LenderStatsRow {
    #[diesel(sql_type = SqlUuid)]
    pub lender_id: Uuid,
    /// Referrals approved (APPROVED or DISBURSED).
    #[diesel(sql_type = BigInt)]
    pub approvals: i64,
    /// Referrals approved or declined.
    #[diesel(sql_type = BigInt)]
    pub decisions: i64,
    /// Referrals first answered by their deadline.
    #[diesel(sql_type = BigInt)]
    pub sla_met: i64,
    /// Referrals answered, or not cancelled and past their deadline.
    #[diesel(sql_type = BigInt)]
    pub sla_due: i64,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = product_daily_usage)]
pub struct UsageRow {
    pub product_id: Uuid,
    pub day: NaiveDate,
    pub referrals: i32,
}

pub async fn insert(conn: &mut Connection, new: &NewReferral) -> QueryResult<ReferralRow> {
    diesel::insert_into(referrals::table)
        .values(new)
        .returning(ReferralRow::as_returning())
        .get_result(conn)
        .await
}

/// Appends one event to the outbox. Every writer of `referral_events` must do what this does:
/// insert the referral's ids, the kind and the status after the change, in the transaction that
/// changes the referral, leaving `cursor`, `delivery_cursor` and `created_at` to their defaults.
/// Nothing else: the relay finds committed events by polling (see `service::events`).
pub async fn insert_event(conn: &mut Connection, new: &NewReferralEvent) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO referral_events (referral_id, lender_id, need_id, kind, status, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind::<SqlUuid, _>(new.referral_id)
    .bind::<SqlUuid, _>(new.lender_id)
    .bind::<SqlUuid, _>(new.need_id)
    .bind::<Text, _>(new.kind)
    .bind::<Text, _>(new.status)
    .bind::<Jsonb, _>(&new.detail)
    .execute(conn)
    .await
    .map(drop)
}

/// Every referral of these needs, oldest first.
pub async fn for_needs(conn: &mut Connection, need_ids: &[Uuid]) -> QueryResult<Vec<ReferralRow>> {
    referrals::table
        .filter(referrals::need_id.eq_any(need_ids))
        .order_by((referrals::created_at, referrals::id))
        .select(ReferralRow::as_select())
        .load(conn)
        .await
}

/// Every lender this need has been routed to.
pub async fn tried_lenders(conn: &mut Connection, need_id: Uuid) -> QueryResult<Vec<Uuid>> {
    referrals::table
        .filter(referrals::need_id.eq(need_id))
        .select(referrals::lender_id)
        .load(conn)
        .await
}

/// How many of this need's referrals are open.
pub async fn count_open(conn: &mut Connection, need_id: Uuid) -> QueryResult<i64> {
    referrals::table
        .filter(referrals::need_id.eq(need_id))
        .filter(referrals::status.eq_any(open_statuses()))
        .count()
        .get_result(conn)
        .await
}

/// Sets the status of the need's referrals that are in `from`; returns the rows changed.
pub async fn set_status_where(
    conn: &mut Connection,
    need_id: Uuid,
    from: &[ReferralStatus],
    to: ReferralStatus,
) -> QueryResult<Vec<ReferralRow>> {
    diesel::update(
        referrals::table
            .filter(referrals::need_id.eq(need_id))
            .filter(referrals::status.eq_any(from.to_vec())),
    )
    .set((
        referrals::status.eq(to),
        referrals::updated_at.eq(diesel::dsl::now),
    ))
    .returning(ReferralRow::as_returning())
    .get_results(conn)
    .await
}

/// Sets the status of these referrals; returns the rows changed.
pub async fn set_status(
    conn: &mut Connection,
    ids: &[Uuid],
    to: ReferralStatus,
) -> QueryResult<Vec<ReferralRow>> {
    diesel::update(referrals::table.filter(referrals::id.eq_any(ids)))
        .set((
            referrals::status.eq(to),
            referrals::updated_at.eq(diesel::dsl::now),
        ))
        .returning(ReferralRow::as_returning())
        .get_results(conn)
        .await
}

/// Up to `limit` needs with an undecided referral whose deadline is before `now`, the most
/// overdue first. Reads only: the sweeper then locks each need (skipping those another
/// transaction holds) before it locks that need's referrals with [`claim_overdue`], the lock
/// order every use case follows.
pub async fn needs_with_overdue(
    conn: &mut Connection,
    now: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<Uuid>> {
    referrals::table
        .filter(referrals::status.eq_any(undecided_statuses()))
        .filter(referrals::sla_deadline.lt(now))
        .group_by(referrals::need_id)
        .order_by((
            diesel::dsl::min(referrals::sla_deadline),
            referrals::need_id,
        ))
        .limit(limit)
        .select(referrals::need_id)
        .load(conn)
        .await
}

/// The need's undecided referrals whose deadline is before `now`, locked in id order. The
/// caller holds the need's lock, so no other sweeper can claim them; the status is checked again
/// after any wait, so a referral answered meanwhile is not returned.
pub async fn claim_overdue(
    conn: &mut Connection,
    need_id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<Vec<ReferralRow>> {
    referrals::table
        .filter(referrals::need_id.eq(need_id))
        .filter(referrals::status.eq_any(undecided_statuses()))
        .filter(referrals::sla_deadline.lt(now))
        .order_by(referrals::id)
        .select(ReferralRow::as_select())
        .for_no_key_update()
        .load(conn)
        .await
}

#[derive(Debug, QueryableByName)]
struct Taken {
    #[diesel(sql_type = SqlUuid)]
    product_id: Uuid,
}

/// Counts one more referral on `day` for each of these products whose lender and product are
/// active and whose daily capacity (read from the product row, not from any cache) is not used
/// up; returns the products counted. Atomic: concurrent callers on any replica never take more
/// than the capacity. The usage rows are locked in product id order, whatever order the caller
/// ranked them in, so two routings that rank the same products oppositely never deadlock.
pub async fn take_capacity(
    conn: &mut Connection,
    product_ids: &[Uuid],
    day: NaiveDate,
) -> QueryResult<Vec<Uuid>> {
    if product_ids.is_empty() {
        return Ok(Vec::new());
    }
    let taken: Vec<Taken> = super::sql::Prepared::new(
        "INSERT INTO product_daily_usage AS u (product_id, day, referrals) \
         SELECT p.id, $2, 1 FROM products p JOIN lenders l ON l.id = p.lender_id \
         WHERE p.id = ANY($1) AND p.active AND l.active AND p.daily_capacity >= 1 \
         ORDER BY p.id \
         ON CONFLICT (product_id, day) DO UPDATE SET referrals = u.referrals + 1 \
         WHERE u.referrals < (SELECT daily_capacity FROM products WHERE id = u.product_id) \
         RETURNING u.product_id",
    )
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(product_ids)
    .bind::<Date, _>(day)
    .load(conn)
    .await?;
    Ok(taken.into_iter().map(|t| t.product_id).collect())
}

/// Referrals counted per product on `day`.
pub async fn usage_on(conn: &mut Connection, day: NaiveDate) -> QueryResult<Vec<UsageRow>> {
    product_daily_usage::table
        .filter(product_daily_usage::day.eq(day))
        .select(UsageRow::as_select())
        .load(conn)
        .await
}

/// Every lender's record over the referrals created since `since`, judged at `now`.
pub async fn lender_stats(
    conn: &mut Connection,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> QueryResult<Vec<LenderStatsRow>> {
    diesel::sql_query(
        "SELECT lender_id, \
           count(*) FILTER (WHERE status = ANY($3::text[])) AS approvals, \
           count(*) FILTER (WHERE status = ANY($3::text[]) OR status = $4) AS decisions, \
           count(*) FILTER (WHERE first_response_at <= sla_deadline) AS sla_met, \
           count(*) FILTER (WHERE first_response_at IS NOT NULL \
                            OR (sla_deadline < $2 AND status <> $5)) AS sla_due \
         FROM referrals WHERE created_at >= $1 GROUP BY lender_id",
    )
    .bind::<Timestamptz, _>(since)
    .bind::<Timestamptz, _>(now)
    .bind::<Array<Text>, _>(super::statuses(
        ReferralStatus::ALL,
        ReferralStatus::is_approved,
    ))
    .bind::<Text, _>(ReferralStatus::Declined)
    .bind::<Text, _>(ReferralStatus::Cancelled)
    .load(conn)
    .await
}

#[derive(Debug, Clone, QueryableByName)]
pub struct DisbursedRow {
    #[diesel(sql_type = SqlUuid)]
    pub referral_id: Uuid,
    #[diesel(sql_type = BigInt)]
    pub disbursed_minor: i64,
}

/// The sum of disbursements recorded against each of these referrals (absent = none).
pub async fn disbursed(
    conn: &mut Connection,
    referral_ids: &[Uuid],
) -> QueryResult<Vec<DisbursedRow>> {
    diesel::sql_query(
        "SELECT referral_id, sum(amount_minor)::int8 AS disbursed_minor \
         FROM disbursements WHERE referral_id = ANY($1) GROUP BY referral_id",
    )
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(referral_ids)
    .load(conn)
    .await
}
