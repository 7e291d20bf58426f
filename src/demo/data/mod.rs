//! The demo data set, as plain values: a prefecture-level city (Suizhou, region 4213xx) in
//! spring 2020, its partner banks and their products, 196 enterprises with one financing need
//! each, the 2020 special re-lending program, and what each bank does with each need.
//!
//! Everything here is computed from constants and the enterprise's position (no randomness,
//! no clock), so every load produces the same data set.

mod banks;

use chrono::NaiveDate;

use crate::domain::{Collateral, DeclineReason, EnterpriseSize, Purpose};

use EnterpriseSize::{Medium, Micro, Small};

pub use banks::{BANKS, BankSpec, CITY_PREFIX, ProductSpec};

/// Enterprises in the data set.
pub const ENTERPRISES: usize = 196;
/// Their needs together, in yuan (¥3.56 billion).
pub const TOTAL_DEMAND_YUAN: i64 = 3_560_000_000;
/// Enterprises on the national key epidemic-prevention supply list.
pub const NATIONAL_KEY: usize = 22;
/// Enterprises on the provincial key-enterprise list.
pub const PROVINCIAL_KEY: usize = 8;
/// The special loans the round ends with, in yuan; one per enterprise (¥137 million in all).
pub const SPECIAL_LOANS_YUAN: [i64; 12] = [
    20_000_000, 18_000_000, 15_000_000, 15_000_000, 12_000_000, 10_000_000, 10_000_000, 10_000_000,
    8_000_000, 8_000_000, 6_000_000, 5_000_000,
];

pub const NATIONAL_LIST: &str = "NATIONAL_KEY_SUPPLY";
pub const PROVINCIAL_LIST: &str = "PROVINCIAL_KEY";

/// The regions of the city: district, county, county-level city.
pub const REGIONS: [(&str, &str); 3] = [
    ("421303", "Zengdu"),
    ("421321", "Suixian"),
    ("421381", "Guangshui"),
];

/// The 2020 PBoC special re-lending program for key epidemic-prevention enterprises.
pub struct ProgramSpec {
    pub code: &'static str,
    pub name: &'static str,
    pub total_quota_yuan: i64,
    /// One-year LPR (415 bps) minus 100 bps.
    pub rate_cap_bps: i32,
    pub subsidy_ratio_bps: i32,
    pub max_effective_rate_bps: i32,
    pub max_term_months: i32,
    pub loan_date_from: NaiveDate,
}

pub const PROGRAM: ProgramSpec = ProgramSpec {
    code: "PBOC_SPECIAL_RELENDING_2020",
    name: "2020 PBoC special re-lending for key epidemic-prevention enterprises",
    total_quota_yuan: 400_000_000,
    rate_cap_bps: 315,
    subsidy_ratio_bps: 5000,
    max_effective_rate_bps: 160,
    max_term_months: 12,
    loan_date_from: date(2020, 1, 25),
};

/// A demo enterprise with its one financing need and what happens to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoEnterprise {
    pub index: usize,
    pub credit_code: String,
    pub name: String,
    pub region_code: &'static str,
    pub industry_code: &'static str,
    pub size: EnterpriseSize,
    pub above_designated_size: bool,
    pub employees: i32,
    pub annual_revenue_yuan: i64,
    pub contact_name: String,
    pub contact_phone: String,
    pub designation: Option<DemoDesignation>,
    pub need: DemoNeed,
    pub fate: Fate,
}

/// A key-list membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoDesignation {
    pub list_code: &'static str,
    pub granted_on: NaiveDate,
    pub reference: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoNeed {
    pub amount_yuan: i64,
    pub term_months: i32,
    pub purpose: Purpose,
    pub collateral: Vec<Collateral>,
    pub max_rate_bps: Option<i32>,
    /// The day the bureau took the need in; `needed_by` is checked against it.
    pub submitted_on: NaiveDate,
    pub needed_by: NaiveDate,
    pub consent_to_share: bool,
    pub note: String,
}

/// What the response round does with a need. "The bank" is the one holding the need's
/// best-scored open referral at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// A designated bank's special re-lending product approves the whole need at `rate_bps`
    /// for 12 months, reserves program quota, disburses on `loan_date` and confirms.
    SpecialLoan { rate_bps: i32, loan_date: NaiveDate },
    /// `declines` banks decline in turn, then the next approves the whole need and disburses
    /// it on `disbursed_on`.
    Funded {
        declines: usize,
        disbursed_on: NaiveDate,
    },
    /// The bank approves; the enterprise never draws the loan.
    ApprovedOnly,
    /// Every bank the need reaches declines, until no lender is left.
    Declined,
    /// The bank acknowledges and asks for more information, and hears nothing back.
    InformationRequested,
    /// The enterprise raised the money elsewhere and the bureau withdrew the need.
    Withdrawn,
    /// No bank answers (`acknowledged`: the bank at least acknowledged).
    NoAnswer { acknowledged: bool },
}

