//! Raw SQL whose plan PostgreSQL keeps.
//!
//! `diesel::sql_query` marks every statement "unsafe to cache", so PostgreSQL parses and plans
//! it on every call. The set-based statements of the hot paths (a need with its referrals, events,
//! audit row and replay record in one statement) are long enough that planning them costs more
//! than running them. [`Prepared`] is the same raw SQL with the same `$n` placeholders, but it
//! lets diesel's statement cache key it by its text, so each pooled connection prepares it once.
//!
//! The text must be constant (no values spliced into it). Its placeholders `$1`, `$2`, … may
//! appear in any order and more than once; each bound value must be used. Rows come back by
//! name, as with `sql_query` (`#[derive(QueryableByName)]`).

use std::marker::PhantomData;

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::Error;
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};

/// A constant SQL text and its bind values, in placeholder order.
#[must_use = "a statement does nothing until it is run"]
pub struct Prepared<'a> {
    sql: &'static str,
    binds: Vec<Box<dyn BindArg + Send + Sync + 'a>>,
}

impl<'a> Prepared<'a> {
    pub fn new(sql: &'static str) -> Self {
        Self {
            sql,
            binds: Vec::new(),
        }
    }

    /// Binds the value of the next placeholder as SQL type `ST`.
    pub fn bind<ST, V>(mut self, value: V) -> Self
    where
        ST: 'static,
        Pg: HasSqlType<ST>,
        V: ToSql<ST, Pg> + Send + Sync + 'a,
    {
        self.binds.push(Box::new(Bind::<ST, V> {
            value,
            sql_type: PhantomData,
        }));
        self
    }
}

trait BindArg {
    fn push<'b>(&'b self, out: AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

struct Bind<ST, V> {
    value: V,
    sql_type: PhantomData<fn() -> ST>,
}

impl<ST, V> BindArg for Bind<ST, V>
where
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    fn push<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_bind_param::<ST, V>(&self.value)
    }
}

impl QueryFragment<Pg> for Prepared<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let misplaced = |what: String| {
            Error::QueryBuilderError(format!("statement placeholders: {what}").into())
        };
        let mut rest = self.sql;
        let mut used = vec![false; self.binds.len()];
        while let Some(at) = rest.find('$') {
            let digits = rest[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if digits == 0 {
                out.push_sql(&rest[..=at]);
                rest = &rest[at + 1..];
                continue;
            }
            let number: usize = rest[at + 1..at + 1 + digits]
                .parse()
                .map_err(|_| misplaced(format!("bad placeholder in {:?}", self.sql)))?;
            let bind = number
                .checked_sub(1)
                .and_then(|i| self.binds.get(i))
                .ok_or_else(|| misplaced(format!("${number} has no bound value")))?;
            used[number - 1] = true;
            out.push_sql(&rest[..at]);
            // diesel writes a placeholder of its own numbering and sends the value under it, so a
            // placeholder used twice sends its value twice.
            bind.push(out.reborrow())?;
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        if let Some(unused) = used.iter().position(|u| !u) {
            return Err(misplaced(format!("${} is bound but not used", unused + 1)));
        }
        Ok(())
    }
}

impl QueryId for Prepared<'_> {
    type QueryId = ();
    // Keyed by its SQL text (and bind types) in the statement cache, like any cacheable query
    // without a static id.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Prepared<'_> {
    type SqlType = Untyped;
}

impl<Conn> diesel::RunQueryDsl<Conn> for Prepared<'_> {}
