//! Property tests of the parsers the network reaches (issue 11): cookie headers, the
//! callback's query and form parameters, `returnUrl`, logout and ID tokens, JWKS and
//! discovery documents, and upstream `Set-Cookie` filtering. (Path mapping has its own in
//! `proxy::routes`: `forwarded_path_never_leaves_upstream_prefix`; the configuration
//! loader's are in the binary crate.)
//!
//! Each property's name states its invariant. Case counts are small so the suite stays
//! fast; set `PROPTEST_CASES` for a longer run (README, "Property tests").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::cookie::{request_cookies, CookieSettings, SameSite, SessionId};

/// Cases per property unless `PROPTEST_CASES` says otherwise (every property module of the
/// crate uses it, so one variable lengthens the nightly run everywhere).
pub(crate) fn cases(default: u32) -> ProptestConfig {
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

// ---------------------------------------------------------------- cookies

/// Cookie-header material a hostile client writes: separators, spaces, `=`, quotes,
/// prefixes, near-miss names of the session cookie, non-ASCII.
fn cookie_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(";".to_owned()),
        Just("; ".to_owned()),
        Just("=".to_owned()),
        Just(" ".to_owned()),
        Just("\"".to_owned()),
        Just("__Host-".to_owned()),
        Just("bff-auth".to_owned()),
        Just("__Host-bff-auth".to_owned()),
        Just("__host-bff-auth".to_owned()),
        Just("bff-login.x".to_owned()),
        Just("%3B".to_owned()),
        Just(",".to_owned()),
        "[a-zA-Z0-9_-]{0,50}",
        "\\PC{0,8}",
    ]
}

fn settings() -> CookieSettings {
    CookieSettings::for_public_url(
        &"https://app.example/".parse().unwrap(),
        None,
        SameSite::Strict,
    )
    .unwrap()
}

proptest! {
    #![proptest_config(cases(256))]

    /// Whatever other cookies surround it, in one header or several, the session id is the
    /// first well-formed cookie with the session cookie's exact name; junk never panics and
    /// never yields an id the browser did not send.
    #[test]
    fn cookie_header_parsing_finds_exactly_the_session_cookie_sent(
        before in proptest::collection::vec(cookie_piece(), 0..12),
        after in proptest::collection::vec(cookie_piece(), 0..12),
        split_headers in any::<bool>(),
        send_session in any::<bool>(),
    ) {
        let s = settings();
        let id = SessionId::generate();
        let junk_before = before.concat();
        let junk_after = after.concat();
        // The junk must not itself hold a session cookie (then "first" is the junk's).
        let junk_has_session = request_cookies(&headers_of(&[&junk_before, &junk_after]))
            .any(|(n, _)| n == s.session_name());
        let session = if send_session {
            format!("{}={}", s.session_name(), id.as_str())
        } else {
            String::new()
        };
        let headers = if split_headers {
            headers_of(&[&junk_before, &session, &junk_after])
        } else {
            headers_of(&[&format!("{junk_before}; {session}; {junk_after}")])
        };
        // Never panics, and every pair is trimmed and has no `;`.
        for (n, v) in request_cookies(&headers) {
            prop_assert!(!n.contains(';') && !v.contains(';'));
            prop_assert_eq!(n, n.trim());
            prop_assert_eq!(v, v.trim());
        }
        match s.session_id(&headers) {
            Some(Ok(found)) => {
                prop_assert!(send_session || junk_has_session, "an id from nowhere");
                if !junk_has_session {
                    prop_assert_eq!(found.as_str(), id.as_str());
                }
            }
            Some(Err(())) => prop_assert!(junk_has_session, "the sent session cookie was judged malformed"),
            None => prop_assert!(!send_session && !junk_has_session, "the session cookie was not found"),
        }
    }

    /// A session id is only ever the 43-character base64url shape the gateway issues.
    #[test]
    fn session_id_parse_accepts_only_the_issued_shape(value in "\\PC{0,60}") {
        if let Some(id) = SessionId::parse(&value) {
            prop_assert_eq!(id.as_str().len(), 43);
            prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }
}

/// `Cookie` headers as a browser may send them: UTF-8 bytes included (obs-text).
fn headers_of(values: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
            h.append(header::COOKIE, v);
        }
    }
    h
}

