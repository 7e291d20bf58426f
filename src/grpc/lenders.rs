//! LenderService: partner banks, their loan products, and credentials.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::auth::principal;
use super::convert::{self, Bridge};
use crate::domain::{
    LenderInput, NewLender, NewProduct, ProductInput, ProductPatch, ProductPatchInput, Violations,
};
use crate::proto as pb;
use crate::service::App;
use crate::service::credentials::NewCredential;
use crate::service::lenders::{Lender, Product};
use crate::service::paging::PageRequest;

/// Fields UpdateProduct may change (the lender of a product never changes).
const UPDATABLE: &[&str] = &[
    "name",
    "min_amount_minor",
    "max_amount_minor",
    "min_term_months",
    "max_term_months",
    "industry_prefixes",
    "region_prefixes",
    "collateral_accepted",
    "min_size",
    "min_rate_bps",
    "max_rate_bps",
    "required_designations",
    "daily_capacity",
    "response_sla_hours",
    "active",
];

pub struct LenderHandler {
    app: App,
}

impl LenderHandler {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl pb::lender_service_server::LenderService for LenderHandler {
    async fn create_lender(
        &self,
        request: Request<pb::CreateLenderRequest>,
    ) -> Result<Response<pb::CreateLenderResponse>, Status> {
        let who = principal(&request)?;
        let CreateLender { lender, active } = request.get_ref().try_into()?;
        let lender = self.app.create_lender(&who, lender, active).await?;
        Ok(Response::new(pb::CreateLenderResponse {
            lender: Some(lender_to_pb(lender)),
        }))
    }

    async fn get_lender(
        &self,
        request: Request<pb::GetLenderRequest>,
    ) -> Result<Response<pb::GetLenderResponse>, Status> {
        let who = principal(&request)?;
        let id = Uuid::try_from(request.get_ref())?;
        let lender = self.app.get_lender(&who, id).await?;
        Ok(Response::new(pb::GetLenderResponse {
            lender: Some(lender_to_pb(lender)),
        }))
    }

