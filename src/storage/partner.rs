//! The partner bank's view: referrals, events and disbursements scoped to one lender.
//!
//! Every function that reads or changes a referral takes the caller's `lender_id` and filters by
//! it in SQL, so another lender's referral is simply not there.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::IntoSql as _;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Connection;
use super::enterprises::EnterpriseRow;
use super::needs::NeedRow;
use super::referrals::ReferralRow;
use super::schema::{disbursements, enterprises, needs, referral_events, referrals};
use crate::domain::{DeclineReason, NeedStatus, ReferralEventKind, ReferralStatus};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = disbursements)]
pub struct DisbursementRow {
    pub id: Uuid,
    pub referral_id: Uuid,
    pub need_id: Uuid,
    pub lender_id: Uuid,
    pub loan_reference: String,
    pub amount_minor: i64,
    pub rate_bps: i32,
    pub term_months: i32,
    pub disbursed_on: NaiveDate,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = disbursements)]
pub struct NewDisbursement<'a> {
    /// A scoped id (`domain::ids`), carrying the enterprise's routing key.
    pub id: Uuid,
    pub referral_id: Uuid,
    pub need_id: Uuid,
    pub lender_id: Uuid,
    pub loan_reference: &'a str,
    pub amount_minor: i64,
    pub rate_bps: i32,
    pub term_months: i32,
    pub disbursed_on: NaiveDate,
}

/// A delivered event (one the relay has given its delivery cursor).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = referral_events)]
pub struct EventRow {
    /// The delivery cursor: the position a watch stream shows and resumes from.
    #[diesel(select_expression = referral_events::delivery_cursor.assume_not_null())]
    #[diesel(select_expression_type = diesel::dsl::AssumeNotNull<referral_events::delivery_cursor>)]
    pub cursor: i64,
    pub referral_id: Uuid,
    pub lender_id: Uuid,
    pub kind: ReferralEventKind,
    pub status: ReferralStatus,
    pub created_at: DateTime<Utc>,
}

/// The columns a lender's action changes; `None` leaves a column as it is.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = referrals)]
pub struct ReferralChanges<'a> {
    pub status: Option<ReferralStatus>,
    pub info_request: Option<&'a str>,
    pub decline_reason: Option<DeclineReason>,
    pub decline_note: Option<&'a str>,
    pub approved_amount_minor: Option<i64>,
    pub approved_rate_bps: Option<i32>,
    pub approved_term_months: Option<i32>,
}

/// Filters of ListReferrals; empty and `None` mean "any".
#[derive(Debug, Default, Clone)]
pub struct ReferralFilter {
    pub statuses: Vec<ReferralStatus>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
}

