//! Text that comes from the guest (its console, the agent's error messages) made safe to show
//! on a terminal: a guest must not be able to move the cursor, retitle the window, clear the
//! screen or paste into the shell of whoever reads `husk logs` or a containerd error.
//!
//! Control characters (C0 but tab, DEL, C1) become `\xNN` (`\u{NN}` for C1), bytes that are
//! not UTF-8 become `\xNN`. Newlines are kept or escaped as the caller asks; the carriage
//! return of a CR LF pair (what a serial console writes) is dropped when newlines are kept.

/// Most bytes of a guest message put into one error string.
pub const MAX_MESSAGE: usize = 2048;

/// Escapes `bytes` for a terminal (see the module documentation).
pub fn escape_controls(bytes: &[u8], keep_newlines: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        let mut chars = chunk.valid().chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\n' if keep_newlines => out.push('\n'),
                '\t' => out.push('\t'),
                '\r' if keep_newlines && chars.peek() == Some(&'\n') => {}
                c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A guest message for an error string: escaped, on one line, and cut after
/// [`MAX_MESSAGE`] bytes (a guest may send megabytes).
pub fn message(text: &str) -> String {
    let bytes = text.as_bytes();
    if bytes.len() <= MAX_MESSAGE {
        return escape_controls(bytes, false);
    }
    let mut cut = escape_controls(&bytes[..MAX_MESSAGE], false);
    cut.push_str(&format!("... ({} more bytes)", bytes.len() - MAX_MESSAGE));
    cut
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_escaped_and_text_is_kept() {
        let evil = b"ok line\r\n\x1b]0;pwned\x07\x1b[2J\rover\x7f tab\there \xc2\x9b31m caf\xc3\xa9 \xff\xfe end\n";
        let out = escape_controls(evil, true);
        assert_eq!(out, "ok line\n\\x1b]0;pwned\\x07\\x1b[2J\\x0dover\\x7f tab\there \\u{9b}31m caf\u{e9} \\xff\\xfe end\n");
        assert!(!out.bytes().any(|b| b < 0x20 && b != b'\n' && b != b'\t'));
        assert_eq!(escape_controls(b"a\r\nb\n", false), "a\\x0d\\x0ab\\x0a");
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(10_000);
        let m = message(&long);
        assert!(m.len() < MAX_MESSAGE + 40 && m.ends_with("... (7952 more bytes)"), "{}", &m[m.len() - 40..]);
        assert_eq!(message("bad\x1b[31m"), "bad\\x1b[31m");
    }
}
