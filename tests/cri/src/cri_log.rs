//! The CRI container log format kubelet reads: one record a line,
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <content>`; P marks a partial line whose rest
//! follows in the next records of the same stream.

use chrono::{DateTime, FixedOffset};

/// A malformed record.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("line {line}: [{text}] is not `<time> <stream> <F|P> <content>`")]
    Shape { line: usize, text: String },
    #[error("line {line}: time [{time}] is not RFC 3339")]
    Time {
        line: usize,
        time: String,
        #[source]
        source: chrono::ParseError,
    },
    #[error("line {line}: stream [{stream}] is neither stdout nor stderr")]
    Stream { line: usize, stream: String },
    #[error("line {line}: tag [{tag}] is neither F nor P")]
    Tag { line: usize, tag: String },
}

/// One record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub time: DateTime<FixedOffset>,
    pub stderr: bool,
    pub partial: bool,
    pub content: String,
}

/// Parses a whole log file. Lines are cut at '\n' only: content may hold any other byte.
pub fn parse(text: &str) -> Result<Vec<Record>, LogError> {
    let mut out = Vec::new();
    for (i, raw) in text.split_terminator('\n').enumerate() {
        let line = i + 1;
        let mut parts = raw.splitn(4, ' ');
        let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(LogError::Shape { line, text: raw.chars().take(120).collect() });
        };
        let content = parts.next().unwrap_or("").to_string();
        let time = DateTime::parse_from_rfc3339(time).map_err(|source| LogError::Time { line, time: time.into(), source })?;
        let stderr = match stream {
            "stdout" => false,
            "stderr" => true,
            s => return Err(LogError::Stream { line, stream: s.into() }),
        };
        let partial = match tag {
            "F" => false,
            "P" => true,
            t => return Err(LogError::Tag { line, tag: t.into() }),
        };
        out.push(Record { time, stderr, partial, content });
    }
    Ok(out)
}

/// The full lines of one stream: partial records joined with the record that ends them.
pub fn lines(records: &[Record], stderr: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for r in records.iter().filter(|r| r.stderr == stderr) {
        cur.push_str(&r.content);
        if !r.partial {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_partial_lines() {
        let text = "2026-12-06T10:00:00.123456789Z stdout P abc\n\
                    2026-12-06T10:00:00.2Z stderr F e r r\n\
                    2026-12-06T10:00:00.3+01:00 stdout F def\n\
                    2026-12-06T10:00:00.4Z stdout F \n";
        let r = parse(text).unwrap();
        assert_eq!(r.len(), 4);
        assert!(r[0].partial && !r[0].stderr);
        assert_eq!(r[1].content, "e r r");
        assert_eq!(lines(&r, false), vec!["abcdef".to_string(), String::new()]);
        assert_eq!(lines(&r, true), vec!["e r r".to_string()]);
    }

    #[test]
    fn malformed_records_name_the_line() {
        let e = parse("2026-12-06T10:00:00Z stdout F ok\nnot-a-time stdout F x\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2: time [not-a-time]"), "{e}");
        assert!(matches!(parse("2026-12-06T10:00:00Z stdin F x\n"), Err(LogError::Stream { .. })));
        assert!(matches!(parse("2026-12-06T10:00:00Z stdout X x\n"), Err(LogError::Tag { .. })));
        assert!(matches!(parse("2026-12-06T10:00:00Z\n"), Err(LogError::Shape { .. })));
    }
}
