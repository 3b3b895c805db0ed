//! OCSP stapling inputs: a `TlsCertificate.ocsp_staple` response (DER, RFC 6960) read as
//! Envoy reads it, and the two facts of a certificate it is checked against (its serial
//! number, and the must-staple TLS feature extension, RFC 7633).
//!
//! Envoy accepts a response only if it is `successful`, has a basic response body, and holds
//! exactly one `SingleResponse`, for the certificate's serial number; it is expired once its
//! `nextUpdate` has passed, or always when it has none. The signature is not checked (the
//! client checks it), and neither is the certificate status: a `revoked` response is stapled
//! as given, as in Envoy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// id-pkix-ocsp-basic (1.3.6.1.5.5.7.48.1.1).
const OID_OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
/// id-pe-tlsfeature (1.3.6.1.5.5.7.1.24).
const OID_TLS_FEATURE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x18];
/// The `status_request` TLS extension, the feature must-staple lists.
const STATUS_REQUEST: u8 = 5;

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const ENUMERATED: u8 = 0x0a;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const GENERALIZED_TIME: u8 = 0x18;
/// Context-specific constructed tags `[0]`, `[1]`, `[3]`.
const CONTEXT_0: u8 = 0xa0;
const CONTEXT_3: u8 = 0xa3;

/// A parsed staple: the bytes sent on the wire and what decides whether to send them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OcspResponse {
    pub der: Vec<u8>,
    /// The serial number of the certificate it is for (big-endian, no leading zeros).
    pub serial: Vec<u8>,
    pub this_update: SystemTime,
    pub next_update: Option<SystemTime>,
}

impl OcspResponse {
    /// Parses a DER response; the errors are Envoy's where Envoy has one.
    pub fn parse(der: &[u8]) -> Result<OcspResponse, String> {
        let malformed = |what: &str| format!("OCSP response is malformed: {what}");
        let (response, _) = Der(der)
            .expect(SEQUENCE)
            .ok_or_else(|| malformed("not a DER sequence"))?;
        let mut fields = Der(response);
        let status = fields
            .expect(ENUMERATED)
            .ok_or_else(|| malformed("no responseStatus"))?
            .0;
        if status != [0] {
            return Err("OCSP response was unsuccessful".into());
        }
        let Some((bytes, _)) = fields.expect(CONTEXT_0) else {
            return Err("OCSP response has no body".into());
        };
        let (bytes, _) = Der(bytes)
            .expect(SEQUENCE)
            .ok_or_else(|| malformed("no responseBytes"))?;
        let mut bytes = Der(bytes);
        let kind = bytes
            .expect(OID)
            .ok_or_else(|| malformed("no responseType"))?
            .0;
        if kind != OID_OCSP_BASIC {
            return Err("OCSP response type is not id-pkix-ocsp-basic".into());
        }
        let basic = bytes
            .expect(OCTET_STRING)
            .ok_or_else(|| malformed("no response"))?
            .0;
        let (basic, _) = Der(basic)
            .expect(SEQUENCE)
            .ok_or_else(|| malformed("BasicOCSPResponse"))?;
        let (tbs, _) = Der(basic)
            .expect(SEQUENCE)
            .ok_or_else(|| malformed("tbsResponseData"))?;
        let mut tbs = Der(tbs);
        tbs.skip_if(CONTEXT_0); // version
        tbs.any().ok_or_else(|| malformed("responderID"))?;
        tbs.expect(GENERALIZED_TIME)
            .ok_or_else(|| malformed("producedAt"))?;
        let (responses, _) = tbs.expect(SEQUENCE).ok_or_else(|| malformed("responses"))?;
        let mut responses = Der(responses);
        let single = responses
            .expect(SEQUENCE)
            .ok_or("OCSP Response must be for one certificate only")?
            .0;
        if !responses.0.is_empty() {
            return Err("OCSP Response must be for one certificate only".into());
        }
        let mut single = Der(single);
        let (cert_id, _) = single.expect(SEQUENCE).ok_or_else(|| malformed("certID"))?;
        let mut cert_id = Der(cert_id);
        for what in ["hashAlgorithm", "issuerNameHash", "issuerKeyHash"] {
            cert_id.any().ok_or_else(|| malformed(what))?;
        }
        let serial = cert_id
            .expect(INTEGER)
            .ok_or_else(|| malformed("serialNumber"))?
            .0;
        single.any().ok_or_else(|| malformed("certStatus"))?;
        let this_update = single
            .expect(GENERALIZED_TIME)
            .and_then(|(t, _)| generalized_time(t))
            .ok_or_else(|| malformed("thisUpdate"))?;
        let next_update = match single.expect(CONTEXT_0) {
            Some((explicit, _)) => Some(
                Der(explicit)
                    .expect(GENERALIZED_TIME)
                    .and_then(|(t, _)| generalized_time(t))
                    .ok_or_else(|| malformed("nextUpdate"))?,
            ),
            None => None,
        };
        Ok(OcspResponse {
            der: der.to_vec(),
            serial: unsigned(serial).to_vec(),
            this_update,
            next_update,
        })
    }

