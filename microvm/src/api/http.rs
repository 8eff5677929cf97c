//! Reading one HTTP/1.1 request (httparse does the parsing) and writing a response.

use std::io::{Read, Write};

/// Most header bytes accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most body bytes accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// Method, upper case.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Why a request could not be read; each maps to a 4xx status.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Malformed request.
    #[error("malformed request: {0}")]
    Bad(String),
    /// Headers or body too large.
    #[error("request too large")]
    TooLarge,
    /// The peer went away.
    #[error("connection closed")]
    Io(#[source] std::io::Error),
}

/// Reads one request from `s`.
pub fn read_request<S: Read>(s: &mut S) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).map_err(HttpError::Io)?;
        if n == 0 {
            return Err(HttpError::Bad("connection closed before the end of the headers".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = req.method.unwrap_or("").to_ascii_uppercase();
                let path = req.path.unwrap_or("/").split('?').next().unwrap_or("/").to_string();
                let mut len = 0usize;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        len =
                            std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()).ok_or_else(|| HttpError::Bad("bad Content-Length".into()))?;
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        return Err(HttpError::Bad("chunked bodies are not supported; send Content-Length".into()));
                    }
                }
                if len > MAX_BODY {
                    return Err(HttpError::TooLarge);
                }
                let mut body = buf[head_len..].to_vec();
                body.truncate(len);
                while body.len() < len {
                    let n = s.read(&mut chunk).map_err(HttpError::Io)?;
                    if n == 0 {
                        return Err(HttpError::Bad("body shorter than Content-Length".into()));
                    }
                    let take = n.min(len - body.len());
                    body.extend_from_slice(&chunk[..take]);
                }
                return Ok(Request { method, path, body });
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(HttpError::TooLarge);
                }
            }
            Err(e) => return Err(HttpError::Bad(e.to_string())),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        _ => "Internal Server Error",
    }
}

/// Writes a response with a JSON body (or none for 204) and `Connection: close`.
pub fn write_response<S: Write>(s: &mut S, status: u16, body: &str) -> std::io::Result<()> {
    let head = if status == 204 {
        "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_string()
    } else {
        format!("HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", reason(status), body.len() + 1)
    };
    s.write_all(head.as_bytes())?;
    if status != 204 {
        s.write_all(body.as_bytes())?;
        s.write_all(b"\n")?;
    }
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_with_body() {
        let raw = b"PUT /vm/pause?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}";
        let r = read_request(&mut &raw[..]).unwrap();
        assert_eq!(r, Request { method: "PUT".into(), path: "/vm/pause".into(), body: b"{}".to_vec() });
    }

    #[test]
    fn rejects_oversized_and_malformed() {
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', 10_000));
        assert!(matches!(read_request(&mut &big[..]), Err(HttpError::TooLarge)));
        let raw = b"PUT / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n";
        assert!(matches!(read_request(&mut &raw[..]), Err(HttpError::TooLarge)));
        assert!(matches!(read_request(&mut &b"\x00\x01 nonsense\r\n\r\n"[..]), Err(HttpError::Bad(_))));
        let raw = b"PUT / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab";
        assert!(matches!(read_request(&mut &raw[..]), Err(HttpError::Bad(_))));
    }

    #[test]
    fn writes_json_response() {
        let mut out = Vec::new();
        write_response(&mut out, 200, "{\"a\":1}").unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n") && s.contains("Content-Length: 8\r\n") && s.ends_with("{\"a\":1}\n"));
    }
}
