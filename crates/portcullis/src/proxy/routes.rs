//! The route table: longest matching prefix wins, matched on segment boundaries.

use std::sync::Arc;

use http::Uri;

use crate::error::GatewayError;
use crate::settings::RouteSettings;

#[derive(Debug)]
pub struct Route {
    pub settings: RouteSettings,
}

impl Route {
    /// The upstream URI for a request path below this route's prefix.
    pub fn upstream_uri(&self, path: &str, query: Option<&str>) -> Result<Uri, GatewayError> {
        let rest = path
            .strip_prefix(self.settings.path.as_str())
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .ok_or(GatewayError::NotFound)?;
        check_segments(rest)?;
        let base = &self.settings.upstream;
        let mut path = format!("{}{rest}", base.path().trim_end_matches('/'));
        if path.is_empty() {
            path.push('/');
        }
        let authority = match base.port() {
            Some(port) => format!("{}:{port}", base.host_str().unwrap_or_default()),
            None => base.host_str().unwrap_or_default().to_owned(),
        };
        let mut target = format!("{}://{authority}{path}", base.scheme());
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        target
            .parse::<Uri>()
            .map_err(|_| GatewayError::bad_param("path", "the request path cannot be forwarded"))
    }
}

/// Refuses `.`/`..` segments, raw or percent-encoded, with `/` or `\` as separator.
fn check_segments(rest: &str) -> Result<(), GatewayError> {
    let decoded = percent_encoding::percent_decode_str(rest).decode_utf8_lossy();
    let bad = decoded
        .split(['/', '\\'])
        .any(|seg| seg == "." || seg == "..");
    if bad {
        return Err(GatewayError::bad_param(
            "path",
            "dot segments are not allowed in API paths",
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(mut settings: Vec<RouteSettings>) -> Self {
        settings.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        Self {
            routes: settings
                .into_iter()
                .map(|s| Arc::new(Route { settings: s }))
                .collect(),
        }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Longest prefix match on a segment boundary.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| {
            path.strip_prefix(r.settings.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::TokenPolicy;
    use std::time::Duration;

    fn route(path: &str, upstream: &str) -> RouteSettings {
        RouteSettings {
            path: path.into(),
            upstream: upstream.parse().unwrap(),
            token: TokenPolicy::User,
            anti_forgery: true,
            resource: None,
            scope: None,
            audience: None,
            refresh_before_expiry: None,
            client: None,
            timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn prefix_is_replaced_by_the_upstream_path() {
        let table = RouteTable::new(vec![
            route("/api", "http://127.0.0.1:9000"),
            route("/api/orders", "https://orders.internal/v1"),
        ]);
        let cases = [
            (
                "/api/orders/7",
                Some("x=1"),
                "https://orders.internal/v1/7?x=1",
            ),
            ("/api/orders", None, "https://orders.internal/v1"),
            ("/api/ordersx", None, "http://127.0.0.1:9000/ordersx"),
            ("/api", None, "http://127.0.0.1:9000/"),
            ("/api/a/b", Some("q=%20"), "http://127.0.0.1:9000/a/b?q=%20"),
        ];
        for (path, q, want) in cases {
            let r = table.find(path).unwrap();
            assert_eq!(r.upstream_uri(path, q).unwrap().to_string(), want, "{path}");
        }
        assert!(table.find("/apix").is_none());
        assert!(table.find("/other").is_none());
    }

    #[test]
    fn dot_segments_cannot_climb_out() {
        let table = RouteTable::new(vec![route("/api", "https://api.internal/v1")]);
        for path in [
            "/api/../admin",
            "/api/%2e%2e/admin",
            "/api/%2E%2e/x",
            "/api/a/..\\..\\x",
            "/api/./x",
            "/api/..%2fadmin",
        ] {
            let r = table.find(path).unwrap();
            assert!(r.upstream_uri(path, None).is_err(), "{path}");
        }
        assert!(table
            .find("/api/a..b")
            .unwrap()
            .upstream_uri("/api/a..b", None)
            .is_ok());
    }
}
