//! Replay records of mutating calls made with an idempotency key.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Connection;
use super::schema::idempotency_keys;

/// The key's primary key: a second call with the same caller, RPC and key violates it.
pub const PRIMARY_KEY: &str = "idempotency_keys_pkey";

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = idempotency_keys)]
pub struct IdempotencyRow {
    pub request_hash: Vec<u8>,
    pub response: Option<Vec<u8>>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = idempotency_keys)]
pub struct NewIdempotencyKey<'a> {
    pub principal_id: Uuid,
    pub rpc: &'a str,
    pub key: &'a str,
    pub request_hash: &'a [u8],
    pub response: Option<&'a [u8]>,
}

pub async fn find(
    conn: &mut Connection,
    principal_id: Uuid,
    rpc: &str,
    key: &str,
) -> QueryResult<Option<IdempotencyRow>> {
    idempotency_keys::table
        .find((principal_id, rpc, key))
        .select(IdempotencyRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Records the key; a concurrent twin makes this fail with a unique violation, which aborts the
/// caller's transaction so that only one of them takes effect.
pub async fn insert(conn: &mut Connection, new: &NewIdempotencyKey<'_>) -> QueryResult<()> {
    diesel::insert_into(idempotency_keys::table)
        .values(new)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Deletes up to `limit` replay records created before `before`, oldest first, skipping any
/// another transaction holds (a replica purging at the same time takes others). Returns how many
/// it deleted.
pub async fn purge(conn: &mut Connection, before: DateTime<Utc>, limit: i64) -> QueryResult<usize> {
    use diesel::sql_types::{BigInt, Timestamptz};
    diesel::sql_query(
        "DELETE FROM idempotency_keys WHERE (principal_id, rpc, key) IN ( \
           SELECT principal_id, rpc, key FROM idempotency_keys WHERE created_at < $1 \
           ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(limit)
    .execute(conn)
    .await
}
