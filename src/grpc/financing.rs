//! FinancingService: financing needs, their matching and routing to lenders.

use prost::Message as _;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use super::auth::principal;
use super::convert::{self, Bridge};
use crate::domain::{
    DomainError, IndustryPrefix, NeedInput, NewNeed, Note, RegionPrefix, Violations,
};
use crate::proto as pb;
use crate::service::financing::{
    IMPORT_BATCH, ImportItem, ImportOutcome, MatchCandidate, Need, NeedQuery, PreviewSubject,
    Referral, Submission,
};
use crate::service::paging::{MAX_PAGE_SIZE, OffsetToken, PageRequest};
use crate::service::{App, Error, Idempotency};

/// PreviewMatches' default page: the lenders routing would pick and the runners-up a bureau
/// officer compares them with. Every candidate carries its score factors with their notes, so a
/// page costs about 1 KiB a candidate to build and send; the rest is a page_token away.
const PREVIEW_PAGE_SIZE: usize = 10;

/// Most open referrals RerouteNeed may ask for.
const MAX_TARGET_OPEN: i32 = 10;

pub struct FinancingHandler {
    app: App,
    /// Longest wait for the next item of an ImportNeeds stream.
    stream_idle: std::time::Duration,
}

impl FinancingHandler {
    pub fn new(app: App, stream_idle: std::time::Duration) -> Self {
        Self { app, stream_idle }
    }
}

#[tonic::async_trait]
impl pb::financing_service_server::FinancingService for FinancingHandler {
    async fn submit_need(
        &self,
        request: Request<pb::SubmitNeedRequest>,
    ) -> Result<Response<pb::SubmitNeedResponse>, Status> {
        let who = principal(&request)?;
        let body = request.get_ref();
        let today = self.app.calendar().today();
        let (idempotency, need) =
            parse_submission(&body.idempotency_key, body.need.as_ref(), today)?;
        let submitted = self.app.submit_need(&who, idempotency, need).await?;
        let (Submission::Created(stored) | Submission::Replayed(stored)) = submitted;
        Ok(Response::new(pb::SubmitNeedResponse {
            need: Some(need_pb(stored.need)),
            referrals: stored.referrals.into_iter().map(referral_pb).collect(),
        }))
    }

    async fn import_needs(
        &self,
        request: Request<tonic::Streaming<pb::ImportNeedsRequest>>,
    ) -> Result<Response<pb::ImportNeedsResponse>, Status> {
        let who = principal(&request)?;
        let mut stream = request.into_inner();
        let mut response = pb::ImportNeedsResponse::default();
        let mut batch = ImportBatch::default();
        let mut received = 0usize;
        loop {
            let item = match tokio::time::timeout(self.stream_idle, stream.message()).await {
                Ok(item) => item?,
                Err(_) => return Err(stream_idle_expired(self.stream_idle, received, &response)),
            };
            let Some(item) = item else { break };
            let index = received;
            received += 1;
            let today = self.app.calendar().today();
            match parse_submission(&item.idempotency_key, item.need.as_ref(), today) {
                Ok((idempotency, need)) => batch.items.push(ImportItem {
                    index,
                    idempotency,
                    need,
                }),
                Err(violations) => batch.invalid.push(pb::ImportNeedsRejection {
                    index: index as i64,
                    idempotency_key: item.idempotency_key,
                    error: Some(item_error(Error::InvalidArgument(violations))),
                }),
            }
            if batch.len() == IMPORT_BATCH {
                self.import_batch(&who, std::mem::take(&mut batch), &mut response)
                    .await?;
            }
        }
        self.import_batch(&who, batch, &mut response).await?;
        Ok(Response::new(response))
    }

    async fn preview_matches(
        &self,
        request: Request<pb::PreviewMatchesRequest>,
    ) -> Result<Response<pb::PreviewMatchesResponse>, Status> {
        let who = principal(&request)?;
        let Preview {
            subject,
            offset,
            size,
            digest,
        } = parse_preview(request.get_ref(), self.app.calendar().today())?;
        let page = self
            .app
            .preview_matches(&who, subject, offset, size)
            .await?;
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        Ok(Response::new(pb::PreviewMatchesResponse {
            next_page_token: if page.more {
                OffsetToken::encode(offset + size, &digest)
            } else {
                String::new()
            },
            eligible_count: count(page.eligible),
            ineligible_count: count(page.ineligible),
            candidates: page.candidates.into_iter().map(candidate_pb).collect(),
        }))
    }

