//! The append-only audit log.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Connection;
use super::schema::audit_log;

#[derive(Debug, Insertable)]
#[diesel(table_name = audit_log)]
pub struct NewAuditEntry<'a> {
    pub principal_id: Option<Uuid>,
    pub principal_role: &'a str,
    pub lender_id: Option<Uuid>,
    pub rpc: &'a str,
    pub entity_type: &'a str,
    pub entity_id: &'a str,
    pub detail: serde_json::Value,
}

pub async fn insert(conn: &mut Connection, entry: &NewAuditEntry<'_>) -> QueryResult<()> {
    diesel::insert_into(audit_log::table)
        .values(entry)
        .execute(conn)
        .await
        .map(|_| ())
}