/// A decline reason with the note a bank would write.
pub fn decline_reason(n: usize) -> (DeclineReason, &'static str) {
    const REASONS: [(DeclineReason, &str); 5] = [
        (
            DeclineReason::InsufficientCollateral,
            "the offered collateral does not cover the amount",
        ),
        (
            DeclineReason::CreditHistory,
            "overdue loans in the credit report within the last 24 months",
        ),
        (
            DeclineReason::OutsideAppetite,
            "sector outside this branch's 2020 credit plan",
        ),
        (
            DeclineReason::IncompleteInformation,
            "no audited statements for 2019 yet",
        ),
        (
            DeclineReason::Capacity,
            "branch credit line for the quarter is used up",
        ),
    ];
    REASONS[n % REASONS.len()]
}

/// The whole set of enterprises, in loading order.
pub fn enterprises() -> Vec<DemoEnterprise> {
    let amounts = amounts_yuan();
    (0..ENTERPRISES)
        .map(|i| enterprise(i, amounts[i]))
        .collect()
}

/// Trades of the designated enterprises (epidemic-prevention supplies and food).
const KEY_TRADES: [(&str, &str); 8] = [
    ("C2770", "Medical Supplies"),
    ("C1781", "Nonwoven Fabrics"),
    ("C3630", "Special Vehicle"),
    ("C2720", "Pharmaceutical"),
    ("C3589", "Medical Equipment"),
    ("C2662", "Disinfection Products"),
    ("C1351", "Meat Processing"),
    ("C1331", "Edible Oil"),
];

/// Trades of the other enterprises: manufacturing first, then related services.
const TRADES: [(&str, &str); 16] = [
    ("C3670", "Auto Parts"),
    ("C3630", "Special Vehicle"),
    ("C3484", "Machinery Parts"),
    ("C3311", "Steel Structure"),
    ("C3971", "Electronic Components"),
    ("C3824", "Power Electronics"),
    ("C1713", "Cotton Textile"),
    ("C2927", "Plastic Products"),
    ("C1391", "Starch Products"),
    ("C1530", "Tea"),
    ("C2110", "Furniture"),
    ("C3130", "Steel Casting"),
    ("C1311", "Rice Milling"),
    ("C2231", "Paper Packaging"),
    ("G5430", "Logistics"),
    ("F5174", "Farm Machinery Trading"),
];

const BRAND_HEADS: [&str; 14] = [
    "Heng", "Xin", "Hua", "Jin", "Long", "Tai", "Da", "Fu", "Rui", "Sheng", "Kang", "Yu", "Tian",
    "Chang",
];
const BRAND_TAILS: [&str; 15] = [
    "tai", "da", "xin", "yuan", "feng", "sheng", "hong", "li", "cheng", "an", "kang", "rui", "hua",
    "tong", "jia",
];
const SURNAMES: [&str; 12] = [
    "Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou", "Xu", "Sun",
];
const GIVEN: [&str; 10] = [
    "Wei", "Fang", "Min", "Jing", "Qiang", "Lei", "Yan", "Jun", "Hong", "Ping",
];

/// Position of the first provincial-list enterprise; the national ones come first.
const FIRST_PROVINCIAL: usize = NATIONAL_KEY;
/// Enterprises on either list come first, then the others.
const DESIGNATED: usize = NATIONAL_KEY + PROVINCIAL_KEY;

/// Which enterprises get the special loans: nine from the national list and three from the
/// provincial one, in [`SPECIAL_LOANS_YUAN`] order.
fn special_loan_slot(i: usize) -> Option<usize> {
    match i {
        0..9 => Some(i),
        i if (FIRST_PROVINCIAL..FIRST_PROVINCIAL + 3).contains(&i) => {
            Some(9 + i - FIRST_PROVINCIAL)
        }
        _ => None,
    }
}

