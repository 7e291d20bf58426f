//! `finmatch import`'s CSV parsing, as the import reads a file: any bytes give a header error,
//! or rows that are each refused with a message naming their columns or mapped to what the
//! server is sent, amounts in exact fen.

#![no_main]

use finmatch::import::{Columns, csv_reader, parse_row, yuan_to_minor};
use finmatch::proto as pb;
use libfuzzer_sys::fuzz_target;

/// Every column a row problem can be reported under.
const COLUMNS: [&str; 7] = [
    "size",
    "amount_yuan",
    "term_months",
    "purpose",
    "collateral",
    "max_rate_bps",
    "consent",
];

fuzz_target!(|data: &[u8]| {
    let mut csv = csv_reader(data);
    let Ok(header) = csv.headers().cloned() else {
        return;
    };
    let Ok(columns) = Columns::from_header(&header) else {
        return;
    };
    let amount_at = header
        .iter()
        .position(|h| h.trim().eq_ignore_ascii_case("amount_yuan"))
        .expect("a header with every column names amount_yuan");
    for (i, record) in csv.records().enumerate() {
        let Ok(record) = record else { continue };
        let row = i as u64 + 2;
        match parse_row(&columns, &record, row) {
            Ok(parsed) => {
                assert_eq!(parsed.row, row);
                let need = &parsed.need;
                let cell = record.get(amount_at).unwrap_or("").trim();
                assert_eq!(yuan_to_minor(cell), Ok(need.amount_minor));
                assert!(need.amount_minor >= 0);
                // Fen print back as the yuan they were read from.
                let printed = format!("{}.{:02}", need.amount_minor / 100, need.amount_minor % 100);
                assert_eq!(yuan_to_minor(&printed), Ok(need.amount_minor));
                assert_eq!(need.channel, pb::Channel::Bureau as i32);
                assert!(need.enterprise_id.is_empty());
                assert!(
                    pb::EnterpriseSize::try_from(parsed.enterprise.size)
                        .is_ok_and(|s| s != pb::EnterpriseSize::Unspecified)
                );
                assert!(
                    pb::Purpose::try_from(need.purpose)
                        .is_ok_and(|p| p != pb::Purpose::Unspecified)
                );
                for &c in &need.collateral {
                    assert!(
                        pb::Collateral::try_from(c).is_ok_and(|c| c != pb::Collateral::Unspecified)
                    );
                }
            }
            Err(message) => {
                // Problems are `column: what is wrong`, joined by `; ` (a quoted cell may hold
                // `; ` too, so only the first is checked whole).
                assert!(
                    COLUMNS
                        .iter()
                        .any(|c| message.starts_with(&format!("{c}: "))),
                    "a row problem that names no column: {message:?}"
                );
            }
        }
    }
});
