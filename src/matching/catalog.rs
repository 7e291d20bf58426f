//! Products compiled for fast evaluation.
//!
//! Matching one need against 10,000 products must take under a millisecond
//! (DESIGN §7). Following a `Vec` per product for its prefix lists misses the
//! cache at nearly every product, so the catalog lays every product out as a
//! fixed-size record in one array, its prefixes and lender regions packed
//! into shared arenas read in order, and designations as bits. It is built
//! once when products change and shared (e.g. in an `Arc`) by requests.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use uuid::Uuid;

use super::MatchProduct;
use crate::domain::{CollateralSet, EnterpriseSize, ListCode};

/// A hasher for server-generated UUIDs, which are already random: a
/// multiply-rotate mix instead of SipHash (no untrusted keys reach it).
#[derive(Default)]
pub(super) struct IdHasher(u64);

impl IdHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(super) type IdMap<V> = HashMap<Uuid, V, BuildHasherDefault<IdHasher>>;

pub(super) const PRODUCT_ACTIVE: u8 = 1;
pub(super) const LENDER_ACTIVE: u8 = 2;
/// The product requires a designation.
pub(super) const GATED: u8 = 4;
/// A required designation is beyond the 64 interned as bits: compare codes.
pub(super) const DESIGNATIONS_BY_NAME: u8 = 8;

/// `log2(x)` in fixed point with 8 fractional bits (the mantissa's next 8
/// bits taken linearly). Monotone non-decreasing, which is all amount fit
/// needs.
#[inline]
pub(super) fn log2_fixed(x: i64) -> u32 {
    let x = x.max(1) as u64;
    let e = 63 - x.leading_zeros();
    let frac = if e >= 8 {
        (x >> (e - 8)) & 0xFF
    } else {
        (x << (8 - e)) & 0xFF
    };
    e * 256 + frac as u32
}

/// The fields the filters and factors read, in one cache line.
#[derive(Debug, Clone, Copy)]
pub(super) struct HotProduct {
    pub amount_min: i64,
    pub amount_max: i64,
    /// Required designations as bits of [`ProductCatalog::designations`].
    pub designations: u64,
    /// Start of this product's region prefixes, then industry prefixes, in
    /// the prefix arena.
    pub prefix_start: u32,
    /// Start of the lender's region codes in the code arena.
    pub code_start: u32,
    /// Index into [`ProductCatalog::lenders`].
    pub lender: u32,
    pub capacity: u32,
    /// Effective region prefixes: the product's own, else the coverage of
    /// the lender's region codes.
    pub regions: u16,
    /// 0 = every industry.
    pub industries: u16,
    pub codes: u16,
    pub term_min: u16,
    pub term_max: u16,
    pub rate_min: u16,
    pub rate_max: u16,
    pub log_amount_min: u16,
    pub log_amount_max: u16,
    pub collateral: CollateralSet,
    pub min_size: EnterpriseSize,
    pub flags: u8,
}

/// Products ready for [`evaluate`](super::evaluate): sorted by product id,
/// with their hot fields packed.
#[derive(Debug, Clone, Default)]
pub struct ProductCatalog {
    pub(super) products: Vec<MatchProduct>,
    pub(super) hot: Vec<HotProduct>,
    /// `(value, mask)` pairs: a packed code `c` is inside when
    /// `c & mask == value`.
    pub(super) prefixes: Vec<(u64, u64)>,
    /// Packed lender region codes, for locality.
    pub(super) codes: Vec<u64>,
    pub(super) lenders: Vec<Uuid>,
    pub(super) lender_index: IdMap<u32>,
    pub(super) product_index: IdMap<u32>,
    /// Interned designation list codes; the first 64 are bits.
    pub(super) designations: Vec<ListCode>,
}

fn clamp_u16(n: usize) -> u16 {
    u16::try_from(n).expect("fewer than 65,536 prefixes or regions per product")
}

