//! Distinguished names as BoringSSL prints them (`X509_NAME_print_ex` with
//! `XN_FLAG_RFC2253`), byte for byte: no crate renders them so.

use x509_parser::der_parser::asn1_rs::{Any, Tag};
use x509_parser::prelude::X509Name;

use super::hex;

/// The short names BoringSSL prints for attribute types (`OBJ_nid2sn`); other types print as
/// their dotted OID with the value dumped in hex (`XN_FLAG_DUMP_UNKNOWN_FIELDS`).
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.13" => "description",
        "2.5.4.15" => "businessCategory",
        "2.5.4.17" => "postalCode",
        "2.5.4.41" => "name",
        "2.5.4.42" => "GN",
        "2.5.4.43" => "initials",
        "2.5.4.44" => "generationQualifier",
        "2.5.4.46" => "dnQualifier",
        "2.5.4.65" => "pseudonym",
        "2.5.4.97" => "organizationIdentifier",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.3.6.1.4.1.311.60.2.1.1" => "jurisdictionL",
        "1.3.6.1.4.1.311.60.2.1.2" => "jurisdictionST",
        "1.3.6.1.4.1.311.60.2.1.3" => "jurisdictionC",
        _ => return None,
    })
}

/// `X509_NAME_print_ex(name, XN_FLAG_RFC2253)`: attributes last to first, `,` between RDNs
/// and `+` inside one, `type=value` with RFC 2253 escaping, bytes above 0x7F and control
/// characters as `\XX`.
pub fn rfc2253(name: &X509Name<'_>) -> String {
    let mut attributes = Vec::new();
    for (rdn, set) in name.iter_rdn().enumerate() {
        for atv in set.iter() {
            attributes.push((rdn, atv));
        }
    }
    let mut out = String::new();
    let mut previous: Option<usize> = None;
    for (rdn, atv) in attributes.into_iter().rev() {
        if let Some(p) = previous {
            out.push(if p == rdn { '+' } else { ',' });
        }
        previous = Some(rdn);
        let oid = atv.attr_type().to_id_string();
        match short_name(&oid) {
            Some(sn) => {
                out.push_str(sn);
                out.push('=');
                push_value(&mut out, atv.attr_value());
            }
            None => {
                out.push_str(&oid);
                out.push('=');
                push_der_dump(&mut out, atv.attr_value());
            }
        }
    }
    out
}

/// `#` and the value's DER in upper-case hex (`ASN1_STRFLGS_DUMP_DER`).
fn push_der_dump(out: &mut String, value: &Any<'_>) {
    let data = value.data;
    let mut der = Vec::with_capacity(data.len() + 6);
    der.push(
        value.tag().0 as u8
            | if value.header.is_constructed() {
                0x20
            } else {
                0
            },
    );
    let len = data.len();
    if len < 0x80 {
        der.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes
            .iter()
            .position(|&b| b != 0)
            .unwrap_or(bytes.len() - 1);
        der.push(0x80 | (bytes.len() - skip) as u8);
        der.extend_from_slice(&bytes[skip..]);
    }
    der.extend_from_slice(data);
    out.push('#');
    out.push_str(&hex(&der).to_ascii_uppercase());
}

/// The value's characters (decoded by string type, then UTF-8 encoded), each byte escaped as
/// BoringSSL's `do_esc_char` does with `ASN1_STRFLGS_RFC2253`.
fn push_value(out: &mut String, value: &Any<'_>) {
    let data = value.data;
    let chars: Vec<char> = match value.tag() {
        Tag::Utf8String => match std::str::from_utf8(data) {
            Ok(s) => s.chars().collect(),
            Err(_) => return push_der_dump(out, value),
        },
        // One byte a character (T61String read as Latin-1, as BoringSSL does).
        Tag::PrintableString
        | Tag::Ia5String
        | Tag::T61String
        | Tag::NumericString
        | Tag::VisibleString
        | Tag::GeneralString
        | Tag::GraphicString
        | Tag::VideotexString => data.iter().map(|&b| b as char).collect(),
        Tag::BmpString => {
            if !data.len().is_multiple_of(2) {
                return push_der_dump(out, value);
            }
            data.chunks(2)
                .map(|c| char::from_u32(u32::from(c[0]) << 8 | u32::from(c[1])).unwrap_or('?'))
                .collect()
        }
        Tag::UniversalString => {
            if !data.len().is_multiple_of(4) {
                return push_der_dump(out, value);
            }
            data.chunks(4)
                .map(|c| {
                    char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])).unwrap_or('?')
                })
                .collect()
        }
        _ => return push_der_dump(out, value),
    };
    let count = chars.len();
    for (i, c) in chars.into_iter().enumerate() {
        let mut utf8 = [0u8; 4];
        let bytes = c.encode_utf8(&mut utf8).as_bytes();
        let n = bytes.len();
        for (j, &b) in bytes.iter().enumerate() {
            let first = i == 0 && j == 0;
            let last = i + 1 == count && j + 1 == n;
            escape_byte(out, b, first, last);
        }
    }
}

fn escape_byte(out: &mut String, b: u8, first: bool, last: bool) {
    // Bytes above 0x7F (`ASN1_STRFLGS_ESC_MSB`) and control characters (`ESC_CTRL`).
    if !(0x20..0x7f).contains(&b) {
        out.push_str(&format!("\\{b:02X}"));
    } else if matches!(b, b'\\' | b'"' | b',' | b'+' | b'<' | b'>' | b';')
        || (first && (b == b' ' || b == b'#'))
        || (last && b == b' ')
    {
        out.push('\\');
        out.push(b as char);
    } else {
        out.push(b as char);
    }
}
