//! `[[frontends]]`: each entry is turned into a copy of the top-level configuration with the
//! frontend's own parts merged in, then parsed by the same code as the top level. So every
//! `[oidc]` field (today's and those added later) works per frontend without being listed here.
//!
//! ```toml
//! [[frontends]]
//! name = "admin"                 # [A-Za-z0-9_.+-]{1,64}, unique, not "default"
//! match_host = "admin.example.com"   # optional, host or host:port
//! match_path = "/admin"          # optional, segment prefix
//! static_dir = "admin-dist"      # optional, as [spa] dir; or index_html_url (+ index_html_cache,
//!                                # [frontends.index_html_inject]) or static_assets_url, as in [spa]
//! [frontends.oidc]               # fields override the top-level [oidc]
//! client_id = "admin-spa"
//! [frontends.session]            # cookie_name, same_site, timeouts, partition, anonymous_user
//! [[frontends.routes]]           # relative to the frontend: /admin/api/...
//! path = "/api"
//! upstream = "https://admin-api.internal/"
//! [frontends.cors]               # keys override the top-level [server.cors] for this frontend
//! allowed_origins = ["https://admin-app.example.com"]
//! ```
//!
//! Defaults: session partition = the frontend's name; session cookie = the top-level cookie
//! name + `-` + the name (`__Host-bff-auth-admin`), so the `__Host-` prefix and `Path=/` are
//! kept; routes and static files are the frontend's own (nothing is inherited from the
//! top-level `[[routes]]` and `[spa]`); `[server.cors]` applies to every frontend, each key
//! replaced by its `[frontends.cors]` one; a frontend that names its own client does not
//! inherit the top-level client secret (nor `PORTCULLIS_OIDC_CLIENT_SECRET`).

use std::path::Path;

use portcullis::frontend::FrontendSettings;

use crate::config::{parse_table, FrontendConfig, ENV_CLIENT_SECRET};

/// Keys of a `[[frontends]]` entry.
const KEYS: &[&str] = &[
    "name",
    "match_host",
    "match_path",
    "index_html_cache",
    "index_html_inject",
    "oidc",
    "session",
    "routes",
    "cors",
];

/// Ways to give a frontend its static part. At most one per frontend; each maps to the `[spa]`
/// key of the same meaning (`static_dir` → `dir`).
const STATIC_SOURCES: &[&str] = &["static_dir", "index_html_url", "static_assets_url"];

/// `[session]` keys a frontend may set; the rest (store, keys, cleanup, cache) is shared.
const SESSION_KEYS: &[&str] = &[
    "cookie_name",
    "same_site",
    "anonymous_user",
    "idle_timeout",
    "absolute_timeout",
    "max_pending_logins",
    "login_timeout",
    "partition",
];

/// `[oidc]` keys that say how the client authenticates: a frontend that sets one of them (or
/// its own `client_id`) gets none of the top-level ones.
const CLIENT_AUTH_KEYS: &[&str] = &[
    "client_secret",
    "client_secret_file",
    "client_auth",
    "private_key_file",
    "private_key_alg",
    "private_key_kid",
];

