//! The unified social credit code parser: any text is refused with a message or accepted as the
//! canonical code of the trimmed, upper-cased input, whose check character is the one GB
//! 32100-2015 computes.

#![no_main]

use finmatch::domain::{CreditCode, credit_code_with_check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    match CreditCode::parse(&raw) {
        Ok(code) => {
            let canonical = code.as_str();
            assert_eq!(canonical, raw.trim().to_ascii_uppercase());
            assert_eq!(canonical.len(), 18);
            assert_eq!(credit_code_with_check(&canonical[..17]), canonical);
            assert_eq!(CreditCode::parse(canonical).as_ref(), Ok(&code));
            assert_eq!(
                CreditCode::parse(&canonical.to_ascii_lowercase()).as_ref(),
                Ok(&code)
            );
        }
        Err(error) => {
            assert!(!error.to_string().is_empty());
            // Case never decides: the parser upper-cases what it reads.
            assert!(CreditCode::parse(&raw.to_ascii_lowercase()).is_err());
        }
    }
});
