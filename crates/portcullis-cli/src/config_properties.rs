//! Property tests of the configuration loader: no input panics it, and every error in a
//! file is reported (not only the first). `PROPTEST_CASES` raises the case count.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use proptest::prelude::*;

use crate::config::parse;

const MINIMAL: &str = r#"
[server]
public_url = "https://app.example.com"
[oidc]
issuer = "https://idp.example.com"
client_id = "spa-bff"
client_secret = "s3cret"
scopes = ["openid", "profile", "offline_access", "api"]
[[routes]]
path = "/api"
upstream = "https://api.internal/v1"
token = "user"
"#;

fn no_env(_: &str) -> Option<String> {
    None
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Independent mistakes, each with a needle its error message must contain. Each one sits
/// in a section no other one touches (a section with an unknown key is refused whole, so
/// two mistakes in one section can hide each other).
const MISTAKES: [(&str, &str); 8] = [
    ("typo_section = 1\n", "typo_section"),
    ("[server]\nlisten = \"nope\"\n", "listen"),
    ("[session]\nidle_timeout = \"forever\"\n", "forever"),
    ("[telemetry]\nsampling_ratio = 7.5\n", "sampling_ratio"),
    ("[admin]\ntoken = \"short\"\n", "admin needs a token"),
    (
        "[[routes]]\npath = \"/orders\"\nupstream = \"not a url\"\n",
        "upstream",
    ),
    ("[tokens]\nrefresh_before_expiry = \"later\"\n", "later"),
    ("[anti_forgery]\nheadr_name = \"x\"\n", "headr_name"),
];

/// MINIMAL with these mistakes: top-level keys first, `[server]` lines merged into the
/// existing table, other sections appended.
fn with_mistakes(chosen: &[usize]) -> String {
    let mut top = String::new();
    let mut text = MINIMAL.to_owned();
    for &i in chosen {
        let (edit, _) = MISTAKES[i];
        if let Some(line) = edit.strip_prefix("[server]\n") {
            text = text.replacen("[server]\n", &format!("[server]\n{line}"), 1);
        } else if edit.starts_with('[') {
            text.push_str(edit);
        } else {
            top.push_str(edit);
        }
    }
    format!("{top}{text}")
}

/// TOML-ish material: headers, keys the loader knows, values of every type, broken syntax.
fn toml_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "[server]\n",
            "[oidc]\n",
            "[session]\n",
            "[[routes]]\n",
            "[telemetry]\n",
            "[admin]\n",
            "[tokens]\n",
            "[[tokens.clients]]\n",
            "[anti_forgery]\n",
            "[spa]\n",
            "[routes]\n",
            "public_url = ",
            "issuer = ",
            "client_id = ",
            "path = ",
            "upstream = ",
            "token = ",
            "listen = ",
            "store = ",
            "keys = ",
            "idle_timeout = ",
            "otlp_endpoint = ",
            "otlp_protocol = ",
            "sampling_ratio = ",
            "same_site = ",
            "cookie_name = ",
            "scopes = ",
            "client_auth = ",
            "\"https://app.example.com\"",
            "\"/api\"",
            "\"user\"",
            "\"1h\"",
            "\"\"",
            "1",
            "-1",
            "1.5",
            "nan",
            "inf",
            "true",
            "[]",
            "[1, \"a\"]",
            "{}",
            "{ a = 1 }",
            "1979-05-27",
            "\"\\u0000\"",
            "'''",
            "\"",
            "=",
            "\n",
            "#",
            ".",
            "\u{feff}",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,10}",
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    /// No text, however broken, panics the loader; a refusal always lists at least one
    /// error and no error is empty.
    #[test]
    fn config_loader_never_panics_and_never_fails_silently(
        pieces in proptest::collection::vec(toml_piece(), 0..30),
        keep_minimal in any::<bool>(),
    ) {
        let text = if keep_minimal { format!("{MINIMAL}{}", pieces.concat()) } else { pieces.concat() };
        if let Err(errors) = parse(&text, Path::new("/etc/portcullis"), &no_env) {
            prop_assert!(!errors.is_empty());
            prop_assert!(errors.iter().all(|e| !e.trim().is_empty()), "{errors:?}");
        }
    }

    /// Any combination of independent mistakes is reported in full: one error (at least)
    /// per mistake, each naming what is wrong; no mistake, no error.
    #[test]
    fn config_loader_reports_every_mistake_at_once(
        chosen in proptest::sample::subsequence((0..MISTAKES.len()).collect::<Vec<_>>(), 0..=MISTAKES.len()),
    ) {
        let text = with_mistakes(&chosen);
        match parse(&text, Path::new("/etc/portcullis"), &no_env) {
            Ok(_) => prop_assert!(chosen.is_empty(), "{text} was accepted"),
            Err(errors) => {
                prop_assert!(!chosen.is_empty(), "MINIMAL refused: {errors:?}");
                let joined = errors.join("\n");
                for &i in &chosen {
                    prop_assert!(joined.contains(MISTAKES[i].1), "{:?} not reported in:\n{}\nfor:\n{}", MISTAKES[i].1, joined, text);
                }
                prop_assert!(errors.len() >= chosen.len(), "{errors:#?}");
            }
        }
    }
}
