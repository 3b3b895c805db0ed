//! Random (version 4) UUIDs, as Envoy's `x-request-id` and `%UNIQUE_ID%` are: written without
//! formatting machinery (one is made for nearly every request).

/// A new version 4 UUID in its 36-character text form (lower-case hex).
pub fn v4() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[(b >> 4) as usize];
        text[at + 1] = HEX[(b & 0x0f) as usize];
        at += 2;
    }
    text
}

/// [`v4`] as a string.
pub fn v4_string() -> String {
    // The text is ASCII hex and dashes.
    String::from_utf8_lossy(&v4()).into_owned()
}
