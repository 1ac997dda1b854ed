//! Start-up: logging, keys, store, router, listener, graceful shutdown.

use std::sync::Arc;

use portcullis::Gateway;

use crate::config::{Config, FrontendConfig, KeySource};
use crate::keyfile;

/// Keys, store and gateway from a validated configuration (shared by `serve` and
/// `sessions`).
pub async fn build_gateway(
    settings: portcullis::settings::GatewaySettings,
    frontends: Vec<portcullis::FrontendSpec>,
    keys: &KeySource,
    store_url: &str,
    data_dir: &std::path::Path,
) -> Result<Gateway, String> {
    // One TLS provider for every crate in the process (reqwest, sqlx, redis, hyper-rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let keys = match keys {
        KeySource::Inline(specs) => portcullis::session::KeyRing::new(
            specs
                .iter()
                .map(|s| portcullis::session::Key::parse(s.expose_secret()))
                .collect::<Result<Vec<_>, _>>()?,
        )?,
        KeySource::File(path) => keyfile::load_or_create(path)?,
    };
    if store_url.starts_with("sqlite:") {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create data dir {}: {e}", data_dir.display()))?;
    }
    let store = portcullis_session::connect(store_url)
        .await
        .map_err(|e| format!("session store: {e}"))?;
    tracing::info!(store = store.kind(), "session store connected");
    Gateway::with_frontends(
        settings,
        frontends,
        store,
        keys,
        Arc::new(portcullis_token::SystemClock),
    )
}

/// Library frontend specs from the configuration: settings plus each one's SPA source
/// (mounted under the frontend's path, if it has one).
///
/// # Errors
/// A message naming the frontend when its SPA source cannot be built (HTTP client setup).
pub fn frontend_specs(
    frontends: Vec<FrontendConfig>,
) -> Result<Vec<portcullis::FrontendSpec>, String> {
    frontend_specs_reusing(
        frontends,
        &SpaRouters::default(),
        &mut SpaRouters::default(),
    )
}

/// [`frontend_specs`], reusing from `previous` the SPA router of every frontend whose SPA
/// source and settings did not change, and recording every router in `next`.
fn frontend_specs_reusing(
    frontends: Vec<FrontendConfig>,
    previous: &SpaRouters,
    next: &mut SpaRouters,
) -> Result<Vec<portcullis::FrontendSpec>, String> {
    let mut specs = Vec::with_capacity(frontends.len());
    for f in frontends {
        let mount = f.settings.match_path.as_deref().unwrap_or("/");
        let fallback = next
            .build(
                previous,
                &f.settings.name,
                &f.spa,
                &f.settings.settings,
                mount,
            )
            .map_err(|e| format!("frontend {}: {e}", f.settings.name))?;
        specs.push(portcullis::FrontendSpec {
            fallback,
            settings: f.settings,
        });
    }
    Ok(specs)
}

/// The SPA routers of the running configuration by frontend name (the default frontend's
/// under [`portcullis::frontend::DEFAULT_FRONTEND`]), each with a description of what it was
/// built from. A reload reuses the router of every frontend whose SPA source, mount path and
/// settings are unchanged, and with it the `index.html` copy and the CDN's `ETag`: only a
/// changed frontend's page is fetched anew, and a CDN that is down during a reload leaves the
/// unchanged frontends serving their last good copy.
#[derive(Default)]
struct SpaRouters(std::collections::HashMap<String, (String, Option<axum::Router>)>);

impl SpaRouters {
    /// The router for frontend `name`: `previous`'s when built from the same description,
    /// else a new one; recorded in `self` either way.
    fn build(
        &mut self,
        previous: &SpaRouters,
        name: &str,
        spa: &portcullis::spa::SpaSource,
        settings: &portcullis::settings::GatewaySettings,
        mount: &str,
    ) -> Result<Option<axum::Router>, String> {
        // Debug output redacts secrets; the router depends on none of them.
        let description = format!("{mount}\0{spa:?}\0{settings:?}");
        let router = match previous.0.get(name) {
            Some((d, router)) if *d == description => router.clone(),
            _ => spa.router_for(settings, mount)?,
        };
        self.0
            .insert(name.to_owned(), (description, router.clone()));
        Ok(router)
    }
}

