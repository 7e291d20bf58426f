//! Special-loan programs, lender quotas, enterprises' standing in a program, and allocations.
//!
//! Balances move only through conditional updates (`… WHERE balance + amount <= limit`), so the
//! database itself refuses an overdraw whatever the interleaving of calls on any number of
//! replicas. A use case that touches several balances locks them in one fixed order —
//! allocation, then `program_enterprises`, then `program_lender_quotas`, then `programs` — so
//! concurrent calls never deadlock, and the hottest row (the program) is held the shortest.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Connection;
use super::schema::{
    allocations, designations, disbursements, needs, program_enterprises, program_lender_quotas,
    programs, referrals,
};
use crate::domain::{AllocationStatus, ReferralStatus, ReleaseReason};

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = programs)]
pub struct ProgramRow {
    pub id: Uuid,
    pub code: String,
    pub name: String,
    pub total_quota_minor: i64,
    pub rate_cap_bps: i32,
    pub subsidy_ratio_bps: i32,
    pub max_effective_rate_bps: Option<i32>,
    pub per_enterprise_cap_minor: Option<i64>,
    pub max_term_months: i32,
    pub required_designations: Vec<Option<String>>,
    pub loan_date_from: NaiveDate,
    pub loan_date_to: Option<NaiveDate>,
    pub one_bank_per_enterprise: bool,
    pub reserved_minor: i64,
    pub confirmed_minor: i64,
    pub lender_quota_sum_minor: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub reservation_hours: i32,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = programs)]
pub struct NewProgram<'a> {
    pub code: &'a str,
    pub name: &'a str,
    pub total_quota_minor: i64,
    pub rate_cap_bps: i32,
    pub subsidy_ratio_bps: i32,
    pub max_effective_rate_bps: Option<i32>,
    pub per_enterprise_cap_minor: Option<i64>,
    pub max_term_months: i32,
    pub required_designations: Vec<&'a str>,
    pub loan_date_from: NaiveDate,
    pub loan_date_to: Option<NaiveDate>,
    pub one_bank_per_enterprise: bool,
    pub reservation_hours: i32,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = program_lender_quotas)]
pub struct LenderQuotaRow {
    pub program_id: Uuid,
    pub lender_id: Uuid,
    pub quota_minor: i64,
    pub reserved_minor: i64,
    pub confirmed_minor: i64,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = program_enterprises)]
pub struct ProgramEnterpriseRow {
    pub program_id: Uuid,
    pub enterprise_id: Uuid,
    pub lender_id: Uuid,
    pub live_minor: i64,
}

/// An allocation as stored.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = allocations)]
pub struct AllocationRow {
    pub id: Uuid,
    pub program_id: Uuid,
    pub lender_id: Uuid,
    pub enterprise_id: Uuid,
    pub referral_id: Option<Uuid>,
    pub amount_minor: i64,
    pub rate_bps: i32,
    pub term_months: i32,
    pub loan_date: NaiveDate,
    pub status: AllocationStatus,
    pub subsidy_minor: i64,
    pub effective_rate_bps: i32,
    pub designation_id: Option<Uuid>,
    pub designation_list_code: Option<String>,
    pub loan_reference: Option<String>,
    pub disbursed_on: Option<NaiveDate>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Always set in the table; an Option as the service's allocation has it (a replay of a
    /// response given before reservations lapsed has none).
    #[diesel(deserialize_as = DateTime<Utc>)]
    pub expires_at: Option<DateTime<Utc>>,
    pub release_reason: Option<ReleaseReason>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = allocations)]
pub struct NewAllocation<'a> {
    /// A scoped id (`domain::ids`), carrying the enterprise's routing key.
    pub id: Uuid,
    pub program_id: Uuid,
    pub lender_id: Uuid,
    pub enterprise_id: Uuid,
    pub referral_id: Option<Uuid>,
    pub amount_minor: i64,
    pub rate_bps: i32,
    pub term_months: i32,
    pub loan_date: NaiveDate,
    pub subsidy_minor: i64,
    pub effective_rate_bps: i32,
    pub designation_id: Option<Uuid>,
    pub designation_list_code: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub expires_at: DateTime<Utc>,
}