fn enterprise(i: usize, amount_yuan: i64) -> DemoEnterprise {
    let h = mix(i as u64);
    let (region_code, place) = REGIONS[[0, 0, 1, 2, 0][i % 5]];
    let size = size_of(i);
    let (industry_code, trade) = if i < DESIGNATED {
        KEY_TRADES[i % KEY_TRADES.len()]
    } else if size == EnterpriseSize::Large {
        TRADES[(i / 16) % 6]
    } else {
        TRADES[i % TRADES.len()]
    };
    let brand = format!(
        "{}{}",
        BRAND_HEADS[i % BRAND_HEADS.len()],
        BRAND_TAILS[i / BRAND_HEADS.len()]
    );
    let (employees, annual_revenue_yuan) = match size {
        EnterpriseSize::Micro => (8 + (h % 12) as i32, 1_200_000 + (h % 18) as i64 * 100_000),
        EnterpriseSize::Small => (
            25 + (h % 250) as i32,
            4_000_000 + (h % 150) as i64 * 100_000,
        ),
        EnterpriseSize::Medium => (
            320 + (h % 600) as i32,
            60_000_000 + (h % 300) as i64 * 1_000_000,
        ),
        EnterpriseSize::Large => (
            1_100 + (h % 2_500) as i32,
            450_000_000 + (h % 900) as i64 * 1_000_000,
        ),
    };
    let designation = match i {
        i if i < FIRST_PROVINCIAL => Some(DemoDesignation {
            list_code: NATIONAL_LIST,
            granted_on: date(2020, 2, 4) + chrono::Days::new((i % 3) as u64 * 3),
            reference: "NDRC-MIIT national key supply list 2020",
        }),
        i if i < DESIGNATED => Some(DemoDesignation {
            list_code: PROVINCIAL_LIST,
            granted_on: date(2020, 2, 10),
            reference: "Hubei provincial key enterprise list 2020",
        }),
        _ => None,
    };
    let slot = special_loan_slot(i);
    let submitted_on = match slot {
        // After every list was published, so the designation holds on the loan date.
        Some(k) => date(2020, 2, 12) + chrono::Days::new(k as u64 * 2),
        None => date(2020, 2, 3) + chrono::Days::new((i * 37 % 42) as u64),
    };
    let needed_by = submitted_on + chrono::Days::new(30 + (h % 60));
    let fate = match slot {
        Some(k) => Fate::SpecialLoan {
            rate_bps: [315, 300, 290][k % 3],
            loan_date: submitted_on + chrono::Days::new(5 + (k % 4) as u64),
        },
        None => ordinary_fate(h, submitted_on),
    };
    let purposes = [
        Purpose::WorkingCapital,
        Purpose::RawMaterials,
        Purpose::Payroll,
        Purpose::Equipment,
        Purpose::Expansion,
        Purpose::Conversion,
        Purpose::Refinancing,
    ];
    let purpose = match (slot, size) {
        (Some(_), _) => [
            Purpose::RawMaterials,
            Purpose::WorkingCapital,
            Purpose::Conversion,
        ][i % 3],
        (None, EnterpriseSize::Large) => [Purpose::Expansion, Purpose::Equipment][i % 2],
        (None, _) => purposes[(h >> 8) as usize % purposes.len()],
    };
    let large_or_medium = size >= Medium;
    let collateral = match (h >> 16) % 6 {
        0 => vec![Collateral::RealEstate, Collateral::Equipment],
        1 => vec![Collateral::Guarantee],
        // Only small firms borrow unsecured; larger ones pledge property and plant.
        2 if large_or_medium => vec![Collateral::RealEstate, Collateral::Equipment],
        2 => vec![Collateral::Credit],
        3 => vec![Collateral::Receivables, Collateral::Inventory],
        4 => vec![Collateral::RealEstate],
        _ => vec![Collateral::Guarantee, Collateral::Receivables],
    };
    let term_months = match (slot, purpose) {
        (Some(_), _) => 12,
        (None, Purpose::Equipment | Purpose::Expansion) if large_or_medium => {
            [24, 36, 48, 60][(h >> 20) as usize % 4]
        }
        (None, Purpose::Equipment | Purpose::Expansion) => [12, 24, 36][(h >> 20) as usize % 3],
        _ => [6, 12, 12, 24][(h >> 20) as usize % 4],
    };
    let max_rate_bps = match (h >> 24) % 4 {
        0 => None,
        1 => Some(550),
        _ => Some(650),
    };
    let surname = SURNAMES[(h >> 28) as usize % SURNAMES.len()];
    let given = GIVEN[(h >> 32) as usize % GIVEN.len()];
    DemoEnterprise {
        index: i,
        credit_code: credit_code(region_code, i),
        name: format!("{place} {brand} {trade} Co., Ltd."),
        region_code,
        industry_code,
        size,
        above_designated_size: annual_revenue_yuan >= 20_000_000,
        employees,
        annual_revenue_yuan,
        contact_name: format!("{given} {surname}"),
        contact_phone: format!("1387222{i:04}"),
        designation,
        need: DemoNeed {
            amount_yuan,
            term_months,
            purpose,
            collateral,
            max_rate_bps,
            submitted_on,
            needed_by,
            // A few enterprises do not consent: their needs are recorded, never routed.
            consent_to_share: i % 61 != 60,
            note: format!("collected by the bureau's enterprise survey, {submitted_on}"),
        },
        fate,
    }
}

