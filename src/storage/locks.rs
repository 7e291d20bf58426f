//! Advisory locks that coordinate work across processes sharing the database.

use diesel::QueryResult;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::RunQueryDsl;

use super::Connection;

/// Held (exclusively, for the session) by the demo loader while it replays spring 2020; the
/// SLA sweeper's needs expiry takes it shared, so it never expires a 2020 need the loader is
/// still working on.
const DEMO_LOAD: i64 = 0x6669_6e6d_6465_6d6f; // "finmdemo"

/// Waits for and takes the demo-load lock for this session.
pub async fn lock_demo_load(conn: &mut Connection) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(DEMO_LOAD)
        .execute(conn)
        .await
        .map(drop)
}

/// Releases the session's demo-load lock.
pub async fn unlock_demo_load(conn: &mut Connection) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(DEMO_LOAD)
        .execute(conn)
        .await
        .map(drop)
}

/// Whether a demo load is running; otherwise holds the lock shared until the transaction
/// ends, so a load starting now waits for this transaction.
pub async fn demo_load_running(conn: &mut Connection) -> QueryResult<bool> {
    diesel::select(
        diesel::dsl::sql::<Bool>("NOT pg_try_advisory_xact_lock_shared(")
            .bind::<BigInt, _>(DEMO_LOAD)
            .sql(")"),
    )
    .get_result::<bool>(conn)
    .await
}
