//! The error policy of finmatch, in one place.
//!
//! - `domain/` returns `domain::Violations` (every bad field of an input, with a description).
//! - `storage/` returns `diesel::QueryResult`; [`storage::classify`] names what went wrong
//!   without SQL text.
//! - `service/` (this module) returns [`Error`], the one application error. Use cases turn
//!   constraint violations they expect into precise variants (a duplicate credit code becomes
//!   [`Error::AlreadyExists`]) and everything unexpected into [`Error::Internal`], which is logged
//!   with its cause and reaches the caller only as "internal error".
//! - `grpc/` maps [`Error`] to a `tonic::Status` with `google.rpc` details in one exhaustive
//!   `match` (see `grpc::status`). Nothing below `grpc/` builds a `Status`.
//!
//! Conflicts. A serialization failure (SQLSTATE 40001, diesel's
//! `DatabaseErrorKind::SerializationFailure`) or a deadlock (40P01: diesel-async reports it as
//! `DatabaseErrorKind::Unknown`, so it is recognised by PostgreSQL's message, see
//! [`storage::classify`]) becomes [`Error::Internal`] carrying the [`Conflict`] marker. Use cases
//! run such transactions again through [`retry_conflicts`] (bounded, exponential backoff with
//! jitter); a conflict that outlives the retries reaches the caller as ABORTED ("retry the whole
//! call"), never as INTERNAL. Deadlocks are prevented by the lock order of `service` (see its
//! module documentation), so a deadlock that is detected anyway is a bug in that order.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};

use crate::domain::Violations;
use crate::storage::{self, Failure};

/// Machine-readable reasons carried in `google.rpc.ErrorInfo` for FAILED_PRECONDITION.
pub mod reason {
    pub const DUPLICATE_CREDIT_CODE: &str = "DUPLICATE_CREDIT_CODE";
    pub const DUPLICATE_NAME: &str = "DUPLICATE_NAME";
    pub const DUPLICATE_CODE: &str = "DUPLICATE_CODE";
    pub const DUPLICATE_DESIGNATION: &str = "DUPLICATE_DESIGNATION";
    pub const DUPLICATE_LOAN_REFERENCE: &str = "DUPLICATE_LOAN_REFERENCE";
    /// An enterprise already has an open need with this purpose.
    pub const DUPLICATE_OPEN_NEED: &str = "DUPLICATE_OPEN_NEED";
    /// The need may not be shown to lenders.
    pub const NO_CONSENT: &str = "NO_CONSENT";
    /// A lender quota may not drop below what that lender has reserved and confirmed.
    pub const QUOTA_BELOW_USAGE: &str = "QUOTA_BELOW_USAGE";
    /// An approval or disbursement above the need's unfunded amount.
    pub const AMOUNT_EXCEEDS_UNFUNDED: &str = "AMOUNT_EXCEEDS_UNFUNDED";
    /// Disbursements on a referral above its approved amount.
    pub const AMOUNT_EXCEEDS_APPROVED: &str = "AMOUNT_EXCEEDS_APPROVED";
    pub const ILLEGAL_TRANSITION: &str = "ILLEGAL_TRANSITION";
    /// A lender's answer to a referral after its SLA deadline.
    pub const RESPONSE_DEADLINE_PASSED: &str = "RESPONSE_DEADLINE_PASSED";
    pub const IDEMPOTENCY_KEY_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
    /// A key whose call is older than the replay records are kept (SubmitNeed).
    pub const IDEMPOTENCY_KEY_EXPIRED: &str = "IDEMPOTENCY_KEY_EXPIRED";
    pub const QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";
    pub const NOT_ELIGIBLE: &str = "NOT_ELIGIBLE";
    pub const RATE_CAP: &str = "RATE_CAP";
    pub const TERM_CAP: &str = "TERM_CAP";
    pub const LOAN_DATE: &str = "LOAN_DATE";
    pub const ENTERPRISE_CAP: &str = "ENTERPRISE_CAP";
    pub const ONE_BANK_RULE: &str = "ONE_BANK_RULE";
    pub const OVER_FUNDING: &str = "OVER_FUNDING";
    pub const LOAN_REFERENCE_REUSED: &str = "LOAN_REFERENCE_REUSED";
    pub const LENDER_INACTIVE: &str = "LENDER_INACTIVE";
    pub const CREDENTIAL_REVOKED: &str = "CREDENTIAL_REVOKED";
    /// A confirmation after the reservation's expire_time.
    pub const RESERVATION_LAPSED: &str = "RESERVATION_LAPSED";
    /// A confirmation naming no disbursement of the lender for the allocation's enterprise.
    pub const NO_DISBURSEMENT: &str = "NO_DISBURSEMENT";
    /// A confirmation whose date is not the disbursement's.
    pub const DISBURSEMENT_MISMATCH: &str = "DISBURSEMENT_MISMATCH";
    /// A confirmation by a disbursement smaller than the allocation.
    pub const DISBURSEMENT_TOO_SMALL: &str = "DISBURSEMENT_TOO_SMALL";
}

