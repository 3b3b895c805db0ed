//! Where an HTTP/1.1 response ends in a keep-alive stream: after `content-length` bytes of
//! body, after the last chunk of a chunked body, or right after the head for the statuses that
//! have no body. The body itself is skipped, not kept.

/// The longest head accepted (status line and headers).
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Bytes of the buffer the response took, head and body.
    pub len: usize,
}

/// The first complete response in `buf`: `Ok(None)` while more bytes are needed (interim 1xx
/// responses are skipped), an error for what is not a framed HTTP/1.1 response.
pub fn parse(buf: &[u8]) -> Result<Option<Response>, String> {
    let mut at = 0;
    loop {
        let Some(head_len) = find(&buf[at..], b"\r\n\r\n").map(|i| i + 4) else {
            return if buf.len() - at > MAX_HEAD {
                Err(format!("a response head over {MAX_HEAD} bytes"))
            } else {
                Ok(None)
            };
        };
        let head = std::str::from_utf8(&buf[at..at + head_len - 4])
            .map_err(|_| "a response head that is not UTF-8".to_string())?;
        let mut lines = head.split("\r\n");
        let status = status(lines.next().unwrap_or_default())?;
        let body_at = at + head_len;
        if (100..200).contains(&status) {
            at = body_at;
            continue;
        }
        if status == 204 || status == 304 {
            return Ok(Some(Response {
                status,
                len: body_at,
            }));
        }
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("a header line without ':': {line:?}"))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("content-length {value:?}"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
        let end = if chunked {
            chunked_end(buf, body_at)?
        } else if let Some(length) = length {
            Some(body_at + length).filter(|&end| end <= buf.len())
        } else {
            return Err(format!(
                "a {status} response with neither content-length nor chunked encoding \
                 (its end would be the connection's)"
            ));
        };
        return Ok(end.map(|len| Response { status, len }));
    }
}

/// `HTTP/1.1 200 OK` -> 200.
fn status(line: &str) -> Result<u16, String> {
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(format!("a status line {line:?}")),
    }
}

/// Where a chunked body that starts at `at` ends (after its trailers), or `None` if `buf` does
/// not hold all of it yet.
fn chunked_end(buf: &[u8], mut at: usize) -> Result<Option<usize>, String> {
    loop {
        let Some(line_len) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + line_len])
            .map_err(|_| "a chunk size that is not UTF-8".to_string())?;
        let digits = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(digits, 16).map_err(|_| format!("a chunk size {line:?}"))?;
        at += line_len + 2;
        if size == 0 {
            // Trailers, if any, then an empty line.
            loop {
                let Some(len) = find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += len + 2;
                if len == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("a chunk not followed by CRLF".to_string());
        }
        at += size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(status: u16, len: usize) -> Result<Option<Response>, String> {
        Ok(Some(Response { status, len }))
    }

    #[test]
    fn a_content_length_body_ends_after_its_bytes() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse(r), done(200, r.len()));
        assert_eq!(parse(&r[..r.len() - 1]), Ok(None));
        let two = [&r[..], &r[..]].concat();
        assert_eq!(parse(&two), done(200, r.len()));
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers() {
        let r = b"HTTP/1.1 503 x\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nt: 1\r\n\r\n";
        assert_eq!(parse(r), done(503, r.len()));
        for cut in 1..r.len() {
            assert_eq!(parse(&r[..cut]), Ok(None), "cut at {cut}");
        }
        let bad = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n";
        assert!(parse(bad).is_err());
    }

    #[test]
    fn interim_responses_are_skipped_and_some_statuses_have_no_body() {
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse(r), done(204, r.len()));
    }

    #[test]
    fn what_is_not_a_framed_response_is_an_error() {
        assert!(parse(b"HTTP/1.1 200 OK\r\n\r\nbody").is_err());
        assert!(parse(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(parse(&vec![b'a'; MAX_HEAD + 1]).is_err());
    }
}
