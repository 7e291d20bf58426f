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
pub mod connect;
pub mod schema;

pub use diesel_async::AsyncPgConnection as Connection;

/// The values of `all` that `pick` holds for, as a filter takes them (`status = ANY($1)`): the
/// storage filters are built from the domain's predicates, never from lists of names.
pub fn statuses<T: Copy>(all: &[T], pick: fn(T) -> bool) -> Vec<T> {
    all.iter().copied().filter(|&s| pick(s)).collect()
}

/// Every migration, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The connection pool every replica shares its work through.
pub type DbPool = Pool<AsyncPgConnection>;
/// A connection checked out of [`DbPool`].
pub type PooledConnection = Object<AsyncPgConnection>;

/// How long a caller waits for a free connection before the call fails UNAVAILABLE.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// The bound on each statement of the command-line tools' pools.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long establishing a new connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the pool. Connections are opened lazily, so this succeeds while PostgreSQL is down
/// and the server recovers by itself when it returns.
/// Every statement on a pooled connection is bounded by `statement_timeout` (zero: unbounded),
/// so one that PostgreSQL cannot finish fails (UNAVAILABLE) instead of holding its connection.
pub fn pool(
    database_url: &str,
    max_size: usize,
    statement_timeout: Duration,
) -> anyhow::Result<DbPool> {
    let mut connector = connect::Connector::new(database_url)?;
    connector.statement_timeout(statement_timeout);
    let mut config = ManagerConfig::default();
    // A broken connection is dropped when it fails; pinging on every checkout would add a round trip
    // to every call.
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |_| {
        let connector = connector.clone();
        Box::pin(async move { connector.establish().await })
    });
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
    let conn = connect::Connector::new(database_url)?.establish().await?;
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
        Ok(applied.iter().map(ToString::to_string).collect())
    })
    .await?
}

/// Applies pending migrations as [`run_migrations`] does, waiting up to `patience` for PostgreSQL
/// to take them: while it cannot be reached, is starting up or shutting down, or lacks the
/// database, the attempt is repeated after a pause that grows from a quarter second to five (a
/// container started beside its database, a failover). Any other failure ends the wait at once:
/// a malformed URL, a refused role or password, a migration's SQL.
pub async fn run_migrations_patiently(
    database_url: &str,
    patience: Duration,
) -> anyhow::Result<Vec<String>> {
    use anyhow::Context as _;
    use backon::{ExponentialBuilder, Retryable as _};
    // A URL that does not parse will not parse later either, nor a CA file that is not there.
    let connector =
        connect::Connector::new(database_url).context("FINMATCH_DATABASE_URL is not usable")?;
    let deadline = std::time::Instant::now() + patience;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    let attempt = || async {
        // A first connection of tokio-postgres's own: its error keeps the SQLSTATE and the I/O
        // cause (diesel keeps only the first words of the message), so the wait is decided by
        // codes, whatever language PostgreSQL speaks, and the log says why.
        let (client, connection) = connector.connect().await.map_err(|e| {
            let not_ready = is_not_ready(&e);
            (anyhow::Error::new(e), not_ready)
        })?;
        drop(client);
        let _ = connection.await;
        run_migrations(database_url).await.map_err(|e| (e, false))
    };
    let applied = attempt
        .retry(backoff)
        .when(|(_, not_ready)| *not_ready)
        // The last pause ends at the deadline, and there is one more try then; none after it.
        .adjust(|_, pause| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            pause.filter(|_| !left.is_zero()).map(|pause| pause.min(left))
        })
        .notify(|(error, _), pause| {
            tracing::warn!(error = %format!("{error:#}"), ?pause, "PostgreSQL is not ready; trying again");
        })
        .await;
    match applied {
        Ok(applied) => Ok(applied),
        Err((error, true)) => Err(error).with_context(|| {
            format!(
                "PostgreSQL was not ready within {} s (--db-connect-timeout-secs, \
                 FINMATCH_DB_CONNECT_TIMEOUT_SECS)",
                patience.as_secs()
            )
        }),
        Err((error, false)) => Err(error),
    }
}

/// Whether a failed first connection says PostgreSQL is not ready yet, rather than that the
/// role, the password or the settings are wrong: by SQLSTATE when PostgreSQL answered, else by
/// whether the socket failed (refused, reset, timed out, a host name not resolvable yet).
fn is_not_ready(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    const NOT_READY: [SqlState; 5] = [
        // Starting up, shutting down, in recovery, not yet accepting connections.
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::TOO_MANY_CONNECTIONS,
        // The database does not exist yet (it is created after the server starts).
        SqlState::INVALID_CATALOG_NAME,
    ];
    match error.code() {
        Some(code) => NOT_READY.contains(code),
        None => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
            while let Some(e) = cause {
                if let Some(io) = e.downcast_ref::<std::io::Error>() {
                    // A refused certificate is refused again: not a server still starting.
                    return !io
                        .get_ref()
                        .is_some_and(|inner| inner.is::<rustls::Error>());
                }
                cause = e.source();
            }
            error.is_closed()
        }
    }
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
    const SIGNS: [&str; 7] = [
        "connection closed",
        // statement_timeout (57014): PostgreSQL could not finish in time; retry later.
        "due to statement timeout",
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
mod sql_enums;

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