/// Found by `cookie_header_parsing_finds_exactly_the_session_cookie_sent`: one non-ASCII
/// cookie (set by another application on the host) in the `Cookie` header hid the session
/// cookie beside it, so the user looked logged out.
#[test]
fn non_ascii_cookie_beside_the_session_cookie_does_not_log_the_user_out() {
    let s = settings();
    let id = SessionId::generate();
    let headers = headers_of(&[&format!(
        "theme=caf\u{e9}; {}={}; lang=d\u{e9}",
        s.session_name(),
        id.as_str()
    )]);
    assert_eq!(
        s.session_id(&headers).unwrap().unwrap().as_str(),
        id.as_str()
    );
}

/// Found by `upstream_set_cookie_never_overwrites_gateway_cookies`: a `Set-Cookie` whose
/// value is not visible ASCII was not recognised as the gateway's and reached the browser,
/// overwriting the session cookie.
#[test]
fn upstream_set_cookie_with_non_ascii_value_cannot_overwrite_the_session_cookie() {
    let mut headers = HeaderMap::new();
    headers.append(
        header::SET_COOKIE,
        HeaderValue::from_bytes(b"__Host-bff-auth=\xe9; Path=/").unwrap(),
    );
    headers.append(header::SET_COOKIE, HeaderValue::from_static("theme=dark"));
    crate::proxy::strip_own_cookies(&mut headers, &["__Host-bff-auth".to_owned()]);
    let kept: Vec<_> = headers.get_all(header::SET_COOKIE).iter().collect();
    assert_eq!(kept, vec![HeaderValue::from_static("theme=dark")]);
}

// ---------------------------------------------------------------- callback parameters

/// A parameter name, sometimes percent-encoded or `+`-spaced so that it decodes to a
/// protocol parameter's name.
fn encoded_name(name: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(name.to_owned()),
        Just(
            name.bytes()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>()
        ),
        Just(format!(
            "{}%{:02x}{}",
            &name[..1],
            name.as_bytes()[1],
            &name[2..]
        )),
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    /// A protocol parameter (`code`, `state`, `iss`, ...) that appears twice, however it is
    /// encoded and wherever it sits among other parameters, is refused; other parameters
    /// may repeat; a single occurrence is read exactly.
    #[test]
    fn callback_parameter_sent_twice_is_always_refused(
        which in proptest::sample::select(vec!["code", "state", "iss", "error", "session_state"]),
        first in encoded_name("state"),
        others in proptest::collection::vec(("[a-z_]{1,8}", "[a-zA-Z0-9%+&=]{0,12}"), 0..6),
        twice in any::<bool>(),
        at in 0usize..7,
        value in "[a-zA-Z0-9_-]{0,20}",
    ) {
        const SINGLES: [&str; 5] = ["code", "state", "iss", "error", "session_state"];
        let name = if which == "state" { first } else { which.to_owned() };
        let mut pairs: Vec<String> = others
            .iter()
            .filter(|(k, _)| !SINGLES.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={}", v.replace(['&', '='], "")))
            .collect();
        pairs.insert(at.min(pairs.len()), format!("{name}={value}"));
        if twice {
            pairs.push(format!("{name}=other"));
        }
        let raw = pairs.join("&");
        match crate::bff::parse_params(raw.as_bytes(), &SINGLES) {
            Ok(params) => {
                prop_assert!(!twice, "{raw} was accepted");
                prop_assert_eq!(params.get(which).map(String::as_str), Some(value.as_str()));
            }
            Err(e) => {
                prop_assert!(twice, "{raw} was refused: {e}");
                prop_assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
            }
        }
    }

    /// Arbitrary bytes as a query or form body never panic the parameter parser.
    #[test]
    fn callback_parameter_parsing_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = crate::bff::parse_params(&raw, &["code", "state"]);
    }
}

// ---------------------------------------------------------------- returnUrl

/// `returnUrl` material: separators browsers fold (`\`, tabs), encodings, scheme and
/// authority pieces, dots, non-ASCII and lookalikes.
fn return_url_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_owned()),
        Just("\\".to_owned()),
        Just("//".to_owned()),
        Just("%2f".to_owned()),
        Just("%2F".to_owned()),
        Just("%5c".to_owned()),
        Just("%09".to_owned()),
        Just("\t".to_owned()),
        Just("\n".to_owned()),
        Just(" ".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("@".to_owned()),
        Just(":".to_owned()),
        Just("?".to_owned()),
        Just("#".to_owned()),
        Just("evil.example".to_owned()),
        Just("https:".to_owned()),
        Just("javascript:".to_owned()),
        Just("\u{ff0f}".to_owned()),
        Just("\u{2215}".to_owned()),
        Just("\u{3002}".to_owned()),
        "[a-z0-9]{1,6}",
    ]
}

