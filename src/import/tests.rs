use super::*;
use std::path::PathBuf;

const HEADER: &str = "credit_code,enterprise_name,region_code,industry_code,size,amount_yuan,\
                      term_months,purpose,collateral,max_rate_bps,needed_by,consent";

fn rows(body: &str) -> (Columns, Vec<csv::StringRecord>) {
    let text = format!("{HEADER}\n{body}");
    let mut csv = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let columns = Columns::from_header(csv.headers().unwrap()).unwrap();
    let records = csv.records().map(Result::unwrap).collect();
    (columns, records)
}

#[test]
fn a_row_maps_to_an_enterprise_and_a_need() {
    let (columns, records) = rows(
        "91421300MA4912345X, Suizhou Valve Co. ,421303,C3443,small,1500000.5,12,\
         working_capital,credit; real_estate,435,2020-04-30,yes\n",
    );
    let row = parse_row(&columns, &records[0], 2).unwrap();
    assert_eq!(row.row, 2);
    assert_eq!(row.enterprise.credit_code, "91421300MA4912345X");
    assert_eq!(row.enterprise.name, "Suizhou Valve Co.");
    assert_eq!(row.enterprise.region_code, "421303");
    assert_eq!(row.enterprise.industry_code, "C3443");
    assert_eq!(row.enterprise.size, pb::EnterpriseSize::Small as i32);
    assert_eq!(row.need.amount_minor, 150_000_050);
    assert_eq!(row.need.term_months, 12);
    assert_eq!(row.need.purpose, pb::Purpose::WorkingCapital as i32);
    assert_eq!(
        row.need.collateral,
        vec![
            pb::Collateral::Credit as i32,
            pb::Collateral::RealEstate as i32
        ]
    );
    assert_eq!(row.need.max_rate_bps, Some(435));
    assert_eq!(row.need.needed_by, "2020-04-30");
    assert!(row.need.consent_to_share);
    assert_eq!(row.need.channel, pb::Channel::Bureau as i32);
    assert_eq!(row.need.enterprise_id, "");
}

#[test]
fn columns_may_come_in_any_order_and_rate_may_be_empty() {
    let text = "consent,needed_by,max_rate_bps,collateral,purpose,term_months,amount_yuan,\
                size,industry_code,region_code,enterprise_name,credit_code\n\
                NO,2020-05-31,,Guarantee,raw materials,6,80000,MICRO,C27,421381,Guangshui Co,X\n";
    let mut csv = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let columns = Columns::from_header(csv.headers().unwrap()).unwrap();
    let record = csv.records().next().unwrap().unwrap();
    let row = parse_row(&columns, &record, 2).unwrap();
    assert_eq!(row.enterprise.credit_code, "X");
    assert_eq!(row.enterprise.size, pb::EnterpriseSize::Micro as i32);
    assert_eq!(row.need.purpose, pb::Purpose::RawMaterials as i32);
    assert_eq!(row.need.collateral, vec![pb::Collateral::Guarantee as i32]);
    assert_eq!(row.need.max_rate_bps, None);
    assert_eq!(row.need.amount_minor, 8_000_000);
    assert!(!row.need.consent_to_share);
}

#[test]
fn a_bad_row_names_every_bad_column() {
    let (columns, records) =
        rows("X,Name,421303,C27,huge,12.345,twelve,gambling,credit;gold,high,2020-04-30,maybe\n");
    let message = parse_row(&columns, &records[0], 7).unwrap_err();
    for column in [
        "size:",
        "amount_yuan:",
        "term_months:",
        "purpose:",
        "collateral:",
        "max_rate_bps:",
        "consent:",
    ] {
        assert!(message.contains(column), "{column} in {message}");
    }
    assert!(
        message.contains("\"gold\" is not one of credit, guarantee, real_estate"),
        "{message}"
    );
}

#[test]
fn a_header_without_a_column_is_refused_naming_it() {
    let header = csv::StringRecord::from(vec!["credit_code", "enterprise_name"]);
    let error = Columns::from_header(&header).unwrap_err().to_string();
    assert!(error.contains("region_code"), "{error}");
    assert!(error.contains("consent"), "{error}");
    assert!(
        !error.contains("lacks the column(s) credit_code"),
        "{error}"
    );
}

#[test]
fn yuan_convert_to_fen_exactly() {
    assert_eq!(yuan_to_minor("0"), Ok(0));
    assert_eq!(yuan_to_minor("1"), Ok(100));
    assert_eq!(yuan_to_minor("1.5"), Ok(150));
    assert_eq!(yuan_to_minor("1.05"), Ok(105));
    assert_eq!(yuan_to_minor("3560000000"), Ok(356_000_000_000));
    assert!(yuan_to_minor("1.005").is_err());
    assert!(yuan_to_minor("-1").is_err());
    assert!(yuan_to_minor("1e6").is_err());
    assert!(yuan_to_minor("").is_err());
    assert!(yuan_to_minor(".5").is_err());
    assert!(yuan_to_minor("99999999999999999999").is_err());
}

#[test]
fn keys_are_stable_per_file_and_row_and_differ_between_files() {
    let a = content_digest(&b"credit_code\nX\n"[..]).unwrap();
    let again = content_digest(&b"credit_code\nX\n"[..]).unwrap();
    let b = content_digest(&b"credit_code\nY\n"[..]).unwrap();
    assert_eq!(a.len(), 32);
    assert_eq!(a, again);
    assert_ne!(a, b);
    assert_eq!(idempotency_key(&a, 2), format!("import-{a}-2"));
    assert_ne!(idempotency_key(&a, 2), idempotency_key(&a, 3));
    assert_ne!(idempotency_key(&a, 2), idempotency_key(&b, 2));
    assert!(idempotency_key(&a, u64::MAX).len() <= 128);
}

#[test]
fn the_report_sits_beside_the_input() {
    assert_eq!(
        report_path(Path::new("/data/needs.csv")),
        PathBuf::from("/data/needs.csv.import-report.csv")
    );
}

#[test]
fn the_sample_file_parses_without_a_bad_row() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/needs-sample.csv");
    let mut csv = reader(&path).unwrap();
    let columns = Columns::from_header(csv.headers().unwrap()).unwrap();
    let mut count = 0;
    for (i, record) in csv.records().enumerate() {
        let row = parse_row(&columns, &record.unwrap(), i as u64 + 2);
        assert!(row.is_ok(), "row {}: {:?}", i + 2, row);
        let code = row.unwrap().enterprise.credit_code;
        assert!(crate::domain::CreditCode::parse(&code).is_ok(), "{code}");
        count += 1;
    }
    assert!(count >= 5, "{count} rows");
}
