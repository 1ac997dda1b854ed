//! Start-up: logging, keys, store, router, listener, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use portcullis::Gateway;

use crate::config::{Config, KeySource};
use crate::keyfile;

pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Keys, store and gateway from a validated configuration (shared by `serve` and
/// `sessions`).
pub async fn build_gateway(
    settings: portcullis::settings::GatewaySettings,
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
    Gateway::new(
        settings,
        store,
        keys,
        Arc::new(portcullis_token::SystemClock),
    )
}

pub async fn run(cfg: Config) -> Result<(), String> {
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let mut settings = cfg.gateway;
    if let Some(file) = &cfg.dpop_key {
        let key = keyfile::load_or_create_dpop(file)?;
        tracing::info!(alg = ?key.alg(), jkt = key.thumbprint(), "DPoP enabled");
        settings.oidc.dpop = Some(portcullis::settings::DpopSettings { key: Arc::new(key) });
    }
    let par_required = settings.oidc.par == portcullis::settings::ParMode::Required;
    let gateway = build_gateway(settings, &cfg.keys, &cfg.store_url, &cfg.data_dir).await?;
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
            .install_recorder()
            .map(|handle| -> portcullis::admin::MetricsRender { Arc::new(move || handle.render()) })
            .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
            .ok();
        let app = portcullis::admin::router(gateway.clone(), admin.token.clone(), metrics);
        let listener = tokio::net::TcpListener::bind(admin.listen)
            .await
            .map_err(|e| format!("cannot listen on {} (admin): {e}", admin.listen))?;
        tracing::info!(addr = %admin.listen, "admin listener (sessions, metrics)");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener.tap_io(set_nodelay), app).await {
                tracing::error!(error = %e, "admin listener stopped");
            }
        });
    }
    let fallback = cfg
        .spa_dir
        .as_ref()
        .map(|dir| portcullis::spa::Spa::for_gateway(dir, &gateway).router());
    let app = gateway
        .router(fallback)
        .layer(
            // Spans carry the path only: query strings hold authorization codes and states.
            tower_http::trace::TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                tracing::info_span!("request", method = %req.method(), path = %portcullis::log_safe::untrusted(req.uri().path()))
            }),
        );
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, public_url = %gateway.settings().public_url, "portcullis listening");
    // A line tests and scripts can wait for.
    println!("READY {{\"listen\":\"{addr}\"}}");
    if let Some((cert, key)) = &cfg.tls {
        crate::serve::tls::serve(listener, app, cert, key).await?;
    } else {
        axum::serve(
            listener.tap_io(set_nodelay),
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))?;
    }
    for task in background {
        task.abort();
    }
    tracing::info!("portcullis stopped");
    Ok(())
}

/// `TCP_NODELAY` on an accepted connection. With Nagle's algorithm on, the last small write
/// of a streamed response (the terminating chunk of a chunked body, a TLS record after the
/// headers) waits until the client ACKs the previous segment, which clients delay by up to
/// ~40 ms: every such response would take that long. Responses are written in whole
/// frames already, so small packets are not a concern.
fn set_nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
    }
}

async fn shutdown_signal() {
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
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;

    use axum::extract::ConnectInfo;
    use axum::Router;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    use tokio_rustls::TlsAcceptor;

    pub async fn serve(
        listener: tokio::net::TcpListener,
        app: Router,
        cert: &Path,
        key: &Path,
    ) -> Result<(), String> {
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
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let shutdown = super::shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            let (mut tcp, peer): (_, SocketAddr) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                },
                _ = &mut shutdown => return Ok(()),
            };
            super::set_nodelay(&mut tcp);
            let acceptor = acceptor.clone();
            let app = app.clone().layer(axum::Extension(ConnectInfo(peer)));
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}