proptest! {
    #![proptest_config(cases(512))]

    /// No generated `returnUrl` that validation accepts redirects anywhere but this origin:
    /// the `Location` the gateway sends, resolved like a browser resolves it (WHATWG URL),
    /// stays on the public origin and is neither protocol-relative nor `/\`.
    #[test]
    fn return_url_never_yields_an_off_site_or_protocol_relative_redirect(
        pieces in proptest::collection::vec(return_url_piece(), 0..10),
        leading_slash in any::<bool>(),
    ) {
        let raw = format!("{}{}", if leading_slash { "/" } else { "" }, pieces.concat());
        let Ok(accepted) = crate::oidc::authorize::validate_return_url(&raw) else {
            return Ok(());
        };
        let response = crate::bff::redirect(accepted);
        let location = response.headers()[header::LOCATION].to_str().unwrap().to_owned();
        prop_assert!(location.starts_with('/'), "{raw:?} → {location}");
        prop_assert!(!location.starts_with("//") && !location.starts_with("/\\"), "{raw:?} → {location}");
        let base = url::Url::parse("https://app.example/app/").unwrap();
        let target = base.join(&location).unwrap();
        prop_assert_eq!(target.origin(), base.origin(), "{:?} → {} → {}", raw, location, target);
    }
}

// ---------------------------------------------------------------- JWTs

struct Signed {
    runtime: tokio::runtime::Runtime,
    provider: crate::oidc::Provider,
    issuer: String,
}

/// One test IdP (Ed25519 key `k`) and provider for every token property.
fn signed() -> &'static Signed {
    static SIGNED: OnceLock<Signed> = OnceLock::new();
    SIGNED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (provider, issuer) = runtime.block_on(async {
            let idp =
                crate::oidc::test_idp::TestIdp::start(vec![crate::oidc::test_idp::ed_jwk("k")])
                    .await;
            let provider = idp.provider(&portcullis_token::ManualClock::new(1_000));
            (provider, idp.issuer.clone())
        });
        Signed {
            runtime,
            provider,
            issuer,
        }
    })
}

/// A mutation of a compact JWS: one character replaced, inserted or removed, a segment
/// swapped or dropped, or the signature of another token spliced in.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, char),
    Insert(usize, char),
    Remove(usize),
    SwapSegments,
    DropSignature,
    OtherSignature,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let c = proptest::sample::select(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
            .chars()
            .collect::<Vec<_>>(),
    );
    prop_oneof![
        6 => (any::<usize>(), c.clone()).prop_map(|(i, c)| Mutation::Replace(i, c)),
        2 => (any::<usize>(), c).prop_map(|(i, c)| Mutation::Insert(i, c)),
        2 => any::<usize>().prop_map(Mutation::Remove),
        1 => Just(Mutation::SwapSegments),
        1 => Just(Mutation::DropSignature),
        1 => Just(Mutation::OtherSignature),
    ]
}

/// Applies `m`; `None` when the result equals the original (not a mutation).
fn mutate(token: &str, other: &str, m: &Mutation) -> Option<String> {
    let chars: Vec<char> = token.chars().collect();
    let out = match m {
        Mutation::Replace(i, c) => {
            let mut v = chars.clone();
            let i = i % v.len();
            v[i] = *c;
            v.into_iter().collect()
        }
        Mutation::Insert(i, c) => {
            let mut v = chars.clone();
            v.insert(i % (v.len() + 1), *c);
            v.into_iter().collect()
        }
        Mutation::Remove(i) => {
            let mut v = chars.clone();
            v.remove(i % v.len());
            v.into_iter().collect()
        }
        Mutation::SwapSegments => {
            let p: Vec<&str> = token.split('.').collect();
            format!("{}.{}.{}", p[1], p[0], p[2])
        }
        Mutation::DropSignature => {
            let (signed, _) = token.rsplit_once('.').unwrap();
            format!("{signed}.")
        }
        Mutation::OtherSignature => {
            let (signed, _) = token.rsplit_once('.').unwrap();
            let (_, sig) = other.rsplit_once('.').unwrap();
            format!("{signed}.{sig}")
        }
    };
    (out != token).then_some(out)
}