/// Parses `[[frontends]]` entry `index` against the top-level `table`. Errors and warnings go
/// to the callbacks as `(context, message)`; `None` when the entry is unusable.
pub(crate) fn parse_frontend(
    table: &toml::Table,
    item: toml::Value,
    index: usize,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    error: &mut dyn FnMut((String, String)),
    warning: &mut dyn FnMut((String, String)),
) -> Option<FrontendConfig> {
    let ctx = format!("frontends[{index}]");
    let toml::Value::Table(mut entry) = item else {
        error((ctx, "must be a table".into()));
        return None;
    };
    let name = match entry.remove("name") {
        Some(toml::Value::String(n)) => n,
        Some(_) => {
            error((ctx, "name must be a string".into()));
            return None;
        }
        None => {
            error((ctx, "name is required".into()));
            return None;
        }
    };
    let ctx = format!("{ctx} ({name})");
    let mut ok = true;
    let mut fail = |msg: String| {
        error((ctx.clone(), msg));
        ok = false;
    };
    if !portcullis::frontend::is_valid_name(&name) || name == portcullis::frontend::DEFAULT_FRONTEND
    {
        fail(format!(
            "name must be 1 to 64 characters of A-Z a-z 0-9 _ . + - and not \"{}\"",
            portcullis::frontend::DEFAULT_FRONTEND
        ));
    }
    // Derived names stay parseable (so the rest of the entry is still checked).
    let safe_name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    for key in entry.keys() {
        if !KEYS.contains(&key.as_str()) && !STATIC_SOURCES.contains(&key.as_str()) {
            fail(format!("unknown key `{key}`"));
        }
    }
    let sources: Vec<&str> = STATIC_SOURCES
        .iter()
        .copied()
        .filter(|k| entry.contains_key(*k))
        .collect();
    if sources.len() > 1 {
        fail(format!(
            "more than one static source ({}); give one of {}",
            sources.join(", "),
            STATIC_SOURCES.join(", ")
        ));
    }
    let string = |v: Option<&toml::Value>, key: &str, fail: &mut dyn FnMut(String)| match v {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(_) => {
            fail(format!("{key} must be a string"));
            None
        }
    };
    let match_host = string(entry.get("match_host"), "match_host", &mut fail);
    let match_path = string(entry.get("match_path"), "match_path", &mut fail);

    // The merged view: the top level, minus what is per frontend.
    let mut merged = table.clone();
    merged.remove("admin");
    merged.remove("routes");
    merged.remove("spa");
    let mut own_client = false;
    match entry.get("oidc") {
        None => {}
        Some(toml::Value::Table(over)) => {
            let mut oidc = match merged.remove("oidc") {
                Some(toml::Value::Table(t)) => t,
                _ => toml::Table::new(),
            };
            own_client = over.contains_key("client_id")
                || CLIENT_AUTH_KEYS.iter().any(|k| over.contains_key(*k));
            if own_client {
                for k in CLIENT_AUTH_KEYS {
                    oidc.remove(*k);
                }
            }
            for (k, v) in over {
                oidc.insert(k.clone(), v.clone());
            }
            merged.insert("oidc".into(), toml::Value::Table(oidc));
        }
        Some(_) => fail("oidc must be a table ([frontends.oidc])".into()),
    }
    let mut session = match merged.remove("session") {
        Some(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let top_cookie = session
        .get("cookie_name")
        .and_then(toml::Value::as_str)
        .unwrap_or("__Host-bff-auth")
        .to_owned();
    session.remove("cookie_name");
    session.remove("partition");
    match entry.get("session") {
        None => {}
        Some(toml::Value::Table(over)) => {
            for (k, v) in over {
                if SESSION_KEYS.contains(&k.as_str()) {
                    session.insert(k.clone(), v.clone());
                } else {
                    fail(format!(
                        "session.{k} is shared by all frontends; set it in the top-level [session]"
                    ));
                }
            }
        }
        Some(_) => fail("session must be a table ([frontends.session])".into()),
    }
    let cookie_given = session.contains_key("cookie_name");
    if !cookie_given {
        session.insert(
            "cookie_name".into(),
            toml::Value::String(format!("{top_cookie}-{safe_name}")),
        );
    }
    if let Some(cookie) = session.get("cookie_name").and_then(toml::Value::as_str) {
        for prefix in ["__Host-", "__Secure-"] {
            let lower = cookie.to_ascii_lowercase();
            if lower.starts_with(&prefix.to_ascii_lowercase()) && !cookie.starts_with(prefix) {
                fail(format!(
                    "session.cookie_name {cookie:?} spells the {prefix} prefix in another case: browsers apply the prefix rules case-insensitively, some do not; write {prefix}"
                ));
            }
        }
    }
    if !session.contains_key("partition") {
        session.insert("partition".into(), toml::Value::String(safe_name.clone()));
    }
    merged.insert("session".into(), toml::Value::Table(session));
    // `[frontends.cors]`: its keys replace those of `[server.cors]` for this frontend
    // (`allowed_origins = []` turns CORS off for it).
    let own_cors: Vec<String> = match entry.get("cors") {
        None => Vec::new(),
        Some(toml::Value::Table(over)) => {
            let mut server = match merged.remove("server") {
                Some(toml::Value::Table(t)) => t,
                _ => toml::Table::new(),
            };
            let mut cors = match server.remove("cors") {
                Some(toml::Value::Table(t)) => t,
                _ => toml::Table::new(),
            };
            for (k, v) in over {
                cors.insert(k.clone(), v.clone());
            }
            server.insert("cors".into(), toml::Value::Table(cors));
            merged.insert("server".into(), toml::Value::Table(server));
            over.keys().cloned().collect()
        }
        Some(_) => {
            fail("cors must be a table ([frontends.cors])".into());
            Vec::new()
        }
    };
    match entry.get("routes") {
        None => {}
        Some(v @ toml::Value::Array(_)) => {
            merged.insert("routes".into(), v.clone());
        }
        Some(_) => fail("routes must be an array of tables ([[frontends.routes]])".into()),
    }
    // The static part: the frontend's keys, spelled as `[spa]` spells them, checked by the
    // same code.
    let mut spa = toml::Table::new();
    for (key, spa_key) in [
        ("static_dir", "dir"),
        ("index_html_url", "index_html_url"),
        ("index_html_cache", "index_html_cache"),
        ("index_html_inject", "index_html_inject"),
        ("static_assets_url", "static_assets_url"),
    ] {
        if let Some(v) = entry.get(key) {
            spa.insert(spa_key.into(), v.clone());
        }
    }
    if !spa.is_empty() {
        merged.insert("spa".into(), toml::Value::Table(spa));
    }
    // The process-wide client secret belongs to the top-level client.
    let frontend_env = |k: &str| {
        if own_client && k == ENV_CLIENT_SECRET {
            None
        } else {
            env(k)
        }
    };
    let parsed = parse_table(&merged, base_dir, &frontend_env);
    let config = match parsed {
        Ok(c) => c,
        Err(es) => {
            for e in es {
                // A problem with a key the frontend set is named as the frontend spells it.
                let e = match e.strip_prefix("server.cors.") {
                    Some(rest) if own_cors.iter().any(|k| rest.starts_with(k.as_str())) => {
                        format!("cors.{rest}")
                    }
                    _ => e,
                };
                error((ctx.clone(), e));
            }
            return None;
        }
    };
    for w in config.warnings {
        warning((ctx.clone(), w));
    }
    if !ok {
        return None;
    }
    Some(FrontendConfig {
        settings: FrontendSettings {
            name,
            match_host: match_host.map(|h| h.to_ascii_lowercase()),
            match_path: match_path
                .map(|p| p.trim_end_matches('/').to_owned())
                .map(|p| if p.is_empty() { "/".to_owned() } else { p }),
            settings: config.gateway,
        },
        spa: config.spa,
        spa_script_hash: config.spa_script_hash,
        dpop_key: config.dpop_key,
        client_dpop_keys: config.client_dpop_keys,
    })
}

/// Duplicate names and duplicate `match_host` + `match_path` pairs among raw `[[frontends]]`
/// entries, worded as [`portcullis::frontend::validate`] words them. For a file whose top
/// level is invalid (then no frontend parses and `validate` cannot run).
pub(crate) fn raw_duplicates(items: &[toml::Value]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut criteria: std::collections::HashMap<(Option<String>, Option<String>), &str> =
        std::collections::HashMap::new();
    for item in items {
        let Some(name) = item.get("name").and_then(toml::Value::as_str) else {
            continue;
        };
        let ctx = format!("frontend {name:?}");
        if !names.insert(name) {
            errors.push(format!("{ctx}: name is used twice"));
        }
        let host = item
            .get("match_host")
            .and_then(toml::Value::as_str)
            .map(|h| h.trim().to_ascii_lowercase());
        let path = item
            .get("match_path")
            .and_then(toml::Value::as_str)
            .map(|p| p.trim_end_matches('/').to_owned());
        if host.is_none() && path.is_none() {
            continue;
        }
        if let Some(other) = criteria.insert((host, path), name) {
            errors.push(format!(
                "{ctx}: same match_host and match_path as frontend {other:?}"
            ));
        }
    }
    errors
}
