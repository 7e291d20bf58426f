//! EnterpriseService: the register of enterprises and their designations.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::auth::principal;
use super::convert::{self, Bridge};
use crate::domain::{
    self, DesignationInput, EnterpriseInput, EnterprisePatch, EnterprisePatchInput, IndustryPrefix,
    ListCode, NewDesignation, NewEnterprise, RegionPrefix, Violations,
};
use crate::proto as pb;
use crate::service::App;
use crate::service::enterprises::{Enterprise, EnterpriseQuery};
use crate::service::paging::PageRequest;

/// Fields UpdateEnterprise may change.
const UPDATABLE: &[&str] = &[
    "credit_code",
    "name",
    "region_code",
    "industry_code",
    "size",
    "above_designated_size",
    "employees",
    "annual_revenue_minor",
    "contact_name",
    "contact_phone",
];

pub struct EnterpriseHandler {
    app: App,
}

impl EnterpriseHandler {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl pb::enterprise_service_server::EnterpriseService for EnterpriseHandler {
    async fn create_enterprise(
        &self,
        request: Request<pb::CreateEnterpriseRequest>,
    ) -> Result<Response<pb::CreateEnterpriseResponse>, Status> {
        let who = principal(&request)?;
        let input = NewEnterprise::try_from(request.get_ref())?;
        let enterprise = self.app.create_enterprise(&who, input).await?;
        Ok(Response::new(pb::CreateEnterpriseResponse {
            enterprise: Some(to_pb(enterprise)),
        }))
    }

    async fn get_enterprise(
        &self,
        request: Request<pb::GetEnterpriseRequest>,
    ) -> Result<Response<pb::GetEnterpriseResponse>, Status> {
        let who = principal(&request)?;
        let id = Uuid::try_from(request.get_ref())?;
        let enterprise = self.app.get_enterprise(&who, id).await?;
        Ok(Response::new(pb::GetEnterpriseResponse {
            enterprise: Some(to_pb(enterprise)),
        }))
    }

    async fn list_enterprises(
        &self,
        request: Request<pb::ListEnterprisesRequest>,
    ) -> Result<Response<pb::ListEnterprisesResponse>, Status> {
        let who = principal(&request)?;
        let ListEnterprises { query, page } = request.get_ref().try_into()?;
        let page = self.app.list_enterprises(&who, query, page).await?;
        Ok(Response::new(pb::ListEnterprisesResponse {
            enterprises: page.items.into_iter().map(to_pb).collect(),
            next_page_token: page.next.map(|c| c.encode()).unwrap_or_default(),
        }))
    }

    async fn update_enterprise(
        &self,
        request: Request<pb::UpdateEnterpriseRequest>,
    ) -> Result<Response<pb::UpdateEnterpriseResponse>, Status> {
        let who = principal(&request)?;
        let UpdateEnterprise { id, patch } = request.get_ref().try_into()?;
        let enterprise = self.app.update_enterprise(&who, id, patch).await?;
        Ok(Response::new(pb::UpdateEnterpriseResponse {
            enterprise: Some(to_pb(enterprise)),
        }))
    }

    async fn grant_designation(
        &self,
        request: Request<pb::GrantDesignationRequest>,
    ) -> Result<Response<pb::GrantDesignationResponse>, Status> {
        let who = principal(&request)?;
        let GrantDesignation { id, designation } = request.get_ref().try_into()?;
        let enterprise = self.app.grant_designation(&who, id, designation).await?;
        Ok(Response::new(pb::GrantDesignationResponse {
            enterprise: Some(to_pb(enterprise)),
        }))
    }

    async fn revoke_designation(
        &self,
        request: Request<pb::RevokeDesignationRequest>,
    ) -> Result<Response<pb::RevokeDesignationResponse>, Status> {
        let who = principal(&request)?;
        let RevokeDesignation { id, list_code } = request.get_ref().try_into()?;
        let enterprise = self.app.revoke_designation(&who, id, list_code).await?;
        Ok(Response::new(pb::RevokeDesignationResponse {
            enterprise: Some(to_pb(enterprise)),
        }))
    }
}

/// The enterprise of a create request, every bad field reported as `enterprise.<field>`.
/// A missing message reads as an empty one, so each required field is reported.
impl TryFrom<&pb::CreateEnterpriseRequest> for NewEnterprise {
    type Error = Violations;

    fn try_from(request: &pb::CreateEnterpriseRequest) -> Result<Self, Violations> {
        let empty = pb::Enterprise::default();
        let given = request.enterprise.as_ref().unwrap_or(&empty);
        let input = EnterpriseInput {
            credit_code: &given.credit_code,
            name: &given.name,
            region_code: &given.region_code,
            industry_code: &given.industry_code,
            size: pb::EnterpriseSize::to_domain(given.size),
            above_designated_size: given.above_designated_size,
            employees: given.employees,
            annual_revenue_minor: given.annual_revenue_minor,
            contact_name: &given.contact_name,
            contact_phone: &given.contact_phone,
        };
        NewEnterprise::parse(&input, "enterprise.")
    }
}

/// A ListEnterprises request: its filters and its page.
struct ListEnterprises {
    query: EnterpriseQuery,
    page: PageRequest,
}

impl TryFrom<&pb::ListEnterprisesRequest> for ListEnterprises {
    type Error = Violations;