fn logout_claims(issuer: &str) -> Value {
    json!({"iss": issuer, "aud": "spa", "iat": 1000, "exp": 1120, "jti": "j1", "sid": "s1",
           "events": {crate::oidc::logout_token::BACKCHANNEL_EVENT: {}}})
}

fn id_claims(issuer: &str) -> Value {
    json!({"iss": issuer, "aud": "spa", "iat": 1000, "exp": 1300, "nonce": "n1", "sub": "alice"})
}

fn logout_ok(token: &str) -> bool {
    let s = signed();
    let expect = crate::oidc::logout_token::Expectations {
        client_id: "spa",
        now: 1000,
        skew: 30,
        max_age: 300,
    };
    s.runtime.block_on(async {
        matches!(
            crate::oidc::logout_token::validate(&s.provider, token, &[], &expect).await,
            Ok(Ok(_))
        )
    })
}

fn id_ok(token: &str) -> bool {
    let s = signed();
    let expect = crate::oidc::id_token::Expectations {
        client_id: "spa",
        trusted_audiences: &[],
        nonce: Some("n1"),
        now: 1000,
        skew: 30,
    };
    s.runtime.block_on(async {
        crate::oidc::id_token::validate(&s.provider, token, &[], &expect)
            .await
            .is_ok()
    })
}

proptest! {
    #![proptest_config(cases(128))]

    /// A correctly signed logout token passes; no mutation of it does.
    #[test]
    fn mutated_logout_token_never_passes(m in mutation(), typ in proptest::option::of(Just("logout+jwt"))) {
        let s = signed();
        let header = match typ { Some(t) => json!({"kid": "k", "typ": t}), None => json!({"kid": "k"}) };
        let token = crate::oidc::test_idp::sign(header.clone(), &logout_claims(&s.issuer));
        let mut other_claims = logout_claims(&s.issuer);
        other_claims["jti"] = json!("j2");
        let other = crate::oidc::test_idp::sign(header, &other_claims);
        prop_assert!(logout_ok(&token), "the unmutated token must pass");
        if let Some(mutated) = mutate(&token, &other, &m) {
            prop_assert!(!logout_ok(&mutated), "{m:?} passed: {mutated}");
        }
    }

    /// A correctly signed ID token passes; no mutation of it does.
    #[test]
    fn mutated_id_token_never_passes(m in mutation()) {
        let s = signed();
        let token = crate::oidc::test_idp::sign(json!({"kid": "k"}), &id_claims(&s.issuer));
        let mut other_claims = id_claims(&s.issuer);
        other_claims["sub"] = json!("mallory");
        let other = crate::oidc::test_idp::sign(json!({"kid": "k"}), &other_claims);
        prop_assert!(id_ok(&token), "the unmutated token must pass");
        if let Some(mutated) = mutate(&token, &other, &m) {
            prop_assert!(!id_ok(&mutated), "{m:?} passed: {mutated}");
        }
    }
}

// ---------------------------------------------------------------- JWKS and discovery

