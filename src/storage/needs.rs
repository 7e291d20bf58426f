//! Financing needs.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Connection;
use super::schema::{enterprises, needs};
use crate::domain::{Channel, Collateral, NeedStatus, Purpose};

/// The statuses of a need still being worked on ([`NeedStatus::is_open`]), which block a second
/// need of the same enterprise and purpose through `needs_one_open_per_purpose_idx`.
pub fn open_statuses() -> Vec<NeedStatus> {
    super::statuses(NeedStatus::ALL, NeedStatus::is_open)
}

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
    pub purpose: Purpose,
    pub collateral: Vec<Option<Collateral>>,
    pub max_rate_bps: Option<i32>,
    pub needed_by: NaiveDate,
    pub consent_to_share: bool,
    pub channel: Channel,
    pub note: String,
    pub status: NeedStatus,
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
    /// A scoped id (`domain::ids`), carrying the enterprise's routing key.
    pub id: Uuid,
    pub enterprise_id: Uuid,
    pub amount_minor: i64,
    pub term_months: i32,
    pub purpose: Purpose,
    pub collateral: Vec<Collateral>,
    pub max_rate_bps: Option<i32>,
    pub needed_by: NaiveDate,
    pub consent_to_share: bool,
    pub channel: Channel,
    pub note: &'a str,
    pub status: NeedStatus,
    pub idempotency_key: Option<&'a str>,
    pub created_by: Uuid,
}

