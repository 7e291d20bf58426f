//! Enterprises and their designations.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Connection;
use super::schema::{designations, enterprises};

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = enterprises)]
pub struct EnterpriseRow {
    pub id: Uuid,
    pub credit_code: String,
    pub name: String,
    pub region_code: String,
    pub industry_code: String,
    pub size: String,
    pub above_designated_size: bool,
    pub employees: i32,
    pub annual_revenue_minor: i64,
    pub contact_name: String,
    pub contact_phone: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = enterprises)]
pub struct NewEnterprise<'a> {
    pub credit_code: &'a str,
    pub name: &'a str,
    pub region_code: &'a str,
    pub industry_code: &'a str,
    pub size: &'a str,
    pub above_designated_size: bool,
    pub employees: i32,
    pub annual_revenue_minor: i64,
    pub contact_name: &'a str,
    pub contact_phone: Option<&'a str>,
}

/// The columns an update may set; `None` leaves a column as it is.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = enterprises)]
pub struct EnterpriseChanges<'a> {
    pub credit_code: Option<&'a str>,
    pub name: Option<&'a str>,
    pub region_code: Option<&'a str>,
    pub industry_code: Option<&'a str>,
    pub size: Option<&'a str>,
    pub above_designated_size: Option<bool>,
    pub employees: Option<i32>,
    pub annual_revenue_minor: Option<i64>,
    pub contact_name: Option<&'a str>,
    pub contact_phone: Option<Option<&'a str>>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = designations)]
pub struct DesignationRow {
    pub id: Uuid,
    pub enterprise_id: Uuid,
    pub list_code: String,
    pub granted_on: NaiveDate,
    pub expires_on: Option<NaiveDate>,
    pub reference: String,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = designations)]
pub struct NewDesignation<'a> {
    /// A scoped id (`domain::ids`), carrying the enterprise's routing key.
    pub id: Uuid,
    pub enterprise_id: Uuid,
    pub list_code: &'a str,
    pub granted_on: NaiveDate,
    pub expires_on: Option<NaiveDate>,
    pub reference: &'a str,
}

/// Filters of ListEnterprises; empty strings and `None` mean "any".
#[derive(Debug, Default, Clone)]
pub struct EnterpriseFilter<'a> {
    pub region_prefix: Option<&'a str>,
    pub industry_prefix: Option<&'a str>,
    /// Only enterprises holding an unrevoked designation of this list…
    pub list_code: Option<&'a str>,
    /// …valid on this date.
    pub designation_valid_on: Option<NaiveDate>,
}

pub async fn insert(conn: &mut Connection, new: &NewEnterprise<'_>) -> QueryResult<EnterpriseRow> {
    diesel::insert_into(enterprises::table)
        .values(new)
        .returning(EnterpriseRow::as_returning())
        .get_result(conn)
        .await
}

