//! Lenders (partner banks) and their loan products.

use chrono::{DateTime, Utc};
use scoped_futures::ScopedFutureExt as _;
use uuid::Uuid;

use super::paging::{Cursor, Page, PageRequest};
use super::{App, Error, Principal, Result, audit, reason};
use crate::domain::{
    Collateral, EnterpriseSize, LenderKind, NewLender, NewProduct, ProductInput, ProductPatch,
};
use crate::storage::lenders::{LenderRow, ProductRow, ProductValues, strings};
use crate::storage::{self, Failure};

const RPC_CREATE_LENDER: &str = "finmatch.v1.LenderService/CreateLender";
const RPC_CREATE_PRODUCT: &str = "finmatch.v1.LenderService/CreateProduct";
const RPC_UPDATE_PRODUCT: &str = "finmatch.v1.LenderService/UpdateProduct";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lender {
    pub id: Uuid,
    pub name: String,
    pub kind: LenderKind,
    pub region_codes: Vec<String>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: Uuid,
    pub lender_id: Uuid,
    pub name: String,
    pub min_amount_minor: i64,
    pub max_amount_minor: i64,
    pub min_term_months: i32,
    pub max_term_months: i32,
    pub industry_prefixes: Vec<String>,
    pub region_prefixes: Vec<String>,
    pub collateral_accepted: Vec<Collateral>,
    pub min_size: EnterpriseSize,
    pub min_rate_bps: i32,
    pub max_rate_bps: i32,
    pub required_designations: Vec<String>,
    pub daily_capacity: i32,
    pub response_sla_hours: i32,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl App {
    /// Registers a partner bank; ALREADY_EXISTS when the name is taken.
    #[tracing::instrument(skip_all)]
    pub async fn create_lender(
        &self,
        who: &Principal,
        input: NewLender,
        active: bool,
    ) -> Result<Lender> {
        who.require("CreateLender")?;
        let input = &input;
        let lender = self
            .write(|conn| {
                async move {
                    let name = input.name().as_str();
                    if let Some(id) = storage::lenders::find_by_name(conn, name).await? {
                        return Err(duplicate_lender(name, id));
                    }
                    let new = storage::lenders::NewLender {
                        name,
                        kind: input.kind(),
                        region_codes: input.region_codes().iter().map(|c| c.as_str()).collect(),
                        active,
                    };
                    let row = match storage::lenders::insert(conn, &new).await {
                        // A concurrent registration of the name won; the retry names it.
                        Err(e) if matches!(storage::classify(&e), Failure::UniqueViolation(_)) => {
                            return Err(Error::conflict());
                        }
                        other => other?,
                    };
                    audit::record(
                        conn,
                        Some(who),
                        RPC_CREATE_LENDER,
                        "lender",
                        row.id,
                        serde_json::json!({ "name": row.name, "kind": row.kind }),
                    )
                    .await?;
                    to_lender(row)
                }
                .scope_boxed()
            })
            .await?;
        self.products().invalidate();
        tracing::info!(lender_id = %lender.id, "lender registered");
        Ok(lender)
    }

    pub async fn get_lender(&self, who: &Principal, id: Uuid) -> Result<Lender> {
        who.require("GetLender")?;
        let mut conn = self.conn().await?;
        let row = storage::lenders::find(&mut conn, id)
            .await?
            .ok_or_else(|| Error::not_found("lender", id))?;
        to_lender(row)
    }

    pub async fn list_lenders(
        &self,
        who: &Principal,
        active: Option<bool>,
        page: PageRequest,
    ) -> Result<Page<Lender>> {
        who.require("ListLenders")?;
        let mut conn = self.conn().await?;
        let rows = storage::lenders::list(
            &mut conn,
            active,
            page.after.map(|c| (c.created_at, c.id)),
            page.fetch_limit(),
        )
        .await?;
        let page = page.page(rows, |r| Cursor {
            created_at: r.created_at,
            id: r.id,
        });
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(to_lender)
                .collect::<Result<_>>()?,
            next: page.next,
        })
    }

    /// Adds a loan product to a lender; NOT_FOUND for an unknown lender, ALREADY_EXISTS when the
    /// lender has a product of that name.
    #[tracing::instrument(skip_all, fields(lender_id = %input.lender_id()))]
    pub async fn create_product(&self, who: &Principal, input: NewProduct) -> Result<Product> {
        who.require("CreateProduct")?;
        let input = &input;
        self.write(|conn| {
            async move {
                if storage::lenders::find(conn, input.lender_id())
                    .await?
                    .is_none()
                {
                    return Err(Error::not_found("lender", input.lender_id()));
                }
                require_free_name(conn, input, None).await?;
                let row = storage::lenders::insert_product(conn, &values(input))
                    .await
                    .map_err(lost_name_race)?;
                audit::record(
                    conn,
                    Some(who),
                    RPC_CREATE_PRODUCT,
                    "product",
                    row.id,
                    serde_json::json!({ "lender_id": row.lender_id, "name": row.name }),
                )
                .await?;
                to_product(row)
            }
            .scope_boxed()
        })
        .await
        // The next routing on this replica sees the change, before its notification arrives.
        .inspect(|_| self.products().invalidate())
    }

    /// Changes the fields of a product named by the patch; the result is validated as a whole
    /// (a new minimum may not exceed the stored maximum).
    #[tracing::instrument(skip(self, who, patch))]
    pub async fn update_product(
        &self,
        who: &Principal,
        id: Uuid,
        patch: ProductPatch,
    ) -> Result<Product> {
        who.require("UpdateProduct")?;
        let patch = &patch;
        self.write(|conn| {
            async move {
                let current = storage::lenders::find_product_for_update(conn, id)
                    .await?
                    .ok_or_else(|| Error::not_found("product", id))?;
                let updated = patch.apply_to(&stored_product(&current)?, "product.")?;
                require_free_name(conn, &updated, Some(id)).await?;
                let row = storage::lenders::update_product(conn, id, &values(&updated))
                    .await
                    .map_err(lost_name_race)?;
                audit::record(
                    conn,
                    Some(who),
                    RPC_UPDATE_PRODUCT,
                    "product",
                    id,
                    serde_json::json!({ "lender_id": row.lender_id }),
                )
                .await?;
                to_product(row)
            }
            .scope_boxed()
        })
        .await
        // The next routing on this replica sees the change, before its notification arrives.
        .inspect(|_| self.products().invalidate())
    }

    pub async fn list_products(
        &self,
        who: &Principal,
        lender_id: Option<Uuid>,
        active: Option<bool>,
        page: PageRequest,
    ) -> Result<Page<Product>> {
        who.require("ListProducts")?;
        let mut conn = self.conn().await?;
        let rows = storage::lenders::list_products(
            &mut conn,
            lender_id,
            active,
            page.after.map(|c| (c.created_at, c.id)),
            page.fetch_limit(),
        )
        .await?;
        let page = page.page(rows, |r| Cursor {
            created_at: r.created_at,
            id: r.id,
        });
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(to_product)
                .collect::<Result<_>>()?,
            next: page.next,
        })
    }
}

