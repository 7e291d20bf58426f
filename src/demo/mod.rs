//! `finmatch seed-demo`: loads the demo data set (see [`data`]) through the same use cases the
//! API runs, as the bureau and the banks would have driven them in spring 2020.
//!
//! The operator registers the banks, their products, the enterprises and their list
//! memberships, opens the special re-lending program and submits every need; each bank then
//! answers the referrals it receives (acknowledges, declines with reasons, approves, disburses,
//! reserves and confirms special-loan quota) as the need's [`Fate`] says. Needs still open
//! at the end are past their 2020 `needed_by`, and one sweep expires them, as the SLA sweeper
//! would have.
//!
//! Loading is idempotent: what exists (matched by bank name, product name, credit code,
//! program code, the enterprise's need) is reused, and each bank acts only on referrals of the
//! demo's products in the state its script expects, so a second load adds nothing. While it
//! runs it holds an advisory lock that keeps the SLA sweeper of any server on the same database
//! from expiring the 2020 needs under it. An interrupted load resumes where it stopped, unless
//! a sweeper expired the needs it left open in between: then a special loan cannot be finished,
//! and the load fails saying so rather than report a different story.

pub mod data;
mod steps;

use std::collections::HashMap;

use anyhow::{Context, anyhow, bail};
use chrono::Utc;
use sha2::Digest as _;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::domain::{
    AllocationStatus, AmountMinor, Bps, Channel, DesignationInput, EnterpriseInput, LenderInput,
    ListCode, Name, NeedInput, NewDesignation, NewEnterprise, NewLender, NewNeed, NewProduct,
    NonNegativeMinor, ProductInput, Role, TermMonths, Violations, format_cny,
};
use crate::service::credentials::NewCredential;
use crate::service::financing::NeedQuery;
use crate::service::paging::PageRequest;
use crate::service::special_loans::{NewProgram, Program};
use crate::service::{App, Error, Idempotency, Principal};
use data::{BANKS, BankSpec, DemoEnterprise, Fate, PROGRAM, ProductSpec};
use steps::MAX_STEPS;

/// What a load found and did.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Each bank of [`BANKS`] with its lender id, in order.
    pub lenders: Vec<(&'static BankSpec, Uuid)>,
    pub program_id: Uuid,
    /// Enterprises registered by this load (0 when the data set was already there).
    pub enterprises_created: usize,
    /// Needs submitted by this load.
    pub needs_submitted: usize,
    /// Actions the banks and the bureau took in this load's response round.
    pub actions: usize,
}

impl Loaded {
    /// One line for a person at a terminal.
    pub fn summary(&self) -> String {
        if self.enterprises_created == 0 && self.needs_submitted == 0 && self.actions == 0 {
            return "demo data set already loaded; nothing added".to_owned();
        }
        format!(
            "demo data set loaded: {} banks, {} enterprises and {} needs added, {} bank and bureau actions played",
            self.lenders.len(),
            self.enterprises_created,
            self.needs_submitted,
            self.actions
        )
    }
}

/// Loads the demo data set into the database behind `app` (migrated).
pub async fn load(app: &App) -> anyhow::Result<Loaded> {
    // A connection of its own, out of the pool: when it goes, whatever the reason, the session
    // and its lock go with it.
    let mut guard = deadpool::managed::Object::take(app.conn().await?);
    // The sweeper must not expire the 2020 needs while they are being replayed; the load
    // expires what is left open itself, below.
    crate::storage::locks::hold_expiry(&mut guard).await?;
    // Scores must not depend on how long the load takes (lender records are otherwise counted
    // again every 30 s), or two loads would play different rounds.
    let pin = app.pin_lender_stats();
    let outcome = Loader::run(app)
        .instrument(tracing::info_span!(crate::telemetry::DEMO_SPAN))
        .await;
    drop(pin);
    let unlocked = crate::storage::locks::release_expiry(&mut guard).await;
    drop(guard);
    // The load's own error says more than a failed unlock after it.
    let loaded = outcome?;
    unlocked?;
    // What is still open waited in vain: its 2020 needed_by has passed.
    app.sweep_once(Utc::now()).await?;
    Ok(loaded)
}

/// A bank as the loader acts for it.
struct Bank {
    spec: &'static BankSpec,
    lender_id: Uuid,
    who: Principal,
}

struct Loader<'a> {
    app: &'a App,
    operator: Principal,
    banks: Vec<Bank>,
    /// Product id → its bank (index into `banks`) and spec.
    products: HashMap<Uuid, (usize, &'static ProductSpec)>,
    program_id: Uuid,
    /// The loader's own credentials, revoked when it is done.
    credentials: Vec<Uuid>,
    enterprises_created: usize,
    needs_submitted: usize,
    actions: usize,
}