fn ordinary_fate(h: u64, submitted_on: NaiveDate) -> Fate {
    let disbursed_on = submitted_on + chrono::Days::new(6 + (h >> 40) % 15);
    match h % 100 {
        0..30 => Fate::Funded {
            declines: 0,
            disbursed_on,
        },
        30..40 => Fate::Funded {
            declines: 1,
            disbursed_on,
        },
        40..48 => Fate::ApprovedOnly,
        48..68 => Fate::Declined,
        68..78 => Fate::InformationRequested,
        78..83 => Fate::Withdrawn,
        _ => Fate::NoAnswer {
            acknowledged: h.is_multiple_of(2),
        },
    }
}

/// Size classes: the designated enterprises are small to large; the others one in sixteen
/// large, then medium, small and micro.
fn size_of(i: usize) -> EnterpriseSize {
    if i < DESIGNATED {
        return [Small, Medium, Small, EnterpriseSize::Large][i % 4];
    }
    match i % 16 {
        0 => EnterpriseSize::Large,
        1..=4 => Medium,
        5..=11 => Small,
        _ => Micro,
    }
}

/// Every need's amount: the special-loan enterprises ask for exactly their loan; the others'
/// draws by size are scaled so that all needs total [`TOTAL_DEMAND_YUAN`], in ¥10,000 steps.
fn amounts_yuan() -> Vec<i64> {
    const STEP: i64 = 10_000;
    let mut amounts = vec![0i64; ENTERPRISES];
    let special: i64 = SPECIAL_LOANS_YUAN.iter().sum();
    let mut drawn = Vec::new();
    for (i, amount) in amounts.iter_mut().enumerate() {
        if let Some(k) = special_loan_slot(i) {
            *amount = SPECIAL_LOANS_YUAN[k];
            continue;
        }
        let h = mix(i as u64 ^ 0x5eed);
        // In ¥10,000 steps.
        let (low, span) = match size_of(i) {
            EnterpriseSize::Large => (8_000, 14_000),
            Medium => (1_500, 4_500),
            Small => (200, 1_300),
            Micro => (30, 270),
        };
        drawn.push((i, low + (h % span) as i64));
    }
    let target = (TOTAL_DEMAND_YUAN - special) / STEP;
    let raw: i64 = drawn.iter().map(|&(_, d)| d).sum();
    let mut given = 0;
    for &(i, d) in &drawn {
        let steps = (d * target / raw).max(10);
        amounts[i] = steps * STEP;
        given += steps;
    }
    // The rounding remainder goes to the largest need.
    let largest = drawn
        .iter()
        .max_by_key(|&&(i, _)| (amounts[i], std::cmp::Reverse(i)))
        .map(|&(i, _)| i)
        .expect("there are ordinary enterprises");
    amounts[largest] += (target - given) * STEP;
    amounts
}

/// A unified social credit code: 9 (registered with market regulation), 1 (enterprise), the
/// region, an organization code with its GB 11714 check digit, and the GB 32100 check character.
fn credit_code(region_code: &str, i: usize) -> String {
    let body = format!("{:08}", 71_530_000 + i * 613);
    const WEIGHTS: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = body
        .bytes()
        .zip(WEIGHTS)
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    let check = match 11 - sum % 11 {
        10 => 'X',
        11 => '0',
        d => char::from_digit(d, 10).expect("a digit"),
    };
    crate::domain::credit_code_with_check(&format!("91{region_code}{body}{check}"))
}

/// SplitMix64: a fixed, well-spread function of the enterprise's position.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const fn date(year: i32, month: u32, day: u32) -> NaiveDate {
    match NaiveDate::from_ymd_opt(year, month, day) {
        Some(d) => d,
        None => panic!("a valid date"),
    }
}

#[cfg(test)]
mod tests;