    async fn get_need(
        &self,
        request: Request<pb::GetNeedRequest>,
    ) -> Result<Response<pb::GetNeedResponse>, Status> {
        let who = principal(&request)?;
        let id = Uuid::try_from(request.get_ref())?;
        let stored = self.app.get_need(&who, id).await?;
        Ok(Response::new(pb::GetNeedResponse {
            need: Some(need_pb(stored.need)),
            referrals: stored.referrals.into_iter().map(referral_pb).collect(),
        }))
    }

    async fn list_needs(
        &self,
        request: Request<pb::ListNeedsRequest>,
    ) -> Result<Response<pb::ListNeedsResponse>, Status> {
        let who = principal(&request)?;
        let ListNeeds { query, page } = request.get_ref().try_into()?;
        let page = self.app.list_needs(&who, query, page).await?;
        Ok(Response::new(pb::ListNeedsResponse {
            needs: page.items.into_iter().map(need_pb).collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn withdraw_need(
        &self,
        request: Request<pb::WithdrawNeedRequest>,
    ) -> Result<Response<pb::WithdrawNeedResponse>, Status> {
        let who = principal(&request)?;
        let WithdrawNeed { id, reason } = request.get_ref().try_into()?;
        let stored = self
            .app
            .withdraw_need(&who, id, reason.as_str().to_owned())
            .await?;
        Ok(Response::new(pb::WithdrawNeedResponse {
            need: Some(need_pb(stored.need)),
            referrals: stored.referrals.into_iter().map(referral_pb).collect(),
        }))
    }

    async fn reroute_need(
        &self,
        request: Request<pb::RerouteNeedRequest>,
    ) -> Result<Response<pb::RerouteNeedResponse>, Status> {
        let who = principal(&request)?;
        let RerouteNeed { id, target } = request.get_ref().try_into()?;
        let rerouted = self.app.reroute_need(&who, id, target).await?;
        Ok(Response::new(pb::RerouteNeedResponse {
            need: Some(need_pb(rerouted.need)),
            referrals: rerouted.referrals.into_iter().map(referral_pb).collect(),
        }))
    }
}

/// The next [`IMPORT_BATCH`] items of an ImportNeeds stream, valid or not, in stream order.
#[derive(Default)]
struct ImportBatch {
    items: Vec<ImportItem>,
    /// Items that failed validation; never sent to the use case.
    invalid: Vec<pb::ImportNeedsRejection>,
}

impl ImportBatch {
    fn len(&self) -> usize {
        self.items.len() + self.invalid.len()
    }
}

impl FinancingHandler {
    /// Stores one batch of import items and records each outcome in `response`, rejections in
    /// stream order so the listed ones are the first.
    async fn import_batch(
        &self,
        who: &crate::service::Principal,
        batch: ImportBatch,
        response: &mut pb::ImportNeedsResponse,
    ) -> Result<(), Status> {
        let ImportBatch { items, invalid } = batch;
        let keys: Vec<(usize, String)> = items
            .iter()
            .map(|item| (item.index, item.idempotency.key.clone()))
            .collect();
        let outcomes = if items.is_empty() {
            Vec::new()
        } else {
            self.app.import_needs(who, items).await?
        };
        let mut refused = Vec::new();
        for ((index, key), outcome) in keys.into_iter().zip(outcomes) {
            let stored = match outcome {
                ImportOutcome::Accepted { need_id, status } => {
                    response.accepted += 1;
                    pb::ImportNeedsStored {
                        index: index as i64,
                        need_id: need_id.to_string(),
                        status: pb::NeedStatus::from_domain(status),
                        replayed: false,
                    }
                }
                ImportOutcome::Replayed { need_id, status } => {
                    response.replayed += 1;
                    pb::ImportNeedsStored {
                        index: index as i64,
                        need_id: need_id.to_string(),
                        status: pb::NeedStatus::from_domain(status),
                        replayed: true,
                    }
                }
                ImportOutcome::Rejected(error) => {
                    refused.push(pb::ImportNeedsRejection {
                        index: index as i64,
                        idempotency_key: key,
                        error: Some(item_error(error)),
                    });
                    continue;
                }
            };
            match pb::NeedStatus::try_from(stored.status) {
                Ok(pb::NeedStatus::Routed) => response.routed += 1,
                Ok(pb::NeedStatus::Unmatched) => response.unmatched += 1,
                // SUBMITTED: a need is stored in no other status.
                _ => response.unrouted += 1,
            }
            if response.stored.len() < pb::LISTED_REJECTIONS_MAX {
                response.stored.push(stored);
            }
        }
        let mut rejections: Vec<_> = invalid.into_iter().chain(refused).collect();
        rejections.sort_by_key(|r| r.index);
        for rejection in rejections {
            response.rejected_total += 1;
            if response.rejected.len() < pb::LISTED_REJECTIONS_MAX {
                response.rejected.push(rejection);
            }
        }
        Ok(())
    }
}

/// Why an ImportNeeds stream that went quiet was ended, with what it had done by then.
fn stream_idle_expired(
    idle: std::time::Duration,
    received: usize,
    done: &pb::ImportNeedsResponse,
) -> Status {
    let settled = done.accepted + done.replayed + done.rejected_total;
    Status::deadline_exceeded(format!(
        "no ImportNeeds item arrived for {} s (the server's FINMATCH_STREAM_IDLE_SECS), so the \
         call was ended after {received} item(s): {} stored, {} already stored (replayed), {} \
         rejected, {} received but not stored; resend the items from index {settled} on with the \
         same idempotency keys",
        idle.as_secs(),
        done.accepted,
        done.replayed,
        done.rejected_total,
        received as i64 - settled,
    ))
}

/// A SubmitNeed request (or an ImportNeeds item): its idempotency and its need, converted as the
/// `TryFrom`s here convert, against the bureau's business day `today` (see [`parse_need`]).
/// ImportNeedsRequest and SubmitNeedRequest share field numbers, so an imported item and the same
/// need submitted alone have one fingerprint.
fn parse_submission(
    key: &str,
    need: Option<&pb::Need>,
    today: chrono::NaiveDate,
) -> Result<(Idempotency, NewNeed), Violations> {
    let mut v = Violations::default();
    let unkeyed = pb::SubmitNeedRequest {
        idempotency_key: String::new(),
        need: need.cloned(),
    };
    let idempotency = convert::idempotency(key, &unkeyed, &mut v);
    let need = v.nested(parse_need(need, today));
    v.values((idempotency, need))
}

/// A PreviewMatches request: the need to match, the page, and the digest its page tokens carry.
struct Preview {
    subject: PreviewSubject,
    offset: usize,
    size: usize,
    digest: Vec<u8>,
}

/// A PreviewMatches request, converted against the bureau's business day (an unsaved need is
/// checked as SubmitNeed would check it).
fn parse_preview(
    body: &pb::PreviewMatchesRequest,
    today: chrono::NaiveDate,
) -> Result<Preview, Violations> {
    use pb::preview_matches_request::Subject;
    let mut v = Violations::default();
    let subject = match &body.subject {
        None => {
            v.add(
                "need_id",
                "set need_id (a stored need) or need (an unsaved one)",
            );
            None
        }
        Some(Subject::NeedId(id)) => convert::id("need_id", id, &mut v).map(PreviewSubject::Stored),
        Some(Subject::Need(need)) => v
            .nested(parse_need(Some(need), today))
            .map(PreviewSubject::Unsaved),
    };
    // A token belongs to the subject it was made for.
    let digest = {
        use sha2::Digest as _;
        let subject = pb::PreviewMatchesRequest {
            page_size: 0,
            page_token: String::new(),
            ..body.clone()
        };
        sha2::Sha256::digest(subject.encode_to_vec()).to_vec()
    };
    let size = match body.page_size {
        0 => PREVIEW_PAGE_SIZE,
        n if n < 0 => {
            v.add("page_size", "must not be negative");
            0
        }
        n => (n as i64).min(MAX_PAGE_SIZE) as usize,
    };
    let offset = if body.page_token.is_empty() {
        0
    } else {
        OffsetToken::decode(&body.page_token, &digest).unwrap_or_else(|| {
            v.add(
                "page_token",
                "not a token returned by PreviewMatches for this need; omit it to start \
                 from the first page",
            );
            0
        })
    };
    Ok(Preview {
        subject: v.values(subject)?,
        offset,
        size,
        digest,
    })
}

/// A ListNeeds request: its filters and its page.
struct ListNeeds {
    query: NeedQuery,
    page: PageRequest,
}

impl TryFrom<&pb::ListNeedsRequest> for ListNeeds {
    type Error = Violations;

    fn try_from(body: &pb::ListNeedsRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let page = PageRequest::parse(body.page_size, &body.page_token, &mut v);
        let mut statuses = Vec::with_capacity(body.statuses.len());
        for (i, status) in convert::enums::<pb::NeedStatus>(&body.statuses)
            .into_iter()
            .enumerate()
        {
            match status {
                Some(status) => statuses.push(status),
                None => v.add(
                    format!("statuses[{i}]"),
                    DomainError::Missing.to_string() + "; name a need status",
                ),
            }
        }
        let enterprise_id = convert::optional_id("enterprise_id", &body.enterprise_id, &mut v);
        let region_prefix = convert::optional(
            "region_prefix",
            &body.region_prefix,
            RegionPrefix::parse,
            &mut v,
        );
        let industry_prefix = convert::optional(
            "industry_prefix",
            &body.industry_prefix,
            IndustryPrefix::parse,
            &mut v,
        );
        let from = convert::instant("create_time_from", body.create_time_from.as_ref(), &mut v);
        let to = convert::instant("create_time_to", body.create_time_to.as_ref(), &mut v);
        if let (Some(from), Some(to)) = (from, to)
            && to <= from
        {
            v.add(
                "create_time_to",
                format!("must be after create_time_from ({from}), got {to}"),
            );
        }
        let (page, enterprise_id, region_prefix, industry_prefix) =
            v.values((page, enterprise_id, region_prefix, industry_prefix))?;
        Ok(Self {
            query: NeedQuery {
                statuses,
                enterprise_id,
                region_prefix,
                industry_prefix,
                created_from: from,
                created_to: to,
            },
            page,
        })
    }
}

/// A WithdrawNeed request: the need and why it is withdrawn.
struct WithdrawNeed {
    id: Uuid,
    reason: Note,
}

impl TryFrom<&pb::WithdrawNeedRequest> for WithdrawNeed {
    type Error = Violations;

    fn try_from(body: &pb::WithdrawNeedRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let id = convert::id("need_id", &body.need_id, &mut v);
        let reason = v.field("reason", Note::parse(&body.reason));
        let (id, reason) = v.values((id, reason))?;
        Ok(Self { id, reason })
    }
}

/// A RerouteNeed request: the need, and how many open referrals it should have (unset: the
/// server's routing width).
struct RerouteNeed {
    id: Uuid,
    target: Option<usize>,
}

impl TryFrom<&pb::RerouteNeedRequest> for RerouteNeed {
    type Error = Violations;

    fn try_from(body: &pb::RerouteNeedRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let id = convert::id("need_id", &body.need_id, &mut v);
        let target = match body.target_open_referrals {
            None => Some(None),
            Some(n) if (1..=MAX_TARGET_OPEN).contains(&n) => Some(Some(n as usize)),
            Some(n) => {
                v.add(
                    "target_open_referrals",
                    format!("must be between 1 and {MAX_TARGET_OPEN}, got {n}"),
                );
                None
            }
        };
        let (id, target) = v.values((id, target))?;
        Ok(Self { id, target })
    }
}

/// The need of a request, every bad field reported as `need.<field>`. A missing message reads as
/// an empty one, so each required field is reported.
/// The need of a request; `needed_by` must not be before `today`, the bureau's business day.
fn parse_need(given: Option<&pb::Need>, today: chrono::NaiveDate) -> Result<NewNeed, Violations> {
    let empty = pb::Need::default();
    let given = given.unwrap_or(&empty);
    let collateral = convert::enums::<pb::Collateral>(&given.collateral);
    let input = NeedInput {
        enterprise_id: &given.enterprise_id,
        amount_minor: given.amount_minor,
        term_months: given.term_months,
        purpose: pb::Purpose::to_domain(given.purpose),
        collateral: &collateral,
        max_rate_bps: given.max_rate_bps,
        needed_by: &given.needed_by,
        consent_to_share: given.consent_to_share,
        channel: pb::Channel::to_domain(given.channel),
        note: &given.note,
    };
    NewNeed::parse(&input, "need.", today)
}

/// How an ImportNeeds item failed, as SubmitNeed would have said it.
fn item_error(error: Error) -> pb::ItemError {
    let message = error.to_string();
    match error {
        Error::InvalidArgument(violations) => pb::ItemError {
            code: Code::InvalidArgument as i32,
            reason: String::new(),
            message,
            field_violations: violations
                .violations()
                .iter()
                .map(|f| pb::FieldViolation {
                    field: f.field.clone(),
                    description: f.description.clone(),
                })
                .collect(),
        },
        Error::NotFound { .. } => pb::ItemError {
            code: Code::NotFound as i32,
            message,
            ..Default::default()
        },
        Error::AlreadyExists { reason, .. } => pb::ItemError {
            code: Code::AlreadyExists as i32,
            reason: reason.to_owned(),
            message,
            ..Default::default()
        },
        Error::FailedPrecondition { reason, .. } => pb::ItemError {
            code: Code::FailedPrecondition as i32,
            reason: reason.to_owned(),
            message,
            ..Default::default()
        },
        other => {
            let status = Status::from(other);
            pb::ItemError {
                code: status.code() as i32,
                message: status.message().to_owned(),
                ..Default::default()
            }
        }
    }
}

fn candidate_pb(c: MatchCandidate) -> pb::MatchCandidate {
    pb::MatchCandidate {
        lender_id: c.lender_id.to_string(),
        product_id: c.product_id.to_string(),
        eligible: c.eligible,
        score: c.score,
        factors: c.factors.into_iter().map(factor_pb).collect(),
        ineligible_reasons: c
            .reasons
            .into_iter()
            .map(|(reason, detail)| pb::IneligibleReason {
                code: pb::Ineligibility::from_domain(reason),
                detail,
            })
            .collect(),
        selected: c.selected,
        lender_name: c.lender_name,
        product_name: c.product_name,
    }
}

fn factor_pb(f: crate::service::routing::ScoreFactor) -> pb::ScoreFactor {
    pb::ScoreFactor {
        name: f.name,
        value_bps: f.value_bps,
        weight_bps: f.weight_bps,
        points: f.points,
        note: f.note,
    }
}

pub fn need_pb(need: Need) -> pb::Need {
    pb::Need {
        id: need.id.to_string(),
        enterprise_id: need.enterprise_id.to_string(),
        amount_minor: need.amount_minor,
        term_months: need.term_months,
        purpose: pb::Purpose::from_domain(need.purpose),
        collateral: need
            .collateral
            .into_iter()
            .map(pb::Collateral::from_domain)
            .collect(),
        max_rate_bps: need.max_rate_bps,
        needed_by: convert::date(need.needed_by),
        consent_to_share: need.consent_to_share,
        channel: pb::Channel::from_domain(need.channel),
        note: need.note,
        status: pb::NeedStatus::from_domain(need.status),
        funded_minor: need.funded_minor,
        create_time: convert::timestamp(need.created_at),
        update_time: convert::timestamp(need.updated_at),
    }
}

/// A referral as the bureau sees it (without the lender view's need and enterprise).
pub fn referral_pb(referral: Referral) -> pb::Referral {
    pb::Referral {
        id: referral.id.to_string(),
        need_id: referral.need_id.to_string(),
        lender_id: referral.lender_id.to_string(),
        product_id: referral.product_id.to_string(),
        status: pb::ReferralStatus::from_domain(referral.status),
        score: referral.score,
        factors: referral.factors.into_iter().map(factor_pb).collect(),
        sla_deadline: convert::timestamp(referral.sla_deadline),
        decline_reason: referral
            .decline_reason
            .map_or(0, pb::DeclineReason::from_domain),
        decline_note: referral.decline_note.unwrap_or_default(),
        info_request_message: referral.info_request.unwrap_or_default(),
        approved_amount_minor: referral.approved_amount_minor,
        approved_rate_bps: referral.approved_rate_bps,
        approved_term_months: referral.approved_term_months,
        disbursed_minor: referral.disbursed_minor,
        create_time: convert::timestamp(referral.created_at),
        update_time: convert::timestamp(referral.updated_at),
        need: None,
        enterprise: None,
    }
}