/// Filters of ListNeeds; `None` and empty slices mean "any".
#[derive(Debug, Default, Clone)]
pub struct NeedFilter<'a> {
    pub statuses: Vec<NeedStatus>,
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
    purpose: Purpose,
) -> QueryResult<Option<NeedRow>> {
    needs::table
        .filter(needs::enterprise_id.eq(enterprise_id))
        .filter(needs::purpose.eq(purpose))
        .filter(needs::status.eq_any(open_statuses()))
        .select(NeedRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The need `created_by` stored under idempotency key `key`, if any.
pub async fn find_by_key(
    conn: &mut Connection,
    created_by: Uuid,
    key: &str,
) -> QueryResult<Option<NeedRow>> {
    needs::table
        .filter(needs::created_by.eq(created_by))
        .filter(needs::idempotency_key.eq(key))
        .select(NeedRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Sets the status (and counts `added_attempts` more routing attempts).
pub async fn set_status(
    conn: &mut Connection,
    id: Uuid,
    status: NeedStatus,
    added_attempts: i32,
) -> QueryResult<NeedRow> {
    diesel::update(needs::table.find(id))
        .set((
            needs::status.eq(status),
            needs::routing_attempts.eq(needs::routing_attempts + added_attempts),
            needs::updated_at.eq(diesel::dsl::now),
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
    statuses: &[NeedStatus],
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

/// A new need with everything its submission writes: its referrals (with their CREATED events),
/// its audit row and the replay record of its idempotency key. Ids and times are chosen by the
/// caller, so the response is known before the statement runs.
#[derive(Debug)]
pub struct RoutedNeed<'a> {
    pub need: NewNeed<'a>,
    pub routing_attempts: i32,
    pub created_at: DateTime<Utc>,
    pub referrals: Vec<RoutedReferral>,
    pub audit: super::audit::NewAuditEntry<'a>,
    pub replay: super::idempotency::NewIdempotencyKey<'a>,
}

/// One referral of a [`RoutedNeed`]: PENDING, with its CREATED event's detail.
#[derive(Debug)]
pub struct RoutedReferral {
    pub id: Uuid,
    pub lender_id: Uuid,
    pub product_id: Uuid,
    pub score: i32,
    pub factors: serde_json::Value,
    pub sla_deadline: DateTime<Utc>,
    pub event_detail: serde_json::Value,
}

/// Writes a [`RoutedNeed`] in one statement (need, referrals, events, audit row, replay record),
/// in the caller's transaction, which has taken the products' capacity already (see
/// `referrals::take_capacity`). Fails with a unique violation of [`ONE_OPEN_PER_PURPOSE`],
/// [`ONE_NEED_PER_KEY`] or the replay record's key when the enterprise already has an open need
/// of this purpose or the key was used before.
pub async fn insert_routed(conn: &mut Connection, new: &RoutedNeed<'_>) -> QueryResult<()> {
    write_routed(
        conn,
        std::slice::from_ref(new),
        new.created_at.date_naive(),
        false,
    )
    .await
}

/// Several [`RoutedNeed`]s and their products' capacity in one statement, its own transaction:
/// as SubmitNeed takes it in a transaction (`referrals::take_capacity`: same checks, same lock
/// order) and [`insert_routed`] for each, all or nothing. A product several of them route
/// to is counted once per referral, within its capacity. Fails as a whole, writing nothing, when
/// a product lacks capacity ([`is_capacity_short`]) or any need would break a unique key; the
/// caller then stores them one at a time. The needs must have distinct enterprises and
/// idempotency keys, and share `created_at`, `created_by`, and the principal, RPC and entity type
/// of their audit rows and replay records.
pub async fn insert_routed_batch(
    conn: &mut Connection,
    batch: &[RoutedNeed<'_>],
    day: NaiveDate,
) -> QueryResult<()> {
    write_routed(conn, batch, day, true).await
}

/// The one statement behind [`insert_routed`] and [`insert_routed_batch`]; it counts the
/// products' capacity on `day` only when `take_capacity`.
async fn write_routed(
    conn: &mut Connection,
    batch: &[RoutedNeed<'_>],
    day: NaiveDate,
    take_capacity: bool,
) -> QueryResult<()> {
    use crate::domain::{ReferralEventKind, ReferralStatus};
    use diesel::sql_types::{
        Array, BigInt, Bool, Bytea, Date, Int4, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
    };
    let Some(first) = batch.first() else {
        return Ok(());
    };
    let needs = |f: fn(&RoutedNeed<'_>) -> Uuid| batch.iter().map(f).collect::<Vec<_>>();
    let referrals = || {
        batch
            .iter()
            .flat_map(|n| n.referrals.iter().map(move |r| (n.need.id, r)))
    };
    super::sql::Prepared::new(
        "WITH wanted AS ( \
           SELECT product_id, count(*)::int4 AS n FROM unnest($19::uuid[]) AS w(product_id) \
           GROUP BY product_id \
         ), taken AS ( \
           INSERT INTO product_daily_usage AS u (product_id, day, referrals) \
           SELECT p.id, $30, w.n FROM wanted w JOIN products p ON p.id = w.product_id \
             JOIN lenders l ON l.id = p.lender_id \
           WHERE $37 AND p.active AND l.active AND p.daily_capacity >= w.n \
           ORDER BY p.id \
           ON CONFLICT (product_id, day) DO UPDATE SET referrals = u.referrals + EXCLUDED.referrals \
           WHERE u.referrals + EXCLUDED.referrals \
             <= (SELECT daily_capacity FROM products WHERE id = u.product_id) \
           RETURNING u.product_id \
         ), checked AS ( \
           SELECT CASE WHEN NOT $37 OR count(*) = (SELECT count(*) FROM wanted) THEN true \
             ELSE finmatch_capacity_short() END AS ok \
           FROM taken \
         ), need AS ( \
           INSERT INTO needs (id, enterprise_id, amount_minor, term_months, purpose, collateral, \
             max_rate_bps, needed_by, consent_to_share, channel, note, status, routing_attempts, \
             idempotency_key, created_by, created_at, updated_at) \
           SELECT n.id, n.enterprise_id, n.amount_minor, n.term_months, n.purpose, \
             string_to_array(n.collateral, ','), n.max_rate_bps, n.needed_by, n.consent, \
             n.channel, n.note, n.status, n.attempts, n.key, $15, $16, $16 \
           FROM checked, unnest($1::uuid[], $2::uuid[], $3::int8[], $4::int4[], $5::text[], \
             $6::text[], $7::int4[], $8::date[], $9::bool[], $10::text[], $11::text[], \
             $12::text[], $13::int4[], $14::text[]) AS n(id, enterprise_id, amount_minor, \
             term_months, purpose, collateral, max_rate_bps, needed_by, consent, channel, note, \
             status, attempts, key) \
           WHERE checked.ok \
           RETURNING id \
         ), referral AS ( \
           INSERT INTO referrals (id, need_id, lender_id, product_id, status, score, factors, \
             sla_deadline, created_at, updated_at) \
           SELECT r.id, r.need_id, r.lender_id, r.product_id, $38, r.score, r.factors, \
             r.sla_deadline, $16, $16 \
           FROM unnest($17::uuid[], $18::uuid[], $20::uuid[], $19::uuid[], $21::int4[], \
             $22::jsonb[], $23::timestamptz[]) \
             AS r(id, need_id, lender_id, product_id, score, factors, sla_deadline) \
           WHERE r.need_id IN (SELECT id FROM need) \
           RETURNING id, need_id, lender_id \
         ), event AS ( \
           INSERT INTO referral_events (referral_id, lender_id, need_id, kind, status, detail, \
             created_at) \
           SELECT r.id, r.lender_id, r.need_id, $39, $38, e.detail, $16 \
           FROM referral r JOIN unnest($17::uuid[], $24::jsonb[]) AS e(id, detail) ON e.id = r.id \
         ), audit AS ( \
           INSERT INTO audit_log (principal_id, principal_role, lender_id, rpc, entity_type, \
             entity_id, detail) \
           SELECT $25, $26, $27, $28, $33, a.need_id::text, a.detail \
           FROM unnest($1::uuid[], $29::jsonb[]) AS a(need_id, detail) \
           WHERE a.need_id IN (SELECT id FROM need) \
         ), replay AS ( \
           INSERT INTO idempotency_keys (principal_id, rpc, key, request_hash, response) \
           SELECT $34, $35, k.key, k.hash, k.response \
           FROM unnest($1::uuid[], $36::text[], $31::bytea[], $32::bytea[]) \
             AS k(need_id, key, hash, response) \
           WHERE k.need_id IN (SELECT id FROM need) \
         ) \
         SELECT count(*) AS n FROM need",
    )
    .bind::<Array<SqlUuid>, _>(needs(|n| n.need.id))
    .bind::<Array<SqlUuid>, _>(needs(|n| n.need.enterprise_id))
    .bind::<Array<BigInt>, _>(batch.iter().map(|n| n.need.amount_minor).collect::<Vec<_>>())
    .bind::<Array<Int4>, _>(batch.iter().map(|n| n.need.term_months).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(batch.iter().map(|n| n.need.purpose).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(batch.iter().map(|n| collateral_list(&n.need.collateral)).collect::<Vec<_>>())
    .bind::<Array<Nullable<Int4>>, _>(batch.iter().map(|n| n.need.max_rate_bps).collect::<Vec<_>>())
    .bind::<Array<Date>, _>(batch.iter().map(|n| n.need.needed_by).collect::<Vec<_>>())
    .bind::<Array<Bool>, _>(batch.iter().map(|n| n.need.consent_to_share).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(batch.iter().map(|n| n.need.channel).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(batch.iter().map(|n| n.need.note).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(batch.iter().map(|n| n.need.status).collect::<Vec<_>>())
    .bind::<Array<Int4>, _>(batch.iter().map(|n| n.routing_attempts).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        batch.iter().map(|n| n.need.idempotency_key).collect::<Vec<_>>(),
    )
    .bind::<SqlUuid, _>(first.need.created_by)
    .bind::<Timestamptz, _>(first.created_at)
    .bind::<Array<SqlUuid>, _>(referrals().map(|(_, r)| r.id).collect::<Vec<_>>())
    .bind::<Array<SqlUuid>, _>(referrals().map(|(need, _)| need).collect::<Vec<_>>())
    .bind::<Array<SqlUuid>, _>(referrals().map(|(_, r)| r.product_id).collect::<Vec<_>>())
    .bind::<Array<SqlUuid>, _>(referrals().map(|(_, r)| r.lender_id).collect::<Vec<_>>())
    .bind::<Array<Int4>, _>(referrals().map(|(_, r)| r.score).collect::<Vec<_>>())
    .bind::<Array<Jsonb>, _>(referrals().map(|(_, r)| r.factors.clone()).collect::<Vec<_>>())
    .bind::<Array<Timestamptz>, _>(referrals().map(|(_, r)| r.sla_deadline).collect::<Vec<_>>())
    .bind::<Array<Jsonb>, _>(referrals().map(|(_, r)| r.event_detail.clone()).collect::<Vec<_>>())
    .bind::<Nullable<SqlUuid>, _>(first.audit.principal_id)
    .bind::<Text, _>(first.audit.principal_role)
    .bind::<Nullable<SqlUuid>, _>(first.audit.lender_id)
    .bind::<Text, _>(first.audit.rpc)
    .bind::<Array<Jsonb>, _>(batch.iter().map(|n| n.audit.detail.clone()).collect::<Vec<_>>())
    .bind::<Date, _>(day)
    .bind::<Array<Bytea>, _>(batch.iter().map(|n| n.replay.request_hash).collect::<Vec<_>>())
    .bind::<Array<Nullable<Bytea>>, _>(batch.iter().map(|n| n.replay.response).collect::<Vec<_>>())
    .bind::<Text, _>(first.audit.entity_type)
    .bind::<SqlUuid, _>(first.replay.principal_id)
    .bind::<Text, _>(first.replay.rpc)
    .bind::<Array<Text>, _>(batch.iter().map(|n| n.replay.key).collect::<Vec<_>>())
    .bind::<Bool, _>(take_capacity)
    .bind::<Text, _>(ReferralStatus::Pending)
    .bind::<Text, _>(ReferralEventKind::Created)
    .execute(conn)
    .await
    .map(drop)
}

/// A need's collateral as the batch statement takes it, `CREDIT,GUARANTEE` (the canonical names
/// hold no comma): `string_to_array` splits it again.
fn collateral_list(collateral: &[Collateral]) -> String {
    let names: Vec<&str> = collateral.iter().map(|c| c.as_str()).collect();
    names.join(",")
}

/// The message of the error `finmatch_capacity_short()` raises (migration
/// 2026-12-02-000000_submit_in_one_statement).
const CAPACITY_SHORT: &str = "finmatch: a product of this routing has no capacity left today";

/// Whether `error` is [`insert_routed_batch`] finding a product without capacity.
pub fn is_capacity_short(error: &diesel::result::Error) -> bool {
    matches!(error, diesel::result::Error::DatabaseError(_, info) if info.message() == CAPACITY_SHORT)
}

/// What a wave of new needs of `created_by` must know before it is written, read in one round
/// trip (the four queries are pipelined): the enterprises that exist with their designations not
/// revoked, the keys of `keys` already naming a need of `created_by`, and the purpose and status
/// of each need of the enterprises.
pub async fn find_for_wave(
    conn: &mut Connection,
    enterprise_ids: &[Uuid],
    created_by: Uuid,
    keys: &[&str],
) -> QueryResult<WaveReads> {
    use super::enterprises::{DesignationRow, EnterpriseRow};
    use diesel::sql_types::{Array, Text, Uuid as SqlUuid};
    let shared: &Connection = conn;
    let found = enterprises::table
        .filter(enterprises::id.eq_any(enterprise_ids))
        .select(EnterpriseRow::as_select())
        .load::<EnterpriseRow>(&mut &*shared);
    let designations = super::enterprises::active_designations_query(enterprise_ids)
        .load::<DesignationRow>(&mut &*shared);
    // One index probe per key and per enterprise: the subqueries are LATERAL and kept apart
    // (OFFSET 0), as a join lets the planner hash every need of the credential when its
    // statistics are behind, which an import's first minutes always are.
    let keys_taken = super::sql::Prepared::new(
        "SELECT t.key FROM unnest($2::text[]) AS k(key) CROSS JOIN LATERAL ( \
           SELECT n.idempotency_key AS key FROM needs n \
           WHERE n.created_by = $1 AND n.idempotency_key = k.key OFFSET 0) t",
    )
    .bind::<SqlUuid, _>(created_by)
    .bind::<Array<Text>, _>(keys)
    .load::<TakenKey>(&mut &*shared);
    let needs_of = super::sql::Prepared::new(
        "SELECT t.enterprise_id, t.purpose, t.status FROM unnest($1::uuid[]) AS e(id) \
         CROSS JOIN LATERAL (SELECT n.enterprise_id, n.purpose, n.status FROM needs n \
           WHERE n.enterprise_id = e.id OFFSET 0) t",
    )
    .bind::<Array<SqlUuid>, _>(enterprise_ids)
    .load::<PurposeRow>(&mut &*shared);
    let (found, designations, keys_taken, needs_of) =
        futures::join!(found, designations, keys_taken, needs_of);
    Ok(WaveReads {
        enterprises: found?,
        designations: designations?,
        keys_taken: keys_taken?.into_iter().map(|k| k.key).collect(),
        purposes: needs_of?,
    })
}

#[derive(QueryableByName)]
struct TakenKey {
    #[diesel(sql_type = diesel::sql_types::Text)]
    key: String,
}

/// A need's purpose and status (see [`find_for_wave`]).
#[derive(QueryableByName)]
pub struct PurposeRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub enterprise_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub purpose: Purpose,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub status: NeedStatus,
}

/// What [`find_for_wave`] read.
pub struct WaveReads {
    pub enterprises: Vec<super::enterprises::EnterpriseRow>,
    pub designations: Vec<super::enterprises::DesignationRow>,
    /// The keys already naming a need of the credential.
    pub keys_taken: Vec<String>,
    /// The purpose and status of every need of the enterprises.
    pub purposes: Vec<PurposeRow>,
}

/// The need, all its referrals (oldest first) and the sums disbursed on them, read in one round
/// trip (the four queries are pipelined).
pub async fn find_with_referrals(
    conn: &mut Connection,
    id: Uuid,
) -> QueryResult<
    Option<(
        NeedRow,
        Vec<super::referrals::ReferralRow>,
        Vec<super::referrals::DisbursedRow>,
    )>,
> {
    use super::referrals::{DisbursedRow, ReferralRow};
    use super::schema::referrals;
    let shared: &Connection = conn;
    let need = needs::table
        .find(id)
        .select(NeedRow::as_select())
        .first::<NeedRow>(&mut &*shared);
    let referrals = referrals::table
        .filter(referrals::need_id.eq(id))
        .order_by((referrals::created_at, referrals::id))
        .select(ReferralRow::as_select())
        .load::<ReferralRow>(&mut &*shared);
    let disbursed = super::sql::Prepared::new(
        "SELECT referral_id, sum(amount_minor)::int8 AS disbursed_minor \
         FROM disbursements WHERE need_id = $1 GROUP BY referral_id",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .load::<DisbursedRow>(&mut &*shared);
    let (need, referrals, disbursed) = futures::join!(need, referrals, disbursed);
    match need.optional()? {
        Some(need) => Ok(Some((need, referrals?, disbursed?))),
        None => Ok(None),
    }
}
