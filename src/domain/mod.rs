//! Validated domain types and rules: parse, don't validate. Once a value is
//! one of these types it is valid everywhere. No I/O, no tonic, no diesel.

mod codes;
mod commands;
mod credit_code;
mod dates;
mod enums;
pub(crate) use enums::canonical_enum;
mod error;
pub mod ids;
mod lifecycle;
mod numbers;
pub mod special_loan;
mod text;

pub(crate) use codes::shared_levels_packed;
pub use codes::{IndustryCode, IndustryPrefix, ListCode, RegionCode, RegionPrefix};
pub use commands::{
    DesignationInput, EnterpriseInput, EnterprisePatch, EnterprisePatchInput, LenderInput,
    MAX_LIST_LEN, NeedInput, NewDesignation, NewEnterprise, NewLender, NewNeed, NewProduct,
    ProductInput, ProductPatch, ProductPatchInput,
};
pub use credit_code::{CreditCode, credit_code_with_check};
pub use dates::{BureauCalendar, parse_date, parse_uuid};
pub use enums::{
    AllocationStatus, Channel, Collateral, CollateralSet, DeclineReason, EnterpriseSize,
    LenderKind, NeedStatus, Purpose, ReferralEventKind, ReferralStatus, ReleaseReason, Role,
    wire_name,
};
pub use error::{DomainError, FieldViolation, Parsed, Violations};
pub use numbers::{
    AmountMinor, Bounds, Bps, DailyCapacity, Employees, MAX_MINOR, NonNegativeMinor, SlaHours,
    TermMonths, format_cny, format_percent,
};
pub use text::{LoanReference, Name, Note, Phone, Reference};
