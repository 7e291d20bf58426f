//! Enterprises and their designations (memberships of official key-enterprise lists).

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use scoped_futures::ScopedFutureExt as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::paging::{Cursor, Page, PageRequest};
use super::{App, Error, Principal, Result, audit, reason};
use crate::domain::{
    EnterprisePatch, EnterpriseSize, IndustryPrefix, ListCode, NewDesignation, NewEnterprise,
    RegionPrefix,
};
use crate::storage::enterprises::{
    DesignationRow, EnterpriseChanges, EnterpriseFilter, EnterpriseRow,
};
use crate::storage::{self, Connection, Failure};

/// An enterprise as stored, with its current (unrevoked) designations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enterprise {
    pub id: Uuid,
    pub credit_code: String,
    pub name: String,
    pub region_code: String,
    pub industry_code: String,
    pub size: EnterpriseSize,
    pub above_designated_size: bool,
    pub employees: i32,
    pub annual_revenue_minor: i64,
    pub contact_name: String,
    pub contact_phone: Option<String>,
    pub designations: Vec<Designation>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Membership of an official list, valid from `granted_on` to `expires_on` (inclusive; open-ended
/// when None).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Designation {
    pub list_code: String,
    pub granted_on: NaiveDate,
    pub expires_on: Option<NaiveDate>,
    pub reference: String,
}

/// Filters of [`App::list_enterprises`].
#[derive(Debug, Clone, Default)]
pub struct EnterpriseQuery {
    pub region_prefix: Option<RegionPrefix>,
    pub industry_prefix: Option<IndustryPrefix>,
    pub list_code: Option<ListCode>,
    pub designation_valid_on: Option<NaiveDate>,
}

const RPC_CREATE: &str = "finmatch.v1.EnterpriseService/CreateEnterprise";
const RPC_UPDATE: &str = "finmatch.v1.EnterpriseService/UpdateEnterprise";
const RPC_GRANT: &str = "finmatch.v1.EnterpriseService/GrantDesignation";
const RPC_REVOKE: &str = "finmatch.v1.EnterpriseService/RevokeDesignation";

impl App {
    /// Registers an enterprise; ALREADY_EXISTS (naming it) when its credit code is registered.
    #[tracing::instrument(skip_all)]
    pub async fn create_enterprise(
        &self,
        who: &Principal,
        input: NewEnterprise,
    ) -> Result<Enterprise> {
        who.require("CreateEnterprise")?;
        let input = &input;
        let created = self
            .write(|conn| {
                async move {
                    let code = input.credit_code.as_str();
                    if let Some(existing) =
                        storage::enterprises::find_by_credit_code(conn, code).await?
                    {
                        return Err(duplicate_credit_code(code, existing.id));
                    }
                    let row = match storage::enterprises::insert(conn, &new_row(input)).await {
                        // A concurrent registration of the same code won; the retry names it.
                        Err(e) if matches!(storage::classify(&e), Failure::UniqueViolation(_)) => {
                            return Err(Error::conflict());
                        }
                        other => other?,
                    };
                    audit::record(
                        conn,
                        Some(who),
                        RPC_CREATE,
                        "enterprise",
                        row.id,
                        serde_json::json!({ "credit_code": row.credit_code }),
                    )
                    .await?;
                    to_enterprise(row, Vec::new())
                }
                .scope_boxed()
            })
            .await?;
        tracing::info!(enterprise_id = %created.id, "enterprise registered");
        Ok(created)
    }

    pub async fn get_enterprise(&self, who: &Principal, id: Uuid) -> Result<Enterprise> {
        who.require("GetEnterprise")?;
        let mut conn = self.conn().await?;
        load(&mut conn, id).await
    }

    pub async fn list_enterprises(
        &self,
        who: &Principal,
        query: EnterpriseQuery,
        page: PageRequest,
    ) -> Result<Page<Enterprise>> {
        who.require("ListEnterprises")?;
        let mut conn = self.conn().await?;
        let filter = EnterpriseFilter {
            region_prefix: query.region_prefix.as_ref().map(|p| p.as_str()),
            industry_prefix: query.industry_prefix.as_ref().map(|p| p.as_str()),
            list_code: query.list_code.as_ref().map(|c| c.as_str()),
            designation_valid_on: query.designation_valid_on,
        };
        let rows = storage::enterprises::list(
            &mut conn,
            &filter,
            page.after.map(|c| (c.created_at, c.id)),
            page.fetch_limit(),
        )
        .await?;
        let page = page.page(rows, |row| Cursor {
            created_at: row.created_at,
            id: row.id,
        });
        let items = with_designations(&mut conn, page.items).await?;
        Ok(Page {
            items,
            next: page.next,
        })
    }

