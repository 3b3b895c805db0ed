//! Request-path normalisation (`normalize_path`, `merge_slashes`) and address ranges
//! (`internal_address_config`), as the connection manager applies them before routing.

use std::net::IpAddr;

/// Normalises the path part of `path_and_query` (the query is left alone):
/// `normalize_path` removes `.` and `..` segments as RFC 3986 §5.2.4 says (Envoy's
/// `PathUtil::canonicalPath`; `..` never climbs above the root) and turns `\` into `/`;
/// `merge_slashes` collapses runs of `/`.
pub fn normalize(path_and_query: &str, dot_segments: bool, merge_slashes: bool) -> String {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    let mut path = if dot_segments {
        remove_dot_segments(&path.replace('\\', "/"))
    } else {
        path.to_owned()
    };
    if merge_slashes {
        let mut merged = String::with_capacity(path.len());
        for c in path.chars() {
            if c == '/' && merged.ends_with('/') {
                continue;
            }
            merged.push(c);
        }
        path = merged;
    }
    path + query
}

fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | "%2e" | "%2E" => {
                if i == last {
                    out.push("");
                }
            }
            ".." | "%2e%2e" | "%2E%2E" | ".%2e" | ".%2E" | "%2e." | "%2E." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

/// Whether the path (not the query) holds `%2F` or `%5C`, in either case.
pub fn has_escaped_slashes(path_and_query: &str) -> bool {
    let path = path_and_query.split('?').next().unwrap_or("");
    let lower = path.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c")
}

/// `%2F` and `%5C` in the path (not the query) decoded to `/` and `\`, as Envoy's
/// `UNESCAPE_AND_REDIRECT` / `UNESCAPE_AND_FORWARD` do.
pub fn unescape_slashes(path_and_query: &str) -> String {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let escape = rest.get(i..i + 3).unwrap_or("");
        match escape.to_ascii_lowercase().as_str() {
            "%2f" => out.push('/'),
            "%5c" => out.push('\\'),
            _ => {
                out.push('%');
                rest = &rest[i + 1..];
                continue;
            }
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out + query
}

/// Whether `ip` is inside `network/prefix_len`.
pub fn in_cidr(ip: IpAddr, network: IpAddr, prefix_len: u32) -> bool {
    match (ip, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = prefix_len.min(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = prefix_len.min(128);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V4(_)) => a
            .to_ipv4_mapped()
            .is_some_and(|v4| in_cidr(IpAddr::V4(v4), network, prefix_len)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(normalize("/a/./b/../c?x=/../", true, false), "/a/c?x=/../");
        assert_eq!(normalize("/../../a", true, false), "/a");
        assert_eq!(normalize("/a/b/..", true, false), "/a/");
        assert_eq!(normalize("//a///b", false, true), "/a/b");
        assert_eq!(normalize("/a\\b", true, false), "/a/b");
    }

    #[test]
    fn escaped_slashes() {
        assert!(has_escaped_slashes("/a%2Fb"));
        assert!(!has_escaped_slashes("/a?b=%2F"));
        assert_eq!(unescape_slashes("/a%2fb%5Cc%41?x=%2F"), "/a/b\\c%41?x=%2F");
    }

    #[test]
    fn cidr_membership() {
        let net = "10.0.0.0".parse().unwrap();
        assert!(in_cidr("10.1.2.3".parse().unwrap(), net, 8));
        assert!(!in_cidr("11.1.2.3".parse().unwrap(), net, 8));
        assert!(in_cidr("::ffff:10.0.0.1".parse().unwrap(), net, 8));
    }
}
