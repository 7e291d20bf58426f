//! The state file `finmatch bench seed` writes and the scenarios read: the lenders with their
//! tokens and the products' ranges, so a scenario needs no setup of its own beyond the
//! enterprises, needs and referrals it consumes.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What the seed created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The server the seed ran against.
    pub server: String,
    /// When the seed ran (RFC 3339).
    pub seeded_at: String,
    pub lenders: Vec<LenderState>,
    pub products: Vec<ProductState>,
    /// The serial number the next scenario's first enterprise takes. Each scenario reserves a
    /// block and writes the file back, so credit codes never repeat on one database.
    pub next_enterprise: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LenderState {
    pub id: String,
    pub name: String,
    /// A LENDER token bound to this lender.
    pub token: String,
}

/// A product's ranges, which a bank's approval must stay within.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProductState {
    pub id: String,
    /// Index into [`State::lenders`].
    pub lender: usize,
    pub min_amount_minor: i64,
    pub max_amount_minor: i64,
    pub min_term_months: i32,
    pub max_term_months: i32,
    pub min_rate_bps: i32,
    pub max_rate_bps: i32,
}

impl State {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading the state file {} (run `finmatch bench seed` first)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes the file whole or not at all (a temporary file renamed over it).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", Path::new(&tmp).display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    }

    /// Reserves `n` enterprise serial numbers and records it in the file at `path`.
    pub fn reserve_enterprises(&mut self, n: u64, path: &Path) -> anyhow::Result<u64> {
        let first = self.next_enterprise;
        self.next_enterprise += n;
        self.save(path)?;
        Ok(first)
    }

    /// Index of the lender with this id.
    pub fn lender_index(&self, id: &str) -> Option<usize> {
        self.lenders.iter().position(|l| l.id == id)
    }
}
