//! Generated lenders, products, enterprises and needs: real-looking Hubei (42xxxx) region codes
//! and GB/T 4754 industry codes, varied so that routing spreads over many products.
//!
//! Everything is drawn from a seeded generator: the same serial number gives the same
//! enterprise, so a rerun is reproducible.

use rand::rngs::SmallRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, SeedableRng as _};

use crate::domain::credit_code_with_check;
use crate::proto as pb;

/// County-level divisions of Hubei, over 13 prefectures.
pub const COUNTIES: [&str; 29] = [
    "420102", "420103", "420104", "420106", "420111", "420115", // Wuhan
    "420202", "420281", // Huangshi
    "420302", "420381", // Shiyan
    "420502", "420581", // Yichang
    "420602", "420682", // Xiangyang
    "420702", // Ezhou
    "420802", "420881", // Jingmen
    "420902", "420981", // Xiaogan
    "421002", "421087", // Jingzhou
    "421102", "421181", // Huanggang
    "421202", "421281", // Xianning
    "421303", "421321", "421381", // Suizhou
    "422801", // Enshi
];

/// GB/T 4754-2017 classes: food, textiles, pharmaceuticals, medical supplies, machinery, autos,
/// electronics, wholesale, software, farming, construction, transport, research.
pub const INDUSTRIES: [&str; 15] = [
    "C1311", "C1761", "C2710", "C2720", "C2770", "C3360", "C3484", "C3670", "C3982", "F5137",
    "I6510", "A0111", "E4810", "G5430", "M7320",
];

/// Industry prefixes a product serves (empty = all).
const INDUSTRY_PREFIXES: [&[&str]; 11] = [
    &[],
    &[],
    &["C"],
    &["C27"],
    &["C33", "C34", "C35", "C36"],
    &["C27", "C17"],
    &["C13", "A"],
    &["F", "G"],
    &["I", "M"],
    &["C36", "C34"],
    &["E", "C33"],
];

/// Region prefixes a product serves (empty = its lender's regions): 2, 4 and 6 digits.
const REGION_PREFIXES: [&[&str]; 12] = [
    &[],
    &["42"],
    &["42"],
    &["4201"],
    &["4213"],
    &["4201", "4213"],
    &["420102", "420111"],
    &["421303"],
    &["4205", "4206"],
    &["4210", "4211", "4212"],
    &["4228", "4203"],
    &["4202", "4209", "4208"],
];

/// Regions a lender serves (division codes: 420000 is the province, 421300 a prefecture).
const LENDER_REGIONS: [&[&str]; 4] = [
    &["420000"],
    &["420000"],
    &["420100", "421300"],
    &["420500", "420600", "420800"],
];

/// Pairs of lenders whose products two needs rank oppositely (see [`contention_pair`]): the
/// first `2 * CONTENTION_PAIRS` lenders.
pub const CONTENTION_PAIRS: usize = 4;

const KINDS: [pb::LenderKind; 6] = [
    pb::LenderKind::StateOwned,
    pb::LenderKind::JointStock,
    pb::LenderKind::CityCommercial,
    pb::LenderKind::Rural,
    pb::LenderKind::Policy,
    pb::LenderKind::Other,
];

/// The prefix of every lender the seed creates.
pub const LENDER_PREFIX: &str = "Bench Bank";

/// Referrals a product takes per day: far above any benchmark, so capacity is not measured.
pub const DAILY_CAPACITY: i32 = 1_000_000;

/// Yuan in fen.
const YUAN: i64 = 100;