/// The application error every use case returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; every bad field is listed.
    #[error("{0}")]
    InvalidArgument(Violations),
    /// The entity does not exist, or is not visible to the caller (another lender's referral).
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    /// The entity exists already; `reason` is a `DUPLICATE_*` [`reason`] constant and
    /// `existing_id` names the holder (sent as `ResourceInfo.resource_name`). A use case that
    /// loses a race for a unique key returns [`Error::conflict`] instead: its retry finds the
    /// winner and names it.
    #[error("{message}")]
    AlreadyExists {
        entity: &'static str,
        reason: &'static str,
        message: String,
        existing_id: String,
    },
    /// The system is not in a state that allows the call; `reason` is a [`reason`] constant.
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
        metadata: Vec<(&'static str, String)>,
    },
    /// No valid credential was presented.
    #[error("{0}")]
    Unauthenticated(String),
    /// The credential's role may not make this call.
    #[error("{0}")]
    PermissionDenied(String),
    /// PostgreSQL is unreachable; the caller should retry with backoff.
    #[error("the database is unavailable; retry later")]
    Unavailable,
    /// Too much concurrent work; the caller should retry with backoff.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The RPC is part of the contract but not built yet.
    #[error("{0} is not implemented yet")]
    Unimplemented(&'static str),
    /// A bug or an unexpected condition; details are logged, never sent.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn not_found(entity: &'static str, id: impl ToString) -> Self {
        Error::NotFound {
            entity,
            id: id.to_string(),
        }
    }

    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            reason,
            message: message.into(),
            metadata: Vec::new(),
        }
    }

    /// The one refusal of a status change a state machine does not allow: FAILED_PRECONDITION
    /// `ILLEGAL_TRANSITION`, "need 0190… is NEED_STATUS_FUNDED; it cannot become
    /// NEED_STATUS_WITHDRAWN", with `subject` (`("need_id", id)`), `status` and
    /// `requested_status` in the metadata. [`Error::because`] adds why, or what to do instead.
    pub fn illegal_transition(
        subject: (&'static str, uuid::Uuid),
        from: impl std::fmt::Display,
        to: impl std::fmt::Display,
    ) -> Self {
        let (key, id) = subject;
        let entity = key.strip_suffix("_id").unwrap_or(key);
        Error::precondition(
            reason::ILLEGAL_TRANSITION,
            format!("{entity} {id} is {from}; it cannot become {to}"),
        )
        .with_metadata(key, id)
        .with_metadata("status", from)
        .with_metadata("requested_status", to)
    }

    /// Adds why to the message of a FAILED_PRECONDITION (`…: reserve quota again`).
    pub fn because(mut self, why: impl std::fmt::Display) -> Self {
        if let Error::FailedPrecondition { message, .. } = &mut self {
            *message = format!("{message}: {why}");
        }
        self
    }

    /// Adds a key/value to the `ErrorInfo` metadata of a FAILED_PRECONDITION.
    pub fn with_metadata(mut self, key: &'static str, value: impl ToString) -> Self {
        if let Error::FailedPrecondition { metadata, .. } = &mut self {
            metadata.push((key, value.to_string()));
        }
        self
    }

    /// One bad field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut violations = Violations::default();
        violations.add(field, description);
        Error::InvalidArgument(violations)
    }

    /// A transaction that collided with another (a serialization failure, a deadlock, or a
    /// concurrent insert of the same unique key): [`retry_conflicts`] runs it again.
    pub fn conflict() -> Self {
        Error::Internal(anyhow::Error::new(Conflict))
    }

    /// Whether a transaction failing with this error may simply be run again (a serialization
    /// failure, a deadlock, or a concurrent twin of an idempotent call). Such an error reaches
    /// the caller as ABORTED.
    pub fn is_retryable_conflict(&self) -> bool {
        matches!(self, Error::Internal(e) if e.downcast_ref::<Conflict>().is_some())
    }
}

