//! The banks' side of the demo script: from a need's state and its [`Fate`], the next step
//! (acknowledge, ask for information, decline, approve, disburse, reserve or confirm quota,
//! withdraw), and the use case that performs it.

use std::cmp::Reverse;
use std::collections::HashMap;

use anyhow::{anyhow, bail};
use chrono::NaiveDate;
use uuid::Uuid;

use super::data::{self, DemoEnterprise, Fate};
use super::{Bank, Loader, idempotency, loan_reference, minor};
use crate::domain::{
    AllocationStatus, AmountMinor, Bps, LoanReference, NeedStatus, Note, ReferralStatus, TermMonths,
};
use crate::service::financing::{NeedWithReferrals, Referral};
use crate::service::paging::PageRequest;
use crate::service::partner::{Decision, DisbursementInput};
use crate::service::special_loans::{AllocationQuery, AllocationRequest};

/// One thing the bureau or a bank does next with a need.
#[derive(Debug)]
pub(super) enum Step {
    Acknowledge(Uuid),
    RequestInformation(Uuid),
    Decline(Uuid, usize),
    Approve {
        referral: Uuid,
        amount_minor: i64,
        rate_bps: i32,
        term_months: i32,
    },
    Disburse {
        referral: Uuid,
        loan_reference: String,
        disbursed_on: NaiveDate,
    },
    Reserve {
        referral: Uuid,
        rate_bps: i32,
        loan_date: NaiveDate,
    },
    Confirm {
        allocation: Uuid,
        loan_reference: String,
        disbursed_on: NaiveDate,
    },
    Withdraw,
}

/// Steps one need may take before the loader gives up on it (a need sees at most six banks).
pub(super) const MAX_STEPS: usize = 40;

