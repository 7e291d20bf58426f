//! PreviewMatches: the ranked candidates for a need, from this replica's caches.

use chrono::Utc;
use uuid::Uuid;

use super::{MatchCandidate, PreviewPage, PreviewSubject};
use crate::matching::{evaluate, select_routes};
use crate::service::routing::{self, match_enterprise, match_need, score_factors};
use crate::service::{App, Error, Principal, Result};
use crate::storage;

impl App {
    /// One page of the ranked candidate list for a stored or unsaved need (eligible products in
    /// routing order, then ineligible ones by product id), from position `offset`; changes
    /// nothing. An unsaved need is scored from this replica's caches alone (catalog, usage,
    /// enterprise), without a database round trip while they are current.
    pub async fn preview_matches(
        &self,
        who: &Principal,
        subject: PreviewSubject,
        offset: usize,
        size: usize,
    ) -> Result<PreviewPage> {
        who.require("PreviewMatches")?;
        let now = Utc::now();
        let policy = self.policy();
        let (need, enterprise_id, tried, open) = match subject {
            PreviewSubject::Stored(id) => {
                let mut conn = self.conn().await?;
                let row = storage::needs::find(&mut conn, id)
                    .await?
                    .ok_or_else(|| Error::not_found("need", id))?;
                let tried = storage::referrals::tried_lenders(&mut conn, id).await?;
                let open = storage::referrals::count_open(&mut conn, id).await? as usize;
                (match_need(&row)?, row.enterprise_id, tried, open)
            }
            PreviewSubject::Unsaved(need) => (
                crate::matching::MatchNeed::from(&need),
                need.enterprise_id(),
                Vec::new(),
                0,
            ),
        };
        let enterprise = self.enterprise_for_preview(enterprise_id).await?;
        let enterprise = match_enterprise(&enterprise, self.calendar().day(now))?;
        let catalog = self.catalog_now().await?;
        let market = self.market_now(catalog, now).await?;
        let candidates = evaluate(
            &need,
            &enterprise,
            market.catalog.products(),
            &market.activity,
            &tried,
            policy,
        );
        let k = routing::wanted(policy, policy.top_k, open, tried.len());
        let selected: Vec<Uuid> = select_routes(&candidates, k)
            .iter()
            .map(|c| c.product_id())
            .collect();
        // Eligible products keep the routing order; ineligible ones follow by product id. The
        // engine already ranks eligible ones first, so only a page reaching past them sorts the
        // rest.
        let eligible = candidates.partition_point(|c| c.eligible());
        let mut order: Vec<&crate::matching::Candidate<'_>> = candidates.iter().collect();
        if offset.saturating_add(size) > eligible {
            order[eligible..].sort_unstable_by_key(|c| c.product_id());
        }
        let page = order
            .iter()
            .skip(offset)
            .take(size)
            .map(|c| {
                let info = market.catalog.info(c.product_id());
                MatchCandidate {
                    lender_id: c.lender_id(),
                    product_id: c.product_id(),
                    lender_name: info.map(|i| i.lender_name.clone()).unwrap_or_default(),
                    product_name: info.map(|i| i.name.clone()).unwrap_or_default(),
                    eligible: c.eligible(),
                    score: c.score(),
                    factors: score_factors(c),
                    reasons: c.reasons().map(|r| (r, c.reason_message(r))).collect(),
                    selected: selected.contains(&c.product_id()),
                }
            })
            .collect();
        Ok(PreviewPage {
            candidates: page,
            eligible,
            ineligible: order.len() - eligible,
            more: offset.saturating_add(size) < order.len(),
        })
    }
}
