//! SubmitNeed: a need scored against the cached market and stored with its referrals in one
//! statement; the rare submission that cannot be (a product filled up, a key or purpose taken)
//! is resolved after it.

use chrono::{DateTime, NaiveDate, SubsecRound as _, Utc};
use diesel_async::AsyncConnection as _;
use uuid::Uuid;

use super::{Need, NeedWithReferrals, RPC_SUBMIT, Referral, Submission, duplicate_open_need};
use crate::domain::{NeedStatus, NewNeed, ReferralStatus, ids};
use crate::matching::{
    Activity, Candidate, MatchEnterprise, MatchNeed, RoutingPolicy, evaluate, select_routes,
};
use crate::service::catalog::Catalog;
use crate::service::error::{self, TRIES};
use crate::service::routing::{self, match_enterprise, score_factors, take_routes};
use crate::service::{App, Error, Idempotency, Principal, Result, audit, enterprises, reason};
use crate::storage::needs::NeedRow;
use crate::storage::{self, Connection, Failure};

impl App {
    /// Stores, scores and routes a need in one transaction (see FinancingService.SubmitNeed),
    /// usually shared with the calls made at the same time (see `group_commit`).
    #[tracing::instrument(skip_all, fields(enterprise_id = %need.enterprise_id()))]
    pub async fn submit_need(
        &self,
        who: &Principal,
        idempotency: Idempotency,
        need: NewNeed,
    ) -> Result<Submission> {
        who.require("SubmitNeed")?;
        // Usually stored with the calls that arrived meanwhile, in one statement and one commit;
        // the rare call the wave cannot store (a replay, a duplicate, a full product) goes alone.
        if let Some(stored) = self
            .submit_queue()
            .submit(self, who, &idempotency, &need)
            .await
        {
            tracing::info!(
                need_id = %stored.need.id,
                referrals = stored.referrals.len(),
                "need submitted"
            );
            return Ok(Submission::Created(stored));
        }
        let submission = error::retry_conflicts(TRIES, || {
            let (idempotency, need) = (&idempotency, &need);
            async move {
                let mut conn = self.conn().await?;
                submit_in(&mut conn, self, who, idempotency, need).await
            }
        })
        .await?;
        if let Submission::Created(stored) = &submission {
            tracing::info!(
                need_id = %stored.need.id,
                referrals = stored.referrals.len(),
                "need submitted"
            );
        }
        Ok(submission)
    }
}

/// One submission: reads the enterprise, scores the need against the cached market outside any
/// transaction, then writes everything (the products' capacity, the need with its referrals,
/// events, audit row and replay record) in one statement, which is its own transaction: two
/// round trips in all. Only when a chosen product has filled up meanwhile does that statement
/// fail as a whole, and the need is routed again in a transaction that takes capacity round by
/// round. A key or purpose already taken is resolved after the rollback: a replay,
/// IDEMPOTENCY_KEY_REUSED or DUPLICATE_OPEN_NEED.
pub(super) async fn submit_in(
    conn: &mut Connection,
    app: &App,
    who: &Principal,
    idempotency: &Idempotency,
    need: &NewNeed,
) -> Result<Submission> {
    // Microseconds, as PostgreSQL keeps them, so the response equals what GetNeed reads back.
    let now = Utc::now().trunc_subsecs(6);
    let day = app.calendar().day(now);
    let enterprise = enterprises::load(conn, need.enterprise_id()).await?;
    let catalog = app.catalog(conn).await?;
    let market = app.market(conn, catalog, now).await?;
    let policy = app.policy();
    let match_need = MatchNeed::from(need);
    let match_enterprise = match_enterprise(&enterprise, day)?;
    let candidates = ranked(
        need,
        &match_need,
        &match_enterprise,
        &market.catalog,
        &market.activity,
        policy,
    );
    let call = Call {
        who,
        idempotency,
        need,
    };
    match write_routed(conn, &call, &candidates, &market.catalog, policy, day, now).await {
        Ok(submitted) => {
            let counted: Vec<(Uuid, Uuid)> = submitted.counted().collect();
            app.activity_cache().record(day, &counted);
            Ok(Submission::Created(submitted.stored))
        }
        Err(e) if is_taken(&e) => resolve_taken(conn, &call).await,
        Err(e) => Err(e),
    }
}

/// The call a submission stores: who made it, under which key, for which need.
struct Call<'a> {
    who: &'a Principal,
    idempotency: &'a Idempotency,
    need: &'a NewNeed,
}

