//! ImportNeeds: batches of needs stored a wave at a time, each as SubmitNeed would.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SubsecRound as _, Utc};
use futures::StreamExt as _;
use uuid::Uuid;

use super::submit::{Submitted, lost_race, ranked, submit_in};

use super::{ImportItem, ImportOutcome, Need, NeedWithReferrals, Submission, WaveItem};
use crate::domain::Purpose;
use crate::matching::{MatchNeed, select_routes};
use crate::service::error::{self, TRIES};
use crate::service::market::Market;
use crate::service::routing::{self, match_enterprise};
use crate::service::{App, Error, Principal, Result, audit, enterprises};
use crate::storage::{self, Connection, Failure};

impl App {
    /// Stores a batch of ImportNeeds items, each as SubmitNeed would: new needs a wave at a time,
    /// one statement each (see [`App::store_wave`]), the others alone, in their own transactions,
    /// several at once, so a rejected item leaves the others in place. Items that share an
    /// enterprise or an idempotency key with an earlier item of the batch wait for it, so they
    /// replay or are refused as they would one after the other. Outcomes are in item order. Fails
    /// as a whole only when the database is unavailable or on an internal error; items stored
    /// before that stay stored (a retry with the same keys replays them).
    #[tracing::instrument(skip_all, fields(items = items.len()))]
    pub async fn import_needs(
        &self,
        who: &Principal,
        items: Vec<ImportItem>,
    ) -> Result<Vec<ImportOutcome>> {
        who.require("ImportNeeds")?;
        let items = &items;
        let mut outcomes: Vec<Option<ImportOutcome>> = items.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..items.len()).collect();
        while !pending.is_empty() {
            // A wave: the first item of each enterprise and key; the others wait for the next.
            let mut wave = Vec::new();
            let mut later = Vec::new();
            let mut enterprises: HashSet<Uuid> = HashSet::new();
            let mut keys: HashSet<&str> = HashSet::new();
            for i in pending {
                let item = &items[i];
                let key = item.idempotency.key.as_str();
                if keys.contains(key) || enterprises.contains(&item.need.enterprise_id()) {
                    later.push(i);
                } else {
                    keys.insert(key);
                    enterprises.insert(item.need.enterprise_id());
                    wave.push(i);
                }
            }
            let stored = self.import_wave(who, items, &wave).await?;
            let mut alone = Vec::new();
            for (i, stored) in wave.into_iter().zip(stored) {
                match stored {
                    Some(need) => {
                        outcomes[i] = Some(ImportOutcome::Accepted {
                            need_id: need.id,
                            status: need.status,
                        });
                    }
                    None => alone.push(i),
                }
            }
            let results: Vec<(usize, Result<ImportOutcome>)> = futures::stream::iter(
                alone
                    .into_iter()
                    .map(|i| async move { (i, self.import_one(who, &items[i]).await) }),
            )
            .buffer_unordered(IMPORT_CONCURRENCY)
            .collect()
            .await;
            for (i, result) in results {
                outcomes[i] = Some(result?);
            }
            pending = later;
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Stores an ImportNeeds wave (see [`App::store_wave`]): for each item, the need it stored.
    async fn import_wave(
        &self,
        who: &Principal,
        items: &[ImportItem],
        wave: &[usize],
    ) -> Result<Vec<Option<Need>>> {
        let wave: Vec<WaveItem<'_>> = wave
            .iter()
            .map(|&i| WaveItem {
                idempotency: &items[i].idempotency,
                need: &items[i].need,
            })
            .collect();
        let stored = self.store_wave(who, &wave).await?;
        Ok(stored.into_iter().map(|s| s.map(|s| s.need)).collect())
    }

    /// Stores a wave of new needs of `who` (distinct enterprises and keys) in one statement, each
    /// scored and routed as [`submit_in`] would, in wave order: for each item, the need as stored,
    /// or `None` when the item needs more than that. The caller then stores those alone, which
    /// gives each its own outcome. Left out before writing are the items whose enterprise is
    /// unknown, whose key names a stored need or whose purpose is open already; should the
    /// statement fail anyway (a race for the same key or purpose, a product that filled up),
    /// nothing is written and every item is left out. A wave of new needs thus costs two round
    /// trips and one commit however many it holds.
    pub(in crate::service) async fn store_wave(
        &self,
        who: &Principal,
        wave: &[WaveItem<'_>],
    ) -> Result<Vec<Option<NeedWithReferrals>>> {
        let mut conn = self.conn().await?;
        // A wave that lost a race for a key or purpose is read and tried again: the transaction
        // it waited for has ended by then, so the next read leaves out what it took.
        for _ in 0..error::TRIES {
            if let Some(stored) = self.try_wave(&mut conn, who, wave).await? {
                return Ok(stored);
            }
        }
        Ok(wave.iter().map(|_| None).collect())
    }

    /// One attempt of [`App::store_wave`]; `None` when the statement lost a race for a key or
    /// purpose, and wrote nothing.
    async fn try_wave(
        &self,
        conn: &mut Connection,
        who: &Principal,
        wave: &[WaveItem<'_>],
    ) -> Result<Option<Vec<Option<NeedWithReferrals>>>> {
        let mut stored: Vec<Option<NeedWithReferrals>> = wave.iter().map(|_| None).collect();
        let now = Utc::now().trunc_subsecs(6);
        let day = self.calendar().day(now);
        let ids: Vec<Uuid> = wave.iter().map(|item| item.need.enterprise_id()).collect();
        let keys: Vec<&str> = wave
            .iter()
            .map(|item| item.idempotency.key.as_str())
            .collect();
        let reads = storage::needs::find_for_wave(conn, &ids, who.credential_id, &keys).await?;
        let (enterprises, storable) = storable(wave, &keys, reads)?;
        if storable.is_empty() {
            return Ok(Some(stored));
        }
        let catalog = self.catalog(conn).await?;
        let market = self.market(conn, catalog, now).await?;
        let submitted = self.route_wave(wave, &storable, &enterprises, &market, now)?;
        let rows = submitted
            .iter()
            .zip(&storable)
            .map(|((need, response), &i)| need.row(who, wave[i].idempotency, response))
            .collect::<Result<Vec<_>>>()?;
        match storage::needs::insert_routed_batch(conn, &rows, day).await {
            Ok(()) => {
                drop(rows);
                let counted: Vec<(Uuid, Uuid)> = submitted
                    .iter()
                    .flat_map(|(need, _)| need.counted())
                    .collect();
                self.activity_cache().record(day, &counted);
                tracing::debug!(
                    needs = storable.len(),
                    left_out = wave.len() - storable.len(),
                    "wave stored in one statement"
                );
                for ((need, _), i) in submitted.into_iter().zip(storable) {
                    stored[i] = Some(need.stored);
                }
                Ok(Some(stored))
            }
            Err(e) if storage::classify(&e) == Failure::Unavailable => Err(Error::Unavailable),
            Err(e) if lost_race(&e) => {
                tracing::debug!(needs = wave.len(), error = %e, "wave lost a race; read again");
                Ok(None)
            }
            Err(error) => {
                tracing::debug!(%error, needs = wave.len(), "wave goes item by item");
                Ok(Some(stored))
            }
        }
    }

    /// Routes the `storable` items of a wave, each after the ones before it as if they had been
    /// submitted one by one: their referrals count in the usage and lender load the next item
    /// sees. Each with the replay body of its answer.
    fn route_wave(
        &self,
        wave: &[WaveItem<'_>],
        storable: &[usize],
        enterprises: &HashMap<Uuid, enterprises::Enterprise>,
        market: &Market,
        now: DateTime<Utc>,
    ) -> Result<Vec<(Submitted, Vec<u8>)>> {
        let policy = self.policy();
        let want = routing::wanted(policy, policy.top_k, 0, 0);
        let day = self.calendar().day(now);
        let mut activity = (*market.activity).clone();
        let mut submitted = Vec::with_capacity(storable.len());
        for &i in storable {
            let need = wave[i].need;
            let enterprise = match_enterprise(&enterprises[&need.enterprise_id()], day)?;
            let match_need = MatchNeed::from(need);
            let candidates = ranked(
                need,
                &match_need,
                &enterprise,
                &market.catalog,
                &activity,
                policy,
            );
            let routed = Submitted::new(
                need,
                &select_routes(&candidates, want),
                &market.catalog,
                now,
            );
            for (product_id, lender_id) in routed.counted() {
                *activity
                    .product_referrals_today
                    .entry(product_id)
                    .or_default() += 1;
                activity
                    .lender_stats
                    .entry(lender_id)
                    .or_default()
                    .referrals_today += 1;
            }
            let response = audit::response_body(&routed.stored)?;
            submitted.push((routed, response));
        }
        Ok(submitted)
    }

    async fn import_one(&self, who: &Principal, item: &ImportItem) -> Result<ImportOutcome> {
        let outcome = error::retry_conflicts(TRIES, || async {
            let mut conn = self.conn().await?;
            submit_in(&mut conn, self, who, &item.idempotency, &item.need).await
        })
        .await;
        match outcome {
            Ok(Submission::Created(stored)) => Ok(ImportOutcome::Accepted {
                need_id: stored.need.id,
                status: stored.need.status,
            }),
            Ok(Submission::Replayed(saved)) => Ok(ImportOutcome::Replayed {
                need_id: saved.need.id,
                status: saved.need.status,
            }),
            Err(e @ (Error::Unavailable | Error::Internal(_))) => Err(e),
            Err(e) => Ok(ImportOutcome::Rejected(e)),
        }
    }
}

/// Items of one ImportNeeds batch stored at once (each in its own transaction).
const IMPORT_CONCURRENCY: usize = 8;

/// The enterprises of a wave, and the items of it [`App::store_wave`] may write: those whose
/// enterprise exists, whose key names no need yet and whose purpose is not open already.
fn storable(
    wave: &[WaveItem<'_>],
    keys: &[&str],
    reads: storage::needs::WaveReads,
) -> Result<(HashMap<Uuid, enterprises::Enterprise>, Vec<usize>)> {
    let enterprises = enterprises::assemble(reads.enterprises, reads.designations)?;
    let keys_taken: HashSet<&str> = reads.keys_taken.iter().map(String::as_str).collect();
    let mut open: HashSet<(Uuid, Purpose)> = HashSet::new();
    for need in &reads.purposes {
        if need.status.is_open() {
            open.insert((need.enterprise_id, need.purpose));
        }
    }
    let storable = (0..wave.len())
        .filter(|&i| {
            let need = wave[i].need;
            enterprises.contains_key(&need.enterprise_id())
                && !keys_taken.contains(keys[i])
                && !open.contains(&(need.enterprise_id(), need.purpose()))
        })
        .collect();
    Ok((enterprises, storable))
}
