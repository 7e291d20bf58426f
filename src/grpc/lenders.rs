//! LenderService: partner banks, their loan products, and credentials.

use tonic::{Request, Response, Status};

use super::auth::principal;
use super::convert::{self, Bridge, check};
use super::pb;
use crate::domain::{
    LenderInput, NewLender, NewProduct, ProductInput, ProductPatch, ProductPatchInput, Violations,
};
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
        let given = request.into_inner().lender.unwrap_or_default();
        let input = NewLender::parse(
            &LenderInput {
                name: &given.name,
                kind: pb::LenderKind::to_domain(given.kind),
                region_codes: &given.region_codes,
            },
            "lender.",
        )
        .map_err(crate::service::Error::InvalidArgument)?;
        let lender = self
            .app
            .create_lender(&who, input, given.active.unwrap_or(true))
            .await?;
        Ok(Response::new(pb::CreateLenderResponse {
            lender: Some(lender_to_pb(lender)),
        }))
    }

    async fn get_lender(
        &self,
        request: Request<pb::GetLenderRequest>,
    ) -> Result<Response<pb::GetLenderResponse>, Status> {
        let who = principal(&request)?;
        let mut v = Violations::default();
        let id = convert::id("lender_id", &request.get_ref().lender_id, &mut v);
        check(v)?;
        let lender = self.app.get_lender(&who, id.expect("checked")).await?;
        Ok(Response::new(pb::GetLenderResponse {
            lender: Some(lender_to_pb(lender)),
        }))
    }

    async fn list_lenders(
        &self,
        request: Request<pb::ListLendersRequest>,
    ) -> Result<Response<pb::ListLendersResponse>, Status> {
        let who = principal(&request)?;
        let body = request.into_inner();
        let mut v = Violations::default();
        let page = PageRequest::parse(body.page_size, &body.page_token, &mut v);
        check(v)?;
        let page = self
            .app
            .list_lenders(&who, body.active, page.expect("checked"))
            .await?;
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
        let given = request.into_inner().product.unwrap_or_default();
        let collateral = convert::enums::<pb::Collateral>(&given.collateral_accepted);
        let input = NewProduct::parse(
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
        .map_err(crate::service::Error::InvalidArgument)?;
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
        let body = request.into_inner();
        let mut v = Violations::default();
        let paths = convert::mask_paths(body.update_mask.as_ref(), UPDATABLE, &mut v);
        let given = body.product.unwrap_or_default();
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
        check(v)?;
        let product = self
            .app
            .update_product(&who, id.expect("checked"), patch.expect("checked"))
            .await?;
        Ok(Response::new(pb::UpdateProductResponse {
            product: Some(product_to_pb(product)),
        }))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let who = principal(&request)?;
        let body = request.into_inner();
        let mut v = Violations::default();
        let page = PageRequest::parse(body.page_size, &body.page_token, &mut v);
        let lender_id = convert::optional_id("lender_id", &body.lender_id, &mut v);
        check(v)?;
        let page = self
            .app
            .list_products(
                &who,
                lender_id.flatten(),
                body.active,
                page.expect("checked"),
            )
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
        let body = request.into_inner();
        let mut v = Violations::default();
        let role = v.field(
            "role",
            crate::domain::Role::required(pb::Role::to_domain(body.role)),
        );
        let lender_id = convert::optional_id("lender_id", &body.lender_id, &mut v);
        let expires_at = convert::instant("expire_time", body.expire_time.as_ref(), &mut v);
        check(v)?;
        let issued = self
            .app
            .issue_credential(
                &who,
                NewCredential {
                    role: role.expect("checked"),
                    lender_id: lender_id.flatten(),
                    label: body.label,
                    expires_at,
                    certificate_subject: Some(body.certificate_subject)
                        .filter(|s| !s.trim().is_empty()),
                },
            )
            .await?;
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
        let mut v = Violations::default();
        let id = convert::id("credential_id", &request.get_ref().credential_id, &mut v);
        check(v)?;
        let credential = self
            .app
            .revoke_credential(&who, id.expect("checked"))
            .await?;
        Ok(Response::new(pb::RevokeCredentialResponse {
            revoke_time: credential.revoked_at.and_then(convert::timestamp),
        }))
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