impl<'a> Loader<'a> {
    async fn run(app: &'a App) -> anyhow::Result<Loaded> {
        let mut credentials = Vec::new();
        let operator = loader_credential(app, Role::Operator, None, "demo loader").await?;
        credentials.push(operator.credential_id);
        let mut loader = Loader {
            app,
            operator,
            banks: Vec::new(),
            products: HashMap::new(),
            program_id: Uuid::nil(),
            credentials,
            enterprises_created: 0,
            needs_submitted: 0,
            actions: 0,
        };
        let outcome = loader.load_all().await;
        let mut revoked = Ok(());
        for id in std::mem::take(&mut loader.credentials) {
            if let Err(e) = app.revoke_credential_as_system(id).await {
                tracing::error!(credential_id = %id, error = %e, "could not revoke a demo loader credential");
                revoked = Err(e);
            }
        }
        // The load's own error says more than a failed revocation after it.
        outcome?;
        revoked?;
        tracing::info!("demo: the loader's own credentials are revoked");
        Ok(Loaded {
            lenders: loader.banks.iter().map(|b| (b.spec, b.lender_id)).collect(),
            program_id: loader.program_id,
            enterprises_created: loader.enterprises_created,
            needs_submitted: loader.needs_submitted,
            actions: loader.actions,
        })
    }

    async fn load_all(&mut self) -> anyhow::Result<()> {
        self.banks_and_products().await?;
        self.program().await?;
        let enterprises = data::enterprises();
        tracing::info!(
            banks = self.banks.len(),
            enterprises = enterprises.len(),
            "demo: banks, products and the program are in; playing the response round"
        );
        for enterprise in enterprises {
            self.enterprise(&enterprise).await.with_context(|| {
                format!("loading {} ({})", enterprise.name, enterprise.credit_code)
            })?;
        }
        Ok(())
    }

    async fn banks_and_products(&mut self) -> anyhow::Result<()> {
        let existing: HashMap<String, Uuid> = self
            .app
            .list_lenders(&self.operator, None, PageRequest::first(1000))
            .await?
            .items
            .into_iter()
            .map(|l| (l.name, l.id))
            .collect();
        let regions: Vec<String> = data::REGIONS
            .iter()
            .map(|(code, _)| (*code).to_owned())
            .collect();
        for spec in &BANKS {
            let lender_id = match existing.get(spec.name) {
                Some(&id) => id,
                None => {
                    let input = LenderInput {
                        name: spec.name,
                        kind: Some(spec.kind),
                        region_codes: &regions,
                    };
                    let lender = NewLender::parse(&input, "lender.").map_err(invalid)?;
                    self.app
                        .create_lender(&self.operator, lender, true)
                        .await?
                        .id
                }
            };
            let who = loader_credential(
                self.app,
                Role::Lender,
                Some(lender_id),
                &format!("demo loader: {}", spec.short),
            )
            .await?;
            self.credentials.push(who.credential_id);
            let offered: HashMap<String, Uuid> = self
                .app
                .list_products(
                    &self.operator,
                    Some(lender_id),
                    None,
                    PageRequest::first(1000),
                )
                .await?
                .items
                .into_iter()
                .map(|p| (p.name, p.id))
                .collect();
            for product in spec.products.iter() {
                let id = match offered.get(product.name) {
                    Some(&id) => id,
                    None => {
                        let new = new_product(lender_id, product)?;
                        self.app.create_product(&self.operator, new).await?.id
                    }
                };
                self.products.insert(id, (self.banks.len(), product));
            }
            self.banks.push(Bank {
                spec,
                lender_id,
                who,
            });
        }
        Ok(())
    }

