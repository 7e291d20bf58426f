//! The matching engine (DESIGN §3): pure code that scores a financing need
//! against every product, explains each result, and picks the routes.
//!
//! ```text
//! ProductCatalog::new(products)                                -> compiled once, shared
//! evaluate(need, enterprise, &catalog, &activity, tried, policy) -> ranked Vec<Candidate>
//! select_routes(&candidates, k)                                  -> best k of distinct lenders
//! ```

mod catalog;
mod engine;
mod input;
mod policy;

pub use catalog::ProductCatalog;
pub use engine::{Candidate, FactorScore, IneligibleReason, ReasonSet, evaluate, select_routes};
pub use input::{Activity, LenderStats, MatchEnterprise, MatchNeed, MatchProduct};
pub use policy::{Factor, FactorWeights, RoutingPolicy};

#[cfg(test)]
mod tests;