    /// Applies the fields named by the patch; ALREADY_EXISTS when a new credit code is taken.
    #[tracing::instrument(skip(self, who, patch))]
    pub async fn update_enterprise(
        &self,
        who: &Principal,
        id: Uuid,
        patch: EnterprisePatch,
    ) -> Result<Enterprise> {
        who.require("UpdateEnterprise")?;
        let patch = &patch;
        self.write(|conn| {
            async move {
                lock_for_change(conn, id).await?;
                let changes = changes(patch);
                if let Some(code) = &patch.credit_code
                    && let Some(holder) =
                        storage::enterprises::find_by_credit_code(conn, code.as_str()).await?
                    && holder.id != id
                {
                    return Err(duplicate_credit_code(code.as_str(), holder.id));
                }
                let row = match storage::enterprises::update(conn, id, &changes).await {
                    // A concurrent registration of the new code won; the retry names it.
                    Err(e) if matches!(storage::classify(&e), Failure::UniqueViolation(_)) => {
                        return Err(Error::conflict());
                    }
                    other => other?,
                };
                audit::record(
                    conn,
                    Some(who),
                    RPC_UPDATE,
                    "enterprise",
                    id,
                    serde_json::json!({ "fields": patch_fields(patch) }),
                )
                .await?;
                let designations = storage::enterprises::active_designations(conn, &[id]).await?;
                to_enterprise(row, designations)
            }
            .scope_boxed()
        })
        .await
        .inspect(|_| self.enterprise_cache().evict(id))
    }

    /// Adds the enterprise to a list. ALREADY_EXISTS when it already holds an unrevoked
    /// designation of that list (revoke it first to change its dates).
    #[tracing::instrument(skip(self, who, designation), fields(list_code = designation.list_code().as_str()))]
    pub async fn grant_designation(
        &self,
        who: &Principal,
        enterprise_id: Uuid,
        designation: NewDesignation,
    ) -> Result<Enterprise> {
        who.require("GrantDesignation")?;
        let designation = &designation;
        self.write(|conn| {
            async move {
                lock_for_change(conn, enterprise_id).await?;
                let list_code = designation.list_code().as_str();
                let reference = designation.reference().map(|r| r.as_str()).unwrap_or("");
                let new = storage::enterprises::NewDesignation {
                    id: crate::domain::ids::scoped_id(enterprise_id),
                    enterprise_id,
                    list_code,
                    granted_on: designation.granted_on(),
                    expires_on: designation.expires_on(),
                    reference,
                };
                // The enterprise's row is locked: no concurrent grant can slip in after this look.
                // A designation has no id of its own on the wire: it is the enterprise's
                // membership of the list, named `<enterprise_id>/<list_code>`.
                if storage::enterprises::find_active_designation(conn, enterprise_id, list_code)
                    .await?
                    .is_some()
                {
                    return Err(Error::AlreadyExists {
                        entity: "designation",
                        reason: reason::DUPLICATE_DESIGNATION,
                        message: format!(
                            "enterprise {enterprise_id} already holds a {list_code} designation; \
                             revoke it first to change its dates"
                        ),
                        existing_id: format!("{enterprise_id}/{list_code}"),
                    });
                }
                let row = storage::enterprises::insert_designation(conn, &new).await?;
                audit::record(
                    conn,
                    Some(who),
                    RPC_GRANT,
                    "enterprise",
                    enterprise_id,
                    serde_json::json!({
                        "designation_id": row.id,
                        "list_code": row.list_code,
                        "granted_on": row.granted_on,
                        "expires_on": row.expires_on,
                    }),
                )
                .await?;
                load(conn, enterprise_id).await
            }
            .scope_boxed()
        })
        .await
        .inspect(|_| self.enterprise_cache().evict(enterprise_id))
    }

    /// Removes the enterprise from a list at once; NOT_FOUND when it holds no such designation.
    #[tracing::instrument(skip(self, who, list_code), fields(list_code = list_code.as_str()))]
    pub async fn revoke_designation(
        &self,
        who: &Principal,
        enterprise_id: Uuid,
        list_code: ListCode,
    ) -> Result<Enterprise> {
        who.require("RevokeDesignation")?;
        let list_code = &list_code;
        self.write(|conn| {
            async move {
                lock_for_change(conn, enterprise_id).await?;
                let row = storage::enterprises::revoke_designation(
                    conn,
                    enterprise_id,
                    list_code.as_str(),
                )
                .await?
                .ok_or_else(|| {
                    Error::not_found(
                        "designation",
                        format!("{} of enterprise {enterprise_id}", list_code.as_str()),
                    )
                })?;
                audit::record(
                    conn,
                    Some(who),
                    RPC_REVOKE,
                    "enterprise",
                    enterprise_id,
                    serde_json::json!({ "designation_id": row.id, "list_code": row.list_code }),
                )
                .await?;
                load(conn, enterprise_id).await
            }
            .scope_boxed()
        })
        .await
        .inspect(|_| self.enterprise_cache().evict(enterprise_id))
    }
}

/// The enterprise with its designations; NOT_FOUND when absent.
/// Locks the enterprise for a change (NOT_FOUND when there is none) and tells every replica, at
/// commit, to forget what it cached of it.
async fn lock_for_change(conn: &mut Connection, id: Uuid) -> Result<()> {
    if storage::enterprises::find_for_update(conn, id)
        .await?
        .is_none()
    {
        return Err(Error::not_found("enterprise", id));
    }
    storage::notify(conn, super::market::ENTERPRISES_CHANGED, &id.to_string()).await?;
    Ok(())
}

