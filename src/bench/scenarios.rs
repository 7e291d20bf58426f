//! The workloads: what one call of each scenario does, and the setup that prepares its requests
//! before the clock starts (so the measured loop only moves prepared messages to the wire).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::Rng as _;

use super::client::{self, Bearer, Channels, Registered, authed};
use super::load::{Op, Step, Worker, Workload};
use super::report::Setup;
use super::state::State;
use crate::proto as pb;

/// Submitted referrals per lender (index into the state's lenders), for the watch scenario's
/// expected deliveries.
pub struct ReferralCounts {
    index: HashMap<String, usize>,
    pub counts: Vec<AtomicU64>,
}

impl ReferralCounts {
    pub fn new(state: &State) -> Self {
        Self {
            index: state
                .lenders
                .iter()
                .enumerate()
                .map(|(i, l)| (l.id.clone(), i))
                .collect(),
            counts: state.lenders.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn add(&self, referrals: &[pb::Referral]) {
        for referral in referrals {
            if let Some(&i) = self.index.get(&referral.lender_id) {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// SubmitNeed: each prepared request is one new enterprise's need, sent once.
pub struct Submit {
    requests: Mutex<Vec<pb::SubmitNeedRequest>>,
    operator: Bearer,
    pub referrals: Option<Arc<ReferralCounts>>,
}

impl Workload for Submit {
    async fn call(&self, w: &mut Worker) -> Step {
        let next = self.requests.lock().expect("not poisoned").pop();
        let Some(request) = next else {
            return Step::Exhausted(
                "ran out of prepared enterprises (raise --expected-rate or set --max-calls)",
            );
        };
        let request = authed(request, &self.operator);
        let started = Instant::now();
        let result = w.financing.submit_need(request).await;
        match result {
            Ok(response) => {
                w.record(Op::SubmitNeed, started, Ok(()));
                if let Some(counts) = &self.referrals {
                    counts.add(&response.get_ref().referrals);
                }
            }
            Err(status) => w.record(Op::SubmitNeed, started, Err(status.code())),
        }
        Step::Continue
    }
}

/// GetNeed on random needs of the setup.
pub struct Get {
    need_ids: Vec<String>,
    operator: Bearer,
}

impl Workload for Get {
    async fn call(&self, w: &mut Worker) -> Step {
        let need_id = self.need_ids[w.rng.random_range(0..self.need_ids.len())].clone();
        let request = authed(pb::GetNeedRequest { need_id }, &self.operator);
        let started = Instant::now();
        let result = w.financing.get_need(request).await;
        w.record(
            Op::GetNeed,
            started,
            result.map(|_| ()).map_err(|s| s.code()),
        );
        Step::Continue
    }
}

/// PreviewMatches of an unsaved need of a random setup enterprise, at the default page.
pub struct Preview {
    requests: Vec<pb::PreviewMatchesRequest>,
    operator: Bearer,
}

impl Workload for Preview {
    async fn call(&self, w: &mut Worker) -> Step {
        let message = self.requests[w.rng.random_range(0..self.requests.len())].clone();
        let request = authed(message, &self.operator);
        let started = Instant::now();
        let result = w.financing.preview_matches(request).await;
        w.record(
            Op::PreviewMatches,
            started,
            result.map(|_| ()).map_err(|s| s.code()),
        );
        Step::Continue
    }
}

/// grpc.health.v1.Health/Check: a unary call that does no work.
pub struct Noop;

impl Workload for Noop {
    async fn call(&self, w: &mut Worker) -> Step {
        let request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        let started = Instant::now();
        let result = w.health.check(request).await;
        w.record(Op::Check, started, result.map(|_| ()).map_err(|s| s.code()));
        Step::Continue
    }
}

/// A referral of the setup and what its bank will answer.
struct DecideItem {
    lender: usize,
    referral_id: String,
    idempotency_key: String,
    /// None = decline.
    approve: Option<pb::ReferralApproval>,
}

/// A bank acknowledges one of its referrals, then approves it within the product's ranges or
/// declines it; each RPC is counted.
pub struct Decide {
    items: Mutex<Vec<DecideItem>>,
    lenders: Vec<Bearer>,
}

impl Workload for Decide {
    async fn call(&self, w: &mut Worker) -> Step {
        let next = self.items.lock().expect("not poisoned").pop();
        let Some(item) = next else {
            return Step::Exhausted(
                "ran out of prepared referrals (raise --expected-rate or set --max-calls)",
            );
        };
        let bearer = &self.lenders[item.lender];
        let request = authed(
            pb::AcknowledgeReferralRequest {
                referral_id: item.referral_id.clone(),
            },
            bearer,
        );
        let started = Instant::now();
        let acknowledged = w.partner.acknowledge_referral(request).await;
        if let Err(status) = acknowledged {
            w.record(Op::AcknowledgeReferral, started, Err(status.code()));
            return Step::Continue;
        }
        w.record(Op::AcknowledgeReferral, started, Ok(()));
        let (op, decision) = match item.approve {
            Some(approval) => (
                Op::Approve,
                pb::decide_referral_request::Decision::Approve(approval),
            ),
            None => (
                Op::Decline,
                pb::decide_referral_request::Decision::Decline(pb::ReferralDecline {
                    reason: pb::DeclineReason::OutsideAppetite as i32,
                    note: "bench".to_owned(),
                }),
            ),
        };
        let request = authed(
            pb::DecideReferralRequest {
                referral_id: item.referral_id,
                idempotency_key: item.idempotency_key,
                decision: Some(decision),
            },
            bearer,
        );
        let started = Instant::now();
        let result = w.partner.decide_referral(request).await;
        w.record(op, started, result.map(|_| ()).map_err(|s| s.code()));
        Step::Continue
    }
}

/// Weighted mix of the four.
pub struct Mixed {
    pub submit: Option<Submit>,
    pub get: Option<Get>,
    pub preview: Option<Preview>,
    pub decide: Option<Decide>,
    /// Cumulative weights of submit, get, preview, decide.
    pub cumulative: [u32; 4],
}

impl Workload for Mixed {
    async fn call(&self, w: &mut Worker) -> Step {
        let total = self.cumulative[3];
        let pick = w.rng.random_range(0..total);
        if pick < self.cumulative[0] {
            self.submit.as_ref().expect("weighted").call(w).await
        } else if pick < self.cumulative[1] {
            self.get.as_ref().expect("weighted").call(w).await
        } else if pick < self.cumulative[2] {
            self.preview.as_ref().expect("weighted").call(w).await
        } else {
            self.decide.as_ref().expect("weighted").call(w).await
        }
    }
}

/// What a setup needs: the connections, the operator, the state (and where it lives, to
/// reserve enterprise serials), a tag for idempotency keys, and what it did.
pub struct SetupContext<'a> {
    pub channels: &'a Channels,
    pub operator: Bearer,
    pub state: &'a mut State,
    pub state_path: &'a std::path::Path,
    pub run: String,
    pub today: chrono::NaiveDate,
    pub setup: &'a mut Setup,
}

impl SetupContext<'_> {
    async fn register(&mut self, n: u64) -> anyhow::Result<Vec<Registered>> {
        let first = self.state.reserve_enterprises(n, self.state_path)?;
        let registered =
            client::register_enterprises(self.channels, &self.operator, first, n).await?;
        self.setup.enterprises += registered.len() as u64;
        Ok(registered)
    }

    /// Submits `n` needs of new enterprises; returns what the server answered.
    async fn submitted(&mut self, n: u64) -> anyhow::Result<Vec<pb::SubmitNeedResponse>> {
        let enterprises = self.register(n).await?;
        let requests = enterprises
            .iter()
            .map(|e| client::submit_request(e, &format!("{}-setup", self.run), self.today))
            .collect();
        let (responses, failed) =
            client::submit_setup_needs(self.channels, &self.operator, requests).await;
        self.setup.needs += responses.len() as u64;
        self.setup.needs_failed += failed;
        self.setup.referrals += responses
            .iter()
            .map(|r| r.referrals.len() as u64)
            .sum::<u64>();
        Ok(responses)
    }

    pub async fn submit(&mut self, n: u64) -> anyhow::Result<Submit> {
        let enterprises = self.register(n).await?;
        let mut requests: Vec<pb::SubmitNeedRequest> = enterprises
            .iter()
            .map(|e| client::submit_request(e, &self.run, self.today))
            .collect();
        // Popped from the end: the first registered goes first.
        requests.reverse();
        Ok(Submit {
            requests: Mutex::new(requests),
            operator: self.operator.clone(),
            referrals: None,
        })
    }

    pub async fn get(&mut self, pool: u64) -> anyhow::Result<Get> {
        let need_ids: Vec<String> = self
            .submitted(pool)
            .await?
            .into_iter()
            .filter_map(|r| r.need.map(|n| n.id))
            .collect();
        anyhow::ensure!(!need_ids.is_empty(), "the setup could not submit any need");
        Ok(Get {
            need_ids,
            operator: self.operator.clone(),
        })
    }

    pub async fn preview(&mut self, pool: u64) -> anyhow::Result<Preview> {
        let requests = self
            .register(pool)
            .await?
            .iter()
            .map(|e| pb::PreviewMatchesRequest {
                subject: Some(pb::preview_matches_request::Subject::Need(
                    super::data::need(e.serial, &e.id, self.today),
                )),
                // The default page, as a portal's live preview asks for it.
                ..Default::default()
            })
            .collect();
        Ok(Preview {
            requests,
            operator: self.operator.clone(),
        })
    }

    /// Referrals for `decisions` acknowledge-and-decide calls: needs submitted now, about 2.5
    /// referrals each.
    pub async fn decide(&mut self, decisions: u64, decline_percent: u32) -> anyhow::Result<Decide> {
        let needs = (decisions * 2).div_ceil(5).max(10);
        let responses = self.submitted(needs).await?;
        let products: HashMap<&str, &super::state::ProductState> = self
            .state
            .products
            .iter()
            .map(|p| (p.id.as_str(), p))
            .collect();
        let mut rng = rand::rng();
        let mut items = Vec::new();
        for response in &responses {
            let Some(need) = &response.need else { continue };
            for referral in &response.referrals {
                let (Some(lender), Some(product)) = (
                    self.state.lender_index(&referral.lender_id),
                    products.get(referral.product_id.as_str()),
                ) else {
                    continue;
                };
                let approve =
                    (rng.random_range(0..100) >= decline_percent).then(|| pb::ReferralApproval {
                        amount_minor: need
                            .amount_minor
                            .clamp(product.min_amount_minor, product.max_amount_minor),
                        rate_bps: product.min_rate_bps,
                        term_months: need
                            .term_months
                            .clamp(product.min_term_months, product.max_term_months),
                    });
                items.push(DecideItem {
                    lender,
                    referral_id: referral.id.clone(),
                    idempotency_key: format!("bench-{}-decide-{}", self.run, referral.id),
                    approve,
                });
            }
        }
        anyhow::ensure!(!items.is_empty(), "the setup got no referral to decide");
        let lenders = self
            .state
            .lenders
            .iter()
            .map(|l| client::bearer(&l.token))
            .collect::<anyhow::Result<_>>()?;
        Ok(Decide {
            items: Mutex::new(items),
            lenders,
        })
    }
}
