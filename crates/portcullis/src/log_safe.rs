//! The one way a value from the network reaches a log field.
//!
//! Browsers, identity providers and upstreams control the text of query parameters
//! (`error`, `error_description`, `state`, `returnUrl`), headers, paths and error bodies.
//! Written raw into the text log format, a `%0A` in such a value starts a new line that looks
//! like one the gateway wrote (`error=access_denied%0AFORGED LOG LINE level=ERROR`), an ESC
//! byte drives the operator's terminal, and a 100 kB value floods the log.
//!
//! [`untrusted`] wraps such a value; its `Display` writes it on one line, with every control
//! character (C0, DEL, C1, and the Unicode line/paragraph separators) escaped as `\n`, `\r`,
//! `\t` or `\u{…}`, and cuts it after [`MAX_CHARS`] characters (saying how many bytes were
//! left out). Use it as `tracing::info!(idp_error = %untrusted(value), ...)`.
//!
//! ```
//! use portcullis::log_safe::untrusted;
//! assert_eq!(
//!     untrusted("access_denied\nFORGED level=ERROR").to_string(),
//!     "access_denied\\nFORGED level=ERROR"
//! );
//! ```
//!
//! Caveat: the JSON log format escapes control characters by itself; the bound on length
//! matters there too.

use std::fmt;

/// At most this many characters of an untrusted value are logged.
pub const MAX_CHARS: usize = 256;

/// A value from the network, written to logs escaped and bounded (see the module docs).
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(&'a str);

/// Wraps a value from the network for a log field.
pub fn untrusted(value: &str) -> Untrusted<'_> {
    Untrusted(value)
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for (n, (i, c)) in self.0.char_indices().enumerate() {
            if n == MAX_CHARS {
                return write!(f, "…(+{} bytes)", self.0.len() - i);
            }
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\\' => f.write_str("\\\\")?,
                c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                    write!(f, "\\u{{{:x}}}", u32::from(c))?
                }
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_start_a_line() {
        let cases = [
            ("plain value", "plain value"),
            ("a\nb", "a\\nb"),
            ("a\r\nb", "a\\r\\nb"),
            ("tab\there", "tab\\there"),
            ("esc\u{1b}[31mred", "esc\\u{1b}[31mred"),
            ("nul\0", "nul\\u{0}"),
            ("del\u{7f}", "del\\u{7f}"),
            ("c1\u{85}next", "c1\\u{85}next"),
            ("ls\u{2028}ps\u{2029}", "ls\\u{2028}ps\\u{2029}"),
            ("back\\slash\\n", "back\\\\slash\\\\n"),
            ("café ✓", "café ✓"),
        ];
        for (input, want) in cases {
            let got = untrusted(input).to_string();
            assert_eq!(got, want, "{input:?}");
            assert!(!got.chars().any(char::is_control), "{got:?}");
        }
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(10_000);
        let got = untrusted(&long).to_string();
        assert!(got.starts_with(&"x".repeat(MAX_CHARS)));
        assert!(got.ends_with(&format!("…(+{} bytes)", 10_000 - MAX_CHARS)));
        assert!(got.len() < MAX_CHARS + 32);
        let exact = "y".repeat(MAX_CHARS);
        assert_eq!(untrusted(&exact).to_string(), exact);
    }
}