/// The lender's referral, if it exists and is the lender's.
pub async fn find(
    conn: &mut Connection,
    lender_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<ReferralRow>> {
    referrals::table
        .filter(referrals::id.eq(id))
        .filter(referrals::lender_id.eq(lender_id))
        .select(ReferralRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Like [`find`], locking the row until the end of the transaction (`FOR NO KEY UPDATE`, which
/// still lets events and disbursements reference it). The caller holds the need's lock already.
pub async fn find_for_update(
    conn: &mut Connection,
    lender_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<ReferralRow>> {
    referrals::table
        .filter(referrals::id.eq(id))
        .filter(referrals::lender_id.eq(lender_id))
        .select(ReferralRow::as_select())
        .for_no_key_update()
        .first(conn)
        .await
        .optional()
}

/// The need of the lender's referral, locked (`FOR NO KEY UPDATE`) until the end of the
/// transaction, in one statement; `None` when the referral is not the lender's. This is the
/// first lock of every partner use case (the lock order of `service`).
pub async fn lock_need_of(
    conn: &mut Connection,
    lender_id: Uuid,
    referral_id: Uuid,
) -> QueryResult<Option<NeedRow>> {
    let need_of_referral = referrals::table
        .filter(referrals::id.eq(referral_id))
        .filter(referrals::lender_id.eq(lender_id))
        .select(referrals::need_id);
    needs::table
        .filter(needs::id.eq_any(need_of_referral))
        .select(NeedRow::as_select())
        .for_no_key_update()
        .first(conn)
        .await
        .optional()
}

/// One page of the lender's referrals in (created_at, id) order, after `after` if given.
pub async fn list(
    conn: &mut Connection,
    lender_id: Uuid,
    filter: &ReferralFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<ReferralRow>> {
    let mut query = referrals::table
        .filter(referrals::lender_id.eq(lender_id))
        .select(ReferralRow::as_select())
        .order_by((referrals::created_at, referrals::id))
        .limit(limit)
        .into_boxed();
    if !filter.statuses.is_empty() {
        query = query.filter(referrals::status.eq_any(filter.statuses.clone()));
    }
    if let Some(from) = filter.created_from {
        query = query.filter(referrals::created_at.ge(from));
    }
    if let Some(to) = filter.created_to {
        query = query.filter(referrals::created_at.lt(to));
    }
    if let Some((created_at, id)) = after {
        query = query.filter(
            referrals::created_at
                .gt(created_at)
                .or(referrals::created_at
                    .eq(created_at)
                    .and(referrals::id.gt(id))),
        );
    }
    query.load(conn).await
}

/// Applies a lender's change to its referral; `first_response_at` is set on the first one.
pub async fn update(
    conn: &mut Connection,
    lender_id: Uuid,
    id: Uuid,
    changes: &ReferralChanges<'_>,
) -> QueryResult<ReferralRow> {
    diesel::update(
        referrals::table
            .filter(referrals::id.eq(id))
            .filter(referrals::lender_id.eq(lender_id)),
    )
    .set((
        changes,
        referrals::updated_at.eq(diesel::dsl::now),
        referrals::first_response_at.eq(diesel::dsl::sql::<
            diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
        >("COALESCE(first_response_at, now())")),
    ))
    .returning(ReferralRow::as_returning())
    .get_result(conn)
    .await
}

/// Needs by id (for the referrals of one page).
pub async fn needs(conn: &mut Connection, ids: &[Uuid]) -> QueryResult<Vec<NeedRow>> {
    needs::table
        .filter(needs::id.eq_any(ids))
        .select(NeedRow::as_select())
        .load(conn)
        .await
}

/// Enterprises by id (for the referrals of one page).
pub async fn enterprises(conn: &mut Connection, ids: &[Uuid]) -> QueryResult<Vec<EnterpriseRow>> {
    enterprises::table
        .filter(enterprises::id.eq_any(ids))
        .select(EnterpriseRow::as_select())
        .load(conn)
        .await
}

/// The lender's disbursement with this loan reference, if recorded.
pub async fn find_disbursement(
    conn: &mut Connection,
    lender_id: Uuid,
    loan_reference: &str,
) -> QueryResult<Option<DisbursementRow>> {
    disbursements::table
        .filter(disbursements::lender_id.eq(lender_id))
        .filter(disbursements::loan_reference.eq(loan_reference))
        .select(DisbursementRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn insert_disbursement(
    conn: &mut Connection,
    new: &NewDisbursement<'_>,
) -> QueryResult<DisbursementRow> {
    diesel::insert_into(disbursements::table)
        .values(new)
        .returning(DisbursementRow::as_returning())
        .get_result(conn)
        .await
}

/// Adds `amount_minor` to the need's funding in one conditional UPDATE, and makes it FUNDED when
/// that reaches its amount. None (nothing changed) when the need is not open or the amount would
/// fund it beyond its amount: the check and the write are one statement, so no interleaving of
/// concurrent disbursements on any replica can overfund a need.
pub async fn add_funding(
    conn: &mut Connection,
    need_id: Uuid,
    amount_minor: i64,
) -> QueryResult<Option<NeedRow>> {
    diesel::update(
        needs::table
            .filter(needs::id.eq(need_id))
            .filter(needs::status.eq_any(super::needs::open_statuses()))
            .filter((needs::funded_minor + amount_minor).le(needs::amount_minor)),
    )
    .set((
        needs::updated_at.eq(diesel::dsl::now),
        needs::funded_minor.eq(needs::funded_minor + amount_minor),
        needs::status.eq(diesel::dsl::case_when(
            (needs::funded_minor + amount_minor).eq(needs::amount_minor),
            NeedStatus::Funded.into_sql::<diesel::sql_types::Text>(),
        )
        .otherwise(needs::status)),
    ))
    .returning(NeedRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Moves the need from ROUTED to APPROVED (its first approval); no-op in other statuses.
pub async fn approve_need(conn: &mut Connection, need_id: Uuid) -> QueryResult<()> {
    diesel::update(
        needs::table
            .filter(needs::id.eq(need_id))
            .filter(needs::status.eq(NeedStatus::Routed)),
    )
    .set((
        needs::status.eq(NeedStatus::Approved),
        needs::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await
    .map(|_| ())
}

/// Delivered events with a delivery cursor above `after`, in that order, `limit` at most, with
/// the referral each belongs to as it is now: of one lender (a stream catching up) or of all (the
/// feed's one read per batch). Delivery cursors are final once visible, so nothing read here can
/// be preceded later by an event with a lower one.
pub async fn delivered_events(
    conn: &mut Connection,
    lender_id: Option<Uuid>,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<(EventRow, ReferralRow)>> {
    let mut query = referral_events::table
        .inner_join(referrals::table.on(referrals::id.eq(referral_events::referral_id)))
        .filter(referral_events::delivery_cursor.gt(after))
        .order_by(referral_events::delivery_cursor)
        .limit(limit)
        .select((EventRow::as_select(), ReferralRow::as_select()))
        .into_boxed();
    if let Some(lender_id) = lender_id {
        query = query.filter(referral_events::lender_id.eq(lender_id));
    }
    query.load(conn).await
}

/// The highest delivery cursor assigned so far; 0 before the first.
pub async fn last_delivery_cursor(conn: &mut Connection) -> QueryResult<i64> {
    referral_events::table
        .select(diesel::dsl::max(referral_events::delivery_cursor))
        .get_result::<Option<i64>>(conn)
        .await
        .map(|last| last.unwrap_or(0))
}