/// The `i`th lender. Locality is scored on a lender's own region codes, so each lender of a
/// contention pair is local (6 digits) to one of [`CONTENTION_REGIONS`] and serves the province.
pub fn lender(i: usize) -> pb::Lender {
    let region_codes = if i < 2 * CONTENTION_PAIRS {
        strings(&[CONTENTION_REGIONS[i % 2], "420000"])
    } else {
        strings(LENDER_REGIONS[i % LENDER_REGIONS.len()])
    };
    pb::Lender {
        name: format!("{LENDER_PREFIX} {:02}", i + 1),
        kind: KINDS[i % KINDS.len()] as i32,
        region_codes,
        ..Default::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The `n`th general product (of any lender), drawn from `n`.
pub fn product(lender_id: &str, n: usize) -> pb::Product {
    let mut rng = SmallRng::seed_from_u64(0x5eed_0000 + n as u64);
    let min_amount_minor = *[50_000, 200_000, 1_000_000, 3_000_000]
        .choose(&mut rng)
        .expect("not empty")
        * YUAN;
    let max_amount_minor = min_amount_minor * *[20, 50, 200].choose(&mut rng).expect("not empty");
    let min_term_months = *[1, 3, 6, 12].choose(&mut rng).expect("not empty");
    let max_term_months = *[12, 24, 36, 60, 120].choose(&mut rng).expect("not empty");
    let min_rate_bps = rng.random_range(300..=480);
    let max_rate_bps = min_rate_bps + *[50, 100, 200, 300].choose(&mut rng).expect("not empty");
    let mut collateral: Vec<i32> = (1..=7).filter(|_| rng.random_bool(0.45)).collect();
    if collateral.is_empty() {
        collateral.push(pb::Collateral::Credit as i32);
    }
    let min_size = match rng.random_range(0..10) {
        0..=6 => pb::EnterpriseSize::Micro,
        7 | 8 => pb::EnterpriseSize::Small,
        _ => pb::EnterpriseSize::Medium,
    };
    // One product in 25 is gated on a key-enterprise list the generated enterprises do not
    // hold, so previews also report ineligible products for that reason.
    let required_designations = if n % 25 == 24 {
        vec!["NATIONAL_KEY_SUPPLY".to_owned()]
    } else {
        Vec::new()
    };
    pb::Product {
        lender_id: lender_id.to_owned(),
        name: format!("Bench loan {n:04}"),
        min_amount_minor,
        max_amount_minor,
        min_term_months,
        max_term_months: max_term_months.max(min_term_months),
        industry_prefixes: strings(INDUSTRY_PREFIXES.choose(&mut rng).expect("not empty")),
        region_prefixes: strings(REGION_PREFIXES.choose(&mut rng).expect("not empty")),
        collateral_accepted: collateral,
        min_size: min_size as i32,
        min_rate_bps,
        max_rate_bps,
        required_designations,
        daily_capacity: DAILY_CAPACITY,
        response_sla_hours: *[24, 48, 72, 120].choose(&mut rng).expect("not empty"),
        ..Default::default()
    }
}

/// Regions where the contention pairs compete: a need from the first ranks the pair's first
/// product higher (its lender is local to it), a need from the second the other.
pub const CONTENTION_REGIONS: [&str; 2] = ["420102", "421303"];
/// The industry the contention pairs serve.
pub const CONTENTION_INDUSTRY: &str = "C2720";

/// Two products of two lenders that two needs rank oppositely: the same terms and the best
/// rates of the catalogue, serving both [`CONTENTION_REGIONS`], of lenders each local to one of
/// them. A pharmaceutical enterprise's need in either region ranks the pair among its best, in
/// opposite orders: the lock-order check of issue 10.
pub fn contention_pair(pair: usize, lender_a: &str, lender_b: &str) -> [pb::Product; 2] {
    let base = |lender_id: &str, side: &str| pb::Product {
        lender_id: lender_id.to_owned(),
        name: format!("Bench contention {pair} {side}"),
        min_amount_minor: 10_000 * YUAN,
        max_amount_minor: 100_000_000 * YUAN,
        min_term_months: 1,
        max_term_months: 120,
        industry_prefixes: vec!["C27".to_owned()],
        region_prefixes: strings(&["4201", "4213"]),
        collateral_accepted: (1..=7).collect(),
        min_size: pb::EnterpriseSize::Micro as i32,
        min_rate_bps: 200 + pair as i32,
        max_rate_bps: 250 + pair as i32,
        daily_capacity: DAILY_CAPACITY,
        response_sla_hours: 72,
        ..Default::default()
    };
    [base(lender_a, "A"), base(lender_b, "B")]
}

/// The enterprise with serial number `serial`: a valid GB 32100 credit code (region + `B` +
/// 8-digit serial + check character), one of [`COUNTIES`] and [`INDUSTRIES`]; one in eight is
/// a pharmaceutical maker in a contention region.
pub fn enterprise(serial: u64) -> pb::Enterprise {
    let mut rng = SmallRng::seed_from_u64(serial);
    let (region, industry) = if serial.is_multiple_of(8) {
        (
            CONTENTION_REGIONS[(serial / 8 % 2) as usize],
            CONTENTION_INDUSTRY,
        )
    } else {
        (
            *COUNTIES.choose(&mut rng).expect("not empty"),
            *INDUSTRIES.choose(&mut rng).expect("not empty"),
        )
    };
    let size = match rng.random_range(0..10) {
        0..=2 => pb::EnterpriseSize::Micro,
        3..=6 => pb::EnterpriseSize::Small,
        7 | 8 => pb::EnterpriseSize::Medium,
        _ => pb::EnterpriseSize::Large,
    };
    let employees = match size {
        pb::EnterpriseSize::Micro => rng.random_range(3..20),
        pb::EnterpriseSize::Small => rng.random_range(20..300),
        pb::EnterpriseSize::Medium => rng.random_range(300..1000),
        _ => rng.random_range(1000..5000),
    };
    pb::Enterprise {
        credit_code: credit_code_with_check(&format!("91{region}B{:08}", serial % 100_000_000)),
        name: format!("Bench enterprise {serial}"),
        region_code: region.to_owned(),
        industry_code: industry.to_owned(),
        size: size as i32,
        above_designated_size: size as i32 >= pb::EnterpriseSize::Small as i32,
        employees,
        annual_revenue_minor: i64::from(employees) * rng.random_range(200_000..2_000_000) * YUAN,
        contact_name: "Bench contact".to_owned(),
        contact_phone: "+86 27 8765 4321".to_owned(),
        ..Default::default()
    }
}

/// A need of `enterprise_id`, drawn from `serial`: amounts from 100 thousand to 50 million yuan
/// (log-uniform), 3 to 60 months, any purpose, one to three kinds of collateral, a rate cap on
/// two needs in five, needed within 3 to 12 months, consent given (so it is routed).
pub fn need(serial: u64, enterprise_id: &str, today: chrono::NaiveDate) -> pb::Need {
    let mut rng = SmallRng::seed_from_u64(serial ^ 0x00ed_0000_0000);
    let log_yuan: f64 = rng.random_range(5.0..7.7);
    // Whole yuan: a rounded figure, as a person files it.
    let amount_minor = (10f64.powf(log_yuan) as i64 / 1_000 * 1_000).max(1_000) * YUAN;
    let mut collateral: Vec<i32> = Vec::with_capacity(3);
    for _ in 0..rng.random_range(1..=3) {
        let c = rng.random_range(1..=7);
        if !collateral.contains(&c) {
            collateral.push(c);
        }
    }
    pb::Need {
        enterprise_id: enterprise_id.to_owned(),
        amount_minor,
        term_months: *[3, 6, 12, 12, 24, 36, 60]
            .choose(&mut rng)
            .expect("not empty"),
        purpose: rng.random_range(1..=7),
        collateral,
        max_rate_bps: rng.random_bool(0.4).then(|| rng.random_range(450..=650)),
        needed_by: (today + chrono::Days::new(rng.random_range(90..=365)))
            .format("%Y-%m-%d")
            .to_string(),
        consent_to_share: true,
        channel: pb::Channel::Bureau as i32,
        note: String::new(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CreditCode;

    #[test]
    fn generated_credit_codes_are_valid_and_distinct() {
        let codes: std::collections::HashSet<String> =
            (0..2_000).map(|n| enterprise(n).credit_code).collect();
        assert_eq!(codes.len(), 2_000);
        for code in &codes {
            CreditCode::parse(code).unwrap_or_else(|e| panic!("{code}: {e}"));
        }
    }

    #[test]
    fn products_have_consistent_ranges() {
        for n in 0..1_000 {
            let p = product("l", n);
            assert!(p.min_amount_minor <= p.max_amount_minor, "{p:?}");
            assert!(p.min_term_months <= p.max_term_months, "{p:?}");
            assert!(
                p.min_rate_bps <= p.max_rate_bps && p.max_rate_bps <= 10_000,
                "{p:?}"
            );
            assert!(!p.collateral_accepted.is_empty());
        }
    }
}