/// Filters of ListAllocations; `None` and empty lists mean "any".
#[derive(Debug, Default, Clone)]
pub struct AllocationFilter {
    pub program_id: Option<Uuid>,
    pub lender_id: Option<Uuid>,
    pub enterprise_id: Option<Uuid>,
    pub statuses: Vec<AllocationStatus>,
}

/// A designation an allocation may rely on.
#[derive(Debug, Clone, Queryable)]
pub struct EligibleDesignation {
    pub id: Uuid,
    pub list_code: String,
}

// ---------------------------------------------------------------------------------------------
// Programs
// ---------------------------------------------------------------------------------------------

pub async fn insert_program(
    conn: &mut Connection,
    new: &NewProgram<'_>,
) -> QueryResult<ProgramRow> {
    diesel::insert_into(programs::table)
        .values(new)
        .returning(ProgramRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn find_program(conn: &mut Connection, id: Uuid) -> QueryResult<Option<ProgramRow>> {
    programs::table
        .find(id)
        .select(ProgramRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn find_program_by_code(
    conn: &mut Connection,
    code: &str,
) -> QueryResult<Option<ProgramRow>> {
    programs::table
        .filter(programs::code.eq(code))
        .select(ProgramRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Takes `amount` of the program's quota as RESERVED; None (and no change) when the program's
/// reserved plus confirmed amounts would exceed its total.
pub async fn reserve_program_quota(
    conn: &mut Connection,
    program_id: Uuid,
    amount_minor: i64,
) -> QueryResult<Option<ProgramRow>> {
    diesel::update(
        programs::table.find(program_id).filter(
            (programs::reserved_minor + programs::confirmed_minor + amount_minor)
                .le(programs::total_quota_minor),
        ),
    )
    .set((
        programs::reserved_minor.eq(programs::reserved_minor + amount_minor),
        programs::updated_at.eq(diesel::dsl::now),
    ))
    .returning(ProgramRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Adds the deltas to the program's reserved and confirmed balances (release and confirmation,
/// which never take new quota; the table's CHECK is the backstop).
pub async fn adjust_program_balance(
    conn: &mut Connection,
    program_id: Uuid,
    reserved_delta: i64,
    confirmed_delta: i64,
) -> QueryResult<ProgramRow> {
    diesel::update(programs::table.find(program_id))
        .set((
            programs::reserved_minor.eq(programs::reserved_minor + reserved_delta),
            programs::confirmed_minor.eq(programs::confirmed_minor + confirmed_delta),
            programs::updated_at.eq(diesel::dsl::now),
        ))
        .returning(ProgramRow::as_returning())
        .get_result(conn)
        .await
}

/// Moves the sum of lender quotas by `delta`; None (and no change) when the sum would exceed
/// the program's total.
pub async fn add_lender_quota_sum(
    conn: &mut Connection,
    program_id: Uuid,
    delta: i64,
) -> QueryResult<Option<ProgramRow>> {
    diesel::update(
        programs::table
            .find(program_id)
            .filter((programs::lender_quota_sum_minor + delta).le(programs::total_quota_minor)),
    )
    .set((
        programs::lender_quota_sum_minor.eq(programs::lender_quota_sum_minor + delta),
        programs::updated_at.eq(diesel::dsl::now),
    ))
    .returning(ProgramRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

// ---------------------------------------------------------------------------------------------
// Lender quotas
// ---------------------------------------------------------------------------------------------

/// The program's lender quotas ordered by lender, or only `lender_id`'s when given.
pub async fn lender_quotas(
    conn: &mut Connection,
    program_id: Uuid,
    lender_id: Option<Uuid>,
) -> QueryResult<Vec<LenderQuotaRow>> {
    let mut query = program_lender_quotas::table
        .filter(program_lender_quotas::program_id.eq(program_id))
        .select(LenderQuotaRow::as_select())
        .order_by(program_lender_quotas::lender_id)
        .into_boxed();
    if let Some(lender_id) = lender_id {
        query = query.filter(program_lender_quotas::lender_id.eq(lender_id));
    }
    query.load(conn).await
}

pub async fn find_lender_quota(
    conn: &mut Connection,
    program_id: Uuid,
    lender_id: Uuid,
) -> QueryResult<Option<LenderQuotaRow>> {
    program_lender_quotas::table
        .find((program_id, lender_id))
        .select(LenderQuotaRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The lender's quota row, created with a zero quota if absent, locked until the end of the
/// transaction.
pub async fn lock_lender_quota(
    conn: &mut Connection,
    program_id: Uuid,
    lender_id: Uuid,
) -> QueryResult<LenderQuotaRow> {
    diesel::insert_into(program_lender_quotas::table)
        .values((
            program_lender_quotas::program_id.eq(program_id),
            program_lender_quotas::lender_id.eq(lender_id),
            program_lender_quotas::quota_minor.eq(0i64),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    program_lender_quotas::table
        .find((program_id, lender_id))
        .select(LenderQuotaRow::as_select())
        .for_update()
        .first(conn)
        .await
}

pub async fn set_lender_quota(
    conn: &mut Connection,
    program_id: Uuid,
    lender_id: Uuid,
    quota_minor: i64,
) -> QueryResult<LenderQuotaRow> {
    diesel::update(program_lender_quotas::table.find((program_id, lender_id)))
        .set(program_lender_quotas::quota_minor.eq(quota_minor))
        .returning(LenderQuotaRow::as_returning())
        .get_result(conn)
        .await
}

/// Takes `amount` of the lender's quota as RESERVED; None (and no change) when the lender has no
/// quota row or its reserved plus confirmed amounts would exceed its quota.
pub async fn reserve_lender_quota(
    conn: &mut Connection,
    program_id: Uuid,
    lender_id: Uuid,
    amount_minor: i64,
) -> QueryResult<Option<LenderQuotaRow>> {
    use program_lender_quotas as q;
    diesel::update(
        q::table
            .find((program_id, lender_id))
            .filter((q::reserved_minor + q::confirmed_minor + amount_minor).le(q::quota_minor)),
    )
    .set(q::reserved_minor.eq(q::reserved_minor + amount_minor))
    .returning(LenderQuotaRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Adds the deltas to the lender's reserved and confirmed balances in the program.
pub async fn adjust_lender_balance(
    conn: &mut Connection,
    program_id: Uuid,
    lender_id: Uuid,
    reserved_delta: i64,
    confirmed_delta: i64,
) -> QueryResult<LenderQuotaRow> {
    use program_lender_quotas as q;
    diesel::update(q::table.find((program_id, lender_id)))
        .set((
            q::reserved_minor.eq(q::reserved_minor + reserved_delta),
            q::confirmed_minor.eq(q::confirmed_minor + confirmed_delta),
        ))
        .returning(LenderQuotaRow::as_returning())
        .get_result(conn)
        .await
}

// ---------------------------------------------------------------------------------------------
// Enterprises in a program
// ---------------------------------------------------------------------------------------------

/// Adds `amount` to the enterprise's live amount in the program and binds it to `lender_id`
/// (creating its row on its first allocation, rebinding it when nothing of it is live), in one
/// statement that also checks the per-enterprise cap and, when `one_bank`, that the enterprise's
/// live allocations go through `lender_id`. None (and no change) when a rule refuses; the row,
/// if any, stays locked until the end of the transaction, so the caller can explain.
pub async fn add_enterprise_live(
    conn: &mut Connection,
    program_id: Uuid,
    enterprise_id: Uuid,
    lender_id: Uuid,
    amount_minor: i64,
    one_bank: bool,
    cap_minor: Option<i64>,
) -> QueryResult<Option<ProgramEnterpriseRow>> {
    diesel::sql_query(
        "INSERT INTO program_enterprises AS pe (program_id, enterprise_id, lender_id, live_minor) \
         SELECT $1, $2, $3, $4 WHERE $6::bigint IS NULL OR $4 <= $6::bigint \
         ON CONFLICT (program_id, enterprise_id) DO UPDATE \
         SET live_minor = pe.live_minor + EXCLUDED.live_minor, \
             lender_id = CASE WHEN pe.live_minor = 0 THEN EXCLUDED.lender_id ELSE pe.lender_id END \
         WHERE (NOT $5 OR pe.live_minor = 0 OR pe.lender_id = EXCLUDED.lender_id) \
           AND ($6::bigint IS NULL OR pe.live_minor + EXCLUDED.live_minor <= $6::bigint) \
         RETURNING pe.program_id, pe.enterprise_id, pe.lender_id, pe.live_minor",
    )
    .bind::<diesel::sql_types::Uuid, _>(program_id)
    .bind::<diesel::sql_types::Uuid, _>(enterprise_id)
    .bind::<diesel::sql_types::Uuid, _>(lender_id)
    .bind::<BigInt, _>(amount_minor)
    .bind::<Bool, _>(one_bank)
    .bind::<Nullable<BigInt>, _>(cap_minor)
    .get_result(conn)
    .await
    .optional()
}

pub async fn find_program_enterprise(
    conn: &mut Connection,
    program_id: Uuid,
    enterprise_id: Uuid,
) -> QueryResult<Option<ProgramEnterpriseRow>> {
    program_enterprises::table
        .find((program_id, enterprise_id))
        .select(ProgramEnterpriseRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Takes `amount` off the enterprise's live amount (a release).
pub async fn subtract_enterprise_live(
    conn: &mut Connection,
    program_id: Uuid,
    enterprise_id: Uuid,
    amount_minor: i64,
) -> QueryResult<ProgramEnterpriseRow> {
    use program_enterprises as pe;
    diesel::update(pe::table.find((program_id, enterprise_id)))
        .set(pe::live_minor.eq(pe::live_minor - amount_minor))
        .returning(ProgramEnterpriseRow::as_returning())
        .get_result(conn)
        .await
}

/// The enterprise's unrevoked designations of `list_codes` valid on `day`, share-locked so that
/// a concurrent revocation waits for the allocation relying on them to commit.
pub async fn eligible_designations(
    conn: &mut Connection,
    enterprise_id: Uuid,
    list_codes: &[String],
    day: NaiveDate,
) -> QueryResult<Vec<EligibleDesignation>> {
    designations::table
        .filter(designations::enterprise_id.eq(enterprise_id))
        .filter(designations::list_code.eq_any(list_codes))
        .filter(designations::revoked_at.is_null())
        .filter(designations::granted_on.le(day))
        .filter(
            designations::expires_on
                .is_null()
                .or(designations::expires_on.ge(day)),
        )
        .select((designations::id, designations::list_code))
        .order_by(designations::id)
        .for_share()
        .load(conn)
        .await
}

/// The lender and the enterprise of a referral (through its need).
/// Whether `lender_id` holds a referral in one of `statuses` for a need of `enterprise_id`.
pub async fn lender_holds_referral(
    conn: &mut Connection,
    lender_id: Uuid,
    enterprise_id: Uuid,
    statuses: &[ReferralStatus],
) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        referrals::table
            .inner_join(needs::table)
            .filter(referrals::lender_id.eq(lender_id))
            .filter(needs::enterprise_id.eq(enterprise_id))
            .filter(referrals::status.eq_any(statuses.to_vec())),
    ))
    .get_result(conn)
    .await
}

pub async fn referral_parties(
    conn: &mut Connection,
    referral_id: Uuid,
) -> QueryResult<Option<(Uuid, Uuid)>> {
    referrals::table
        .inner_join(needs::table)
        .filter(referrals::id.eq(referral_id))
        .select((referrals::lender_id, needs::enterprise_id))
        .first(conn)
        .await
        .optional()
}

// ---------------------------------------------------------------------------------------------
// Allocations
// ---------------------------------------------------------------------------------------------

pub async fn insert_allocation(
    conn: &mut Connection,
    new: &NewAllocation<'_>,
) -> QueryResult<AllocationRow> {
    diesel::insert_into(allocations::table)
        .values(new)
        .returning(AllocationRow::as_returning())
        .get_result(conn)
        .await
}

/// The allocation, if it exists and (for a lender) is that lender's, locked until the end of
/// the transaction.
pub async fn find_allocation_for_update(
    conn: &mut Connection,
    id: Uuid,
    lender_id: Option<Uuid>,
) -> QueryResult<Option<AllocationRow>> {
    let query = allocations::table
        .filter(allocations::id.eq(id))
        .select(AllocationRow::as_select())
        .for_update();
    match lender_id {
        Some(lender_id) => {
            query
                .filter(allocations::lender_id.eq(lender_id))
                .first(conn)
                .await
        }
        None => query.first(conn).await,
    }
    .optional()
}

/// The lender's allocation confirmed with `loan_reference`, if any.
pub async fn find_allocation_by_reference(
    conn: &mut Connection,
    lender_id: Uuid,
    loan_reference: &str,
) -> QueryResult<Option<AllocationRow>> {
    allocations::table
        .filter(allocations::lender_id.eq(lender_id))
        .filter(allocations::loan_reference.eq(loan_reference))
        .select(AllocationRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn confirm_allocation(
    conn: &mut Connection,
    id: Uuid,
    loan_reference: &str,
    disbursed_on: NaiveDate,
) -> QueryResult<AllocationRow> {
    diesel::update(allocations::table.find(id))
        .set((
            allocations::status.eq(AllocationStatus::Confirmed),
            allocations::loan_reference.eq(loan_reference),
            allocations::disbursed_on.eq(disbursed_on),
            allocations::updated_at.eq(diesel::dsl::now),
        ))
        .returning(AllocationRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn release_allocation(
    conn: &mut Connection,
    id: Uuid,
    why: ReleaseReason,
) -> QueryResult<AllocationRow> {
    diesel::update(allocations::table.find(id))
        .set((
            allocations::status.eq(AllocationStatus::Released),
            allocations::release_reason.eq(why),
            allocations::updated_at.eq(diesel::dsl::now),
        ))
        .returning(AllocationRow::as_returning())
        .get_result(conn)
        .await
}

/// Up to `limit` RESERVED allocations whose reservation lapsed by `now`, soonest first.
pub async fn lapsed_reservations(
    conn: &mut Connection,
    now: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<Uuid>> {
    allocations::table
        .filter(allocations::status.eq(AllocationStatus::Reserved))
        .filter(allocations::expires_at.le(now))
        .order_by((allocations::expires_at, allocations::id))
        .select(allocations::id)
        .limit(limit)
        .load(conn)
        .await
}

/// The allocation if it is still a reservation that lapsed by `now` and no other transaction
/// holds it, locked until the end of the transaction (replicas sweeping at once each take
/// different ones, and a call confirming or releasing it right now keeps it).
pub async fn lock_lapsed(
    conn: &mut Connection,
    id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<Option<AllocationRow>> {
    allocations::table
        .filter(allocations::id.eq(id))
        .filter(allocations::status.eq(AllocationStatus::Reserved))
        .filter(allocations::expires_at.le(now))
        .select(AllocationRow::as_select())
        .for_update()
        .skip_locked()
        .first(conn)
        .await
        .optional()
}

/// What a confirmation checks of the disbursement it names.
#[derive(Debug, Clone, Queryable)]
pub struct RecordedLoan {
    pub referral_id: Uuid,
    pub enterprise_id: Uuid,
    pub amount_minor: i64,
    pub disbursed_on: NaiveDate,
}

/// The disbursement `lender_id` recorded under `loan_reference`, with its need's enterprise.
pub async fn recorded_loan(
    conn: &mut Connection,
    lender_id: Uuid,
    loan_reference: &str,
) -> QueryResult<Option<RecordedLoan>> {
    disbursements::table
        .inner_join(needs::table)
        .filter(disbursements::lender_id.eq(lender_id))
        .filter(disbursements::loan_reference.eq(loan_reference))
        .select((
            disbursements::referral_id,
            needs::enterprise_id,
            disbursements::amount_minor,
            disbursements::disbursed_on,
        ))
        .first(conn)
        .await
        .optional()
}

/// One page in (created_at, id) order, after `after` if given; fetches `limit` rows.
pub async fn list_allocations(
    conn: &mut Connection,
    filter: &AllocationFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<AllocationRow>> {
    let mut query = allocations::table
        .select(AllocationRow::as_select())
        .order_by((allocations::created_at, allocations::id))
        .limit(limit)
        .into_boxed();
    if let Some(program_id) = filter.program_id {
        query = query.filter(allocations::program_id.eq(program_id));
    }
    if let Some(lender_id) = filter.lender_id {
        query = query.filter(allocations::lender_id.eq(lender_id));
    }
    if let Some(enterprise_id) = filter.enterprise_id {
        query = query.filter(allocations::enterprise_id.eq(enterprise_id));
    }
    if !filter.statuses.is_empty() {
        query = query.filter(allocations::status.eq_any(filter.statuses.clone()));
    }
    if let Some((created_at, id)) = after {
        query = query.filter(
            allocations::created_at
                .gt(created_at)
                .or(allocations::created_at
                    .eq(created_at)
                    .and(allocations::id.gt(id))),
        );
    }
    query.load(conn).await
}
