//! `Range: bytes=…` requests on a blob of known size (RFC 9110 §14), decided without I/O.
//! Parsing is `http-range-header`'s; this module only chooses what to answer.

/// What to send for a GET of a `size`-byte blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole blob (no Range header, an empty blob, or several ranges: the
    /// spec lets a server answer those with the whole representation).
    Whole,
    /// 206 with bytes `start..=end` (`Content-Range: bytes start-end/size`).
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Decides the answer to `header` (the Range header value, if any) for a blob of `size`
/// bytes. A malformed header is ignored (200), as RFC 9110 allows; an unsatisfiable one
/// (starting past the end) is 416.
pub fn answer(header: Option<&str>, size: u64) -> RangeAnswer {
    use http_range_header::RangeUnsatisfiableError;
    let Some(value) = header else { return RangeAnswer::Whole };
    if size == 0 {
        return RangeAnswer::Whole;
    }
    let parsed = match http_range_header::parse_range_header(value) {
        Ok(p) => p,
        Err(_) => return RangeAnswer::Whole,
    };
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => RangeAnswer::Partial { start: *ranges[0].start(), end: *ranges[0].end() },
        Ok(_) => RangeAnswer::Whole,
        Err(RangeUnsatisfiableError::Unsatisfiable) => RangeAnswer::Unsatisfiable,
        Err(_) => RangeAnswer::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ranges_of_every_form() {
        assert_eq!(answer(Some("bytes=0-9"), 100), RangeAnswer::Partial { start: 0, end: 9 });
        assert_eq!(answer(Some("bytes=90-"), 100), RangeAnswer::Partial { start: 90, end: 99 });
        assert_eq!(answer(Some("bytes=-10"), 100), RangeAnswer::Partial { start: 90, end: 99 });
        assert_eq!(answer(Some("bytes=95-200"), 100), RangeAnswer::Partial { start: 95, end: 99 });
    }

    #[test]
    fn whole_unsatisfiable_and_ignored() {
        assert_eq!(answer(None, 100), RangeAnswer::Whole);
        assert_eq!(answer(Some("bytes=100-"), 100), RangeAnswer::Unsatisfiable);
        assert_eq!(answer(Some("bytes=0-1,5-6"), 100), RangeAnswer::Whole);
        assert_eq!(answer(Some("items=0-1"), 100), RangeAnswer::Whole);
        assert_eq!(answer(Some("bytes=0-1"), 0), RangeAnswer::Whole);
    }
}
