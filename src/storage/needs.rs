//! Financing needs.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Connection;
use super::schema::{enterprises, needs};

/// Needs in these statuses are still being worked on (and block a second need of the same
/// enterprise and purpose through `needs_one_open_per_purpose_idx`).
pub const OPEN_STATUSES: [&str; 3] = ["SUBMITTED", "ROUTED", "APPROVED"];

/// The partial unique index that holds "one open need per enterprise and purpose".
pub const ONE_OPEN_PER_PURPOSE: &str = "needs_one_open_per_purpose_idx";
/// The partial unique index that holds "an idempotency key names one need per credential".
pub const ONE_NEED_PER_KEY: &str = "needs_created_by_idempotency_key_idx";

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = needs)]
pub struct NeedRow {
    pub id: Uuid,
    pub enterprise_id: Uuid,
    pub amount_minor: i64,
    pub term_months: i32,
    pub purpose: String,
    pub collateral: Vec<Option<String>>,
    pub max_rate_bps: Option<i32>,
    pub needed_by: NaiveDate,
    pub consent_to_share: bool,
    pub channel: String,
    pub note: String,
    pub status: String,
    pub funded_minor: i64,
    pub routing_attempts: i32,
    pub idempotency_key: Option<String>,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = needs)]
pub struct NewNeed<'a> {
    pub enterprise_id: Uuid,
    pub amount_minor: i64,
    pub term_months: i32,
    pub purpose: &'a str,
    pub collateral: Vec<&'a str>,
    pub max_rate_bps: Option<i32>,
    pub needed_by: NaiveDate,
    pub consent_to_share: bool,
    pub channel: &'a str,
    pub note: &'a str,
    pub status: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub created_by: Uuid,
}

/// Filters of ListNeeds; `None` and empty slices mean "any".
#[derive(Debug, Default, Clone)]
pub struct NeedFilter<'a> {
    pub statuses: Vec<&'a str>,
    pub enterprise_id: Option<Uuid>,
    pub region_prefix: Option<&'a str>,
    pub industry_prefix: Option<&'a str>,
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
}

pub async fn insert(conn: &mut Connection, new: &NewNeed<'_>) -> QueryResult<NeedRow> {
    diesel::insert_into(needs::table)
        .values(new)
        .returning(NeedRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn find(conn: &mut Connection, id: Uuid) -> QueryResult<Option<NeedRow>> {
    needs::table
        .find(id)
        .select(NeedRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The need, locked until the end of the transaction: every change of a need's status or
/// referrals takes this lock first (the lock order of `service`), so concurrent changes of one
/// need take turns. `FOR NO KEY UPDATE`, not `FOR UPDATE`: the id never changes, and the weaker
/// lock lets other transactions insert rows that reference the need (events, referrals,
/// disbursements take `FOR KEY SHARE` on it through their foreign keys) without waiting.
pub async fn find_for_update(conn: &mut Connection, id: Uuid) -> QueryResult<Option<NeedRow>> {
    needs::table
        .find(id)
        .select(NeedRow::as_select())
        .for_no_key_update()
        .first(conn)
        .await
        .optional()
}

/// Like [`find_for_update`], but `None` at once when another transaction holds the need (the
/// SLA sweeper leaves it to that transaction, or to its next pass).
pub async fn try_lock(conn: &mut Connection, id: Uuid) -> QueryResult<Option<NeedRow>> {
    needs::table
        .find(id)
        .select(NeedRow::as_select())
        .for_no_key_update()
        .skip_locked()
        .first(conn)
        .await
        .optional()
}

/// The open need of this enterprise with this purpose, if any.
pub async fn find_open(
    conn: &mut Connection,
    enterprise_id: Uuid,
    purpose: &str,
) -> QueryResult<Option<NeedRow>> {
    needs::table
        .filter(needs::enterprise_id.eq(enterprise_id))
        .filter(needs::purpose.eq(purpose))
        .filter(needs::status.eq_any(OPEN_STATUSES))
        .select(NeedRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Sets the status (and counts `added_attempts` more routing attempts).
pub async fn set_status(
    conn: &mut Connection,
    id: Uuid,
    status: &str,
    added_attempts: i32,
) -> QueryResult<NeedRow> {
    diesel::update(needs::table.find(id))
        .set((
            needs::status.eq(status),
            needs::routing_attempts.eq(needs::routing_attempts + added_attempts),
        ))
        .returning(NeedRow::as_returning())
        .get_result(conn)
        .await
}

/// One page in (created_at, id) order, after `after` if given; fetches `limit` rows.
pub async fn list(
    conn: &mut Connection,
    filter: &NeedFilter<'_>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<NeedRow>> {
    let mut query = needs::table
        .select(NeedRow::as_select())
        .order_by((needs::created_at, needs::id))
        .limit(limit)
        .into_boxed();
    if !filter.statuses.is_empty() {
        query = query.filter(needs::status.eq_any(filter.statuses.clone()));
    }
    if let Some(enterprise_id) = filter.enterprise_id {
        query = query.filter(needs::enterprise_id.eq(enterprise_id));
    }
    if filter.region_prefix.is_some() || filter.industry_prefix.is_some() {
        let mut owners = enterprises::table.select(enterprises::id).into_boxed();
        if let Some(prefix) = filter.region_prefix {
            owners = owners.filter(enterprises::region_code.like(format!("{prefix}%")));
        }
        if let Some(prefix) = filter.industry_prefix {
            owners = owners.filter(enterprises::industry_code.like(format!("{prefix}%")));
        }
        query = query.filter(needs::enterprise_id.eq_any(owners));
    }
    if let Some(from) = filter.created_from {
        query = query.filter(needs::created_at.ge(from));
    }
    if let Some(to) = filter.created_to {
        query = query.filter(needs::created_at.lt(to));
    }
    if let Some((created_at, id)) = after {
        query = query.filter(
            needs::created_at
                .gt(created_at)
                .or(needs::created_at.eq(created_at).and(needs::id.gt(id))),
        );
    }
    query.load(conn).await
}

/// Claims up to `limit` needs in `statuses` whose `needed_by` is before `today`, locked;
/// rows another transaction holds are skipped (another replica is handling them).
pub async fn claim_overdue(
    conn: &mut Connection,
    statuses: &[&str],
    today: NaiveDate,
    limit: i64,
) -> QueryResult<Vec<NeedRow>> {
    needs::table
        .filter(needs::status.eq_any(statuses.to_vec()))
        .filter(needs::needed_by.lt(today))
        .order_by(needs::needed_by)
        .limit(limit)
        .select(NeedRow::as_select())
        .for_no_key_update()
        .skip_locked()
        .load(conn)
        .await
}
