//! Phone numbers: any way a person writes one, normalised to the one E.164 string an
//! account is keyed by (ITU-T E.164: `+`, country code, national number, at most 15
//! digits), so that the same phone written two ways is one account.
//!
//! Parsing and validity come from the `phonenumber` crate (a port of Google's
//! libphonenumber and its per-country metadata): a number must not only look like E.164
//! but be a number the numbering plan of its country can assign (a valid length and
//! prefix), so typos and invented ranges are refused before any code is sent.

use std::str::FromStr;

use phonenumber::Mode;
use phonenumber::country::Id;

/// Why a phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Not a phone number at all (letters, too few digits, no country code and no region).
    #[error("not a phone number; write it with its country code, e.g. +14155550123")]
    Unparseable,
    /// Parsed, but not a number its country's numbering plan can assign.
    #[error("not a valid phone number for its country")]
    Invalid,
    /// The `region` given for a national number is not an ISO 3166-1 alpha-2 code.
    #[error("unknown region {0:?}; give an ISO 3166-1 alpha-2 code such as \"US\" or \"GB\"")]
    UnknownRegion(String),
}

/// Most characters a written number may have (spaces, dashes, brackets included): a
/// bound on the parser's work for hostile input.
const MAX_INPUT: usize = 64;

/// Normalises `input` to E.164 (`+14155550123`).
///
/// `input` may use spaces, dashes, dots and brackets (`+1 (415) 555-0123`). A number
/// without its country code (`(415) 555-0123`, `020 7946 0018`) needs `region`, the ISO
/// 3166-1 alpha-2 code of the country it is written in (an app passes its SIM's or its
/// user's country); with a leading `+` the region is ignored.
///
/// Errors: [`PhoneError::Unparseable`], [`PhoneError::Invalid`] (libphonenumber's
/// metadata says the country cannot assign it), [`PhoneError::UnknownRegion`].
pub fn normalize(input: &str, region: Option<&str>) -> Result<String, PhoneError> {
    let input = input.trim();
    if input.is_empty() || input.len() > MAX_INPUT {
        return Err(PhoneError::Unparseable);
    }
    let region = match region.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => Some(Id::from_str(&r.to_ascii_uppercase()).map_err(|_| PhoneError::UnknownRegion(r.to_owned()))?),
        None => None,
    };
    let number = phonenumber::parse(region, input).map_err(|_| PhoneError::Unparseable)?;
    if !phonenumber::is_valid(&number) {
        return Err(PhoneError::Invalid);
    }
    Ok(number.format().mode(Mode::E164).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_number_written_many_ways_is_one_e164_string() {
        let canonical = "+14155550123";
        for written in ["+14155550123", "+1 (415) 555-0123", "+1.415.555.0123", " +1 415 555 0123 "] {
            assert_eq!(normalize(written, None).as_deref(), Ok(canonical), "{written}");
        }
        assert_eq!(normalize("(415) 555-0123", Some("US")).as_deref(), Ok(canonical));
        assert_eq!(normalize("415 555 0123", Some("us")).as_deref(), Ok(canonical));
        // A leading + wins over the region.
        assert_eq!(normalize("+1 415 555 0123", Some("GB")).as_deref(), Ok(canonical));
        assert_eq!(normalize("020 7946 0018", Some("GB")).as_deref(), Ok("+442079460018"));
        assert_eq!(normalize("+44 (0)20 7946 0018", None).as_deref(), Ok("+442079460018"));
    }

    #[test]
    fn invalid_numbers_are_refused_with_the_reason() {
        // No country code and no region.
        assert_eq!(normalize("4155550123", None), Err(PhoneError::Unparseable));
        assert_eq!(normalize("", None), Err(PhoneError::Unparseable));
        assert_eq!(normalize("call me", None), Err(PhoneError::Unparseable));
        assert_eq!(normalize(&"1".repeat(100), None), Err(PhoneError::Unparseable));
        // E.164-shaped but not assignable: NANP area codes never start with 0 or 1, and
        // a US national number has exactly ten digits.
        assert_eq!(normalize("+10155550123", None), Err(PhoneError::Invalid));
        assert_eq!(normalize("+141555501234", None), Err(PhoneError::Invalid));
        assert_eq!(normalize("+1415555", None), Err(PhoneError::Invalid));
        assert_eq!(normalize("415 555 0123", Some("XX")), Err(PhoneError::UnknownRegion("XX".into())));
    }

    #[test]
    fn the_test_and_load_ranges_are_valid_numbers() {
        // tests/common::phone and the load generator draw from +1 415 2xx-xxxx to +1 415 9xx-xxxx.
        for n in [2_000_000u32, 2_345_678, 9_999_999] {
            let e164 = format!("+1415{n}");
            assert_eq!(normalize(&e164, None).as_deref(), Ok(e164.as_str()));
        }
    }
}