    /// Whether it is for `certificate` (DER): the serial numbers match.
    pub fn matches(&self, certificate: &[u8]) -> bool {
        certificate_serial(certificate).is_some_and(|s| unsigned(s) == self.serial)
    }

    /// Expired: `nextUpdate` has passed, or there is none (Envoy's `isExpired`).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.next_update.is_none_or(|next| now > next)
    }
}

/// The fields of a certificate's `tbsCertificate`, from its serial number on.
fn tbs_certificate(certificate: &[u8]) -> Option<Der<'_>> {
    let (cert, _) = Der(certificate).expect(SEQUENCE)?;
    let (tbs, _) = Der(cert).expect(SEQUENCE)?;
    let mut tbs = Der(tbs);
    tbs.skip_if(CONTEXT_0); // version
    Some(tbs)
}

fn certificate_serial(certificate: &[u8]) -> Option<&[u8]> {
    tbs_certificate(certificate)?
        .expect(INTEGER)
        .map(|(s, _)| s)
}

/// Whether the certificate carries the TLS feature extension listing `status_request`
/// (must-staple).
pub fn is_must_staple(certificate: &[u8]) -> bool {
    let Some(mut tbs) = tbs_certificate(certificate) else {
        return false;
    };
    // serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo.
    for _ in 0..6 {
        if tbs.any().is_none() {
            return false;
        }
    }
    while let Some((tag, value)) = tbs.any() {
        if tag != CONTEXT_3 {
            continue;
        }
        let Some((extensions, _)) = Der(value).expect(SEQUENCE) else {
            return false;
        };
        let mut extensions = Der(extensions);
        while let Some((extension, _)) = extensions.expect(SEQUENCE) {
            let mut extension = Der(extension);
            if extension.expect(OID).map(|(o, _)| o) != Some(OID_TLS_FEATURE) {
                continue;
            }
            extension.skip_if(BOOLEAN);
            let Some((value, _)) = extension.expect(OCTET_STRING) else {
                return false;
            };
            let Some((features, _)) = Der(value).expect(SEQUENCE) else {
                return false;
            };
            let mut features = Der(features);
            while let Some((feature, _)) = features.expect(INTEGER) {
                if unsigned(feature) == [STATUS_REQUEST] {
                    return true;
                }
            }
            return false;
        }
    }
    false
}

/// An INTEGER's content without its sign-padding zeros.
fn unsigned(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes
        && !rest.is_empty()
    {
        bytes = rest;
    }
    bytes
}

/// `YYYYMMDDHHMMSS[.fff]Z`.
fn generalized_time(t: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(t).ok()?;
    let s = s.strip_suffix('Z')?;
    let whole = s.split('.').next()?;
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| whole[r].parse::<i64>().ok();
    let (year, month, day) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hour, minute, second) = (n(8..10)?, n(10..12)?, n(12..14)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A cursor over DER elements; every read is bounds-checked.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next element: its tag and contents.
    fn any(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |l, b| (l << 8) | *b as usize);
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (value, tail) = rest.split_at(len);
        self.0 = tail;
        Some((tag, value))
    }

    /// The next element if it has `tag` (the cursor stays otherwise), with what follows it.
    fn expect(&mut self, tag: u8) -> Option<(&'a [u8], &'a [u8])> {
        let mut probe = Der(self.0);
        match probe.any() {
            Some((t, value)) if t == tag => {
                self.0 = probe.0;
                Some((value, probe.0))
            }
            _ => None,
        }
    }

    fn skip_if(&mut self, tag: u8) {
        let _ = self.expect(tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generalized_times_convert_to_unix_time() {
        let t = generalized_time(b"20260101000000Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_767_225_600
        );
        let t = generalized_time(b"19700102030405.123Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            86_400 + 3 * 3600 + 4 * 60 + 5
        );
        assert!(generalized_time(b"2026010100000Z").is_none());
        assert!(generalized_time(b"20261301000000Z").is_none());
    }

    #[test]
    fn truncated_and_unsuccessful_responses_are_refused() {
        assert!(OcspResponse::parse(&[]).is_err());
        assert!(OcspResponse::parse(&[0x30, 0x05, 0x0a]).is_err());
        // SEQUENCE { ENUMERATED 1 (malformedRequest) }
        assert_eq!(
            OcspResponse::parse(&[0x30, 0x03, 0x0a, 0x01, 0x01]).unwrap_err(),
            "OCSP response was unsuccessful"
        );
        // SEQUENCE { ENUMERATED 0 } without a body.
        assert_eq!(
            OcspResponse::parse(&[0x30, 0x03, 0x0a, 0x01, 0x00]).unwrap_err(),
            "OCSP response has no body"
        );
        // A length running past the end.
        assert!(OcspResponse::parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn serials_compare_without_sign_padding() {
        assert_eq!(unsigned(&[0, 0x80, 1]), &[0x80, 1]);
        assert_eq!(unsigned(&[0]), &[0]);
    }
}
