//! Who may call what: the one table of the roles each RPC admits. The gRPC auth layer checks it
//! before a request's body is read, so a caller without the role gets PERMISSION_DENIED whatever
//! it sends and learns nothing of the validation rules or the data; each use case checks it again
//! through [`Principal::require`], as its callers are not only gRPC handlers.

use crate::domain::Role;

use super::{Error, Principal, Result};

const OPERATOR: &[Role] = &[Role::Operator];
/// The bureau: its operators and its portals.
const BUREAU: &[Role] = &[Role::Operator, Role::Portal];
/// The special-loan programs' parties: the bureau's operators and the lenders.
const PARTICIPANTS: &[Role] = &[Role::Operator, Role::Lender];
const LENDER: &[Role] = &[Role::Lender];

/// Every finmatch RPC by its method name (names are unique across the services), with the roles
/// it admits. A unit test checks that every served method is here.
const RULES: &[(&str, &[Role])] = &[
    // EnterpriseService
    ("CreateEnterprise", BUREAU),
    ("GetEnterprise", BUREAU),
    ("ListEnterprises", BUREAU),
    ("UpdateEnterprise", BUREAU),
    ("GrantDesignation", BUREAU),
    ("RevokeDesignation", BUREAU),
    // LenderService
    ("CreateLender", OPERATOR),
    ("GetLender", OPERATOR),
    ("ListLenders", OPERATOR),
    ("CreateProduct", OPERATOR),
    ("UpdateProduct", OPERATOR),
    ("ListProducts", OPERATOR),
    ("IssueCredential", OPERATOR),
    ("RevokeCredential", OPERATOR),
    // FinancingService
    ("SubmitNeed", BUREAU),
    ("ImportNeeds", BUREAU),
    ("PreviewMatches", BUREAU),
    ("GetNeed", BUREAU),
    ("ListNeeds", BUREAU),
    ("WithdrawNeed", BUREAU),
    ("RerouteNeed", OPERATOR),
    // PartnerService
    ("ListReferrals", LENDER),
    ("GetReferral", LENDER),
    ("AcknowledgeReferral", LENDER),
    ("RequestInformation", LENDER),
    ("DecideReferral", LENDER),
    ("RecordDisbursement", LENDER),
    ("WatchReferrals", LENDER),
    // SpecialLoanService
    ("CreateProgram", OPERATOR),
    ("GetProgram", PARTICIPANTS),
    ("SetLenderQuota", OPERATOR),
    ("AllocateSpecialLoan", PARTICIPANTS),
    ("ConfirmAllocation", PARTICIPANTS),
    ("ReleaseAllocation", PARTICIPANTS),
    ("ListAllocations", PARTICIPANTS),
    // ReportingService
    ("GetSummary", BUREAU),
];

/// The roles `rpc` admits; None for a name that is no finmatch RPC.
pub fn roles(rpc: &str) -> Option<&'static [Role]> {
    RULES
        .iter()
        .find(|(name, _)| *name == rpc)
        .map(|(_, roles)| *roles)
}

/// PERMISSION_DENIED unless `who` has a role `rpc` admits (an unknown name admits nobody).
pub fn check(who: &Principal, rpc: &str) -> Result<()> {
    let roles = roles(rpc).unwrap_or(&[]);
    if roles.contains(&who.role) {
        return Ok(());
    }
    let allowed = roles
        .iter()
        .map(|r| r.wire_name())
        .collect::<Vec<_>>()
        .join(" or ");
    Err(Error::PermissionDenied(format!(
        "{rpc} requires the {allowed} role; this credential has role {}",
        who.role
    )))
}

/// Every RPC named in the table, for a test that compares it with the methods served.
pub fn rpcs() -> impl Iterator<Item = &'static str> {
    RULES.iter().map(|(name, _)| *name)
}
