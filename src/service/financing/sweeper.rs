//! The SLA sweeper: needs past their date expire, overdue referrals expire and their needs are
//! routed onwards, lapsed reservations are released, old replay records are purged.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use scoped_futures::ScopedFutureExt as _;
use uuid::Uuid;

use super::{PURGE_BATCH, SWEEPER, SweepReport, cancel_open_referrals};
use crate::domain::{NeedStatus, ReferralEventKind, ReferralStatus};
use crate::service::routing::route_onwards;
use crate::service::{App, Result, audit};
use crate::storage::referrals::NewReferralEvent;
use crate::storage::{self, Connection};

impl App {
    /// One pass of the SLA sweeper at `now`: expires the needs nobody approved whose `needed_by`
    /// is before `now`'s business day (cancelling their open referrals), then expires undecided referrals past
    /// their deadline and routes their needs to the next best untried lenders (up to the
    /// policy's limit; with none left and nothing open the need becomes UNMATCHED), then
    /// releases the special-loan reservations that lapsed ([`App::release_lapsed_reservations`]).
    ///
    /// Work is claimed by locking needs with `FOR NO KEY UPDATE SKIP LOCKED`, so replicas
    /// sweeping at once never handle one referral or need twice, and a need some call is
    /// changing right now is left for the next pass. Overdue referrals are handled one need per
    /// transaction, locking the need before its referrals like every other use case (see the
    /// lock order in `service`).
    #[tracing::instrument(skip(self))]
    pub async fn sweep_once(&self, now: DateTime<Utc>) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        // Needs first: a need past needed_by is closed, not routed again.
        let today = self.calendar().day(now);
        loop {
            let expired = self
                .write(|conn| async move { expire_needs(conn, today).await }.scope_boxed())
                .await?;
            report.expired_needs += expired;
            if expired < SWEEP_BATCH as usize {
                break;
            }
        }
        loop {
            let (candidates, catalog) = {
                let mut conn = self.conn().await?;
                let candidates =
                    storage::referrals::needs_with_overdue(&mut conn, now, SWEEP_BATCH).await?;
                if candidates.is_empty() {
                    break;
                }
                (candidates, self.catalog(&mut conn).await?)
            };
            let mut handled = 0;
            for &need_id in &candidates {
                let catalog = &catalog;
                let batch = self
                    .write(|conn| {
                        async move {
                        expire_referrals(conn, self, catalog.clone(), need_id, now).await

                    }
                    .scope_boxed()
                    })
                    .await?;
                if let Some(batch) = batch {
                    handled += 1;
                    report.expired_referrals += batch.expired_referrals;
                    report.rerouted_referrals += batch.rerouted_referrals;
                    report.unmatched_needs += batch.unmatched_needs;
                }
            }
            // Handled needs leave the candidates; the rest are held by other transactions,
            // which finish them or leave them to the next pass.
            if candidates.len() < SWEEP_BATCH as usize || handled == 0 {
                break;
            }
        }
        report.lapsed_reservations = self.release_lapsed_reservations(now).await?;
        if report != SweepReport::default() {
            tracing::info!(?report, "SLA sweep");
        }
        Ok(report)
    }

    /// Runs [`App::sweep_once`] every `period` until the task is dropped, deletes the replay
    /// records older than `retention` ([`App::purge_replay_records`]) and seals the settled
    /// audit rows ([`App::seal_audit`]).
    pub async fn run_sweeper(self, period: std::time::Duration, retention: TimeDelta) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Utc::now();
            if let Err(e) = self.sweep_once(now).await {
                tracing::warn!(error = %e, "SLA sweep failed; retrying next period");
            }
            if let Err(e) = self.purge_replay_records(now - retention).await {
                tracing::warn!(error = %e, "purging replay records failed; retrying next period");
            }
            if let Err(e) = self.seal_audit(now).await {
                tracing::warn!(error = %e, "sealing the audit log failed; retrying next period");
            }
        }
    }

    /// Deletes the replay records of calls made before `before`, in batches of
    /// [`PURGE_BATCH`] statements of their own (no lock is held for long, and replicas purging
    /// at once skip each other's rows). Returns how many it deleted.
    pub async fn purge_replay_records(&self, before: DateTime<Utc>) -> Result<usize> {
        let mut purged = 0;
        loop {
            let mut conn = self.conn().await?;
            let deleted = storage::idempotency::purge(&mut conn, before, PURGE_BATCH).await?;
            purged += deleted;
            if deleted < PURGE_BATCH as usize {
                break;
            }
        }
        if purged > 0 {
            metrics::counter!("finmatch_replay_records_purged_total").increment(purged as u64);
            tracing::info!(purged, %before, "replay records past retention deleted");
        }
        Ok(purged)
    }
}

