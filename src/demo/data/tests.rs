use std::collections::HashSet;

use super::*;
use crate::domain::CreditCode;

#[test]
fn the_needs_total_exactly_3_56_billion_yuan_and_each_fits_a_product() {
    let all = enterprises();
    assert_eq!(all.len(), 196);
    let total: i64 = all.iter().map(|e| e.need.amount_yuan).sum();
    assert_eq!(total, 3_560_000_000);
    let largest = BANKS
        .iter()
        .flat_map(|b| b.products.iter())
        .map(|p| p.max_yuan)
        .max()
        .unwrap();
    for e in &all {
        assert!(
            (100_000..=largest).contains(&e.need.amount_yuan),
            "{}: {}",
            e.name,
            e.need.amount_yuan
        );
    }
}

#[test]
fn credit_codes_are_valid_and_unique_and_names_unique() {
    let all = enterprises();
    let codes: HashSet<_> = all.iter().map(|e| e.credit_code.clone()).collect();
    let names: HashSet<_> = all.iter().map(|e| e.name.clone()).collect();
    assert_eq!(codes.len(), 196);
    assert_eq!(names.len(), 196);
    for e in &all {
        CreditCode::parse(&e.credit_code).unwrap();
        assert!(e.credit_code[2..8] == *e.region_code);
    }
}

#[test]
fn twenty_two_national_and_eight_provincial_and_twelve_special_loans_of_137_million() {
    let all = enterprises();
    let on = |list| {
        all.iter()
            .filter(|e| e.designation.as_ref().is_some_and(|d| d.list_code == list))
            .count()
    };
    assert_eq!((on(NATIONAL_LIST), on(PROVINCIAL_LIST)), (22, 8));
    let special: Vec<_> = all
        .iter()
        .filter(|e| matches!(e.fate, Fate::SpecialLoan { .. }))
        .collect();
    assert_eq!(special.len(), 12);
    assert!(special.iter().all(|e| e.designation.is_some()));
    let total: i64 = special.iter().map(|e| e.need.amount_yuan).sum();
    assert_eq!(total, 137_000_000);
    for e in special {
        let Fate::SpecialLoan {
            rate_bps,
            loan_date,
        } = e.fate
        else {
            unreachable!()
        };
        assert!(rate_bps <= PROGRAM.rate_cap_bps);
        assert!(loan_date >= PROGRAM.loan_date_from);
        assert!(loan_date >= e.designation.as_ref().unwrap().granted_on);
        assert!(e.need.needed_by >= loan_date);
        let takers = BANKS
            .iter()
            .flat_map(|b| b.products)
            .filter(|p| p.special && (p.min_yuan..=p.max_yuan).contains(&e.need.amount_yuan))
            .count();
        assert!(takers >= 5, "{}: {takers} special products take it", e.name);
    }
}

#[test]
fn the_designated_banks_quotas_fit_the_program_and_cover_the_special_loans() {
    let quotas: i64 = BANKS.iter().filter_map(|b| b.special_quota_yuan).sum();
    assert!(quotas <= PROGRAM.total_quota_yuan);
    assert!(quotas >= SPECIAL_LOANS_YUAN.iter().sum::<i64>());
    assert_eq!(
        BANKS
            .iter()
            .filter(|b| b.special_quota_yuan.is_some())
            .count(),
        7
    );
}

#[test]
fn the_data_set_is_the_same_every_time() {
    assert_eq!(enterprises(), enterprises());
}