/// Marker for a serialization failure or deadlock, kept inside [`Error::Internal`] so that
/// [`retry_conflicts`] (and the wire mapping, which sends it as ABORTED) can recognise it.
#[derive(Debug, thiserror::Error)]
#[error("transaction conflict")]
pub struct Conflict;

impl From<Violations> for Error {
    fn from(violations: Violations) -> Self {
        Error::InvalidArgument(violations)
    }
}

impl From<diesel::result::Error> for Error {
    fn from(error: diesel::result::Error) -> Self {
        match storage::classify(&error) {
            Failure::Unavailable => Error::Unavailable,
            Failure::Conflict => Error::Internal(anyhow::Error::new(Conflict)),
            // Two calls with one idempotency key raced; the loser retries and replays the winner.
            Failure::UniqueViolation(Some(c)) if c == "idempotency_keys_pkey" => {
                Error::Internal(anyhow::Error::new(Conflict))
            }
            _ => Error::Internal(anyhow::Error::new(error)),
        }
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for Error {
    fn from(error: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        match storage::classify_pool(&error) {
            Failure::Unavailable => Error::Unavailable,
            _ => Error::Internal(anyhow::anyhow!("connection pool: {error}")),
        }
    }
}

/// How many times a use case runs a transaction that keeps colliding ([`retry_conflicts`]).
pub const TRIES: u32 = 3;

/// The first pause before running a conflicting transaction again; it doubles on every try.
const RETRY_MIN_DELAY: Duration = Duration::from_millis(5);
/// The longest pause between two tries.
const RETRY_MAX_DELAY: Duration = Duration::from_millis(200);

/// Runs `attempt` (one whole transaction) again when it fails with a conflict
/// ([`Error::is_retryable_conflict`]), at most `tries` times in all. Between tries it waits an
/// exponentially growing pause with random jitter, so transactions that collided do not collide
/// again in lockstep. A conflict on the last try is returned as it is (ABORTED on the wire).
pub async fn retry_conflicts<T, F, Fut>(tries: u32, attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let retries = tries.max(1) as usize - 1;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN_DELAY)
        .with_max_delay(RETRY_MAX_DELAY)
        .with_jitter()
        .with_max_times(retries);
    attempt
        .retry(backoff)
        .when(Error::is_retryable_conflict)
        .notify(|_, pause| tracing::debug!(?pause, "transaction conflict; retrying"))
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn conflict() -> Error {
        Error::Internal(anyhow::Error::new(Conflict))
    }

    #[tokio::test]
    async fn conflicts_are_retried_up_to_the_bound_then_returned() {
        let calls = AtomicU32::new(0);
        let outcome: Result<()> = retry_conflicts(3, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(conflict())
        })
        .await;
        assert!(outcome.unwrap_err().is_retryable_conflict());
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_conflict_then_success_succeeds_and_other_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let outcome = retry_conflicts(3, || async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                0 => Err(conflict()),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(outcome.unwrap(), 7);
        let calls = AtomicU32::new(0);
        let outcome: Result<()> = retry_conflicts(3, || async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(Error::Unavailable)
        })
        .await;
        assert!(matches!(outcome, Err(Error::Unavailable)));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