    fn try_from(body: &pb::ListEnterprisesRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let page = PageRequest::parse(body.page_size, &body.page_token, &mut v);
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
        let list_code = convert::optional("list_code", &body.list_code, ListCode::parse, &mut v);
        let valid_on = convert::optional(
            "designation_valid_on",
            &body.designation_valid_on,
            domain::parse_date,
            &mut v,
        );
        let (page, region_prefix, industry_prefix, list_code, designation_valid_on) =
            v.values((page, region_prefix, industry_prefix, list_code, valid_on))?;
        Ok(Self {
            query: EnterpriseQuery {
                region_prefix,
                industry_prefix,
                list_code,
                designation_valid_on,
            },
            page,
        })
    }
}

/// An UpdateEnterprise request: the enterprise and the change its mask names.
struct UpdateEnterprise {
    id: Uuid,
    patch: EnterprisePatch,
}

impl TryFrom<&pb::UpdateEnterpriseRequest> for UpdateEnterprise {
    type Error = Violations;

    fn try_from(body: &pb::UpdateEnterpriseRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let paths = convert::mask_paths(body.update_mask.as_ref(), UPDATABLE, &mut v);
        let empty = pb::Enterprise::default();
        let given = body.enterprise.as_ref().unwrap_or(&empty);
        let id = convert::id("enterprise.id", &given.id, &mut v);
        let has = |name: &str| paths.contains(&name);
        let input = EnterprisePatchInput {
            credit_code: has("credit_code").then_some(given.credit_code.as_str()),
            name: has("name").then_some(given.name.as_str()),
            region_code: has("region_code").then_some(given.region_code.as_str()),
            industry_code: has("industry_code").then_some(given.industry_code.as_str()),
            size: has("size").then(|| pb::EnterpriseSize::to_domain(given.size)),
            above_designated_size: has("above_designated_size")
                .then_some(given.above_designated_size),
            employees: has("employees").then_some(given.employees),
            annual_revenue_minor: has("annual_revenue_minor").then_some(given.annual_revenue_minor),
            contact_name: has("contact_name").then_some(given.contact_name.as_str()),
            contact_phone: has("contact_phone").then_some(given.contact_phone.as_str()),
        };
        let patch = v.nested(EnterprisePatch::parse(&input, "enterprise."));
        let (id, patch) = v.values((id, patch))?;
        Ok(Self { id, patch })
    }
}

/// A GrantDesignation request: the enterprise and the designation to grant it.
struct GrantDesignation {
    id: Uuid,
    designation: NewDesignation,
}

impl TryFrom<&pb::GrantDesignationRequest> for GrantDesignation {
    type Error = Violations;

    fn try_from(body: &pb::GrantDesignationRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let id = convert::id("enterprise_id", &body.enterprise_id, &mut v);
        let designation = v.nested(NewDesignation::parse(
            &DesignationInput {
                list_code: &body.list_code,
                granted_on: &body.granted_on,
                expires_on: &body.expires_on,
                reference: &body.reference,
            },
            "",
        ));
        let (id, designation) = v.values((id, designation))?;
        Ok(Self { id, designation })
    }
}

/// A RevokeDesignation request: the enterprise and the list it leaves.
struct RevokeDesignation {
    id: Uuid,
    list_code: ListCode,
}

impl TryFrom<&pb::RevokeDesignationRequest> for RevokeDesignation {
    type Error = Violations;

    fn try_from(body: &pb::RevokeDesignationRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let id = convert::id("enterprise_id", &body.enterprise_id, &mut v);
        let list_code = v.field("list_code", ListCode::parse(&body.list_code));
        let (id, list_code) = v.values((id, list_code))?;
        Ok(Self { id, list_code })
    }
}

pub fn to_pb(enterprise: Enterprise) -> pb::Enterprise {
    pb::Enterprise {
        id: enterprise.id.to_string(),
        credit_code: enterprise.credit_code,
        name: enterprise.name,
        region_code: enterprise.region_code,
        industry_code: enterprise.industry_code,
        size: pb::EnterpriseSize::from_domain(enterprise.size),
        above_designated_size: enterprise.above_designated_size,
        employees: enterprise.employees,
        annual_revenue_minor: enterprise.annual_revenue_minor,
        contact_name: enterprise.contact_name,
        contact_phone: enterprise.contact_phone.unwrap_or_default(),
        designations: enterprise
            .designations
            .into_iter()
            .map(|d| pb::Designation {
                list_code: d.list_code,
                granted_on: convert::date(d.granted_on),
                expires_on: convert::optional_date(d.expires_on),
                reference: d.reference,
            })
            .collect(),
        create_time: convert::timestamp(enterprise.created_at),
        update_time: convert::timestamp(enterprise.updated_at),
    }
}
