//! Assembles the server: services, health, reflection, gRPC-Web, layers, background tasks, shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::config::Settings;
use crate::grpc::{self, pb};
use crate::service::App;
use crate::storage;

/// A server bound to its port, ready to run.
pub struct Application {
    listener: TcpListener,
    /// The Prometheus `/metrics` listener, when `metrics_addr` is set.
    metrics_listener: Option<TcpListener>,
    app: App,
    settings: Settings,
}

impl Application {
    /// Connects the pool, applies migrations (unless disabled) and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        if settings.migrate {
            let applied = storage::run_migrations(&settings.database_url)
                .await
                .context("applying migrations")?;
            if !applied.is_empty() {
                tracing::info!(?applied, "migrations applied");
            }
        }
        let pool = storage::pool(&settings.database_url, settings.db_pool_size)?;
        let app = App::with_policy(pool, settings.server.routing_policy()?);
        let listener = TcpListener::bind(settings.server.listen_addr)
            .await
            .with_context(|| format!("binding {}", settings.server.listen_addr))?;
        let metrics_listener = match settings.server.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics listener {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            metrics_listener,
            app,
            settings,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The address `/metrics` is served on, when metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// Serves until `shutdown` completes, then stops accepting calls, drains the ones in flight
    /// and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Application {
            listener,
            metrics_listener,
            app,
            settings,
        } = self;
        let server_args = &settings.server;
        let addr = listener.local_addr()?;

        let (health, health_service) = tonic_health::server::health_reporter();
        for name in grpc::SERVICE_NAMES {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let readiness = tokio::spawn(watch_database(app.clone(), health.clone()));
        let product_cache = tokio::spawn(app.clone().watch_products(settings.database_url.clone()));
        let credential_cache =
            tokio::spawn(app.clone().watch_credentials(settings.database_url.clone()));
        let sweeper = tokio::spawn(app.clone().run_sweeper(server_args.sweep_interval()));
        let metrics_tasks = match metrics_listener {
            Some(metrics_listener) => {
                let handle = grpc::metrics::handle()?;
                tracing::info!(addr = %metrics_listener.local_addr()?, "serving Prometheus metrics at /metrics");
                vec![
                    tokio::spawn(async move {
                        if let Err(error) = grpc::metrics::serve(metrics_listener, handle).await {
                            tracing::error!(%error, "the metrics listener failed");
                        }
                    }),
                    tokio::spawn(grpc::metrics::refresh_gauges(app.clone())),
                ]
            }
            None => Vec::new(),
        };
        let (referral_feed, feed_control, feed_task) =
            crate::service::events::ReferralFeed::start(app.clone());
        let referral_feed_task = tokio::spawn(feed_task);

        // Reflection describes every service on the port, health and both reflection versions
        // included, so `grpcurl list` shows what is really served.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                )
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let mut builder = Server::builder();
        if let (Some(cert), Some(key)) = (&server_args.tls_cert, &server_args.tls_key) {
            let identity = Identity::from_pem(
                tokio::fs::read(cert)
                    .await
                    .context("reading the TLS certificate")?,
                tokio::fs::read(key).await.context("reading the TLS key")?,
            );
            let mut tls = ServerTlsConfig::new().identity(identity);
            if let Some(ca) = &server_args.tls_client_ca {
                let ca = tokio::fs::read(ca).await.context("reading the client CA")?;
                tls = tls.client_ca_root(Certificate::from_pem(ca));
            }
            builder = builder.tls_config(tls)?;
        }

        let layers = ServiceBuilder::new()
            .layer(grpc::layers::cors())
            .layer(tonic_web::GrpcWebLayer::new())
            .layer(grpc::layers::RequestIdLayer)
            .layer(grpc::metrics::MetricsLayer)
            .layer(grpc::layers::trace())
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::new(
                server_args.max_concurrent_calls,
            ))
            .layer(grpc::auth::AuthLayer::new(app.clone()))
            .layer(grpc::partner::FeedLayer::new(referral_feed))
            .into_inner();

        let router = builder
            .accept_http1(true)
            .timeout(server_args.call_timeout())
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(layers)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let router = grpc::add_services(router, &app, server_args.max_message_bytes);

        tracing::info!(%addr, "finmatch serving gRPC and gRPC-Web");
        let drained = {
            let health = health.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: refusing new calls, draining the ones in flight");
                // Watch streams never end by themselves; end them so draining can finish.
                feed_control.close();
                for name in grpc::SERVICE_NAMES {
                    health
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
            }
        };
        let result = router
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), drained)
            .await;
        readiness.abort();
        product_cache.abort();
        credential_cache.abort();
        sweeper.abort();
        for task in metrics_tasks {
            task.abort();
        }
        referral_feed_task.abort();
        result.context("serving")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Reports the finmatch services NOT_SERVING while PostgreSQL is unreachable (the server itself
/// stays up and answers UNAVAILABLE), and SERVING again when it returns.
async fn watch_database(app: App, health: tonic_health::server::HealthReporter) {
    let mut serving = true;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let up = app.ping().await.is_ok();
        if up != serving {
            serving = up;
            let status = if up {
                tracing::info!("database reachable again");
                ServingStatus::Serving
            } else {
                tracing::warn!("database unreachable");
                ServingStatus::NotServing
            };
            for name in grpc::SERVICE_NAMES {
                health.set_service_status(name, status).await;
            }
        }
    }
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives during start-up is not lost.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    #[cfg(unix)]
    let interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        #[cfg(unix)]
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {},
                    _ = interrupt.recv() => {},
                }
            }
            _ => std::future::pending::<()>().await,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