/// Reads (or generates) the DPoP key of the default frontend and of every frontend whose
/// `[oidc.dpop]` is enabled, and of every `[[tokens.clients]]` entry with `dpop`, and puts
/// it into the settings. Everything naming the same file shares one key.
///
/// # Errors
/// A message naming the file that cannot be read, parsed or created.
fn with_dpop_keys(
    default: &mut portcullis::settings::GatewaySettings,
    default_key: Option<&crate::config::DpopKeyFile>,
    client_keys: &[(String, crate::config::DpopKeyFile)],
    frontends: &mut [FrontendConfig],
) -> Result<(), String> {
    let mut loaded: Vec<(std::path::PathBuf, Arc<portcullis_token::DpopKey>)> = Vec::new();
    let mut load =
        |file: &crate::config::DpopKeyFile| -> Result<Arc<portcullis_token::DpopKey>, String> {
            if let Some((_, key)) = loaded.iter().find(|(p, _)| *p == file.path) {
                return Ok(key.clone());
            }
            let key = Arc::new(keyfile::load_or_create_dpop(file)?);
            tracing::info!(alg = ?key.alg(), jkt = key.thumbprint(), path = %file.path.display(), "DPoP key loaded");
            loaded.push((file.path.clone(), key.clone()));
            Ok(key)
        };
    if let Some(file) = default_key {
        if let Some(alg) = file.session_key_alg {
            tracing::info!(?alg, "DPoP: a key per session");
        }
        default.oidc.dpop = Some(portcullis::settings::DpopSettings {
            key: load(file)?,
            session_key_alg: file.session_key_alg,
        });
    }
    for (name, file) in client_keys {
        let key = load(file)?;
        for c in default
            .tokens
            .clients
            .iter_mut()
            .filter(|c| c.name == *name)
        {
            c.dpop_key = Some(key.clone());
        }
    }
    for f in frontends {
        if let Some(file) = &f.dpop_key {
            let key = load(file)?;
            f.settings.settings.oidc.dpop = Some(portcullis::settings::DpopSettings {
                key,
                session_key_alg: file.session_key_alg,
            });
        }
        for (name, file) in &f.client_dpop_keys {
            let key = load(file)?;
            for c in f
                .settings
                .settings
                .tokens
                .clients
                .iter_mut()
                .filter(|c| c.name == *name)
            {
                c.dpop_key = Some(key.clone());
            }
        }
    }
    Ok(())
}

