//! The query string of an admin request: `key=value&flag`, percent-decoded as Envoy's
//! `Utility::QueryParamsMulti::parseAndDecodeQueryString` does (`+` stays a `+`). A parameter
//! without `=` is present with an empty value, which is how `?usedonly` and `?graceful` are
//! sent.

/// The parameters in their order; a name may repeat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: Option<&str>) -> Query {
        let pairs = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (decode(k), decode(v)),
                None => (decode(p), String::new()),
            })
            .collect();
        Query(pairs)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `name` is present, with any value (`?usedonly=false` still asks for used only,
    /// as in Envoy).
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the parameters of a form body (`application/x-www-form-urlencoded`), which Envoy
    /// accepts for `/runtime_modify`; there `+` is a space.
    pub fn extend_form(&mut self, body: &str) {
        for p in body.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            self.0
                .push((decode(&k.replace('+', " ")), decode(&v.replace('+', " "))));
        }
    }
}

/// Percent-decoding; an invalid escape is kept as it is, and bytes that are not UTF-8 are
/// replaced, since no admin parameter is binary.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_decodes() {
        let q = Query::parse(Some(
            "filter=a%2Eb%7C(c)&usedonly&x=1+2&bad=%zz&filter=second",
        ));
        assert_eq!(q.get("filter"), Some("a.b|(c)"));
        assert!(q.has("usedonly"));
        assert_eq!(q.get("usedonly"), Some(""));
        assert_eq!(q.get("x"), Some("1+2"));
        assert_eq!(q.get("bad"), Some("%zz"));
        assert!(!q.has("missing"));
        assert!(Query::parse(None).is_empty());
        let mut form = Query::default();
        form.extend_form("a=b+c&d");
        assert_eq!(
            form.pairs(),
            [("a".into(), "b c".into()), ("d".into(), String::new())]
        );
    }
}