fn duplicate_lender(name: &str, existing: Uuid) -> Error {
    Error::AlreadyExists {
        entity: "lender",
        reason: reason::DUPLICATE_NAME,
        message: format!("lender {existing} is already registered as {name:?}"),
        existing_id: existing.to_string(),
    }
}

/// ALREADY_EXISTS naming the product when the lender has another product of this name.
async fn require_free_name(
    conn: &mut storage::Connection,
    product: &NewProduct,
    this: Option<Uuid>,
) -> Result<()> {
    let name = product.name().as_str();
    match storage::lenders::find_product_by_name(conn, product.lender_id(), name).await? {
        Some(existing) if Some(existing) != this => Err(Error::AlreadyExists {
            entity: "product",
            reason: reason::DUPLICATE_NAME,
            message: format!(
                "lender {} already has product {existing} named {name:?}",
                product.lender_id()
            ),
            existing_id: existing.to_string(),
        }),
        _ => Ok(()),
    }
}

/// A concurrent write took the product's name after [`require_free_name`] looked: the retry
/// finds and names the winner.
fn lost_name_race(error: diesel::result::Error) -> Error {
    match storage::classify(&error) {
        Failure::UniqueViolation(_) => Error::conflict(),
        _ => error.into(),
    }
}

fn values(product: &NewProduct) -> ProductValues<'_> {
    ProductValues {
        lender_id: product.lender_id(),
        name: product.name().as_str(),
        min_amount_minor: product.amount().min().get(),
        max_amount_minor: product.amount().max().get(),
        min_term_months: product.term().min().get(),
        max_term_months: product.term().max().get(),
        industry_prefixes: product
            .industry_prefixes()
            .iter()
            .map(|p| p.as_str())
            .collect(),
        region_prefixes: product
            .region_prefixes()
            .iter()
            .map(|p| p.as_str())
            .collect(),
        collateral_accepted: product.collateral_accepted().iter().collect(),
        min_size: product.min_size(),
        min_rate_bps: product.rate().min().get(),
        max_rate_bps: product.rate().max().get(),
        required_designations: product
            .required_designations()
            .iter()
            .map(|c| c.as_str())
            .collect(),
        daily_capacity: product.daily_capacity().get(),
        response_sla_hours: product.response_sla_hours().get(),
        active: product.active(),
    }
}

