//! The header names most messages carry, recognised on the wire without `HeaderName`'s general
//! parse: compared 8 bytes at a time in any case, no lowercasing copy, and no allocation for the
//! names `http` does not know as standard (`x-forwarded-for`, `x-request-id`, ...).

use http::HeaderName;

/// A well-known name, with its bytes as the words [`words`] reads, and the case bit of each of
/// its letters (the bits a match may differ in).
struct Known {
    name: HeaderName,
    words: [u64; 3],
    case: [u64; 3],
}

impl Known {
    const fn new(spelled: &'static str, name: HeaderName) -> Known {
        let bytes = spelled.as_bytes();
        let mut case = [0u8; 24];
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii_lowercase() {
                case[i] = 0x20;
            }
            i += 1;
        }
        Known {
            name,
            words: words_of(bytes),
            case: words_of(case.split_at(bytes.len()).0),
        }
    }

    fn matches(&self, words: &[u64; 3]) -> bool {
        // A letter's other case differs in the case bit alone; any other byte must be equal
        // (no byte that is not a letter becomes one with the case bit set).
        (words[0] | self.case[0]) == self.words[0]
            && (words[1] | self.case[1]) == self.words[1]
            && (words[2] | self.case[2]) == self.words[2]
    }
}

/// Up to 24 bytes as three words: the first 8 (zero-padded), the 8 after them for names over 16
/// bytes, and the last 8 for names over 8 (overlapping the others as the length makes them).
const fn words_of(bytes: &[u8]) -> [u64; 3] {
    let n = bytes.len();
    let mut out = [0u64; 3];
    let mut i = 0;
    while i < n && i < 8 {
        out[0] |= (bytes[i] as u64) << (8 * i);
        i += 1;
    }
    if n > 16 {
        let mut i = 0;
        while i < 8 {
            out[1] |= (bytes[8 + i] as u64) << (8 * i);
            i += 1;
        }
    }
    if n > 8 {
        let mut i = 0;
        while i < 8 {
            out[2] |= (bytes[n - 8 + i] as u64) << (8 * i);
            i += 1;
        }
    }
    out
}

/// [`words_of`] for bytes off the wire (at most 24).
fn words(bytes: &[u8]) -> [u64; 3] {
    let n = bytes.len();
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if n <= 8 {
        let mut first = [0u8; 8];
        first[..n].copy_from_slice(bytes);
        return [u64::from_le_bytes(first), 0, 0];
    }
    [word(0), if n > 16 { word(8) } else { 0 }, word(n - 8)]
}

macro_rules! known {
    ($($name:literal),* $(,)?) => {
        [$(Known::new($name, HeaderName::from_static($name))),*]
    };
}

// The well-known names of each length, the likeliest first.
static LEN_2: [Known; 1] = known!["te"];
static LEN_3: [Known; 2] = known!["via", "age"];
static LEN_4: [Known; 4] = known!["host", "date", "etag", "vary"];
static LEN_5: [Known; 2] = known!["range", "allow"];
static LEN_6: [Known; 6] = known!["accept", "server", "cookie", "origin", "expect", "pragma",];
static LEN_7: [Known; 3] = known!["upgrade", "referer", "expires"];
static LEN_8: [Known; 3] = known!["location", "if-match", "if-range"];
static LEN_10: [Known; 4] = known!["connection", "user-agent", "set-cookie", "keep-alive",];
static LEN_12: [Known; 2] = known!["content-type", "x-request-id"];
static LEN_13: [Known; 6] = known![
    "last-modified",
    "accept-ranges",
    "cache-control",
    "authorization",
    "if-none-match",
    "content-range",
];
static LEN_14: [Known; 2] = known!["content-length", "accept-charset"];
static LEN_15: [Known; 3] = known!["accept-encoding", "accept-language", "x-forwarded-for",];
static LEN_16: [Known; 4] = known![
    "content-encoding",
    "content-language",
    "content-location",
    "proxy-connection",
];
static LEN_17: [Known; 3] = known![
    "transfer-encoding",
    "if-modified-since",
    "x-forwarded-proto",
];
static LEN_19: [Known; 1] = known!["content-disposition"];

fn of_length(len: usize) -> &'static [Known] {
    match len {
        2 => &LEN_2,
        3 => &LEN_3,
        4 => &LEN_4,
        5 => &LEN_5,
        6 => &LEN_6,
        7 => &LEN_7,
        8 => &LEN_8,
        10 => &LEN_10,
        12 => &LEN_12,
        13 => &LEN_13,
        14 => &LEN_14,
        15 => &LEN_15,
        16 => &LEN_16,
        17 => &LEN_17,
        19 => &LEN_19,
        _ => &[],
    }
}

/// The header name `bytes` spell in any case, when it is one of the well-known names.
pub fn well_known(bytes: &[u8]) -> Option<HeaderName> {
    let candidates = of_length(bytes.len());
    if candidates.is_empty() {
        return None;
    }
    let words = words(bytes);
    candidates
        .iter()
        .find(|known| known.matches(&words))
        .map(|known| known.name.clone())
}

/// A header name off the wire: a well-known one at once, any other through `HeaderName`'s
/// parse (which lowercases it and refuses what is not a token).
pub fn parse(bytes: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    match well_known(bytes) {
        Some(name) => Ok(name),
        None => HeaderName::from_bytes(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn every_well_known_name_is_what_the_general_parse_makes() {
        for len in 0..64 {
            for known in of_length(len) {
                let name = &known.name;
                assert_eq!(name.as_str().len(), len, "{name} is filed under {len}");
                let spelled = name.as_str();
                let upper = spelled.to_ascii_uppercase();
                for bytes in [spelled.as_bytes(), upper.as_bytes()] {
                    assert_eq!(
                        parse(bytes).unwrap(),
                        HeaderName::from_bytes(bytes).unwrap()
                    );
                    assert!(well_known(bytes).is_some(), "{spelled}");
                }
            }
        }
    }

    #[test]
    fn a_name_with_any_one_byte_changed_is_not_that_name() {
        for len in 0..64 {
            for known in of_length(len) {
                let spelled = known.name.as_str().as_bytes();
                for at in 0..spelled.len() {
                    for byte in [0u8, b'\r', b' ', b'-', b'_', b'@', b'[', b'z', 0x80, 0xff] {
                        let mut changed = spelled.to_vec();
                        if changed[at].eq_ignore_ascii_case(&byte) {
                            continue;
                        }
                        changed[at] = byte;
                        assert_ne!(
                            well_known(&changed).as_ref(),
                            Some(&known.name),
                            "{:?}",
                            String::from_utf8_lossy(&changed)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn near_misses_go_through_the_general_parse() {
        // Same length as a well-known name, not one: parsed (or refused) as before.
        assert_eq!(well_known(b"hosT"), Some(header::HOST));
        assert_eq!(well_known(b"hozt"), None);
        assert_eq!(parse(b"hozt").unwrap().as_str(), "hozt");
        // A byte that is not a letter never matches a letter's other case.
        assert_eq!(well_known(b"content\rlength"), None);
        assert!(parse(b"content\rlength").is_err());
        assert!(parse(b"content length").is_err());
        assert!(parse(b"").is_err());
        assert_eq!(well_known(b"Content-Length"), Some(header::CONTENT_LENGTH));
    }
}