    async fn program(&mut self) -> anyhow::Result<()> {
        let program = NewProgram {
            code: ListCode::parse(PROGRAM.code)?,
            name: Name::parse(PROGRAM.name)?,
            total_quota: AmountMinor::new(minor(PROGRAM.total_quota_yuan))?,
            rate_cap: Bps::new(PROGRAM.rate_cap_bps)?,
            subsidy_ratio: Bps::new(PROGRAM.subsidy_ratio_bps)?,
            max_effective_rate: Some(Bps::new(PROGRAM.max_effective_rate_bps)?),
            per_enterprise_cap: None,
            max_term: TermMonths::new(PROGRAM.max_term_months)?,
            required_designations: vec![
                ListCode::parse(data::NATIONAL_LIST)?,
                ListCode::parse(data::PROVINCIAL_LIST)?,
            ],
            loan_date_from: PROGRAM.loan_date_from,
            loan_date_to: None,
            one_bank_per_enterprise: true,
            reservation_hours: crate::domain::special_loan::DEFAULT_RESERVATION_HOURS,
        };
        let existing = match self.app.create_program(&self.operator, program).await {
            Ok(created) => created,
            Err(Error::AlreadyExists {
                existing_id: id, ..
            }) => {
                let existing = self.app.get_program(&self.operator, id.parse()?).await?;
                if !is_the_demo_program(&existing) {
                    bail!(
                        "a program {} with other rules exists already (total quota {}, rate cap {} bps); \
                         load the demo into a fresh database",
                        PROGRAM.code,
                        format_cny(existing.total_quota_minor),
                        existing.rate_cap_bps
                    );
                }
                existing
            }
            Err(other) => return Err(other.into()),
        };
        self.program_id = existing.id;
        for bank in &self.banks {
            let Some(quota) = bank.spec.special_quota_yuan else {
                continue;
            };
            let set = existing
                .balance
                .lenders
                .iter()
                .any(|l| l.lender_id == bank.lender_id && l.quota_minor == minor(quota));
            if !set {
                self.app
                    .set_lender_quota(
                        &self.operator,
                        self.program_id,
                        bank.lender_id,
                        NonNegativeMinor::new(minor(quota))?,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    async fn enterprise(&mut self, e: &DemoEnterprise) -> anyhow::Result<()> {
        let id = self.register(e).await?;
        if let Some(designation) = &e.designation {
            let granted_on = designation.granted_on.to_string();
            let input = DesignationInput {
                list_code: designation.list_code,
                granted_on: &granted_on,
                expires_on: "",
                reference: designation.reference,
            };
            let new = NewDesignation::parse(&input, "designation.").map_err(invalid)?;
            match self.app.grant_designation(&self.operator, id, new).await {
                Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                Err(other) => return Err(other.into()),
            }
        }
        let need_id = self.submit(e, id).await?;
        self.respond(e, id, need_id).await?;
        if matches!(e.fate, Fate::SpecialLoan { .. })
            && !matches!(
                self.allocation_of(id).await?,
                Some((_, AllocationStatus::Confirmed))
            )
        {
            bail!(
                "its special loan could not be finished: the need was closed before (a sweeper \
                 expired it between two loads?); load the demo into a fresh database"
            );
        }
        Ok(())
    }

    async fn register(&mut self, e: &DemoEnterprise) -> anyhow::Result<Uuid> {
        let input = EnterpriseInput {
            credit_code: &e.credit_code,
            name: &e.name,
            region_code: e.region_code,
            industry_code: e.industry_code,
            size: Some(e.size),
            above_designated_size: e.above_designated_size,
            employees: e.employees,
            annual_revenue_minor: minor(e.annual_revenue_yuan),
            contact_name: &e.contact_name,
            contact_phone: &e.contact_phone,
        };
        let new = NewEnterprise::parse(&input, "enterprise.").map_err(invalid)?;
        match self.app.create_enterprise(&self.operator, new).await {
            Ok(created) => {
                self.enterprises_created += 1;
                Ok(created.id)
            }
            Err(Error::AlreadyExists {
                existing_id: id, ..
            }) => Ok(id.parse()?),
            Err(other) => Err(other.into()),
        }
    }

    /// The enterprise's need: the one already submitted, or submitted now as of its 2020 date.
    async fn submit(&mut self, e: &DemoEnterprise, enterprise_id: Uuid) -> anyhow::Result<Uuid> {
        let query = NeedQuery {
            enterprise_id: Some(enterprise_id),
            ..NeedQuery::default()
        };
        let existing = self
            .app
            .list_needs(&self.operator, query, PageRequest::first(1))
            .await?;
        if let Some(need) = existing.items.first() {
            return Ok(need.id);
        }
        let id = enterprise_id.to_string();
        let needed_by = e.need.needed_by.to_string();
        let collateral: Vec<_> = e.need.collateral.iter().copied().map(Some).collect();
        let input = NeedInput {
            enterprise_id: &id,
            amount_minor: minor(e.need.amount_yuan),
            term_months: e.need.term_months,
            purpose: Some(e.need.purpose),
            collateral: &collateral,
            max_rate_bps: e.need.max_rate_bps,
            needed_by: &needed_by,
            consent_to_share: e.need.consent_to_share,
            channel: Some(Channel::Bureau),
            note: &e.need.note,
        };
        // Validated as of the day the bureau took it in.
        let need = NewNeed::parse(&input, "need.", e.need.submitted_on).map_err(invalid)?;
        let key = idempotency(format!("demo-need-{}", e.credit_code), &need);
        let submitted = self.app.submit_need(&self.operator, key, need).await?;
        self.needs_submitted += 1;
        match submitted {
            crate::service::financing::Submission::Created(stored) => Ok(stored.need.id),
            crate::service::financing::Submission::Replayed(_) => {
                bail!("the need was submitted concurrently; load again")
            }
        }
    }

    /// Plays the response round for one need until its script has nothing left to do.
    async fn respond(
        &mut self,
        e: &DemoEnterprise,
        enterprise_id: Uuid,
        need_id: Uuid,
    ) -> anyhow::Result<()> {
        for _ in 0..MAX_STEPS {
            let state = self.app.get_need(&self.operator, need_id).await?;
            let Some((step, bank)) = self.next_step(e, enterprise_id, &state).await? else {
                return Ok(());
            };
            self.perform(e, enterprise_id, need_id, step, bank).await?;
            self.actions += 1;
        }
        bail!("need {need_id} did not settle in {MAX_STEPS} steps")
    }
}

/// Whether a program found by the demo's code has the demo's rules.
fn is_the_demo_program(p: &Program) -> bool {
    p.total_quota_minor == minor(PROGRAM.total_quota_yuan)
        && p.rate_cap_bps == PROGRAM.rate_cap_bps
        && p.subsidy_ratio_bps == PROGRAM.subsidy_ratio_bps
        && p.max_effective_rate_bps == Some(PROGRAM.max_effective_rate_bps)
        && p.max_term_months == PROGRAM.max_term_months
        && p.loan_date_from == PROGRAM.loan_date_from
        && p.loan_date_to.is_none()
        && p.one_bank_per_enterprise
}

/// A credential for the loader's own calls, so the audit log names who did what.
async fn loader_credential(
    app: &App,
    role: Role,
    lender_id: Option<Uuid>,
    label: &str,
) -> anyhow::Result<Principal> {
    let issued = app
        .bootstrap_credential(NewCredential {
            role,
            lender_id,
            label: label.to_owned(),
            expires_at: None,
            certificate_subject: None,
        })
        .await?;
    Ok(Principal {
        credential_id: issued.credential.id,
        role,
        lender_id,
        expires_at: None,
        certificate_subject: None,
    })
}

fn new_product(lender_id: Uuid, p: &ProductSpec) -> anyhow::Result<NewProduct> {
    let lender = lender_id.to_string();
    let industries: Vec<String> = p.industries.iter().map(|s| (*s).to_owned()).collect();
    let regions = vec![data::CITY_PREFIX.to_owned()];
    let collateral: Vec<_> = p.collateral.iter().copied().map(Some).collect();
    let lists: Vec<String> = if p.special {
        vec![
            data::NATIONAL_LIST.to_owned(),
            data::PROVINCIAL_LIST.to_owned(),
        ]
    } else {
        Vec::new()
    };
    let input = ProductInput {
        lender_id: &lender,
        name: p.name,
        min_amount_minor: minor(p.min_yuan),
        max_amount_minor: minor(p.max_yuan),
        min_term_months: p.min_term,
        max_term_months: p.max_term,
        industry_prefixes: &industries,
        region_prefixes: &regions,
        collateral_accepted: &collateral,
        min_size: Some(p.min_size),
        min_rate_bps: p.min_rate_bps,
        max_rate_bps: p.max_rate_bps,
        required_designations: &lists,
        daily_capacity: p.daily_capacity,
        response_sla_hours: p.sla_hours,
        active: true,
    };
    NewProduct::parse(&input, "product.").map_err(invalid)
}

/// The bank's reference for the enterprise's loan, e.g. `ICBC-2020-017`.
fn loan_reference(bank: Option<&BankSpec>, e: &DemoEnterprise) -> String {
    format!("{}-2020-{:03}", bank.map_or("DEMO", |b| b.short), e.index)
}

/// A fixed key per demo action, fingerprinted by the request it stands for.
fn idempotency(key: String, request: &impl std::fmt::Debug) -> Idempotency {
    Idempotency {
        key,
        fingerprint: sha2::Sha256::digest(format!("{request:?}")).to_vec(),
    }
}

fn minor(yuan: i64) -> i64 {
    yuan * 100
}

/// The data set is constant: a violation is a bug in it.
fn invalid(violations: Violations) -> anyhow::Error {
    anyhow!("the demo data set is invalid: {violations}")
}
