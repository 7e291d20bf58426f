//! Advisory locks that coordinate work across processes sharing the database.

use diesel::QueryResult;
use diesel::sql_types::{BigInt, Bool};
use diesel_async::RunQueryDsl;

use super::Connection;

/// The expiry hold: taken exclusively, for its session, by a writer of back-dated needs (the
/// demo loader replaying spring 2020) that expires them itself when it is done; the SLA
/// sweeper's needs expiry takes it shared, so it never expires a need such a writer is still
/// working on. The key spells "finmdemo", the name it had when the demo loader was its only
/// holder; renaming it would let an old and a new binary miss each other.
const EXPIRY_HOLD: i64 = 0x6669_6e6d_6465_6d6f;

/// Waits for and takes the expiry hold for this session.
pub async fn hold_expiry(conn: &mut Connection) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(EXPIRY_HOLD)
        .execute(conn)
        .await
        .map(drop)
}

/// Releases the session's expiry hold.
pub async fn release_expiry(conn: &mut Connection) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(EXPIRY_HOLD)
        .execute(conn)
        .await
        .map(drop)
}

/// Whether some session holds the expiry hold; otherwise holds it shared until the transaction
/// ends, so a holder starting now waits for this transaction.
pub async fn expiry_held(conn: &mut Connection) -> QueryResult<bool> {
    diesel::select(
        diesel::dsl::sql::<Bool>("NOT pg_try_advisory_xact_lock_shared(")
            .bind::<BigInt, _>(EXPIRY_HOLD)
            .sql(")"),
    )
    .get_result::<bool>(conn)
    .await
}
