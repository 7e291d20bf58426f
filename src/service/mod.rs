//! Use cases. Each owns its transaction, its authorization scope and its audit row.
//!
//! Use cases are methods on [`App`], grouped by aggregate in the submodules. They take the
//! caller's [`Principal`] and validated domain inputs, and return domain values or [`Error`].
//!
//! # Lock order
//!
//! Transactions that take row locks take them in this one order, so two of them never wait for
//! each other in a cycle (PostgreSQL would abort one with a deadlock):
//!
//! 1. **a need** (`storage::needs::find_for_update`, or with `SKIP LOCKED` in the SLA sweeper,
//!    which never waits for a need). A transaction waits for at most one need; the sweeper's
//!    needs expiry claims a batch but skips every held one.
//! 2. **that need's referrals** (the referral a partner call changes, the sweeper's overdue ones,
//!    the open ones cancelled by a withdrawal, an expiry or the full funding). A referral is
//!    never locked, nor changed, by a transaction that does not hold its need, so whoever waits
//!    for a referral lock holds the need and waits only for work that needs nothing it holds.
//! 3. **products' daily usage** (`product_daily_usage`, taken by routing when it creates
//!    referrals, after the need).
//!
//! Special-loan allocations have their own order, with no need or referral lock in it: the
//! allocation, then the enterprise's standing in the program, the lender's quota, the program
//! (see `special_loans`). Enterprises are locked alone (designations).
//!
//! Row locks are `FOR NO KEY UPDATE`: ids never change, and inserting a row that references a
//! locked one (an event, a referral, a disbursement, an allocation) takes only `FOR KEY SHARE`
//! on it, so such inserts never wait. A conflict that happens anyway (a serialization failure,
//! or a deadlock in a path that breaks this order) is retried by [`error::retry_conflicts`] and
//! reaches the caller as ABORTED, never INTERNAL.

use std::sync::Arc;

use diesel_async::{AsyncConnection, TransactionManager as _};
use scoped_futures::ScopedBoxFuture;
use uuid::Uuid;

use crate::domain::Role;
use crate::matching::RoutingPolicy;
use crate::storage::{self, DbPool, PooledConnection};

pub mod access;
pub mod audit;
pub mod catalog;
pub mod credentials;
pub mod enterprises;
pub mod error;
pub mod events;
pub mod financing;
mod group_commit;
pub mod lenders;
pub mod market;
pub mod paging;
pub mod partner;
pub mod reporting;
pub mod routing;
pub mod special_loans;

pub use error::{Error, Result, reason};

/// Everything a use case needs, shared by all handlers of one server.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    pool: DbPool,
    /// Products as matching reads them; refreshed, never authoritative (see `routing`).
    products: catalog::ProductCache,
    /// Today's usage and lenders' records (see `market`).
    activity: market::ActivityCache,
    /// Enterprises for previews (see `market`).
    enterprises: market::EnterpriseCache,
    /// Principals by token hash; trusted only while its listener is live (see `credentials`).
    credentials: credentials::CredentialCache,
    /// SubmitNeed calls waiting to be stored together (see `group_commit`).
    submit_queue: group_commit::SubmitQueue,
    policy: RoutingPolicy,
    /// Which day it is for the bureau (business dates).
    calendar: crate::domain::BureauCalendar,
}

impl App {
    pub fn new(pool: DbPool) -> Self {
        Self::with_policy(pool, RoutingPolicy::default())
    }

    /// An app routing by `policy`, which must pass [`RoutingPolicy::validate`].
    pub fn with_policy(pool: DbPool, policy: RoutingPolicy) -> Self {
        Self::configured(pool, policy, crate::domain::BureauCalendar::default())
    }

