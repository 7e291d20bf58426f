//! finmatch: matches enterprises' financing needs to partner banks' loan products.

pub mod domain;
pub mod matching;
