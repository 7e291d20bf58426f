//! Lenders and their loan products.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Connection;
use super::schema::{lenders, products};
use crate::domain::{Collateral, EnterpriseSize, LenderKind};

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = lenders)]
pub struct LenderRow {
    pub id: Uuid,
    pub name: String,
    pub kind: LenderKind,
    pub region_codes: Vec<Option<String>>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = lenders)]
pub struct NewLender<'a> {
    pub name: &'a str,
    pub kind: LenderKind,
    pub region_codes: Vec<&'a str>,
    pub active: bool,
}

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = products)]
pub struct ProductRow {
    pub id: Uuid,
    pub lender_id: Uuid,
    pub name: String,
    pub min_amount_minor: i64,
    pub max_amount_minor: i64,
    pub min_term_months: i32,
    pub max_term_months: i32,
    pub industry_prefixes: Vec<Option<String>>,
    pub region_prefixes: Vec<Option<String>>,
    pub collateral_accepted: Vec<Option<Collateral>>,
    pub min_size: EnterpriseSize,
    pub min_rate_bps: i32,
    pub max_rate_bps: i32,
    pub required_designations: Vec<Option<String>>,
    pub daily_capacity: i32,
    pub response_sla_hours: i32,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable, AsChangeset)]
#[diesel(table_name = products)]
pub struct ProductValues<'a> {
    pub lender_id: Uuid,
    pub name: &'a str,
    pub min_amount_minor: i64,
    pub max_amount_minor: i64,
    pub min_term_months: i32,
    pub max_term_months: i32,
    pub industry_prefixes: Vec<&'a str>,
    pub region_prefixes: Vec<&'a str>,
    pub collateral_accepted: Vec<Collateral>,
    pub min_size: EnterpriseSize,
    pub min_rate_bps: i32,
    pub max_rate_bps: i32,
    pub required_designations: Vec<&'a str>,
    pub daily_capacity: i32,
    pub response_sla_hours: i32,
    pub active: bool,
}

/// Text arrays come back from PostgreSQL with nullable elements; the schema forbids NULLs.
pub fn strings(values: Vec<Option<String>>) -> Vec<String> {
    values.into_iter().flatten().collect()
}

pub async fn insert(conn: &mut Connection, new: &NewLender<'_>) -> QueryResult<LenderRow> {
    diesel::insert_into(lenders::table)
        .values(new)
        .returning(LenderRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn find(conn: &mut Connection, id: Uuid) -> QueryResult<Option<LenderRow>> {
    lenders::table
        .find(id)
        .select(LenderRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The id of the lender registered under `name`, if any.
pub async fn find_by_name(conn: &mut Connection, name: &str) -> QueryResult<Option<Uuid>> {
    lenders::table
        .filter(lenders::name.eq(name))
        .select(lenders::id)
        .first(conn)
        .await
        .optional()
}

pub async fn list(
    conn: &mut Connection,
    active: Option<bool>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<LenderRow>> {
    let mut query = lenders::table
        .select(LenderRow::as_select())
        .order_by((lenders::created_at, lenders::id))
        .limit(limit)
        .into_boxed();
    if let Some(active) = active {
        query = query.filter(lenders::active.eq(active));
    }
    if let Some((created_at, id)) = after {
        query = query.filter(
            lenders::created_at
                .gt(created_at)
                .or(lenders::created_at.eq(created_at).and(lenders::id.gt(id))),
        );
    }
    query.load(conn).await
}

pub async fn insert_product(
    conn: &mut Connection,
    values: &ProductValues<'_>,
) -> QueryResult<ProductRow> {
    diesel::insert_into(products::table)
        .values(values)
        .returning(ProductRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn find_product(conn: &mut Connection, id: Uuid) -> QueryResult<Option<ProductRow>> {
    products::table
        .find(id)
        .select(ProductRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The id of the lender's product named `name`, if it has one.
pub async fn find_product_by_name(
    conn: &mut Connection,
    lender_id: Uuid,
    name: &str,
) -> QueryResult<Option<Uuid>> {
    products::table
        .filter(products::lender_id.eq(lender_id))
        .filter(products::name.eq(name))
        .select(products::id)
        .first(conn)
        .await
        .optional()
}

/// The product, locked until the end of the transaction (for read-modify-write updates).
pub async fn find_product_for_update(
    conn: &mut Connection,
    id: Uuid,
) -> QueryResult<Option<ProductRow>> {
    products::table
        .find(id)
        .select(ProductRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

pub async fn update_product(
    conn: &mut Connection,
    id: Uuid,
    values: &ProductValues<'_>,
) -> QueryResult<ProductRow> {
    diesel::update(products::table.find(id))
        .set((values, products::updated_at.eq(diesel::dsl::now)))
        .returning(ProductRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn list_products(
    conn: &mut Connection,
    lender_id: Option<Uuid>,
    active: Option<bool>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<ProductRow>> {
    let mut query = products::table
        .select(ProductRow::as_select())
        .order_by((products::created_at, products::id))
        .limit(limit)
        .into_boxed();
    if let Some(lender_id) = lender_id {
        query = query.filter(products::lender_id.eq(lender_id));
    }
    if let Some(active) = active {
        query = query.filter(products::active.eq(active));
    }
    if let Some((created_at, id)) = after {
        query = query.filter(
            products::created_at
                .gt(created_at)
                .or(products::created_at.eq(created_at).and(products::id.gt(id))),
        );
    }
    query.load(conn).await
}