    /// An app routing by `policy` and dating business days by `calendar`.
    pub fn configured(
        pool: DbPool,
        policy: RoutingPolicy,
        calendar: crate::domain::BureauCalendar,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                products: catalog::ProductCache::default(),
                activity: market::ActivityCache::default(),
                enterprises: market::EnterpriseCache::default(),
                credentials: credentials::CredentialCache::default(),
                submit_queue: group_commit::SubmitQueue::default(),
                policy,
                calendar,
            }),
        }
    }

    pub fn policy(&self) -> &RoutingPolicy {
        &self.inner.policy
    }

    /// The bureau's calendar: business dates are its days.
    pub fn calendar(&self) -> crate::domain::BureauCalendar {
        self.inner.calendar
    }

    pub(crate) fn products(&self) -> &catalog::ProductCache {
        &self.inner.products
    }

    pub(crate) fn activity_cache(&self) -> &market::ActivityCache {
        &self.inner.activity
    }

    pub(crate) fn enterprise_cache(&self) -> &market::EnterpriseCache {
        &self.inner.enterprises
    }

    pub(crate) fn credential_cache(&self) -> &credentials::CredentialCache {
        &self.inner.credentials
    }

    pub(crate) fn submit_queue(&self) -> &group_commit::SubmitQueue {
        &self.inner.submit_queue
    }

    pub fn pool(&self) -> &DbPool {
        &self.inner.pool
    }

    /// A pooled connection; UNAVAILABLE when PostgreSQL cannot be reached in time.
    pub async fn conn(&self) -> Result<PooledConnection> {
        Ok(self.inner.pool.get().await?)
    }

    /// The one way a use case writes: a pooled connection, one transaction around `work`, and
    /// the whole of it run again, up to [`error::TRIES`] times with a growing jittered pause,
    /// while it fails with a serialization failure or deadlock ([`error::retry_conflicts`]).
    /// `work` is called once per try, so what it writes is written once; it may borrow from the
    /// use case (the caller, the command) for as long as the call lasts, and returns its future
    /// boxed with `scope_boxed` (a closure's future cannot otherwise name both lifetimes). The
    /// transaction commits when `work` succeeds and rolls back when it fails.
    ///
    /// Two writes do not come here, by design: SubmitNeed and ImportNeeds store a need with its
    /// referrals, counters, event and audit row in one autocommit statement (`submit_in`, still
    /// under [`error::retry_conflicts`]), and the event relay writes on the feed's own
    /// connection, which it holds between batches.
    pub async fn write<'a, T, F>(&self, work: F) -> Result<T>
    where
        F: for<'c> Fn(&'c mut storage::Connection) -> ScopedBoxFuture<'a, 'c, Result<T>>
            + Send
            + Sync
            + 'a,
        T: Send + 'a,
    {
        type Transactions = <storage::Connection as AsyncConnection>::TransactionManager;
        error::retry_conflicts(error::TRIES, || async {
            let mut pooled = self.conn().await?;
            let conn: &mut storage::Connection = &mut pooled;
            // As `AsyncConnection::transaction` runs its callback; that method's bounds cannot
            // be met by a callback called once per try.
            Transactions::begin_transaction(conn).await?;
            match work(&mut *conn).await {
                Ok(value) => {
                    Transactions::commit_transaction(conn).await?;
                    Ok(value)
                }
                Err(error) => match Transactions::rollback_transaction(conn).await {
                    // A broken connection is not returned to the pool; the use case's error is
                    // the one that tells what happened.
                    Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(error),
                    Err(rollback) => Err(rollback.into()),
                },
            }
        })
        .await
    }

    /// True when PostgreSQL answers (readiness).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        storage::ping(&mut conn).await?;
        Ok(())
    }
}

/// Who is calling: established from the bearer token by the auth layer, never from a request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub credential_id: Uuid,
    pub role: Role,
    /// Set exactly when `role` is LENDER: the only lender this caller may act for.
    pub lender_id: Option<Uuid>,
    /// When the credential expires, if it does: from then on it is treated as revoked.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The subject of the client certificate the credential is bound to, if it is: its calls
    /// are accepted only over a mutual-TLS connection presenting that certificate.
    pub certificate_subject: Option<String>,
}

impl Principal {
    /// PERMISSION_DENIED unless the caller has a role `rpc` admits ([`access`]).
    pub fn require(&self, rpc: &str) -> Result<()> {
        access::check(self, rpc)
    }

    /// The lender a LENDER credential is bound to; PERMISSION_DENIED for other roles.
    pub fn require_lender(&self, rpc: &str) -> Result<Uuid> {
        self.require(rpc)?;
        self.lender_id
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("lender credential without lender")))
    }
}

/// Names the caller's retry of a mutating call: the client's key plus a fingerprint of the
/// request, so a retry with the same key but a different request can be told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: Vec<u8>,
}