impl Loader<'_> {
    /// The next step of the need's script and the bank that takes it (None: the bureau).
    pub(super) async fn next_step(
        &self,
        e: &DemoEnterprise,
        enterprise_id: Uuid,
        state: &NeedWithReferrals,
    ) -> anyhow::Result<Option<(Step, Option<usize>)>> {
        let need = &state.need;
        // Closed needs have nothing left to do, except confirming a funded special loan.
        if !need.status.is_open() && need.status != NeedStatus::Funded {
            return Ok(None);
        }
        // Referrals of products that are not the demo's get no answer from the script.
        let mut open: Vec<&Referral> = state
            .referrals
            .iter()
            .filter(|r| r.status.is_open() && self.products.contains_key(&r.product_id))
            .collect();
        // Best first; referrals routed together share a creation time, so equals go in BANKS
        // order (not by their random ids), and every load plays the same round.
        let bank_of = |r: &Referral| self.products.get(&r.product_id).map(|&(bank, _)| bank);
        open.sort_by_key(|r| (Reverse(r.score), r.created_at, bank_of(r)));
        let declined = state
            .referrals
            .iter()
            .filter(|r| r.status == ReferralStatus::Declined)
            .count();
        let step = match e.fate {
            Fate::Withdrawn => need.status.is_open().then_some((Step::Withdraw, None)),
            Fate::NoAnswer { acknowledged } => open
                .first()
                .filter(|r| acknowledged && r.status == ReferralStatus::Pending)
                .map(|r| (Step::Acknowledge(r.id), bank_of(r))),
            Fate::InformationRequested => open.first().and_then(|r| {
                let step = match r.status {
                    ReferralStatus::Pending => Step::Acknowledge(r.id),
                    ReferralStatus::Acknowledged => Step::RequestInformation(r.id),
                    _ => return None,
                };
                Some((step, bank_of(r)))
            }),
            Fate::Declined => open.first().map(|r| {
                let step = match r.status {
                    // Half the banks look at the need before turning it down.
                    ReferralStatus::Pending if declined % 2 == 0 => Step::Acknowledge(r.id),
                    _ => Step::Decline(r.id, e.index + declined),
                };
                (step, bank_of(r))
            }),
            Fate::ApprovedOnly => {
                if state
                    .referrals
                    .iter()
                    .any(|r| r.status == ReferralStatus::Approved)
                {
                    None
                } else {
                    open.first()
                        .map(|r| (self.approve_or_acknowledge(e, r, None), bank_of(r)))
                }
            }
            Fate::Funded {
                declines,
                disbursed_on,
            } => {
                if need.status == NeedStatus::Funded {
                    None
                } else if let Some(r) = open.iter().find(|r| r.status == ReferralStatus::Approved) {
                    let bank = bank_of(r);
                    let loan_reference = loan_reference(bank.map(|b| self.banks[b].spec), e);
                    Some((
                        Step::Disburse {
                            referral: r.id,
                            loan_reference,
                            disbursed_on,
                        },
                        bank,
                    ))
                } else if declined < declines {
                    open.first().map(|r| {
                        let step = match r.status {
                            ReferralStatus::Pending => Step::Acknowledge(r.id),
                            _ => Step::Decline(r.id, e.index + declined),
                        };
                        (step, bank_of(r))
                    })
                } else {
                    open.first()
                        .map(|r| (self.approve_or_acknowledge(e, r, None), bank_of(r)))
                }
            }
            Fate::SpecialLoan {
                rate_bps,
                loan_date,
            } => {
                self.special_step(e, enterprise_id, state, &open, rate_bps, loan_date)
                    .await?
            }
        };
        Ok(step)
    }

    /// Acknowledges a PENDING referral or approves an acknowledged one for the whole need.
    pub(super) fn approve_or_acknowledge(
        &self,
        e: &DemoEnterprise,
        r: &Referral,
        rate_bps: Option<i32>,
    ) -> Step {
        if r.status == ReferralStatus::Pending {
            return Step::Acknowledge(r.id);
        }
        let product = self.products.get(&r.product_id).map(|&(_, p)| p);
        let rate_bps = rate_bps.unwrap_or_else(|| match product {
            // A little above the product's floor, never above the enterprise's ceiling.
            Some(p) => (p.min_rate_bps + 10 * (e.index % 4) as i32)
                .min(p.max_rate_bps)
                .min(e.need.max_rate_bps.unwrap_or(i32::MAX)),
            None => e.need.max_rate_bps.unwrap_or(500),
        });
        Step::Approve {
            referral: r.id,
            amount_minor: minor(e.need.amount_yuan),
            rate_bps,
            term_months: e.need.term_months,
        }
    }

    /// The special-loan script: a designated bank's special re-lending referral is approved,
    /// quota reserved, the loan disbursed and the allocation confirmed.
    pub(super) async fn special_step(
        &self,
        e: &DemoEnterprise,
        enterprise_id: Uuid,
        state: &NeedWithReferrals,
        open: &[&Referral],
        rate_bps: i32,
        loan_date: NaiveDate,
    ) -> anyhow::Result<Option<(Step, Option<usize>)>> {
        let allocation = self.allocation_of(enterprise_id).await?;
        let special = |r: &Referral| {
            self.products
                .get(&r.product_id)
                .is_some_and(|&(_, p)| p.special)
        };
        // Once a bank has approved, it is the bank (one enterprise, one bank).
        let chosen = match state.referrals.iter().find(|r| {
            special(r)
                && matches!(
                    r.status,
                    ReferralStatus::Approved | ReferralStatus::Disbursed
                )
        }) {
            Some(r) => r,
            None => {
                let remaining = self.quota_remaining().await?;
                *open
                    .iter()
                    .filter(|r| special(r))
                    // The most quota left; among equals the first in BANKS order.
                    .max_by_key(|r| {
                        let bank = self.products.get(&r.product_id).map_or(0, |&(b, _)| b);
                        (
                            remaining.get(&r.lender_id).copied().unwrap_or(0),
                            Reverse(bank),
                        )
                    })
                    .ok_or_else(|| {
                        anyhow!("routing offered no special re-lending product to this need")
                    })?
            }
        };
        let bank = self.products.get(&chosen.product_id).map(|&(b, _)| b);
        let loan_reference = loan_reference(bank.map(|b| self.banks[b].spec), e);
        let step = match (chosen.status, allocation) {
            (ReferralStatus::Pending | ReferralStatus::Acknowledged, _) => {
                self.approve_or_acknowledge(e, chosen, Some(rate_bps))
            }
            (ReferralStatus::Approved, None) => Step::Reserve {
                referral: chosen.id,
                rate_bps,
                loan_date,
            },
            (ReferralStatus::Approved, Some(_)) => Step::Disburse {
                referral: chosen.id,
                loan_reference,
                disbursed_on: loan_date,
            },
            (ReferralStatus::Disbursed, Some((id, AllocationStatus::Reserved))) => Step::Confirm {
                allocation: id,
                loan_reference,
                disbursed_on: loan_date,
            },
            (ReferralStatus::Disbursed, Some(_)) => return Ok(None),
            (status, allocation) => bail!(
                "special-loan referral {} is {} with allocation {allocation:?}",
                chosen.id,
                status.as_str()
            ),
        };
        Ok(Some((step, bank)))
    }

    pub(super) async fn perform(
        &self,
        e: &DemoEnterprise,
        enterprise_id: Uuid,
        need_id: Uuid,
        step: Step,
        bank: Option<usize>,
    ) -> anyhow::Result<()> {
        let bank = || {
            bank.map(|b| &self.banks[b])
                .ok_or_else(|| anyhow!("{step:?} on a product that is not the demo's"))
        };
        match &step {
            Step::Withdraw => {
                self.app
                    .withdraw_need(
                        &self.operator,
                        need_id,
                        "the enterprise raised the funds from its shareholders".to_owned(),
                    )
                    .await?;
            }
            Step::Acknowledge(id) => {
                self.app.acknowledge_referral(&bank()?.who, *id).await?;
            }
            Step::RequestInformation(id) => {
                let message =
                    Note::parse("please send the 2019 balance sheet and the February payroll")?;
                self.app
                    .request_information(&bank()?.who, *id, message)
                    .await?;
            }
            Step::Decline(id, n) => {
                let (reason, note) = data::decline_reason(*n);
                let decision = Decision::Decline {
                    reason,
                    note: Note::parse(note)?,
                };
                self.decide(bank()?, *id, decision).await?;
            }
            Step::Approve {
                referral,
                amount_minor,
                rate_bps,
                term_months,
            } => {
                let decision = Decision::Approve {
                    amount_minor: *amount_minor,
                    rate_bps: *rate_bps,
                    term_months: *term_months,
                };
                self.decide(bank()?, *referral, decision).await?;
            }
            Step::Disburse {
                referral,
                loan_reference,
                disbursed_on,
            } => {
                let bank = bank()?;
                let current = self.app.get_referral(&bank.who, *referral).await?.referral;
                let input = DisbursementInput {
                    referral_id: *referral,
                    loan_reference: LoanReference::parse(loan_reference)?,
                    amount_minor: current.approved_amount_minor.unwrap_or(0),
                    rate_bps: current.approved_rate_bps.unwrap_or(0),
                    term_months: current.approved_term_months.unwrap_or(0),
                    disbursed_on: *disbursed_on,
                };
                self.app.record_disbursement(&bank.who, input).await?;
            }
            Step::Reserve {
                referral,
                rate_bps,
                loan_date,
            } => {
                let bank = bank()?;
                let request = AllocationRequest {
                    program_id: self.program_id,
                    lender_id: bank.lender_id,
                    enterprise_id,
                    referral_id: Some(*referral),
                    amount: AmountMinor::new(minor(e.need.amount_yuan))?,
                    rate: Bps::new(*rate_bps)?,
                    term: TermMonths::new(e.need.term_months)?,
                    loan_date: *loan_date,
                };
                let key = idempotency(format!("demo-allocation-{}", e.credit_code), &request);
                self.app
                    .allocate_special_loan(&bank.who, key, request)
                    .await?;
            }
            Step::Confirm {
                allocation,
                loan_reference,
                disbursed_on,
            } => {
                self.app
                    .confirm_allocation(
                        &bank()?.who,
                        *allocation,
                        LoanReference::parse(loan_reference)?,
                        *disbursed_on,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    pub(super) async fn decide(
        &self,
        bank: &Bank,
        referral: Uuid,
        decision: Decision,
    ) -> anyhow::Result<()> {
        let key = idempotency(format!("demo-decision-{referral}"), &decision);
        self.app
            .decide_referral(&bank.who, referral, decision, key)
            .await?;
        Ok(())
    }

    /// The enterprise's live allocation in the program, if any.
    pub(super) async fn allocation_of(
        &self,
        enterprise_id: Uuid,
    ) -> anyhow::Result<Option<(Uuid, AllocationStatus)>> {
        let query = AllocationQuery {
            program_id: Some(self.program_id),
            enterprise_id: Some(enterprise_id),
            statuses: vec![AllocationStatus::Reserved, AllocationStatus::Confirmed],
            ..AllocationQuery::default()
        };
        let page = self
            .app
            .list_allocations(&self.operator, query, PageRequest::first(1))
            .await?;
        Ok(page.items.first().map(|a| (a.id, a.status)))
    }

    /// Each designated bank's unused program quota.
    pub(super) async fn quota_remaining(&self) -> anyhow::Result<HashMap<Uuid, i64>> {
        let program = self
            .app
            .get_program(&self.operator, self.program_id)
            .await?;
        Ok(program
            .balance
            .lenders
            .iter()
            .map(|l| (l.lender_id, l.remaining_minor))
            .collect())
    }
}
