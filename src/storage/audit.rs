//! The append-only audit log.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Connection;
use super::schema::audit_log;

#[derive(Debug, Insertable)]
#[diesel(table_name = audit_log)]
pub struct NewAuditEntry<'a> {
    pub principal_id: Option<Uuid>,
    pub principal_role: &'a str,
    pub lender_id: Option<Uuid>,
    pub rpc: &'a str,
    pub entity_type: &'a str,
    pub entity_id: &'a str,
    pub detail: serde_json::Value,
}

pub async fn insert(conn: &mut Connection, entry: &NewAuditEntry<'_>) -> QueryResult<()> {
    diesel::insert_into(audit_log::table)
        .values(entry)
        .execute(conn)
        .await
        .map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// The hash chain over the audit log (`audit_seals`)
// ---------------------------------------------------------------------------------------------

/// One audit row as the chain hashes it: every column, rendered by PostgreSQL, joined by the
/// unit separator (jsonb renders `detail` one way whatever the key order it was written in).
const CANONICAL: &str = "concat_ws(E'\\x1f', l.id::text, coalesce(l.principal_id::text, ''), \
     l.principal_role, coalesce(l.lender_id::text, ''), l.rpc, l.entity_type, l.entity_id, \
     l.detail::text, (extract(epoch FROM l.created_at) * 1000000)::bigint::text)";

/// An audit row to seal.
#[derive(Debug, Clone, QueryableByName)]
pub struct Sealable {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub canonical: String,
}

/// A seal and its row as the row reads now (`None` when the row is gone).
#[derive(Debug, Clone, QueryableByName)]
pub struct Sealed {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub audit_id: i64,
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    pub hash: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub canonical: Option<String>,
}

#[derive(Debug, Clone, QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

/// Takes the sealer's lock for this transaction, unless another replica holds it.
pub async fn try_lock_sealer(conn: &mut Connection) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    diesel::sql_query("SELECT pg_try_advisory_xact_lock(72710002) AS locked")
        .get_result::<Locked>(conn)
        .await
        .map(|l| l.locked)
}

/// The last seal: the id of the row it seals and the chain's hash through it.
pub async fn last_seal(conn: &mut Connection) -> QueryResult<Option<(i64, Vec<u8>)>> {
    diesel::sql_query(
        "SELECT audit_id, hash, NULL::text AS canonical FROM audit_seals \
         ORDER BY audit_id DESC LIMIT 1",
    )
    .get_result::<Sealed>(conn)
    .await
    .optional()
    .map(|s| s.map(|s| (s.audit_id, s.hash)))
}

/// Up to `limit` rows after `after`, in id order, stopping before the first row whose
/// transaction began at or after `settled_before` (the chain never passes a row that has not
/// settled, even when a later id has).
pub async fn unsealed(
    conn: &mut Connection,
    after: i64,
    settled_before: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> QueryResult<Vec<Sealable>> {
    use diesel::sql_types::{BigInt, Timestamptz};
    diesel::sql_query(format!(
        "SELECT l.id, {CANONICAL} AS canonical FROM audit_log l \
         WHERE l.id > $1 AND l.id < coalesce( \
           (SELECT min(u.id) FROM audit_log u WHERE u.id > $1 AND u.created_at >= $2), \
           9223372036854775807) \
         ORDER BY l.id LIMIT $3"
    ))
    .bind::<BigInt, _>(after)
    .bind::<Timestamptz, _>(settled_before)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

pub async fn insert_seals(
    conn: &mut Connection,
    ids: &[i64],
    hashes: &[Vec<u8>],
) -> QueryResult<()> {
    use diesel::sql_types::{Array, BigInt, Bytea};
    diesel::sql_query(
        "INSERT INTO audit_seals (audit_id, hash) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<Bytea>, _>(hashes)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Up to `limit` seals after `after`, in order, each with its row as it reads now.
pub async fn seals_with_rows(
    conn: &mut Connection,
    after: i64,
    limit: i64,
) -> QueryResult<Vec<Sealed>> {
    use diesel::sql_types::BigInt;
    diesel::sql_query(format!(
        "SELECT s.audit_id, s.hash, CASE WHEN l.id IS NULL THEN NULL ELSE {CANONICAL} END AS canonical \
         FROM audit_seals s LEFT JOIN audit_log l ON l.id = s.audit_id \
         WHERE s.audit_id > $1 ORDER BY s.audit_id LIMIT $2"
    ))
    .bind::<BigInt, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// The chain's hash through row `audit_id`, if that row is sealed.
pub async fn seal_of(conn: &mut Connection, audit_id: i64) -> QueryResult<Option<Vec<u8>>> {
    use diesel::sql_types::BigInt;
    diesel::sql_query(
        "SELECT audit_id, hash, NULL::text AS canonical FROM audit_seals WHERE audit_id = $1",
    )
    .bind::<BigInt, _>(audit_id)
    .get_result::<Sealed>(conn)
    .await
    .optional()
    .map(|s| s.map(|s| s.hash))
}

/// Up to 10 rows at or below `through` that no seal covers: written after the chain passed them.
pub async fn unsealed_below(conn: &mut Connection, through: i64) -> QueryResult<Vec<i64>> {
    use diesel::sql_types::BigInt;
    diesel::sql_query(
        "SELECT l.id FROM audit_log l WHERE l.id <= $1 \
         AND NOT EXISTS (SELECT 1 FROM audit_seals s WHERE s.audit_id = l.id) ORDER BY l.id LIMIT 10",
    )
    .bind::<BigInt, _>(through)
    .load::<Id>(conn)
    .await
    .map(|rows| rows.into_iter().map(|r| r.id).collect())
}