/// Rows a sweeper transaction claims at once.
const SWEEP_BATCH: i64 = 100;

/// Expires the need's overdue referrals and re-routes the need, if no other transaction holds
/// it: the need is locked first (skipped when held), then its overdue referrals (checked again
/// under the lock, so a referral answered or expired meanwhile is left alone). `None` when the
/// need was held by another transaction or nothing of it is overdue any more.
async fn expire_referrals(
    conn: &mut Connection,
    app: &App,
    catalog: std::sync::Arc<crate::service::catalog::Catalog>,
    need_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<SweepReport>> {
    let Some(row) = storage::needs::try_lock(conn, need_id).await? else {
        return Ok(None);
    };
    let claimed = storage::referrals::claim_overdue(conn, need_id, now).await?;
    if claimed.is_empty() {
        return Ok(None);
    }
    let mut report = SweepReport::default();
    let ids: Vec<Uuid> = claimed.iter().map(|r| r.id).collect();
    let expired = storage::referrals::set_status(conn, &ids, ReferralStatus::Expired).await?;
    for referral in &expired {
        storage::referrals::insert_event(
            conn,
            &NewReferralEvent {
                referral_id: referral.id,
                lender_id: referral.lender_id,
                need_id: referral.need_id,
                kind: ReferralEventKind::Expired,
                status: ReferralStatus::Expired,
                detail: serde_json::json!({ "sla_deadline": referral.sla_deadline }),
            },
        )
        .await?;
    }
    report.expired_referrals = expired.len();
    let status = row.status;
    let mut created = Vec::new();
    let mut next = status;
    if matches!(status, NeedStatus::Submitted | NeedStatus::Routed) {
        let onwards = route_onwards(conn, app, catalog, &row, app.policy().top_k, now).await?;
        if onwards.to == NeedStatus::Unmatched {
            report.unmatched_needs += 1;
        }
        (created, next) = (onwards.created, onwards.to);
    }
    report.rerouted_referrals += created.len();
    audit::record(
        conn,
        None,
        SWEEPER,
        "need",
        need_id,
        serde_json::json!({
            "expired_referrals": ids,
            "new_referrals": created.iter().map(|r| r.id).collect::<Vec<_>>(),
            "from": status.as_str(),
            "to": next.as_str(),
        }),
    )
    .await?;
    Ok(Some(report))
}

/// Expires a batch of open needs whose `needed_by` is before `today`, cancelling their open
/// referrals; none while some session holds expiry (`storage::locks::hold_expiry`: a writer of
/// back-dated needs, which expires them itself when it is done). Returns how many needs were
/// expired. The needs are claimed with `SKIP LOCKED` (never waiting for a need), then their
/// referrals are locked by the updates: the lock order of `service`, need before its referrals.
async fn expire_needs(conn: &mut Connection, today: NaiveDate) -> Result<usize> {
    if storage::locks::expiry_held(conn).await? {
        return Ok(0);
    }
    // Only needs nobody approved: an approval is not voided by the calendar.
    let expiring = storage::statuses(NeedStatus::ALL, |s| s.can_transition(NeedStatus::Expired));
    let overdue = storage::needs::claim_overdue(conn, &expiring, today, SWEEP_BATCH).await?;
    for need in &overdue {
        let cancelled = cancel_open_referrals(
            conn,
            need.id,
            serde_json::json!({ "reason": "need expired" }),
        )
        .await?;
        storage::needs::set_status(conn, need.id, NeedStatus::Expired, 0).await?;
        audit::record(
            conn,
            None,
            SWEEPER,
            "need",
            need.id,
            serde_json::json!({
                "from": need.status,
                "to": NeedStatus::Expired.as_str(),
                "needed_by": need.needed_by,
                "cancelled_referrals": cancelled,
            }),
        )
        .await?;
    }
    Ok(overdue.len())
}