    async fn list_lenders(
        &self,
        request: Request<pb::ListLendersRequest>,
    ) -> Result<Response<pb::ListLendersResponse>, Status> {
        let who = principal(&request)?;
        let ListLenders { active, page } = request.get_ref().try_into()?;
        let page = self.app.list_lenders(&who, active, page).await?;
        Ok(Response::new(pb::ListLendersResponse {
            lenders: page.items.into_iter().map(lender_to_pb).collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        let who = principal(&request)?;
        let input = NewProduct::try_from(request.get_ref())?;
        let product = self.app.create_product(&who, input).await?;
        Ok(Response::new(pb::CreateProductResponse {
            product: Some(product_to_pb(product)),
        }))
    }

    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        let who = principal(&request)?;
        let UpdateProduct { id, patch } = request.get_ref().try_into()?;
        let product = self.app.update_product(&who, id, patch).await?;
        Ok(Response::new(pb::UpdateProductResponse {
            product: Some(product_to_pb(product)),
        }))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let who = principal(&request)?;
        let ListProducts {
            lender_id,
            active,
            page,
        } = request.get_ref().try_into()?;
        let page = self
            .app
            .list_products(&who, lender_id, active, page)
            .await?;
        Ok(Response::new(pb::ListProductsResponse {
            products: page.items.into_iter().map(product_to_pb).collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn issue_credential(
        &self,
        request: Request<pb::IssueCredentialRequest>,
    ) -> Result<Response<pb::IssueCredentialResponse>, Status> {
        let who = principal(&request)?;
        let input = NewCredential::try_from(request.get_ref())?;
        let issued = self.app.issue_credential(&who, input).await?;
        Ok(Response::new(pb::IssueCredentialResponse {
            credential_id: issued.credential.id.to_string(),
            token: issued.token,
            expire_time: issued.credential.expires_at.and_then(convert::timestamp),
            certificate_subject: issued.credential.certificate_subject.unwrap_or_default(),
        }))
    }

    async fn revoke_credential(
        &self,
        request: Request<pb::RevokeCredentialRequest>,
    ) -> Result<Response<pb::RevokeCredentialResponse>, Status> {
        let who = principal(&request)?;
        let id = Uuid::try_from(request.get_ref())?;
        let credential = self.app.revoke_credential(&who, id).await?;
        Ok(Response::new(pb::RevokeCredentialResponse {
            revoke_time: credential.revoked_at.and_then(convert::timestamp),
        }))
    }
}

/// A CreateLender request: the lender, and whether it starts active (unset: it does).
struct CreateLender {
    lender: NewLender,
    active: bool,
}

impl TryFrom<&pb::CreateLenderRequest> for CreateLender {
    type Error = Violations;

    fn try_from(request: &pb::CreateLenderRequest) -> Result<Self, Violations> {
        let empty = pb::Lender::default();
        let given = request.lender.as_ref().unwrap_or(&empty);
        let lender = NewLender::parse(
            &LenderInput {
                name: &given.name,
                kind: pb::LenderKind::to_domain(given.kind),
                region_codes: &given.region_codes,
            },
            "lender.",
        )?;
        Ok(Self {
            lender,
            active: given.active.unwrap_or(true),
        })
    }
}

/// A ListLenders request: the activity filter and the page.
struct ListLenders {
    active: Option<bool>,
    page: PageRequest,
}

impl TryFrom<&pb::ListLendersRequest> for ListLenders {
    type Error = Violations;

    fn try_from(body: &pb::ListLendersRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let page = PageRequest::parse(body.page_size, &body.page_token, &mut v);
        Ok(Self {
            active: body.active,
            page: v.values(page)?,
        })
    }
}

/// The product of a create request, every bad field reported as `product.<field>`.
impl TryFrom<&pb::CreateProductRequest> for NewProduct {
    type Error = Violations;

    fn try_from(request: &pb::CreateProductRequest) -> Result<Self, Violations> {
        let empty = pb::Product::default();
        let given = request.product.as_ref().unwrap_or(&empty);
        let collateral = convert::enums::<pb::Collateral>(&given.collateral_accepted);
        NewProduct::parse(
            &ProductInput {
                lender_id: &given.lender_id,
                name: &given.name,
                min_amount_minor: given.min_amount_minor,
                max_amount_minor: given.max_amount_minor,
                min_term_months: given.min_term_months,
                max_term_months: given.max_term_months,
                industry_prefixes: &given.industry_prefixes,
                region_prefixes: &given.region_prefixes,
                collateral_accepted: &collateral,
                min_size: pb::EnterpriseSize::to_domain(given.min_size),
                min_rate_bps: given.min_rate_bps,
                max_rate_bps: given.max_rate_bps,
                required_designations: &given.required_designations,
                daily_capacity: given.daily_capacity,
                response_sla_hours: given.response_sla_hours,
                active: given.active.unwrap_or(true),
            },
            "product.",
        )
    }
}

/// An UpdateProduct request: the product and the change its mask names.
struct UpdateProduct {
    id: Uuid,
    patch: ProductPatch,
}

impl TryFrom<&pb::UpdateProductRequest> for UpdateProduct {
    type Error = Violations;

    fn try_from(body: &pb::UpdateProductRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let paths = convert::mask_paths(body.update_mask.as_ref(), UPDATABLE, &mut v);
        let empty = pb::Product::default();
        let given = body.product.as_ref().unwrap_or(&empty);
        let id = convert::id("product.id", &given.id, &mut v);
        let has = |name: &str| paths.contains(&name);
        let collateral = convert::enums::<pb::Collateral>(&given.collateral_accepted);
        let input = ProductPatchInput {
            name: has("name").then_some(given.name.as_str()),
            min_amount_minor: has("min_amount_minor").then_some(given.min_amount_minor),
            max_amount_minor: has("max_amount_minor").then_some(given.max_amount_minor),
            min_term_months: has("min_term_months").then_some(given.min_term_months),
            max_term_months: has("max_term_months").then_some(given.max_term_months),
            industry_prefixes: has("industry_prefixes").then_some(&given.industry_prefixes[..]),
            region_prefixes: has("region_prefixes").then_some(&given.region_prefixes[..]),
            collateral_accepted: has("collateral_accepted").then_some(&collateral[..]),
            min_size: has("min_size").then(|| pb::EnterpriseSize::to_domain(given.min_size)),
            min_rate_bps: has("min_rate_bps").then_some(given.min_rate_bps),
            max_rate_bps: has("max_rate_bps").then_some(given.max_rate_bps),
            required_designations: has("required_designations")
                .then_some(&given.required_designations[..]),
            daily_capacity: has("daily_capacity").then_some(given.daily_capacity),
            response_sla_hours: has("response_sla_hours").then_some(given.response_sla_hours),
            // A masked `active` left unset means true, as on create.
            active: has("active").then(|| given.active.unwrap_or(true)),
        };
        let patch = v.nested(ProductPatch::parse(&input, "product."));
        let (id, patch) = v.values((id, patch))?;
        Ok(Self { id, patch })
    }
}

/// A ListProducts request: its filters and its page.
struct ListProducts {
    lender_id: Option<Uuid>,
    active: Option<bool>,
    page: PageRequest,
}

impl TryFrom<&pb::ListProductsRequest> for ListProducts {
    type Error = Violations;

    fn try_from(body: &pb::ListProductsRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let page = PageRequest::parse(body.page_size, &body.page_token, &mut v);
        let lender_id = convert::optional_id("lender_id", &body.lender_id, &mut v);
        let (page, lender_id) = v.values((page, lender_id))?;
        Ok(Self {
            lender_id,
            active: body.active,
            page,
        })
    }
}

impl TryFrom<&pb::IssueCredentialRequest> for NewCredential {
    type Error = Violations;

    fn try_from(body: &pb::IssueCredentialRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let role = v.field(
            "role",
            crate::domain::Role::required(pb::Role::to_domain(body.role)),
        );
        let lender_id = convert::optional_id("lender_id", &body.lender_id, &mut v);
        let expires_at = convert::instant("expire_time", body.expire_time.as_ref(), &mut v);
        let (role, lender_id) = v.values((role, lender_id))?;
        Ok(NewCredential {
            role,
            lender_id,
            label: body.label.clone(),
            expires_at,
            certificate_subject: Some(body.certificate_subject.clone())
                .filter(|s| !s.trim().is_empty()),
        })
    }
}

pub fn lender_to_pb(lender: Lender) -> pb::Lender {
    pb::Lender {
        id: lender.id.to_string(),
        name: lender.name,
        kind: pb::LenderKind::from_domain(lender.kind),
        region_codes: lender.region_codes,
        active: Some(lender.active),
        create_time: convert::timestamp(lender.created_at),
        update_time: convert::timestamp(lender.updated_at),
    }
}

pub fn product_to_pb(product: Product) -> pb::Product {
    pb::Product {
        id: product.id.to_string(),
        lender_id: product.lender_id.to_string(),
        name: product.name,
        min_amount_minor: product.min_amount_minor,
        max_amount_minor: product.max_amount_minor,
        min_term_months: product.min_term_months,
        max_term_months: product.max_term_months,
        industry_prefixes: product.industry_prefixes,
        region_prefixes: product.region_prefixes,
        collateral_accepted: product
            .collateral_accepted
            .into_iter()
            .map(pb::Collateral::from_domain)
            .collect(),
        min_size: pb::EnterpriseSize::from_domain(product.min_size),
        min_rate_bps: product.min_rate_bps,
        max_rate_bps: product.max_rate_bps,
        required_designations: product.required_designations,
        daily_capacity: product.daily_capacity,
        response_sla_hours: product.response_sla_hours,
        active: Some(product.active),
        create_time: convert::timestamp(product.created_at),
        update_time: convert::timestamp(product.updated_at),
    }
}
