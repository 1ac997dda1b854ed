//! The binary's built-in `index.html` transformer: runtime configuration as
//! `window.__PORTCULLIS__`, and a `<base href>` for frontends mounted on a path.
//!
//! The script is `<script>window.__PORTCULLIS__ = {...};</script>`, inserted before
//! `</head>`. Its JSON is escaped for an HTML script element: `<`, `>` and `&` become
//! `\u003c`, `\u003e`, `\u0026`, and U+2028/U+2029 become `\u2028`/`\u2029`. Those characters
//! can only occur inside JSON strings, where the escapes mean the same characters, so the
//! value the page reads is unchanged, while no value can write `</script`, `<!--` or
//! `<script` (which would end the element or switch the HTML tokenizer into its "escaped"
//! states, HTML Living Standard §13.2.5) and no line terminator can break older JavaScript
//! parsers.
//!
//! Content-Security-Policy: the injected script is inline. The gateway sets no CSP on
//! `index.html` (the application owns its policy); a policy whose `script-src` forbids
//! inline scripts must allow this one by its hash, [`InjectTransformer::script_hash`]
//! (`'sha256-…'`), which is stable for a configuration: the script holds the same bytes on
//! every request, so the page stays cacheable (a nonce would make every answer different).
//! `portcullis check` prints the hash.

use async_trait::async_trait;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::index_html::{IndexHtmlContext, IndexHtmlTransformer, TransformError};

/// Injects `window.__PORTCULLIS__` and, for a path frontend, `<base href="{mount}/">`.
#[derive(Debug, Clone)]
pub struct InjectTransformer {
    /// The script element's text (between the tags), `None` when nothing is injected.
    script: Option<String>,
    /// `/admin/` for a frontend mounted on `/admin`; `None` at the root.
    base_href: Option<String>,
}

impl InjectTransformer {
    /// `inject` becomes `window.__PORTCULLIS__`; `mount_path` (`/` or `/admin`) decides the
    /// `<base href>` (none at the root).
    pub fn new(
        inject: Option<serde_json::Map<String, serde_json::Value>>,
        mount_path: &str,
    ) -> Self {
        let script = inject.map(|m| {
            format!(
                "window.__PORTCULLIS__ = {};",
                script_json(&serde_json::Value::Object(m))
            )
        });
        let mount = mount_path.trim_end_matches('/');
        let base_href = (!mount.is_empty()).then(|| format!("{mount}/"));
        Self { script, base_href }
    }

    /// The CSP source expression that allows the injected script (`'sha256-<base64>'`, CSP
    /// Level 3 §8.3), `None` when nothing is injected.
    pub fn script_hash(&self) -> Option<String> {
        self.script.as_ref().map(|s| {
            let digest = Sha256::digest(s.as_bytes());
            format!(
                "'sha256-{}'",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        })
    }

    /// The transformation itself (what [`IndexHtmlTransformer::transform`] does).
    pub fn apply(&self, html: &str) -> String {
        let mut out = html.to_owned();
        if let Some(href) = &self.base_href {
            if find_tag(&out, "base").is_none() {
                let tag = format!("<base href=\"{}\">", crate::error::escape_html(href));
                match find_tag(&out, "head").and_then(|i| out[i..].find('>').map(|e| i + e + 1)) {
                    Some(after_head) => out.insert_str(after_head, &tag),
                    None => out.insert_str(0, &tag),
                }
            }
        }
        if let Some(script) = &self.script {
            let element = format!("<script>{script}</script>");
            let at = find_ci(&out, "</head>")
                .or_else(|| find_tag(&out, "body"))
                .unwrap_or(0);
            out.insert_str(at, &element);
        }
        out
    }
}

#[async_trait]
impl IndexHtmlTransformer for InjectTransformer {
    async fn transform(
        &self,
        html: String,
        _ctx: &IndexHtmlContext,
    ) -> Result<String, TransformError> {
        Ok(self.apply(&html))
    }
}

/// `value` as JSON that is safe inside an HTML `<script>` element (see the module docs).
pub fn script_json(value: &serde_json::Value) -> String {
    let json = value.to_string();
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Byte offset of `needle` in `haystack`, ASCII case-insensitive.
fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    let h = haystack.as_bytes();
    let n = needle.as_bytes();
    (0..h.len().saturating_sub(n.len() - 1)).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n))
}

