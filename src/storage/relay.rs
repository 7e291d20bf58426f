//! The event relay: its lease, and its one write, delivery cursors for committed events.
//!
//! Writers append events to `referral_events` (the outbox) without a delivery cursor. One
//! replica at a time, the holder of the `referral_events` lease, polls for the committed ones and
//! gives them their delivery cursors, a batch per transaction, and notifies [`DELIVERIES_CHANNEL`]; every replica
//! reads the new batch once and fans it out to its streams (see `service::events`).

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Connection;

/// The lease of the event relay.
pub const EVENT_RELAY: &str = "referral_events";
/// The channel the relay notifies when a batch is delivered; the payload is the batch's last
/// delivery cursor.
pub const DELIVERIES_CHANNEL: &str = "finmatch_referral_deliveries";

/// What one relay batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct Assigned {
    /// Events given a delivery cursor.
    #[diesel(sql_type = BigInt)]
    pub count: i64,
    /// The highest delivery cursor assigned so far (this batch's last, or the previous one).
    #[diesel(sql_type = BigInt)]
    pub last: i64,
}

#[derive(QueryableByName)]
struct Holder {
    #[diesel(sql_type = SqlUuid)]
    #[allow(dead_code)]
    holder: Uuid,
}

/// Takes the lease `name` for `holder` for `ttl` (on the database's clock), or renews it when
/// `holder` has it already; false while another holder's lease runs. Inside a transaction the
/// lease row stays locked until the end, so no other replica's batch can interleave with this
/// one's even if this lease ran out meanwhile.
pub async fn claim_lease(
    conn: &mut Connection,
    name: &str,
    holder: Uuid,
    ttl: Duration,
) -> QueryResult<bool> {
    let held: Option<Holder> = diesel::sql_query(
        "INSERT INTO relay_leases AS l (name, holder, expires_at) \
         VALUES ($1, $2, now() + make_interval(secs => $3)) \
         ON CONFLICT (name) DO UPDATE \
           SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at, \
               acquired_at = CASE WHEN l.holder = EXCLUDED.holder THEN l.acquired_at ELSE now() END \
           WHERE l.holder = EXCLUDED.holder OR l.expires_at < now() \
         RETURNING l.holder",
    )
    .bind::<Text, _>(name)
    .bind::<SqlUuid, _>(holder)
    .bind::<Double, _>(ttl.as_secs_f64())
    .get_result(conn)
    .await
    .optional()?;
    Ok(held.is_some())
}

/// Gives up the lease at once (at shutdown), so another replica need not wait for it to expire.
pub async fn release_lease(conn: &mut Connection, name: &str, holder: Uuid) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE relay_leases SET expires_at = '-infinity' WHERE name = $1 AND holder = $2",
    )
    .bind::<Text, _>(name)
    .bind::<SqlUuid, _>(holder)
    .execute(conn)
    .await
    .map(drop)
}

/// Gives up to `limit` committed, undelivered events their delivery cursors, in insertion order
/// within the batch, each `greatest(previous + 1, cursor)`: increasing in the order assigned,
/// and equal to the insertion cursor while events commit in insertion order. Run by the lease
/// holder only, after [`claim_lease`] in the same transaction; the unique index on
/// `delivery_cursor` refuses a second writer in any case.
pub async fn assign_delivery_cursors(conn: &mut Connection, limit: i64) -> QueryResult<Assigned> {
    diesel::sql_query(
        "WITH base AS ( \
           SELECT coalesce(max(delivery_cursor), 0) AS last FROM referral_events), \
         pending AS ( \
           SELECT cursor, row_number() OVER (ORDER BY cursor) AS n \
           FROM (SELECT cursor FROM referral_events WHERE delivery_cursor IS NULL \
                 ORDER BY cursor LIMIT $1) undelivered), \
         assigned AS ( \
           UPDATE referral_events e SET delivery_cursor = greatest(base.last + pending.n, e.cursor) \
           FROM base, pending WHERE e.cursor = pending.cursor \
           RETURNING e.delivery_cursor) \
         SELECT count(*) AS count, \
                coalesce((SELECT max(delivery_cursor) FROM assigned), (SELECT last FROM base)) AS last \
         FROM assigned",
    )
    .bind::<BigInt, _>(limit)
    .get_result(conn)
    .await
}

/// Whether some committed event has no delivery cursor yet: one probe of the partial index
/// `referral_events_undelivered_idx`, which the relay keeps to live rows it has not reached yet
/// (dead entries go at the next vacuum), so the relay's poll is cheap.
pub async fn has_undelivered(conn: &mut Connection) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        found: bool,
    }
    super::sql::Prepared::new(
        "SELECT EXISTS (SELECT 1 FROM referral_events WHERE delivery_cursor IS NULL) AS found",
    )
    .get_result::<Found>(conn)
    .await
    .map(|f| f.found)
}

/// Tells every replica, when the calling transaction commits, that events up to `last` are
/// delivered.
pub async fn notify_delivered(conn: &mut Connection, last: i64) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_notify($1, $2::text)")
        .bind::<Text, _>(DELIVERIES_CHANNEL)
        .bind::<BigInt, _>(last)
        .execute(conn)
        .await
        .map(drop)
}