/// Arbitrary JSON values, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::from),
        proptest::sample::select(vec![
            "RSA", "EC", "OKP", "oct", "sig", "enc", "Ed25519", "P-256", "EdDSA", "RS256", "k"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            proptest::collection::hash_map(
                proptest::sample::select(vec![
                    "kty", "kid", "use", "alg", "crv", "x", "y", "n", "e", "keys", "key_ops"
                ])
                .prop_map(str::to_owned),
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Junk keys (any JSON) around a usable key never panic the JWKS parser, and the usable
    /// key is always still found under its `kid`.
    #[test]
    fn jwks_parsing_never_panics_and_still_finds_the_valid_key(
        before in proptest::collection::vec(json_value(), 0..4),
        after in proptest::collection::vec(json_value(), 0..4),
    ) {
        let mut keys = before;
        keys.push(crate::oidc::test_idp::ed_jwk("good"));
        keys.extend(after);
        let body = serde_json::to_vec(&json!({ "keys": keys })).unwrap();
        let (set, _skipped) = crate::oidc::KeySet::parse(&body).unwrap();
        prop_assert!(set.with_kid("good").next().is_some());
    }

    /// Arbitrary bytes and arbitrary JSON never panic the JWKS or the discovery parser.
    #[test]
    fn jwks_and_discovery_parsing_never_panic(doc in json_value(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = crate::oidc::KeySet::parse(&bytes);
        let _ = crate::oidc::KeySet::parse(&serde_json::to_vec(&doc).unwrap());
        let _ = crate::oidc::KeySet::parse(&serde_json::to_vec(&json!({"keys": doc})).unwrap());
        if let Value::Object(map) = &doc {
            let _ = crate::oidc::ProviderMetadata::from_json(map);
        }
    }

    /// Junk optional members never make a discovery document with its four required
    /// members unreadable, and the required members are read exactly.
    #[test]
    fn discovery_with_required_members_always_parses(
        extra in proptest::collection::hash_map(
            proptest::sample::select(vec![
                "userinfo_endpoint", "end_session_endpoint", "revocation_endpoint",
                "id_token_signing_alg_values_supported", "prompt_values_supported",
                "authorization_response_iss_parameter_supported", "code_challenge_methods_supported",
                "backchannel_logout_supported", "x-vendor",
            ]).prop_map(str::to_owned),
            json_value(),
            0..6,
        ),
    ) {
        let mut doc: serde_json::Map<String, Value> = extra.into_iter().collect();
        for (k, v) in [
            ("issuer", "https://idp.example"),
            ("authorization_endpoint", "https://idp.example/auth"),
            ("token_endpoint", "https://idp.example/token"),
            ("jwks_uri", "https://idp.example/jwks"),
        ] {
            doc.insert(k.into(), json!(v));
        }
        let m = crate::oidc::ProviderMetadata::from_json(&doc);
        prop_assert!(m.is_ok(), "{:?}", m.err());
        let m = m.unwrap();
        prop_assert_eq!(m.token_endpoint, "https://idp.example/token");
        prop_assert_eq!(m.jwks_uri, "https://idp.example/jwks");
    }
}

// ---------------------------------------------------------------- upstream Set-Cookie

fn set_cookie_value() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just("__Host-bff-session".to_owned()),
        Just(" __Host-bff-session".to_owned()),
        Just("__Host-bff-login.abc".to_owned()),
        Just("bff-login.abc".to_owned()),
        Just("__Host-bff-session2".to_owned()),
        Just("__host-bff-session".to_owned()),
        "[a-zA-Z0-9_-]{1,12}",
    ];
    let value = prop_oneof![
        "[a-zA-Z0-9]{0,10}".prop_map(String::into_bytes),
        proptest::collection::vec(0x80u8..=0xff, 1..4),
    ];
    let attrs = proptest::sample::select(vec!["", "; Path=/", "; HttpOnly; Secure", "; Max-Age=0"]);
    (name, value, attrs).prop_map(|(n, v, a)| {
        let mut out = n.into_bytes();
        out.push(b'=');
        out.extend(v);
        out.extend_from_slice(a.as_bytes());
        out
    })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Whatever an upstream sends, no `Set-Cookie` naming the gateway's session or login
    /// cookies reaches the browser, and every other `Set-Cookie` does, in order.
    #[test]
    fn upstream_set_cookie_never_overwrites_gateway_cookies(
        cookies in proptest::collection::vec(set_cookie_value(), 0..8),
    ) {
        let own = vec!["__Host-bff-session".to_owned()];
        let mut headers = HeaderMap::new();
        for c in &cookies {
            headers.append(header::SET_COOKIE, HeaderValue::from_bytes(c).unwrap());
        }
        crate::proxy::strip_own_cookies(&mut headers, &own);
        let gateway_cookie = |v: &[u8]| {
            let name = v.split(|b| *b == b'=').next().unwrap_or_default().trim_ascii();
            name == b"__Host-bff-session" || name.starts_with(b"__Host-bff-login.") || name.starts_with(b"bff-login.")
        };
        let kept: Vec<&[u8]> = headers.get_all(header::SET_COOKIE).iter().map(HeaderValue::as_bytes).collect();
        let expected: Vec<&[u8]> = cookies.iter().map(Vec::as_slice).filter(|c| !gateway_cookie(c)).collect();
        prop_assert_eq!(kept, expected);
    }
}

#[test]
fn properties_read_params_like_the_handlers() {
    // Guards the oracle above: a plain duplicate is refused by the real parser.
    let p: Result<HashMap<String, String>, _> =
        crate::bff::parse_params(b"state=a&st%61te=b", &["state"]);
    assert!(p.is_err());
}