pub async fn find(conn: &mut Connection, id: Uuid) -> QueryResult<Option<EnterpriseRow>> {
    enterprises::table
        .find(id)
        .select(EnterpriseRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The enterprise and its designations not revoked, in one round trip (the two queries are
/// pipelined; outside a transaction each reads its own snapshot, as two queries in a row would).
pub async fn find_with_designations(
    conn: &mut Connection,
    id: Uuid,
) -> QueryResult<Option<(EnterpriseRow, Vec<DesignationRow>)>> {
    let shared: &Connection = conn;
    let row = enterprises::table
        .find(id)
        .select(EnterpriseRow::as_select())
        .first::<EnterpriseRow>(&mut &*shared);
    let designations = designations::table
        .filter(designations::enterprise_id.eq(id))
        .filter(designations::revoked_at.is_null())
        .order_by((designations::granted_on, designations::list_code))
        .select(DesignationRow::as_select())
        .load::<DesignationRow>(&mut &*shared);
    let (row, designations) = futures::join!(row, designations);
    match row.optional()? {
        Some(row) => Ok(Some((row, designations?))),
        None => Ok(None),
    }
}

/// The enterprise, locked until the end of the transaction.
pub async fn find_for_update(
    conn: &mut Connection,
    id: Uuid,
) -> QueryResult<Option<EnterpriseRow>> {
    enterprises::table
        .find(id)
        .select(EnterpriseRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

pub async fn find_by_credit_code(
    conn: &mut Connection,
    credit_code: &str,
) -> QueryResult<Option<EnterpriseRow>> {
    enterprises::table
        .filter(enterprises::credit_code.eq(credit_code))
        .select(EnterpriseRow::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn update(
    conn: &mut Connection,
    id: Uuid,
    changes: &EnterpriseChanges<'_>,
) -> QueryResult<EnterpriseRow> {
    diesel::update(enterprises::table.find(id))
        .set((changes, enterprises::updated_at.eq(diesel::dsl::now)))
        .returning(EnterpriseRow::as_returning())
        .get_result(conn)
        .await
}

/// One page in (created_at, id) order, after `after` if given; fetches `limit` rows.
pub async fn list(
    conn: &mut Connection,
    filter: &EnterpriseFilter<'_>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<EnterpriseRow>> {
    let mut query = enterprises::table
        .select(EnterpriseRow::as_select())
        .order_by((enterprises::created_at, enterprises::id))
        .limit(limit)
        .into_boxed();
    if let Some(prefix) = filter.region_prefix {
        query = query.filter(enterprises::region_code.like(format!("{prefix}%")));
    }
    if let Some(prefix) = filter.industry_prefix {
        query = query.filter(enterprises::industry_code.like(format!("{prefix}%")));
    }
    if let Some(list_code) = filter.list_code {
        let mut holders = designations::table
            .select(designations::enterprise_id)
            .filter(designations::list_code.eq(list_code.to_owned()))
            .filter(designations::revoked_at.is_null())
            .into_boxed();
        if let Some(day) = filter.designation_valid_on {
            holders = holders.filter(designations::granted_on.le(day)).filter(
                designations::expires_on
                    .is_null()
                    .or(designations::expires_on.ge(day)),
            );
        }
        query = query.filter(enterprises::id.eq_any(holders));
    }
    if let Some((created_at, id)) = after {
        query = query.filter(
            enterprises::created_at
                .gt(created_at)
                .or(enterprises::created_at
                    .eq(created_at)
                    .and(enterprises::id.gt(id))),
        );
    }
    query.load(conn).await
}

pub async fn count(conn: &mut Connection) -> QueryResult<i64> {
    enterprises::table.count().get_result(conn).await
}

/// The unrevoked designations of these enterprises, in grant order.
pub async fn active_designations(
    conn: &mut Connection,
    enterprise_ids: &[Uuid],
) -> QueryResult<Vec<DesignationRow>> {
    active_designations_query(enterprise_ids).load(conn).await
}

type DesignationQuery<'a> = designations::BoxedQuery<
    'a,
    diesel::pg::Pg,
    diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<DesignationRow, diesel::pg::Pg>>,
>;

/// The query of [`active_designations`], for a caller that pipelines it with others.
pub(super) fn active_designations_query(enterprise_ids: &[Uuid]) -> DesignationQuery<'_> {
    designations::table
        .filter(designations::enterprise_id.eq_any(enterprise_ids))
        .filter(designations::revoked_at.is_null())
        .order_by((
            designations::enterprise_id,
            designations::granted_on,
            designations::list_code,
        ))
        .select(DesignationRow::as_select())
        .into_boxed()
}

/// The (internal) id of the enterprise's unrevoked designation of `list_code`, if it holds one.
pub async fn find_active_designation(
    conn: &mut Connection,
    enterprise_id: Uuid,
    list_code: &str,
) -> QueryResult<Option<Uuid>> {
    designations::table
        .filter(designations::enterprise_id.eq(enterprise_id))
        .filter(designations::list_code.eq(list_code))
        .filter(designations::revoked_at.is_null())
        .select(designations::id)
        .first(conn)
        .await
        .optional()
}

pub async fn insert_designation(
    conn: &mut Connection,
    new: &NewDesignation<'_>,
) -> QueryResult<DesignationRow> {
    diesel::insert_into(designations::table)
        .values(new)
        .returning(DesignationRow::as_returning())
        .get_result(conn)
        .await
}

/// Revokes the enterprise's unrevoked designation of `list_code`; None when it holds none.
pub async fn revoke_designation(
    conn: &mut Connection,
    enterprise_id: Uuid,
    list_code: &str,
) -> QueryResult<Option<DesignationRow>> {
    diesel::update(
        designations::table
            .filter(designations::enterprise_id.eq(enterprise_id))
            .filter(designations::list_code.eq(list_code))
            .filter(designations::revoked_at.is_null()),
    )
    .set(designations::revoked_at.eq(diesel::dsl::now))
    .returning(DesignationRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}