pub async fn run(cfg: Config, config_path: &std::path::Path) -> Result<(), String> {
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let restart = Restart::of(&cfg);
    let mut settings = cfg.gateway;
    let mut frontends = cfg.frontends;
    with_dpop_keys(
        &mut settings,
        cfg.dpop_key.as_ref(),
        &cfg.client_dpop_keys,
        &mut frontends,
    )?;
    let par_required = settings.oidc.par == portcullis::settings::ParMode::Required;
    let mut spa_routers = SpaRouters::default();
    let fallback = spa_routers.build(
        &SpaRouters::default(),
        portcullis::frontend::DEFAULT_FRONTEND,
        &cfg.spa,
        &settings,
        "/",
    )?;
    let specs = frontend_specs_reusing(frontends, &SpaRouters::default(), &mut spa_routers)?;
    let gateway = build_gateway(settings, specs, &cfg.keys, &cfg.store_url, &cfg.data_dir).await?;
    let background = gateway.spawn_background_tasks();
    // Warm the discovery cache; failure is not fatal (the IdP may start after us).
    match gateway.provider().metadata().await {
        Err(e) => {
            tracing::warn!(error = %e, "identity provider discovery failed at start-up; will retry on demand");
        }
        Ok(m) if par_required && m.pushed_authorization_request_endpoint.is_none() => {
            return Err("oidc.par = \"required\" but the identity provider advertises no pushed_authorization_request_endpoint".into());
        }
        Ok(_) => {
            tokio::spawn(warn_unsupported_acr(gateway.clone()));
        }
    }
    if let Some(admin) = &cfg.admin {
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_duration_seconds".into()),
                &portcullis::telemetry::DURATION_BUCKETS,
            )
            .and_then(|b| b.install_recorder())
            .map(|handle| -> portcullis::admin::MetricsRender { Arc::new(move || handle.render()) })
            .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
            .ok();
        let app = portcullis::admin::router(gateway.clone(), admin.token.clone(), metrics);
        let listener = tokio::net::TcpListener::bind(admin.listen)
            .await
            .map_err(|e| format!("cannot listen on {} (admin): {e}", admin.listen))?;
        tracing::info!(addr = %admin.listen, "admin listener (sessions, metrics)");
        // The same limits as the public listener (head size, timeouts, connection count,
        // HTTP/2), served by the main runtime; it stays open until the process exits, so
        // that an operator can watch a drain.
        let limits = crate::limits::Limits {
            workers: 0,
            ..cfg.limits.clone()
        };
        tokio::spawn(async move {
            let never = std::future::pending::<()>();
            crate::listener::serve(listener, app, None, &limits, Default::default(), never).await;
        });
    }
    if let Some(hash) = &cfg.spa_script_hash {
        tracing::info!(csp_source = %hash, "index.html gets an inline script; a Content-Security-Policy that forbids inline scripts must list this hash in script-src");
    }
    let reloader = tokio::spawn(reload_on_hangup(
        gateway.clone(),
        config_path.to_path_buf(),
        restart,
        spa_routers,
    ));
    // Each frontend's CORS (`[server.cors]`, `[frontends.cors]`) is part of its router, so a
    // reload replaces it with the rest.
    // The gateway is called directly, not through a router (`Gateway::handle`), inside the
    // request span (path only: query strings hold authorization codes and states), the
    // trace context and the request duration histogram.
    gateway.set_default_fallback(fallback, Vec::new());
    let app = {
        let gateway = gateway.clone();
        let telemetry = cfg.telemetry.request();
        tower::service_fn(move |request: axum::extract::Request| {
            let gateway = gateway.clone();
            async move {
                let response = telemetry
                    .around(
                        request,
                        |request| async move { gateway.handle(request).await },
                    )
                    .await;
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    // Limits and shutdown (crate::listener, crate::limits): checked by the listener before
    // the router runs, so that a body over the limit and a draining /readyz are answered
    // before anything else.
    let draining = crate::listener::Draining::default();
    let tls = match &cfg.tls {
        Some((cert, key)) => Some(tls::acceptor(cert, key)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, public_url = %gateway.settings().public_url, version = crate::VERSION, "portcullis listening");
    // A line tests and scripts can wait for.
    println!("READY {{\"listen\":\"{addr}\"}}");
    crate::listener::serve(listener, app, tls, &cfg.limits, draining, shutdown_signal()).await;
    for task in background {
        task.abort();
    }
    reloader.abort();
    tracing::info!("portcullis stopped");
    Ok(())
}

/// Logs (`warn`) each route whose `require_acr` lists a value the identity provider does not
/// advertise in `acr_values_supported` (OpenID Connect Discovery §3): its step-up challenge
/// asks for every listed value, and the login refuses values the IdP does not support, so
/// the route's step-up logins would fail. Nothing when the IdP advertises no list. Run in
/// the background at start and after each reload (another frontend's IdP may be slow).
async fn warn_unsupported_acr(gateway: Gateway) {
    for frontend in gateway.frontends() {
        let ruled = frontend
            .settings()
            .routes
            .iter()
            .any(|r| !r.access.require_acr.is_empty());
        if !ruled {
            continue;
        }
        // The frontend's own identity provider (cached discovery; a failure was logged by
        // whoever fetched it, and the next login retries).
        let Ok(metadata) = frontend.provider().metadata().await else {
            continue;
        };
        let Some(supported) = &metadata.acr_values_supported else {
            continue;
        };
        for route in &frontend.settings().routes {
            let unsupported: Vec<&str> = route
                .access
                .require_acr
                .iter()
                .filter(|v| !supported.contains(v))
                .map(String::as_str)
                .collect();
            if !unsupported.is_empty() {
                tracing::warn!(
                    frontend = frontend.name(),
                    route = %route.path,
                    unsupported = ?unsupported,
                    acr_values_supported = ?supported,
                    "route's require_acr lists values the identity provider does not advertise; its step-up logins will be refused"
                );
            }
        }
    }
}

/// The settings a reload cannot change (listener, its limits and TLS, store, keys, admin
/// listener, logging and telemetry, data directory): a changed value is logged and ignored
/// until the next restart. One `(name, value)` per setting; only the names are ever logged
/// (and session keys are represented by their ids).
#[derive(PartialEq)]
struct Restart(Vec<(&'static str, String)>);

impl Restart {
    fn of(cfg: &Config) -> Self {
        let keys = match &cfg.keys {
            KeySource::File(p) => format!("file {}", p.display()),
            KeySource::Inline(specs) => specs
                .iter()
                .map(|s| s.expose_secret().split(':').next().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
                .join(","),
        };
        Self(vec![
            ("server.listen", cfg.listen.to_string()),
            ("session.store", cfg.store_url.clone()),
            ("session keys", keys),
            ("server.tls", format!("{:?}", cfg.tls)),
            (
                "admin.listen",
                format!("{:?}", cfg.admin.as_ref().map(|a| a.listen)),
            ),
            (
                "server limits (a route's max_body takes effect at once; one raised above the listener's bound needs a restart)",
                format!("{:?}", cfg.limits),
            ),
            ("server.log_format", cfg.log_json.to_string()),
            ("[telemetry]", format!("{:?}", cfg.telemetry)),
            ("server.data_dir", cfg.data_dir.display().to_string()),
        ])
    }

    /// The names of the settings that differ from `old`, comma-separated.
    fn changed_from(&self, old: &Restart) -> String {
        self.0
            .iter()
            .zip(&old.0)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `SIGHUP`: re-read the configuration file and swap in the new frontends and routes. An
/// invalid file is refused with every error logged; the running configuration stays.
async fn reload_on_hangup(
    gateway: Gateway,
    path: std::path::PathBuf,
    restart: Restart,
    mut spa_routers: SpaRouters,
) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; configuration reload disabled");
            return;
        };
        while hup.recv().await.is_some() {
            reload(&gateway, &path, &restart, &mut spa_routers).await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (gateway, path, restart, &mut spa_routers);
    }
}

async fn reload(
    gateway: &Gateway,
    path: &std::path::Path,
    restart: &Restart,
    spa_routers: &mut SpaRouters,
) {
    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
    let cfg = match crate::config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                tracing::error!(error = %e, "configuration reload refused");
            }
            tracing::error!(
                errors = errors.len(),
                "configuration reload refused; the running configuration stays"
            );
            return;
        }
    };
    let now = Restart::of(&cfg);
    if now != *restart {
        tracing::warn!(
            changed = %now.changed_from(restart),
            "settings that take effect only after a restart changed; the rest of the file is applied"
        );
    }
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let mut settings = cfg.gateway;
    let mut frontends = cfg.frontends;
    let mut next_routers = SpaRouters::default();
    let built = with_dpop_keys(
        &mut settings,
        cfg.dpop_key.as_ref(),
        &cfg.client_dpop_keys,
        &mut frontends,
    )
    .and_then(|()| {
        next_routers.build(
            spa_routers,
            portcullis::frontend::DEFAULT_FRONTEND,
            &cfg.spa,
            &settings,
            "/",
        )
    })
    .and_then(|fallback| {
        frontend_specs_reusing(frontends, spa_routers, &mut next_routers)
            .map(|frontends| (fallback, frontends))
    });
    let (fallback, frontends) = match built {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
            return;
        }
    };
    // `None` would keep the running SPA: a file without `[spa]` now serves none (404).
    let fallback = fallback.unwrap_or_else(|| {
        axum::Router::new().fallback(|| async { axum::http::StatusCode::NOT_FOUND })
    });
    match gateway.reload(settings, Some(fallback), frontends).await {
        Ok(()) => {
            *spa_routers = next_routers;
            tokio::spawn(warn_unsupported_acr(gateway.clone()));
        }
        Err(errors) => {
            for e in &errors {
                tracing::error!(error = %e, "configuration reload refused");
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

mod tls {
    //! TLS termination with rustls.
    use std::path::Path;
    use std::sync::Arc;

    use tokio_rustls::TlsAcceptor;

    /// A rustls acceptor for the certificate chain and key in these PEM files (ALPN `h2`,
    /// `http/1.1`).
    pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
        let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
            std::fs::File::open(cert).map_err(|e| format!("{}: {e}", cert.display()))?,
        ))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
        let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
            std::fs::File::open(key).map_err(|e| format!("{}: {e}", key.display()))?,
        ))
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key found", key.display()))?;
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("TLS configuration: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}