/// The need's candidates in routing order; none when it has no consent to share (it is stored
/// SUBMITTED, unrouted).
pub(super) fn ranked<'a>(
    need: &NewNeed,
    match_need: &'a MatchNeed,
    enterprise: &'a MatchEnterprise,
    catalog: &'a Catalog,
    activity: &'a Activity,
    policy: &'a RoutingPolicy,
) -> Vec<Candidate<'a>> {
    if !need.consent_to_share() {
        return Vec::new();
    }
    evaluate(
        match_need,
        enterprise,
        catalog.products(),
        activity,
        &[],
        policy,
    )
}

/// Writes the call's need routed to the first choice of `candidates`, in one statement (usually
/// every product routing picks has capacity). When a chosen product filled up since the market
/// was read, routes it again in a transaction that takes capacity round by round, replacing the
/// full products. A key or purpose another need holds fails with [`Taken`].
async fn write_routed(
    conn: &mut Connection,
    call: &Call<'_>,
    candidates: &[Candidate<'_>],
    catalog: &Catalog,
    policy: &RoutingPolicy,
    day: NaiveDate,
    now: DateTime<Utc>,
) -> Result<Submitted> {
    let Call {
        who,
        idempotency,
        need,
    } = *call;
    let want = routing::wanted(policy, policy.top_k, 0, 0);
    let submitted = Submitted::new(need, &select_routes(candidates, want), catalog, now);
    let response = audit::response_body(&submitted.stored)?;
    let row = submitted.row(who, idempotency, &response)?;
    match storage::needs::insert_routed_batch(conn, &[row], day).await {
        Ok(()) => Ok(submitted),
        Err(e) if storage::needs::is_capacity_short(&e) => {
            conn.transaction(async |conn| {
                let routes = take_routes(conn, candidates, want, day).await?;
                let submitted = Submitted::new(need, &routes, catalog, now);
                let response = audit::response_body(&submitted.stored)?;
                storage::needs::insert_routed(conn, &submitted.row(who, idempotency, &response)?)
                    .await
                    .map_err(taken_or_error)?;
                Ok::<_, Error>(submitted)
            })
            .await
        }
        Err(e) => Err(taken_or_error(e)),
    }
}

/// After a submission lost its key or purpose to a stored need: the first call's answer (a
/// replay), IDEMPOTENCY_KEY_EXPIRED, DUPLICATE_OPEN_NEED, or, when whoever held them rolled back
/// meanwhile, a conflict to try again.
async fn resolve_taken(conn: &mut Connection, call: &Call<'_>) -> Result<Submission> {
    let Call {
        who,
        idempotency,
        need,
    } = *call;
    if let Some(saved) = audit::replayed(conn, who, RPC_SUBMIT, idempotency).await? {
        return Ok(Submission::Replayed(saved));
    }
    // The key is on a need whose replay record has been purged (the retention window).
    if let Some(earlier) =
        storage::needs::find_by_key(conn, who.credential_id, &idempotency.key).await?
    {
        return Err(key_expired(&idempotency.key, &earlier));
    }
    if let Some(open) =
        storage::needs::find_open(conn, need.enterprise_id(), need.purpose()).await?
    {
        return Err(duplicate_open_need(&open));
    }
    Err(Error::conflict())
}

/// A key whose first call is older than the replay records are kept: its need exists, its answer
/// is gone, and a new request needs a new key.
fn key_expired(key: &str, earlier: &NeedRow) -> Error {
    Error::precondition(
        reason::IDEMPOTENCY_KEY_EXPIRED,
        format!(
            "idempotency_key {key:?} was used on {} for need {}, longer ago than finmatch keeps \
             replay records (FINMATCH_IDEMPOTENCY_RETENTION_DAYS); read that need with GetNeed, \
             or use a new key for a new request",
            earlier.created_at.format("%Y-%m-%d"),
            earlier.id
        ),
    )
    .with_metadata("idempotency_key", key)
    .with_metadata("need_id", earlier.id)
}

/// A need about to be stored with the referrals routing chose, ids and times set.
pub(super) struct Submitted {
    pub(super) stored: NeedWithReferrals,
    /// The CREATED events' details, by referral.
    event_details: Vec<serde_json::Value>,
}

impl Submitted {
    pub(super) fn new(
        need: &NewNeed,
        routes: &[&crate::matching::Candidate<'_>],
        catalog: &crate::service::catalog::Catalog,
        now: DateTime<Utc>,
    ) -> Self {
        let id = ids::scoped_id(need.enterprise_id());
        let status = match (need.consent_to_share(), routes.is_empty()) {
            (false, _) => NeedStatus::Submitted,
            (true, true) => NeedStatus::Unmatched,
            (true, false) => NeedStatus::Routed,
        };
        let referrals: Vec<Referral> = routes
            .iter()
            .map(|candidate| Referral {
                id: ids::child_id(id),
                need_id: id,
                lender_id: candidate.lender_id(),
                product_id: candidate.product_id(),
                status: ReferralStatus::Pending,
                score: candidate.score(),
                factors: score_factors(candidate),
                sla_deadline: routing::sla_deadline(catalog, candidate, now),
                decline_reason: None,
                decline_note: None,
                info_request: None,
                approved_amount_minor: None,
                approved_rate_bps: None,
                approved_term_months: None,
                disbursed_minor: 0,
                created_at: now,
                updated_at: now,
            })
            .collect();
        let event_details = referrals
            .iter()
            .map(|r| routing::created_detail(r.product_id, r.score, r.sla_deadline))
            .collect();
        let stored = NeedWithReferrals {
            need: Need {
                id,
                enterprise_id: need.enterprise_id(),
                amount_minor: need.amount().get(),
                term_months: need.term().get(),
                purpose: need.purpose(),
                collateral: need.collateral().iter().collect(),
                max_rate_bps: need.max_rate().map(|r| r.get()),
                needed_by: need.needed_by(),
                consent_to_share: need.consent_to_share(),
                channel: need.channel(),
                note: need.note().as_str().to_owned(),
                status,
                funded_minor: 0,
                created_at: now,
                updated_at: now,
            },
            referrals,
        };
        Self {
            stored,
            event_details,
        }
    }

    /// The (product, lender) of each referral, as the activity cache counts them.
    pub(super) fn counted(&self) -> impl Iterator<Item = (Uuid, Uuid)> + '_ {
        self.stored
            .referrals
            .iter()
            .map(|r| (r.product_id, r.lender_id))
    }

    /// The rows to write, with the audit row and replay record of `who`'s call.
    pub(super) fn row<'a>(
        &'a self,
        who: &'a Principal,
        idempotency: &'a Idempotency,
        response: &'a [u8],
    ) -> Result<storage::needs::RoutedNeed<'a>> {
        let need = &self.stored.need;
        let referrals = self
            .stored
            .referrals
            .iter()
            .zip(&self.event_details)
            .map(|(r, detail)| {
                Ok(storage::needs::RoutedReferral {
                    id: r.id,
                    lender_id: r.lender_id,
                    product_id: r.product_id,
                    score: r.score,
                    factors: serde_json::to_value(&r.factors)
                        .map_err(|e| Error::Internal(e.into()))?,
                    sla_deadline: r.sla_deadline,
                    event_detail: detail.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(storage::needs::RoutedNeed {
            need: storage::needs::NewNeed {
                id: need.id,
                enterprise_id: need.enterprise_id,
                amount_minor: need.amount_minor,
                term_months: need.term_months,
                purpose: need.purpose,
                collateral: need.collateral.clone(),
                max_rate_bps: need.max_rate_bps,
                needed_by: need.needed_by,
                consent_to_share: need.consent_to_share,
                channel: need.channel,
                note: &need.note,
                status: need.status,
                idempotency_key: Some(&idempotency.key),
                created_by: who.credential_id,
            },
            routing_attempts: referrals.len() as i32,
            created_at: need.created_at,
            audit: audit::entry(
                Some(who),
                RPC_SUBMIT,
                "need",
                serde_json::json!({
                    "enterprise_id": need.enterprise_id,
                    "status": need.status.as_str(),
                    "idempotency_key": idempotency.key,
                    "referrals": self.stored.referrals.iter().map(|r| r.id).collect::<Vec<_>>(),
                }),
            ),
            replay: audit::replay_record(who, RPC_SUBMIT, idempotency, response),
            referrals,
        })
    }
}

/// Marks a submission that lost its key or purpose to a stored need (see [`submit_in`]).
#[derive(Debug, thiserror::Error)]
#[error("the idempotency key or the enterprise's purpose is taken")]
struct Taken;

fn taken_or_error(e: diesel::result::Error) -> Error {
    if is_taken_failure(&storage::classify(&e)) {
        Error::Internal(anyhow::Error::new(Taken))
    } else {
        e.into()
    }
}

/// A key or purpose taken by another transaction.
fn is_taken_failure(failure: &Failure) -> bool {
    matches!(failure, Failure::UniqueViolation(Some(c))
        if c == storage::needs::ONE_OPEN_PER_PURPOSE
            || c == storage::needs::ONE_NEED_PER_KEY
            || c == storage::idempotency::PRIMARY_KEY)
}

/// A wave statement that lost to a concurrent transaction: a key or purpose it took, or a
/// deadlock with it (two waves holding each other's keys).
pub(super) fn lost_race(e: &diesel::result::Error) -> bool {
    let failure = storage::classify(e);
    failure == Failure::Conflict || is_taken_failure(&failure)
}

fn is_taken(e: &Error) -> bool {
    matches!(e, Error::Internal(inner) if inner.is::<Taken>())
}
