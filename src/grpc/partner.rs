//! PartnerService: a partner bank's referrals, answers, loan outcomes and event stream.

use futures::StreamExt as _;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::auth::principal;
use super::convert::{self, Bridge};
use super::financing::{need_pb, referral_pb};
use crate::domain::{
    self, BureauCalendar, DeclineReason, DomainError, Note, ReferralStatus, Violations,
};
use crate::proto as pb;
use crate::service::events::{ReferralEvent, ReferralFeed, WatchItem};
use crate::service::paging::PageRequest;
use crate::service::partner::{
    Decision, Disbursement, DisbursementInput, LenderReferral, ReferralQuery,
};
use crate::service::{App, Error, Idempotency};

pub struct PartnerHandler {
    app: App,
    /// The server's one referral feed, which every WatchReferrals stream reads.
    feed: ReferralFeed,
}

impl PartnerHandler {
    pub fn new(app: App, feed: ReferralFeed) -> Self {
        Self { app, feed }
    }
}

#[tonic::async_trait]
impl pb::partner_service_server::PartnerService for PartnerHandler {
    async fn list_referrals(
        &self,
        request: Request<pb::ListReferralsRequest>,
    ) -> Result<Response<pb::ListReferralsResponse>, Status> {
        let who = principal(&request)?;
        let ListReferrals { query, page } = request.get_ref().try_into()?;
        let page = self.app.list_referrals(&who, query, page).await?;
        Ok(Response::new(pb::ListReferralsResponse {
            referrals: page.items.into_iter().map(lender_referral_pb).collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    type WatchReferralsStream =
        futures::stream::BoxStream<'static, Result<pb::WatchReferralsResponse, Status>>;

    async fn watch_referrals(
        &self,
        request: Request<pb::WatchReferralsRequest>,
    ) -> Result<Response<Self::WatchReferralsStream>, Status> {
        let who = principal(&request)?;
        let after = request.get_ref().after_cursor;
        if after < 0 {
            return Err(Error::invalid("after_cursor", "must not be negative").into());
        }
        let stream = self.app.watch_referrals(&who, &self.feed, after)?;
        Ok(Response::new(
            stream
                .map(|item| {
                    item.map(watch_item_pb).map_err(|e| match e {
                        Error::Unavailable => Status::unavailable(
                            "the watch stream ended (server shutting down or database \
                             unreachable); reconnect with the last cursor received",
                        ),
                        other => other.into(),
                    })
                })
                .boxed(),
        ))
    }

    async fn get_referral(
        &self,
        request: Request<pb::GetReferralRequest>,
    ) -> Result<Response<pb::GetReferralResponse>, Status> {
        let who = principal(&request)?;
        let id = Uuid::try_from(request.get_ref())?;
        let referral = self.app.get_referral(&who, id).await?;
        Ok(Response::new(pb::GetReferralResponse {
            referral: Some(lender_referral_pb(referral)),
        }))
    }

    async fn acknowledge_referral(
        &self,
        request: Request<pb::AcknowledgeReferralRequest>,
    ) -> Result<Response<pb::AcknowledgeReferralResponse>, Status> {
        let who = principal(&request)?;
        let id = Uuid::try_from(request.get_ref())?;
        let referral = self.app.acknowledge_referral(&who, id).await?;
        Ok(Response::new(pb::AcknowledgeReferralResponse {
            referral: Some(lender_referral_pb(referral)),
        }))
    }

    async fn request_information(
        &self,
        request: Request<pb::RequestInformationRequest>,
    ) -> Result<Response<pb::RequestInformationResponse>, Status> {
        let who = principal(&request)?;
        let RequestInformation { id, message } = request.get_ref().try_into()?;
        let referral = self.app.request_information(&who, id, message).await?;
        Ok(Response::new(pb::RequestInformationResponse {
            referral: Some(lender_referral_pb(referral)),
        }))
    }

    async fn decide_referral(
        &self,
        request: Request<pb::DecideReferralRequest>,
    ) -> Result<Response<pb::DecideReferralResponse>, Status> {
        let who = principal(&request)?;
        let DecideReferral {
            id,
            decision,
            idempotency,
        } = request.get_ref().try_into()?;
        let referral = self
            .app
            .decide_referral(&who, id, decision, idempotency)
            .await?;
        Ok(Response::new(pb::DecideReferralResponse {
            referral: Some(lender_referral_pb(referral)),
        }))
    }

    async fn record_disbursement(
        &self,
        request: Request<pb::RecordDisbursementRequest>,
    ) -> Result<Response<pb::RecordDisbursementResponse>, Status> {
        let who = principal(&request)?;
        let input = parse_disbursement(request.get_ref(), self.app.calendar())?;
        let recorded = self.app.record_disbursement(&who, input).await?;
        Ok(Response::new(pb::RecordDisbursementResponse {
            disbursement: Some(disbursement_pb(recorded.disbursement)),
            referral: Some(lender_referral_pb(recorded.referral)),
        }))
    }
}

/// A ListReferrals request: its filters and its page.
struct ListReferrals {
    query: ReferralQuery,
    page: PageRequest,
}

impl TryFrom<&pb::ListReferralsRequest> for ListReferrals {
    type Error = Violations;

    fn try_from(body: &pb::ListReferralsRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let page = PageRequest::parse(body.page_size, &body.page_token, &mut v);
        let mut statuses = Vec::new();
        for (i, status) in convert::enums::<pb::ReferralStatus>(&body.statuses)
            .into_iter()
            .enumerate()
        {
            match status {
                Some(s) => statuses.push(s),
                None => v.add(
                    format!("statuses[{i}]"),
                    ReferralStatus::unspecified().to_string(),
                ),
            }
        }
        let from = convert::instant("create_time_from", body.create_time_from.as_ref(), &mut v);
        let to = convert::instant("create_time_to", body.create_time_to.as_ref(), &mut v);
        if let (Some(from), Some(to)) = (from, to)
            && to <= from
        {
            v.add("create_time_to", "must be after create_time_from");
        }
        Ok(Self {
            query: ReferralQuery {
                statuses,
                created_from: from,
                created_to: to,
            },
            page: v.values(page)?,
        })
    }
}

/// A RequestInformation request: the referral and the bank's question.
struct RequestInformation {
    id: Uuid,
    message: Note,
}

impl TryFrom<&pb::RequestInformationRequest> for RequestInformation {
    type Error = Violations;

    fn try_from(body: &pb::RequestInformationRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let id = convert::id("referral_id", &body.referral_id, &mut v);
        let message = if body.message.trim().is_empty() {
            v.add("message", DomainError::Missing.to_string());
            None
        } else {
            v.field("message", Note::parse(&body.message))
        };
        let (id, message) = v.values((id, message))?;
        Ok(Self { id, message })
    }
}

/// A DecideReferral request: the referral, the decision and the call's idempotency.
struct DecideReferral {
    id: Uuid,
    decision: Decision,
    idempotency: Idempotency,
}

impl TryFrom<&pb::DecideReferralRequest> for DecideReferral {
    type Error = Violations;

    fn try_from(body: &pb::DecideReferralRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let id = convert::id("referral_id", &body.referral_id, &mut v);
        let unkeyed = pb::DecideReferralRequest {
            idempotency_key: String::new(),
            ..body.clone()
        };
        let idempotency = convert::idempotency(&body.idempotency_key, &unkeyed, &mut v);
        let decision = parse_decision(body.decision.as_ref(), &mut v);
        let (id, decision, idempotency) = v.values((id, decision, idempotency))?;
        Ok(Self {
            id,
            decision,
            idempotency,
        })
    }
}

/// A RecordDisbursement request, converted as the `TryFrom`s here convert, against the bureau's
/// calendar: a loan is recorded once disbursed, so `disbursed_on` is not after today.
fn parse_disbursement(
    body: &pb::RecordDisbursementRequest,
    calendar: BureauCalendar,
) -> Result<DisbursementInput, Violations> {
    let mut v = Violations::default();
    let referral_id = convert::id("referral_id", &body.referral_id, &mut v);
    let loan_reference = v.field(
        "loan_reference",
        domain::LoanReference::parse(&body.loan_reference),
    );
    let amount = v.field("amount_minor", domain::AmountMinor::new(body.amount_minor));
    let rate = v.field("rate_bps", domain::Bps::new(body.rate_bps));
    let term = v.field("term_months", domain::TermMonths::new(body.term_months));
    let disbursed_on = v.field("disbursed_on", domain::parse_date(&body.disbursed_on));
    if let Some(day) = disbursed_on
        && day > calendar.today()
    {
        v.add(
            "disbursed_on",
            format!(
                "must not be after today ({} in {})",
                calendar.today(),
                calendar.zone()
            ),
        );
    }
    let (referral_id, loan_reference, amount, rate, term, disbursed_on) = v.values((
        referral_id,
        loan_reference,
        amount,
        rate,
        term,
        disbursed_on,
    ))?;
    Ok(DisbursementInput {
        referral_id,
        loan_reference,
        amount_minor: amount.get(),
        rate_bps: rate.get(),
        term_months: term.get(),
        disbursed_on,
    })
}

fn parse_decision(
    decision: Option<&pb::decide_referral_request::Decision>,
    v: &mut Violations,
) -> Option<Decision> {
    use pb::decide_referral_request::Decision as D;
    match decision {
        None => {
            v.add("decision", "exactly one of approve or decline is required");
            None
        }
        Some(D::Approve(a)) => {
            // The product's and the need's limits are checked by the use case.
            let amount = v.field(
                "approve.amount_minor",
                domain::AmountMinor::new(a.amount_minor),
            );
            let rate = v.field("approve.rate_bps", domain::Bps::new(a.rate_bps));
            let term = v.field(
                "approve.term_months",
                domain::TermMonths::new(a.term_months),
            );
            Some(Decision::Approve {
                amount_minor: amount?.get(),
                rate_bps: rate?.get(),
                term_months: term?.get(),
            })
        }
        Some(D::Decline(d)) => {
            let reason = v.field(
                "decline.reason",
                DeclineReason::required(pb::DeclineReason::to_domain(d.reason)),
            );
            let note = v.field("decline.note", Note::parse(&d.note));
            if reason == Some(DeclineReason::Other) && note.as_ref().is_some_and(Note::is_empty) {
                v.add("decline.note", "is required when the reason is OTHER");
            }
            Some(Decision::Decline {
                reason: reason?,
                note: note?,
            })
        }
    }
}

fn watch_item_pb(item: WatchItem) -> pb::WatchReferralsResponse {
    use pb::watch_referrals_response::Payload;
    let payload = match item {
        WatchItem::Event(event) => Payload::Event(event_pb(&event)),
        WatchItem::Heartbeat { time, cursor } => Payload::Heartbeat(pb::WatchReferralsHeartbeat {
            time: convert::timestamp(time),
            cursor,
        }),
    };
    pb::WatchReferralsResponse {
        payload: Some(payload),
    }
}

/// An event shared by every stream of its lender, converted for one of them.
fn event_pb(event: &ReferralEvent) -> pb::ReferralEvent {
    pb::ReferralEvent {
        cursor: event.cursor,
        kind: pb::ReferralEventKind::from_domain(event.kind),
        referral: Some(referral_pb(event.referral.clone())),
        time: convert::timestamp(event.time),
    }
}

/// A referral as its lender sees it.
fn lender_referral_pb(r: LenderReferral) -> pb::Referral {
    pb::Referral {
        disbursed_minor: r.disbursed_minor,
        need: r.need.map(need_pb),
        enterprise: r.enterprise.map(super::enterprises::to_pb),
        ..referral_pb(r.referral)
    }
}

fn disbursement_pb(row: Disbursement) -> pb::Disbursement {
    pb::Disbursement {
        id: row.id.to_string(),
        referral_id: row.referral_id.to_string(),
        need_id: row.need_id.to_string(),
        lender_id: row.lender_id.to_string(),
        loan_reference: row.loan_reference,
        amount_minor: row.amount_minor,
        rate_bps: row.rate_bps,
        term_months: row.term_months,
        disbursed_on: convert::date(row.disbursed_on),
        create_time: convert::timestamp(row.created_at),
    }
}
