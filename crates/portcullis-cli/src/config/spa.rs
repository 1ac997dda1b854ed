//! `[spa]` (where the SPA comes from) and `[server.cors]` (split-origin deployments).

use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::cors::CorsSettings;
use portcullis::spa::{IndexHtmlUrl, InjectTransformer, SpaSource};
use serde::Deserialize;
use url::Url;

/// The `[spa]` keys (also what a frontend's SPA keys are read into).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpa {
    pub dir: Option<PathBuf>,
    pub index_html_url: Option<String>,
    pub index_html_cache: Option<String>,
    pub index_html_inject: Option<toml::Table>,
    pub static_assets_url: Option<String>,
}

/// `[server.cors]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub allowed_origins: Option<Vec<String>>,
    pub allowed_headers: Option<Vec<String>>,
    pub max_age: Option<String>,
}

/// The SPA source `raw` describes (`ctx` names the section in messages: `spa`). Every problem
/// is pushed to `errors`; `resolve` makes relative paths relative to the configuration file.
pub fn spa_source(
    raw: RawSpa,
    ctx: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> SpaSource {
    let given: Vec<&str> = [
        ("dir", raw.dir.is_some()),
        ("index_html_url", raw.index_html_url.is_some()),
        ("static_assets_url", raw.static_assets_url.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if given.len() > 1 {
        errors.push(format!(
            "{ctx}: set only one of dir, index_html_url, static_assets_url (found {})",
            given.join(", ")
        ));
    }
    if raw.index_html_url.is_none() {
        for (key, set) in [
            ("index_html_cache", raw.index_html_cache.is_some()),
            ("index_html_inject", raw.index_html_inject.is_some()),
        ] {
            if set {
                errors.push(format!("{ctx}.{key} needs {ctx}.index_html_url"));
            }
        }
    }
    // Every key given is checked, so that `check` lists all the mistakes at once.
    let dir = raw.dir.map(|d| {
        let d = resolve(&d);
        if !d.join("index.html").is_file() {
            errors.push(format!("{ctx}.dir {} has no index.html", d.display()));
        }
        SpaSource::Dir(d)
    });
    let index_html = raw.index_html_url.map(|u| {
        let url = match Url::parse(&u) {
            Ok(url)
                if (url.scheme() == "https"
                    || (url.scheme() == "http" && portcullis::cookie::is_loopback_url(&url)))
                    && url.fragment().is_none() =>
            {
                Some(url)
            }
            _ => {
                errors.push(format!(
                    "{ctx}.index_html_url {u:?} must be an https URL without fragment (http only for loopback hosts)"
                ));
                None
            }
        };
        let cache_for = match raw.index_html_cache.as_deref() {
            None => Duration::from_secs(300),
            Some(s) => humantime::parse_duration(s).unwrap_or_else(|_| {
                errors.push(format!(
                    "{ctx}.index_html_cache {s:?} is not a duration like \"30s\" or \"5m\""
                ));
                Duration::from_secs(300)
            }),
        };
        let inject = raw.index_html_inject.map(|t| match toml_to_json(toml::Value::Table(t)) {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        });
        match url {
            Some(url) => SpaSource::IndexHtmlUrl(IndexHtmlUrl {
                url,
                cache_for,
                inject,
            }),
            None => SpaSource::None,
        }
    });
    let dev_server = raw.static_assets_url.map(|u| match Url::parse(&u) {
        Ok(url)
            if matches!(url.scheme(), "http" | "https")
                && url.host().is_some()
                && url.query().is_none()
                && url.fragment().is_none() =>
        {
            warnings.push(format!(
                "{ctx}.static_assets_url: every page and script comes from the development server {u}; for development only"
            ));
            SpaSource::StaticAssetsUrl(url)
        }
        _ => {
            errors.push(format!(
                "{ctx}.static_assets_url {u:?} must be an http(s) URL without query or fragment"
            ));
            SpaSource::None
        }
    });
    dir.or(index_html).or(dev_server).unwrap_or_default()
}

/// The CSP hash of the script the built-in transformer injects, if it injects one.
pub fn injected_script_hash(source: &SpaSource) -> Option<String> {
    match source {
        SpaSource::IndexHtmlUrl(s) => InjectTransformer::new(s.inject.clone(), "/").script_hash(),
        _ => None,
    }
}

/// `[server.cors]`, `None` when absent or listing no origin.
pub fn cors(raw: Option<RawCors>, errors: &mut Vec<String>) -> Option<CorsSettings> {
    let raw = raw?;
    let mut allowed_origins = Vec::new();
    for o in raw.allowed_origins.unwrap_or_default() {
        match CorsSettings::parse_origin(&o) {
            Ok(v) => allowed_origins.push(v),
            Err(e) => errors.push(format!("server.cors.allowed_origins: {e}")),
        }
    }
    let mut allowed_headers = Vec::new();
    for h in raw.allowed_headers.unwrap_or_default() {
        match axum::http::HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) => allowed_headers.push(n),
            Err(_) => errors.push(format!(
                "server.cors.allowed_headers: {h:?} is not a header name"
            )),
        }
    }
    let max_age = match raw.max_age.as_deref() {
        None => Duration::from_secs(600),
        Some(s) => humantime::parse_duration(s).unwrap_or_else(|_| {
            errors.push(format!(
                "server.cors.max_age {s:?} is not a duration like \"10m\""
            ));
            Duration::from_secs(600)
        }),
    };
    if allowed_origins.is_empty() {
        return None;
    }
    Some(CorsSettings {
        allowed_origins,
        allowed_headers,
        max_age,
    })
}

/// TOML as JSON: tables → objects, arrays → arrays, datetimes → their RFC 3339 text.
fn toml_to_json(v: toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => s.into(),
        toml::Value::Integer(i) => i.into(),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        toml::Value::Boolean(b) => b.into(),
        toml::Value::Datetime(d) => d.to_string().into(),
        toml::Value::Array(a) => a.into_iter().map(toml_to_json).collect(),
        toml::Value::Table(t) => {
            serde_json::Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse(text: &str) -> (SpaSource, Vec<String>, Vec<String>) {
        let raw: RawSpa = toml::from_str(text).unwrap();
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        let s = spa_source(raw, "spa", &|p| p.to_path_buf(), &mut errors, &mut warnings);
        (s, errors, warnings)
    }

    #[test]
    fn index_html_url_with_cache_and_inject() {
        let (s, errors, _) = parse(
            r#"
index_html_url = "https://cdn.example.com/app/index.html"
index_html_cache = "1m"
[index_html_inject]
apiBase = "/api"
flags = { beta = true, n = 2, when = 1979-05-27T07:32:00Z }
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let SpaSource::IndexHtmlUrl(u) = s else {
            panic!("{s:?}")
        };
        assert_eq!(u.cache_for, Duration::from_secs(60));
        assert_eq!(
            serde_json::Value::Object(u.inject.unwrap()),
            serde_json::json!({"apiBase": "/api", "flags": {"beta": true, "n": 2, "when": "1979-05-27T07:32:00Z"}})
        );
    }

    #[test]
    fn more_than_one_source_and_orphan_keys_are_errors() {
        let (_, errors, _) = parse(
            "dir = \"/nonexistent\"\nindex_html_url = \"http://cdn/x\"\nindex_html_cache = \"soon\"\nstatic_assets_url = \"ftp://x/\"",
        );
        let joined = errors.join("\n");
        for needle in [
            "spa.dir /nonexistent has no index.html",
            "spa.index_html_url \"http://cdn/x\" must be an https URL",
            "spa.index_html_cache \"soon\"",
            "spa.static_assets_url \"ftp://x/\"",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        assert!(
            joined.contains("set only one of dir, index_html_url, static_assets_url (found dir, index_html_url, static_assets_url)"),
            "{joined}"
        );
        let (_, errors, _) = parse("index_html_cache = \"5m\"\n[index_html_inject]\na = 1");
        assert_eq!(
            errors,
            [
                "spa.index_html_cache needs spa.index_html_url",
                "spa.index_html_inject needs spa.index_html_url"
            ]
        );
        let (_, errors, _) = parse(
            "index_html_url = \"http://cdn.example.com/index.html\"\nindex_html_cache = \"soon\"",
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    /// `portcullis check` lists the SPA and CORS mistakes with every other error.
    #[test]
    fn spa_and_cors_errors_are_reported_with_the_others() {
        let text = r#"
[server]
public_url = "https://app.example.com"
[server.cors]
allowed_origins = ["https://spa.example.com/"]
[oidc]
issuer = "https://idp.example.com"
client_id = "spa-bff"
client_secret = "s3cret"
[session]
idle_timeout = "forever"
[spa]
index_html_url = "https://cdn.example.com/index.html"
static_assets_url = "http://127.0.0.1:5173/"
"#;
        let errors = super::super::parse(text, Path::new("/"), &|_| None).unwrap_err();
        let joined = errors.join("\n");
        for needle in [
            "server.cors.allowed_origins",
            "session.idle_timeout",
            "spa: set only one of dir, index_html_url, static_assets_url (found index_html_url, static_assets_url)",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    /// `[server.cors]` reaches the settings; the WebSocket allow-list stays as configured
    /// (the gateway adds the frontend's own origin and the CORS origins at run time, so a
    /// host frontend keeps its own origin).
    #[test]
    fn cors_reaches_the_settings_and_leaves_websocket_origins_as_configured() {
        let base = r#"
[server]
public_url = "https://bff.example.com"
[oidc]
issuer = "https://idp.example.com"
client_id = "spa-bff"
client_secret = "s3cret"
"#;
        let parse = |t: &str| super::super::parse(t, Path::new("/"), &|_| None).unwrap();
        assert!(parse(base).gateway.cors.is_none());
        let cors = base.replace(
            "[oidc]",
            "[server.cors]\nallowed_origins = [\"https://app.example.com\"]\n[oidc]",
        );
        let c = parse(&cors);
        assert_eq!(
            c.gateway.cors.unwrap().allowed_origins,
            ["https://app.example.com"]
        );
        assert!(c.gateway.websocket_origins.is_empty());
        let explicit =
            format!("{cors}[anti_forgery]\nwebsocket_origins = [\"https://ws.example.com\"]\n");
        assert_eq!(
            parse(&explicit).gateway.websocket_origins,
            ["https://ws.example.com"]
        );
    }

    #[test]
    fn dev_server_warns_that_it_is_for_development() {
        let (s, errors, warnings) = parse("static_assets_url = \"http://127.0.0.1:5173/\"");
        assert!(errors.is_empty());
        assert!(matches!(s, SpaSource::StaticAssetsUrl(_)));
        assert!(warnings[0].contains("for development only"), "{warnings:?}");
    }

    #[test]
    fn cors_origins_must_be_serialized_origins() {
        let raw = RawCors {
            allowed_origins: Some(vec![
                "https://app.example.com".into(),
                "https://app.example.com/".into(),
                "https://App.example.com".into(),
                "https://app.example.com:443".into(),
                "*".into(),
                "null".into(),
                "http://127.0.0.1:3000".into(),
            ]),
            allowed_headers: Some(vec!["traceparent".into(), "bad header".into()]),
            max_age: None,
        };
        let mut errors = Vec::new();
        let c = cors(Some(raw), &mut errors).unwrap();
        assert_eq!(c.allowed_origins.len(), 2, "{:?}", c.allowed_origins);
        assert_eq!(errors.len(), 6, "{errors:#?}");
        assert!(
            errors[0].contains("write \"https://app.example.com\""),
            "{errors:?}"
        );
        assert_eq!(c.allowed_headers.len(), 1);
        assert_eq!(c.max_age, Duration::from_secs(600));
    }
}