impl ProductCatalog {
    /// Compiles products (in any order; ids should be unique).
    pub fn new(mut products: Vec<MatchProduct>) -> Self {
        products.sort_by_key(|p| p.product_id);
        let mut catalog = ProductCatalog {
            hot: Vec::with_capacity(products.len()),
            ..ProductCatalog::default()
        };
        for (i, p) in products.iter().enumerate() {
            catalog.product_index.insert(p.product_id, i as u32);
            let next_lender = catalog.lenders.len() as u32;
            let lender = *catalog
                .lender_index
                .entry(p.lender_id)
                .or_insert(next_lender);
            if lender == next_lender {
                catalog.lenders.push(p.lender_id);
            }

            let prefix_start = catalog.prefixes.len() as u32;
            if p.region_prefixes.is_empty() && p.lender_region_codes.is_empty() {
                // A lender with no regions serves the whole country: the empty prefix.
                catalog.prefixes.push((0, 0));
            } else if p.region_prefixes.is_empty() {
                let coverage = p
                    .lender_region_codes
                    .iter()
                    .map(|c| c.coverage().packed_with_mask());
                catalog.prefixes.extend(coverage);
            } else {
                catalog
                    .prefixes
                    .extend(p.region_prefixes.iter().map(|r| r.packed_with_mask()));
            }
            let regions = clamp_u16(catalog.prefixes.len() - prefix_start as usize);
            catalog
                .prefixes
                .extend(p.industry_prefixes.iter().map(|x| x.packed_with_mask()));
            let industries = clamp_u16(p.industry_prefixes.len());
            let code_start = catalog.codes.len() as u32;
            catalog
                .codes
                .extend(p.lender_region_codes.iter().map(|c| c.packed()));

            let mut flags = 0;
            if p.product_active {
                flags |= PRODUCT_ACTIVE;
            }
            if p.lender_active {
                flags |= LENDER_ACTIVE;
            }
            let mut designations = 0u64;
            if !p.required_designations.is_empty() {
                flags |= GATED;
            }
            for code in &p.required_designations {
                let bit = match catalog.designations.iter().position(|d| d == code) {
                    Some(bit) => bit,
                    None => {
                        catalog.designations.push(code.clone());
                        catalog.designations.len() - 1
                    }
                };
                if bit < 64 {
                    designations |= 1 << bit;
                } else {
                    flags |= DESIGNATIONS_BY_NAME;
                }
            }

            catalog.hot.push(HotProduct {
                amount_min: p.amount.min().get(),
                amount_max: p.amount.max().get(),
                designations,
                prefix_start,
                code_start,
                lender,
                capacity: p.daily_capacity.get() as u32,
                regions,
                industries,
                codes: clamp_u16(p.lender_region_codes.len()),
                term_min: p.term.min().get() as u16,
                term_max: p.term.max().get() as u16,
                rate_min: p.rate.min().get() as u16,
                rate_max: p.rate.max().get() as u16,
                log_amount_min: log2_fixed(p.amount.min().get()) as u16,
                log_amount_max: log2_fixed(p.amount.max().get()) as u16,
                collateral: p.collateral_accepted,
                min_size: p.min_size,
                flags,
            });
        }
        catalog.products = products;
        catalog
    }

    /// The products, sorted by id.
    pub fn products(&self) -> &[MatchProduct] {
        &self.products
    }

    pub fn get(&self, product_id: Uuid) -> Option<&MatchProduct> {
        self.product_index
            .get(&product_id)
            .map(|&i| &self.products[i as usize])
    }

    pub fn len(&self) -> usize {
        self.products.len()
    }

    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// The enterprise's designations as bits (codes no product requires, or
    /// beyond the first 64, have none).
    pub(super) fn designation_bits(&self, held: &[ListCode]) -> u64 {
        held.iter()
            .filter_map(|code| self.designations.iter().position(|d| d == code))
            .filter(|&bit| bit < 64)
            .fold(0, |bits, bit| bits | 1 << bit)
    }
}