pub(crate) async fn load(conn: &mut Connection, id: Uuid) -> Result<Enterprise> {
    let (row, designations) = storage::enterprises::find_with_designations(conn, id)
        .await?
        .ok_or_else(|| Error::not_found("enterprise", id))?;
    to_enterprise(row, designations)
}

/// The enterprises in their order, each with its designations.
async fn with_designations(
    conn: &mut Connection,
    rows: Vec<EnterpriseRow>,
) -> Result<Vec<Enterprise>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let designations = storage::enterprises::active_designations(conn, &ids).await?;
    let mut by_id = assemble(rows, designations)?;
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

/// Enterprises by id, each with those of `designations` that are its own.
pub(crate) fn assemble(
    rows: Vec<EnterpriseRow>,
    designations: Vec<DesignationRow>,
) -> Result<HashMap<Uuid, Enterprise>> {
    let mut by_enterprise: HashMap<Uuid, Vec<DesignationRow>> = HashMap::new();
    for d in designations {
        by_enterprise.entry(d.enterprise_id).or_default().push(d);
    }
    rows.into_iter()
        .map(|row| {
            let designations = by_enterprise.remove(&row.id).unwrap_or_default();
            to_enterprise(row, designations).map(|e| (e.id, e))
        })
        .collect()
}

fn duplicate_credit_code(credit_code: &str, existing: Uuid) -> Error {
    Error::AlreadyExists {
        entity: "enterprise",
        reason: reason::DUPLICATE_CREDIT_CODE,
        message: format!(
            "enterprise {existing} is already registered with credit_code {credit_code}"
        ),
        existing_id: existing.to_string(),
    }
}

fn new_row(input: &NewEnterprise) -> storage::enterprises::NewEnterprise<'_> {
    storage::enterprises::NewEnterprise {
        credit_code: input.credit_code.as_str(),
        name: input.name.as_str(),
        region_code: input.region_code.as_str(),
        industry_code: input.industry_code.as_str(),
        size: input.size.as_str(),
        above_designated_size: input.above_designated_size,
        employees: input.employees.get(),
        annual_revenue_minor: input.annual_revenue_minor.get(),
        contact_name: input.contact_name.as_ref().map_or("", |n| n.as_str()),
        contact_phone: input.contact_phone.as_ref().map(|p| p.as_str()),
    }
}

fn changes(patch: &EnterprisePatch) -> EnterpriseChanges<'_> {
    EnterpriseChanges {
        credit_code: patch.credit_code.as_ref().map(|c| c.as_str()),
        name: patch.name.as_ref().map(|n| n.as_str()),
        region_code: patch.region_code.as_ref().map(|c| c.as_str()),
        industry_code: patch.industry_code.as_ref().map(|c| c.as_str()),
        size: patch.size.map(|s| s.as_str()),
        above_designated_size: patch.above_designated_size,
        employees: patch.employees.map(|e| e.get()),
        annual_revenue_minor: patch.annual_revenue_minor.map(|r| r.get()),
        contact_name: patch
            .contact_name
            .as_ref()
            .map(|n| n.as_ref().map_or("", |n| n.as_str())),
        contact_phone: patch
            .contact_phone
            .as_ref()
            .map(|p| p.as_ref().map(|p| p.as_str())),
    }
}

fn patch_fields(patch: &EnterprisePatch) -> Vec<&'static str> {
    let mut fields = Vec::new();
    let mut note = |set: bool, name: &'static str| {
        if set {
            fields.push(name);
        }
    };
    note(patch.credit_code.is_some(), "credit_code");
    note(patch.name.is_some(), "name");
    note(patch.region_code.is_some(), "region_code");
    note(patch.industry_code.is_some(), "industry_code");
    note(patch.size.is_some(), "size");
    note(
        patch.above_designated_size.is_some(),
        "above_designated_size",
    );
    note(patch.employees.is_some(), "employees");
    note(patch.annual_revenue_minor.is_some(), "annual_revenue_minor");
    note(patch.contact_name.is_some(), "contact_name");
    note(patch.contact_phone.is_some(), "contact_phone");
    fields
}

pub(crate) fn to_enterprise(
    row: EnterpriseRow,
    designations: Vec<DesignationRow>,
) -> Result<Enterprise> {
    let size = row.size.parse().map_err(|_| {
        Error::Internal(anyhow::anyhow!(
            "enterprise {} has unknown size {:?}",
            row.id,
            row.size
        ))
    })?;
    Ok(Enterprise {
        id: row.id,
        credit_code: row.credit_code,
        name: row.name,
        region_code: row.region_code,
        industry_code: row.industry_code,
        size,
        above_designated_size: row.above_designated_size,
        employees: row.employees,
        annual_revenue_minor: row.annual_revenue_minor,
        contact_name: row.contact_name,
        contact_phone: row.contact_phone,
        designations: designations
            .into_iter()
            .map(|d| Designation {
                list_code: d.list_code,
                granted_on: d.granted_on,
                expires_on: d.expires_on,
                reference: d.reference,
            })
            .collect(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}
