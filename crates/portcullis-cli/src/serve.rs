//! Start-up: logging, keys, store, router, listener, graceful shutdown.

use std::net::SocketAddr;
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
    let mut specs = Vec::with_capacity(frontends.len());
    for f in frontends {
        let mount = f.settings.match_path.as_deref().unwrap_or("/");
        let fallback = f
            .spa
            .router_for(&f.settings.settings, mount)
            .map_err(|e| format!("frontend {}: {e}", f.settings.name))?;
        specs.push(portcullis::FrontendSpec {
            fallback,
            settings: f.settings,
        });
    }
    Ok(specs)
}

/// Reads (or generates) the DPoP key of the default frontend and of every frontend whose
/// `[oidc.dpop]` is enabled, and puts it into its settings. Frontends naming the same file
/// share one key.
///
/// # Errors
/// A message naming the file that cannot be read, parsed or created.
fn with_dpop_keys(
    default: &mut portcullis::settings::GatewaySettings,
    default_key: Option<&crate::config::DpopKeyFile>,
    frontends: &mut [FrontendConfig],
) -> Result<(), String> {
    let mut loaded: Vec<(std::path::PathBuf, Arc<portcullis_token::DpopKey>)> = Vec::new();
    let mut load =
        |file: &crate::config::DpopKeyFile| -> Result<portcullis::settings::DpopSettings, String> {
            if let Some((_, key)) = loaded.iter().find(|(p, _)| *p == file.path) {
                return Ok(portcullis::settings::DpopSettings { key: key.clone() });
            }
            let key = Arc::new(keyfile::load_or_create_dpop(file)?);
            tracing::info!(alg = ?key.alg(), jkt = key.thumbprint(), "DPoP enabled");
            loaded.push((file.path.clone(), key.clone()));
            Ok(portcullis::settings::DpopSettings { key })
        };
    if let Some(file) = default_key {
        default.oidc.dpop = Some(load(file)?);
    }
    for f in frontends {
        if let Some(file) = &f.dpop_key {
            f.settings.settings.oidc.dpop = Some(load(file)?);
        }
    }
    Ok(())
}

pub async fn run(cfg: Config, config_path: &std::path::Path) -> Result<(), String> {
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let mut settings = cfg.gateway;
    let mut frontends = cfg.frontends;
    with_dpop_keys(&mut settings, cfg.dpop_key.as_ref(), &mut frontends)?;
    let par_required = settings.oidc.par == portcullis::settings::ParMode::Required;
    let gateway = build_gateway(
        settings,
        frontend_specs(frontends)?,
        &cfg.keys,
        &cfg.store_url,
        &cfg.data_dir,
    )
    .await?;
    let background = gateway.spawn_background_tasks();
    // Warm the discovery cache; failure is not fatal (the IdP may start after us).
    match gateway.provider().metadata().await {
        Err(e) => {
            tracing::warn!(error = %e, "identity provider discovery failed at start-up; will retry on demand");
        }
        Ok(m) if par_required && m.pushed_authorization_request_endpoint.is_none() => {
            return Err("oidc.par = \"required\" but the identity provider advertises no pushed_authorization_request_endpoint".into());
        }
        Ok(_) => {}
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
    let fallback = cfg.spa.router(&gateway, "/")?;
    if let Some(hash) = &cfg.spa_script_hash {
        tracing::info!(csp_source = %hash, "index.html gets an inline script; a Content-Security-Policy that forbids inline scripts must list this hash in script-src");
    }
    let reloader = tokio::spawn(reload_on_hangup(
        gateway.clone(),
        config_path.to_path_buf(),
        Restart::of(&cfg.listen, &cfg.store_url, &cfg.keys, &cfg.tls, &cfg.admin),
    ));
    let mut app = gateway.router(fallback);
    if let Some(cors) = &cfg.cors {
        app = portcullis::cors::Cors::for_gateway(cors, &gateway, &[]).apply(app);
    }
    let app = app
        // The request span (path only: query strings hold authorization codes and states),
        // the trace context and the request duration histogram.
        .layer(axum::middleware::from_fn({
            let telemetry = cfg.telemetry.request();
            move |request, next| telemetry.middleware(request, next)
        }));
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

/// The settings a reload cannot change (listeners, store, keys, TLS, admin): a changed value
/// is logged and ignored until the next restart.
#[derive(PartialEq)]
struct Restart(String);

impl Restart {
    fn of(
        listen: &SocketAddr,
        store: &str,
        keys: &KeySource,
        tls: &Option<(std::path::PathBuf, std::path::PathBuf)>,
        admin: &Option<crate::config::AdminConfig>,
    ) -> Self {
        let keys = match keys {
            KeySource::File(p) => format!("file {}", p.display()),
            KeySource::Inline(specs) => specs
                .iter()
                .map(|s| s.expose_secret().split(':').next().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
                .join(","),
        };
        let admin = admin.as_ref().map(|a| a.listen);
        Self(format!("{listen}|{store}|{keys}|{tls:?}|{admin:?}"))
    }
}

/// `SIGHUP`: re-read the configuration file and swap in the new frontends and routes. An
/// invalid file is refused with every error logged; the running configuration stays.
async fn reload_on_hangup(gateway: Gateway, path: std::path::PathBuf, restart: Restart) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; configuration reload disabled");
            return;
        };
        while hup.recv().await.is_some() {
            reload(&gateway, &path, &restart).await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (gateway, path, restart);
    }
}

async fn reload(gateway: &Gateway, path: &std::path::Path, restart: &Restart) {
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
    if Restart::of(&cfg.listen, &cfg.store_url, &cfg.keys, &cfg.tls, &cfg.admin) != *restart {
        tracing::warn!("listen addresses, session store, keys, TLS or admin settings changed: they take effect only after a restart");
    }
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let mut settings = cfg.gateway;
    let mut frontends = cfg.frontends;
    let built = with_dpop_keys(&mut settings, cfg.dpop_key.as_ref(), &mut frontends)
        .and_then(|()| cfg.spa.router_for(&settings, "/"))
        .and_then(|fallback| frontend_specs(frontends).map(|frontends| (fallback, frontends)));
    let (fallback, frontends) = match built {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
            return;
        }
    };
    let had_fallback = fallback.is_some();
    match gateway.reload(settings, fallback, frontends).await {
        Ok(()) => {
            if !had_fallback {
                tracing::debug!("default frontend keeps its static files");
            }
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
