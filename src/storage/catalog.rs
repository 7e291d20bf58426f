//! The product catalog as the matching engine reads it: every product with its lender.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Timestamptz};
use diesel_async::RunQueryDsl;

use super::Connection;
use super::lenders::{LenderRow, ProductRow};
use super::schema::{lenders, products};

/// Changes whenever a product or lender is added or updated (counts and latest update times);
/// a cache built at one version is current while the version is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, QueryableByName)]
pub struct CatalogVersion {
    #[diesel(sql_type = BigInt)]
    pub products: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub products_updated_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = BigInt)]
    pub lenders: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub lenders_updated_at: Option<DateTime<Utc>>,
}

pub async fn version(conn: &mut Connection) -> QueryResult<CatalogVersion> {
    diesel::sql_query(
        "SELECT (SELECT count(*) FROM products) AS products, \
                (SELECT max(updated_at) FROM products) AS products_updated_at, \
                (SELECT count(*) FROM lenders) AS lenders, \
                (SELECT max(updated_at) FROM lenders) AS lenders_updated_at",
    )
    .get_result(conn)
    .await
}

/// Every product with its lender, the products of one lender adjacent (ordered by lender id,
/// then product id).
pub async fn products_with_lenders(
    conn: &mut Connection,
) -> QueryResult<Vec<(ProductRow, LenderRow)>> {
    products::table
        .inner_join(lenders::table)
        .order_by((products::lender_id, products::id))
        .select((ProductRow::as_select(), LenderRow::as_select()))
        .load(conn)
        .await
}