/// The stored product as a validated domain value (the database holds only valid products).
pub(crate) fn stored_product(row: &ProductRow) -> Result<NewProduct> {
    let lender_id = row.lender_id.to_string();
    let industry = strings(row.industry_prefixes.clone());
    let region = strings(row.region_prefixes.clone());
    let designations = strings(row.required_designations.clone());
    NewProduct::parse(
        &ProductInput {
            lender_id: &lender_id,
            name: &row.name,
            min_amount_minor: row.min_amount_minor,
            max_amount_minor: row.max_amount_minor,
            min_term_months: row.min_term_months,
            max_term_months: row.max_term_months,
            industry_prefixes: &industry,
            region_prefixes: &region,
            collateral_accepted: &row.collateral_accepted,
            min_size: Some(row.min_size),
            min_rate_bps: row.min_rate_bps,
            max_rate_bps: row.max_rate_bps,
            required_designations: &designations,
            daily_capacity: row.daily_capacity,
            response_sla_hours: row.response_sla_hours,
            active: row.active,
        },
        "product.",
    )
    .map_err(|v| Error::Internal(anyhow::anyhow!("stored product {} is invalid: {v}", row.id)))
}

pub(crate) fn to_lender(row: LenderRow) -> Result<Lender> {
    Ok(Lender {
        kind: row.kind,
        id: row.id,
        name: row.name,
        region_codes: strings(row.region_codes),
        active: row.active,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

pub(crate) fn to_product(row: ProductRow) -> Result<Product> {
    let collateral_accepted = row.collateral_accepted.iter().flatten().copied().collect();
    let min_size = row.min_size;
    Ok(Product {
        id: row.id,
        lender_id: row.lender_id,
        name: row.name,
        min_amount_minor: row.min_amount_minor,
        max_amount_minor: row.max_amount_minor,
        min_term_months: row.min_term_months,
        max_term_months: row.max_term_months,
        industry_prefixes: strings(row.industry_prefixes),
        region_prefixes: strings(row.region_prefixes),
        collateral_accepted,
        min_size,
        min_rate_bps: row.min_rate_bps,
        max_rate_bps: row.max_rate_bps,
        required_designations: strings(row.required_designations),
        daily_capacity: row.daily_capacity,
        response_sla_hours: row.response_sla_hours,
        active: row.active,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}
