//! The domain's closed value sets as diesel reads and writes them: each by its canonical name
//! (`ROUTED`, `WORKING_CAPITAL`) in a `text` column, the names the migrations' CHECK
//! constraints allow. A row therefore holds a [`NeedStatus`], never a string, and a stored name
//! this build does not know fails the query that reads it, naming the type and the value.

use diesel::deserialize::{self, FromSql};
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;

use crate::domain::{
    AllocationStatus, Channel, Collateral, DeclineReason, EnterpriseSize, LenderKind, NeedStatus,
    Purpose, ReferralEventKind, ReferralStatus, ReleaseReason, Role,
};

macro_rules! text_enums {
    ($($ty:ty),+ $(,)?) => {$(
        impl FromSql<Text, Pg> for $ty {
            fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
                let name = std::str::from_utf8(value.as_bytes())?;
                name.parse()
                    .map_err(|e| format!("stored {}: {e}", stringify!($ty)).into())
            }
        }

        impl ToSql<Text, Pg> for $ty {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
            }
        }
    )+};
}

text_enums!(
    AllocationStatus,
    Channel,
    Collateral,
    DeclineReason,
    EnterpriseSize,
    LenderKind,
    NeedStatus,
    Purpose,
    ReferralEventKind,
    ReferralStatus,
    ReleaseReason,
    Role,
);
