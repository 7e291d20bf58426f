//! PostgreSQL: the generated schema, row types and the queries over them.
//!
//! This is the only module that writes SQL. Query functions take
//! `&mut AsyncPgConnection` and return `QueryResult<T>`, so a use case in
//! `service/` composes several of them inside one transaction.

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
pub mod schema;

pub use diesel_async::AsyncPgConnection as Connection;

/// Every migration, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The connection pool every replica shares its work through.
pub type DbPool = Pool<AsyncPgConnection>;
/// A connection checked out of [`DbPool`].
pub type PooledConnection = Object<AsyncPgConnection>;

/// How long a caller waits for a free connection before the call fails UNAVAILABLE.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long establishing a new connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the pool. Connections are opened lazily, so this succeeds while PostgreSQL is down
/// and the server recovers by itself when it returns.
pub fn pool(database_url: &str, max_size: usize) -> anyhow::Result<DbPool> {
    let mut config = ManagerConfig::default();
    // A broken connection is dropped when it fails; pinging on every checkout would add a round trip
    // to every call.
    config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::new_with_config(database_url, config);
    Ok(Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .runtime(deadpool::Runtime::Tokio1)
        .build()?)
}

/// Applies pending migrations to `database_url` and returns the versions applied.
pub async fn run_migrations(database_url: &str) -> anyhow::Result<Vec<String>> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || {
        use diesel::Connection as _;
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
        Ok(applied.iter().map(ToString::to_string).collect())
    })
    .await?
}

/// What went wrong in the database, as the service layer needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// PostgreSQL could not be reached or the connection broke: retry later.
    Unavailable,
    /// A unique constraint or index was violated; carries its name.
    UniqueViolation(Option<String>),
    /// A CHECK constraint was violated; carries its name.
    CheckViolation(Option<String>),
    /// A foreign key was violated; carries its name.
    ForeignKeyViolation(Option<String>),
    /// A serialization failure or deadlock: the transaction may be retried.
    Conflict,
    /// The row asked for does not exist.
    NotFound,
    /// Anything else: a bug or a schema mismatch.
    Other,
}

/// Classifies a diesel error without leaking SQL to callers.
pub fn classify(error: &DieselError) -> Failure {
    match error {
        DieselError::NotFound => Failure::NotFound,
        DieselError::DatabaseError(kind, info) => {
            let constraint = info.constraint_name().map(str::to_owned);
            match kind {
                DatabaseErrorKind::UniqueViolation => Failure::UniqueViolation(constraint),
                DatabaseErrorKind::CheckViolation => Failure::CheckViolation(constraint),
                DatabaseErrorKind::ForeignKeyViolation => Failure::ForeignKeyViolation(constraint),
                DatabaseErrorKind::SerializationFailure => Failure::Conflict,
                DatabaseErrorKind::ClosedConnection => Failure::Unavailable,
                _ if is_connection_message(info.message()) => Failure::Unavailable,
                _ if info.message().contains("deadlock detected") => Failure::Conflict,
                _ => Failure::Other,
            }
        }
        DieselError::BrokenTransactionManager => Failure::Unavailable,
        _ => Failure::Other,
    }
}

/// Classifies a failure to get a connection from the pool.
pub fn classify_pool(error: &PoolError) -> Failure {
    match error {
        PoolError::Backend(diesel_async::pooled_connection::PoolError::QueryError(e)) => {
            match classify(e) {
                Failure::Other => Failure::Unavailable,
                other => other,
            }
        }
        _ => Failure::Unavailable,
    }
}

fn is_connection_message(message: &str) -> bool {
    const SIGNS: [&str; 6] = [
        "connection closed",
        "terminating connection",
        "Connection refused",
        "broken pipe",
        "the database system is",
        "error communicating with the server",
    ];
    SIGNS.iter().any(|sign| message.contains(sign))
}

pub mod audit;
pub mod catalog;
pub mod credentials;
pub mod enterprises;
pub mod idempotency;
pub mod lenders;
pub mod listen;
pub mod locks;
pub mod needs;
pub mod partner;
pub mod referrals;
pub mod relay;
pub mod reporting;
pub mod special_loans;
pub mod sql;

/// A trivial round trip, to tell whether PostgreSQL answers.
pub async fn ping(conn: &mut Connection) -> diesel::QueryResult<()> {
    use diesel_async::RunQueryDsl;
    diesel::sql_query("SELECT 1")
        .execute(conn)
        .await
        .map(|_| ())
}

/// Sends `payload` on `channel` when the caller's transaction commits (nothing if it rolls back).
pub async fn notify(
    conn: &mut Connection,
    channel: &str,
    payload: &str,
) -> diesel::QueryResult<()> {
    use diesel_async::RunQueryDsl;
    sql::Prepared::new("SELECT pg_notify($1, $2)")
        .bind::<diesel::sql_types::Text, _>(channel)
        .bind::<diesel::sql_types::Text, _>(payload)
        .execute(conn)
        .await
        .map(|_| ())
}