/// Byte offset of the start tag `<name` (followed by whitespace, `>` or `/`), ASCII
/// case-insensitive.
fn find_tag(html: &str, name: &str) -> Option<usize> {
    let open = format!("<{name}");
    let mut from = 0;
    while let Some(i) = find_ci(&html[from..], &open) {
        let at = from + i;
        match html.as_bytes().get(at + open.len()) {
            Some(b'>' | b'/' | b' ' | b'\t' | b'\n' | b'\r' | b'\x0c') => return Some(at),
            _ => from = at + open.len(),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn inject(v: serde_json::Value, mount: &str) -> InjectTransformer {
        InjectTransformer::new(v.as_object().cloned(), mount)
    }

    #[test]
    fn script_json_escapes_what_could_end_the_element() {
        let v = json!({"a": "</script><script>alert(1)</script>", "b": "<!-- x -->", "c": "\u{2028}\u{2029}&"});
        let s = script_json(&v);
        for bad in ['<', '>', '&', '\u{2028}', '\u{2029}'] {
            assert!(!s.contains(bad), "{bad:?} in {s}");
        }
        assert_eq!(serde_json::from_str::<serde_json::Value>(&s).unwrap(), v);
    }

    #[test]
    fn script_goes_before_head_end_and_base_after_head_start() {
        let t = inject(json!({"apiBase": "/admin/api"}), "/admin");
        let html = "<!doctype html><HTML><Head lang=en><title>x</title><script src=\"app.js\"></script></HEAD><body></body></html>";
        let out = t.apply(html);
        assert_eq!(
            out,
            "<!doctype html><HTML><Head lang=en><base href=\"/admin/\"><title>x</title><script src=\"app.js\"></script>\
             <script>window.__PORTCULLIS__ = {\"apiBase\":\"/admin/api\"};</script></HEAD><body></body></html>"
        );
    }

    #[test]
    fn a_page_with_its_own_base_keeps_it_and_the_root_gets_none() {
        let t = inject(json!({}), "/admin");
        let out = t.apply("<html><head><BASE href=\"/x/\"></head></html>");
        assert_eq!(
            out.matches("<base").count() + out.matches("<BASE").count(),
            1
        );
        // `<header>` or `<basefont>` are not the tags looked for.
        let out = t.apply("<html><head><basefont></head><body><header></header></body></html>");
        assert!(
            out.starts_with("<html><head><base href=\"/admin/\"><basefont>"),
            "{out}"
        );
        let root = inject(json!({"k": 1}), "/");
        assert!(!root.apply("<html><head></head></html>").contains("<base"));
    }

    #[test]
    fn nothing_configured_changes_nothing() {
        let t = InjectTransformer::new(None, "/");
        let html = "<html><head></head><body>x</body></html>";
        assert_eq!(t.apply(html), html);
        assert_eq!(t.script_hash(), None);
    }

    #[test]
    fn pages_without_head_still_get_the_script() {
        let t = inject(json!({"k": 1}), "/");
        assert_eq!(
            t.apply("<p>x</p><BODY>y"),
            "<p>x</p><script>window.__PORTCULLIS__ = {\"k\":1};</script><BODY>y"
        );
        assert!(t.apply("").starts_with("<script>"));
    }

    #[test]
    fn script_hash_is_the_sha256_of_the_element_text() {
        let t = inject(json!({"k": 1}), "/");
        let text = "window.__PORTCULLIS__ = {\"k\":1};";
        let want = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text));
        assert_eq!(t.script_hash().unwrap(), format!("'sha256-{want}'"));
        assert!(t
            .apply("<head></head>")
            .contains(&format!("<script>{text}</script>")));
    }
}

#[cfg(test)]
mod properties {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    /// Strings built from the pieces that could end or confuse a script element, plus any
    /// characters.
    fn hostile_string() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("</script".to_owned()),
            Just("</SCRIPT >".to_owned()),
            Just("<script>".to_owned()),
            Just("<!--".to_owned()),
            Just("-->".to_owned()),
            Just("<".to_owned()),
            Just("/".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just("\u{2028}".to_owned()),
            Just("\u{2029}".to_owned()),
            Just("&".to_owned()),
            any::<String>(),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|p| p.concat())
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            hostile_string().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::vec((hostile_string(), inner), 0..4)
                    .prop_map(|kv| { serde_json::Value::Object(kv.into_iter().collect()) }),
            ]
        })
    }

    proptest! {
        #![proptest_config(crate::properties::cases(300))]

        /// No generated value can end the script element or open a comment in it, and the
        /// page reads back exactly the configured value.
        #[test]
        fn no_generated_value_can_end_the_script_element(
            key in hostile_string(),
            value in json_value(),
        ) {
            let mut map = serde_json::Map::new();
            map.insert(key, value);
            let t = InjectTransformer::new(Some(map.clone()), "/");
            let page = t.apply("<html><head></head><body></body></html>");
            let start = page.find("<script>").unwrap() + "<script>".len();
            let end = start + page[start..].find("</script>").unwrap();
            let text = &page[start..end];
            // The element ends where the transformer ended it: its text holds no `<` at all.
            prop_assert!(!text.contains('<'), "{text}");
            let separators = ['\u{2028}', '\u{2029}'];
            prop_assert!(!text.contains(separators), "{}", text);
            prop_assert_eq!(&page[end..], "</script></head><body></body></html>");
            let json = text
                .strip_prefix("window.__PORTCULLIS__ = ")
                .and_then(|s| s.strip_suffix(';'))
                .unwrap();
            let back: serde_json::Value = serde_json::from_str(json).unwrap();
            prop_assert_eq!(back, serde_json::Value::Object(map));
        }
    }
}
