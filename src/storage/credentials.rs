//! Credentials: bearer tokens stored only as SHA-256 hashes.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Connection;
use super::schema::credentials;

/// The channel on which every change of a credential is announced, with its id as payload, by
/// the transaction that makes it (see [`notify_changed`]); replicas' credential caches listen.
pub const CHANGED_CHANNEL: &str = "finmatch_credentials_changed";

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = credentials)]
pub struct CredentialRow {
    pub id: Uuid,
    pub role: String,
    pub lender_id: Option<Uuid>,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub certificate_subject: Option<String>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = credentials)]
pub struct NewCredential<'a> {
    pub role: &'a str,
    pub lender_id: Option<Uuid>,
    pub label: &'a str,
    pub token_hash: &'a [u8],
    pub expires_at: Option<DateTime<Utc>>,
    pub certificate_subject: Option<&'a str>,
}

pub async fn insert(conn: &mut Connection, new: &NewCredential<'_>) -> QueryResult<CredentialRow> {
    diesel::insert_into(credentials::table)
        .values(new)
        .returning(CredentialRow::as_returning())
        .get_result(conn)
        .await
}

type Active = diesel::dsl::And<
    diesel::dsl::IsNull<credentials::revoked_at>,
    diesel::dsl::Or<
        diesel::dsl::IsNull<credentials::expires_at>,
        diesel::dsl::Gt<credentials::expires_at, diesel::dsl::now>,
    >,
>;

/// Unrevoked and not expired, by the database's clock.
fn active() -> Active {
    credentials::revoked_at.is_null().and(
        credentials::expires_at
            .is_null()
            .or(credentials::expires_at.gt(diesel::dsl::now)),
    )
}

/// The active (unrevoked, unexpired) credential with this token hash, if any.
pub async fn find_active_by_hash(
    conn: &mut Connection,
    token_hash: &[u8],
) -> QueryResult<Option<CredentialRow>> {
    credentials::table
        .filter(credentials::token_hash.eq(token_hash))
        .filter(active())
        .select(CredentialRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Which of `ids` are no longer active (revoked, expired, or gone), by the database's clock.
pub async fn inactive_among(conn: &mut Connection, ids: &[Uuid]) -> QueryResult<Vec<Uuid>> {
    let active: Vec<Uuid> = credentials::table
        .filter(credentials::id.eq_any(ids))
        .filter(active())
        .select(credentials::id)
        .load(conn)
        .await?;
    Ok(ids
        .iter()
        .copied()
        .filter(|id| !active.contains(id))
        .collect())
}

/// The unrevoked credentials whose label starts with `prefix`, oldest first.
pub async fn active_labelled(conn: &mut Connection, prefix: &str) -> QueryResult<Vec<Uuid>> {
    let pattern = format!(
        "{}%",
        prefix
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    credentials::table
        .filter(credentials::label.like(pattern))
        .filter(credentials::revoked_at.is_null())
        .order_by((credentials::created_at, credentials::id))
        .select(credentials::id)
        .load(conn)
        .await
}

/// Marks the credential revoked (keeping the first revocation time) and returns it.
pub async fn revoke(conn: &mut Connection, id: Uuid) -> QueryResult<Option<CredentialRow>> {
    diesel::update(credentials::table.find(id))
        .set(credentials::revoked_at.eq(diesel::dsl::sql::<
            diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
        >("coalesce(revoked_at, now())")))
        .returning(CredentialRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Announces on [`CHANGED_CHANNEL`] that the credential changed. Sent inside the changing
/// transaction: PostgreSQL delivers it when, and only if, that transaction commits.
pub async fn notify_changed(conn: &mut Connection, id: Uuid) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<diesel::sql_types::Text, _>(CHANGED_CHANNEL)
        .bind::<diesel::sql_types::Text, _>(id.to_string())
        .execute(conn)
        .await
        .map(drop)
}
