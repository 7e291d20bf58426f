//! Assembles the server: services, health, reflection, gRPC-Web, layers, background tasks, shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::config::Settings;
use crate::grpc;
use crate::service::App;
use crate::service::events::{ReferralFeed, StreamLimits};
use crate::storage;

/// The HTTP/2 flow-control window of each call's request stream. Most gRPC clients send each
/// message of a client stream in its own DATA frame, and h2 ends a connection (GOAWAY
/// ENHANCE_YOUR_CALM `too_many_data_frames`, seen by the client as `UNKNOWN: transport error`)
/// once the small frames it holds unread cost more than half the connection window (1 MiB):
/// exactly what piled up while ImportNeeds stored a batch and read nothing. A 64 KiB stream window
/// caps what one stream can leave unread at about a sixth of that budget for ImportNeeds items.
const STREAM_WINDOW_BYTES: u32 = 64 * 1024;

/// A server bound to its port, ready to run.
pub struct Application {
    listener: TcpListener,
    /// The Prometheus `/metrics` listener, when `metrics_addr` is set.
    metrics_listener: Option<TcpListener>,
    app: App,
    /// The referral event feed; it runs while the server does.
    referral_feed: ReferralFeed,
    settings: Settings,
}

impl Application {
    /// Applies migrations (unless disabled; waiting for PostgreSQL up to its patience), then
    /// builds the pool, which connects lazily, and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        if settings.migrate {
            let applied = storage::run_migrations_patiently(
                &settings.database_url,
                settings.db_connect_patience,
            )
            .await
            .context("applying migrations")?;
            if !applied.is_empty() {
                tracing::info!(?applied, "migrations applied");
            }
        }
        let pool = storage::pool(
            &settings.database_url,
            settings.db_pool_size,
            settings.server.db_statement_timeout(),
        )?;
        let app = App::configured(
            pool,
            settings.server.routing_policy()?,
            crate::domain::BureauCalendar::new(settings.server.time_zone),
        );
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
        let referral_feed = ReferralFeed::with_limits(
            settings.server.relay_lease(),
            StreamLimits {
                per_credential: settings.server.max_watch_streams_per_credential,
                calls: std::sync::Arc::new(tokio::sync::Semaphore::new(
                    settings.server.max_concurrent_calls,
                )),
            },
        );
        Ok(Self {
            listener,
            metrics_listener,
            app,
            referral_feed,
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

    /// This server's referral event feed (its counters show what watch streams cost).
    pub fn referral_feed(&self) -> &ReferralFeed {
        &self.referral_feed
    }

    /// Serves until `shutdown` completes, then stops accepting calls, drains the ones in flight
    /// and returns.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Application {
            listener,
            metrics_listener,
            app,
            referral_feed,
            settings,
        } = self;
        let server_args = &settings.server;
        let addr = listener.local_addr()?;

        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::Serving).await;
        let readiness = tokio::spawn(watch_database(app.clone(), health.clone()));
        let product_cache = tokio::spawn(app.clone().watch_products(settings.database_url.clone()));
        let credential_cache =
            tokio::spawn(app.clone().watch_credentials(settings.database_url.clone()));
        let sweeper = tokio::spawn(app.clone().run_sweeper(
            server_args.sweep_interval(),
            server_args.idempotency_retention(),
        ));
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

        // Reflection describes every service on the port, health and both reflection versions
        // included, so `grpcurl list` shows what is really served.
        let reflection = || {
            grpc::methods::DESCRIPTOR_SETS.iter().fold(
                tonic_reflection::server::Builder::configure(),
                |builder, set| builder.register_encoded_file_descriptor_set(set),
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

        let call_timeout = grpc::deadline::CallTimeoutLayer::new(server_args.call_timeout());
        let layers = ServiceBuilder::new()
            .layer(crate::console::ConsoleLayer)
            .layer(grpc::layers::cors())
            .layer(tonic_web::GrpcWebLayer::new())
            .map_request(grpc::layers::drop_unusable_request_id)
            .layer(SetRequestIdLayer::new(
                grpc::layers::REQUEST_ID,
                MakeRequestUuid,
            ))
            .layer(PropagateRequestIdLayer::new(grpc::layers::REQUEST_ID))
            .layer(grpc::metrics::MetricsLayer)
            .layer(grpc::layers::trace())
            .layer(call_timeout)
            .load_shed()
            // The permits are the feed's: each open watch stream holds one too.
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                referral_feed.call_permits(),
            ))
            .layer(grpc::auth::AuthLayer::new(app.clone()))
            .map_response(grpc::status::oversized_as_resource_exhausted)
            .into_inner();

        // No `Server::timeout`: it would cut streaming calls too. CallTimeoutLayer bounds unary
        // calls; tonic still honours each client's own `grpc-timeout`.
        let router = builder
            .accept_http1(true)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(layers)
            .add_routes(grpc::routes(
                &app,
                &referral_feed,
                server_args.max_message_bytes,
                server_args.stream_idle(),
            ))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        tracing::info!(%addr, "finmatch serving gRPC and gRPC-Web");
        let (notice, grace) = (server_args.shutdown_notice(), server_args.shutdown_grace());
        let (draining, drain_started) = tokio::sync::oneshot::channel::<()>();
        let drained = {
            let health = health.clone();
            let referral_feed = referral_feed.clone();
            let readiness = readiness.abort_handle();
            async move {
                shutdown.await;
                // Probes and load balancers hear first, while this server still answers.
                readiness.abort();
                set_health(&health, ServingStatus::NotServing).await;
                tracing::info!(
                    ?notice,
                    "shutting down: NOT_SERVING, still answering for the notice"
                );
                tokio::time::sleep(notice).await;
                tracing::info!(
                    ?grace,
                    "shutting down: refusing new calls, draining the ones in flight"
                );
                // Watch streams never end by themselves; end them (UNAVAILABLE, so banks
                // reconnect to another replica) so draining can finish.
                referral_feed.close();
                let _ = draining.send(());
            }
        };
        // The feed runs inside this future rather than in a task of its own: a server that is
        // dropped (a crash, as far as the other replicas can tell) stops relaying with it and
        // leaves its lease to expire, and one that shuts down gives the lease up.
        // Nagle's algorithm on accepted sockets meets the client's delayed ACK and holds every
        // response that spans two segments for ~40 ms; gRPC frames its own writes.
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let serving = async {
            let draining_too_long = async {
                match drain_started.await {
                    Ok(()) => tokio::time::sleep(grace).await,
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                result = router.serve_with_incoming_shutdown(incoming, drained) => result,
                () = draining_too_long => {
                    tracing::warn!(?grace, "calls still in flight after the shutdown grace; stopping without them");
                    Ok(())
                }
            }
        };
        let serving = std::pin::pin!(serving);
        let feed = std::pin::pin!(
            referral_feed
                .clone()
                .run(app.clone(), settings.database_url.clone())
        );
        let result = match futures::future::select(serving, feed).await {
            futures::future::Either::Left((result, feed)) => {
                // Closed at shutdown: it gives up the relay lease and returns.
                referral_feed.close();
                if tokio::time::timeout(Duration::from_secs(2), feed)
                    .await
                    .is_err()
                {
                    tracing::warn!("the referral event feed did not stop in time");
                }
                result
            }
            futures::future::Either::Right(((), serving)) => serving.await,
        };
        readiness.abort();
        product_cache.abort();
        credential_cache.abort();
        sweeper.abort();
        for task in metrics_tasks {
            task.abort();
        }
        result.context("serving")?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Reports the finmatch services NOT_SERVING while PostgreSQL is unreachable (the server itself
/// stays up and answers UNAVAILABLE), and SERVING again when it returns.
/// Sets every health entry: the server as a whole (`""`, which grpc_health_probe and Kubernetes
/// probes ask) and each finmatch service. None can serve without PostgreSQL.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in grpc::SERVICE_NAMES {
        health.set_service_status(name, status).await;
    }
}

/// How long the database watcher's ping may take before PostgreSQL counts as unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

async fn watch_database(app: App, health: tonic_health::server::HealthReporter) {
    let mut serving = true;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        // A database that stops answering without closing is down too, not a ping in waiting.
        let up = matches!(
            tokio::time::timeout(PING_TIMEOUT, app.ping()).await,
            Ok(Ok(()))
        );
        if up != serving {
            serving = up;
            let status = if up {
                tracing::info!("database reachable again");
                ServingStatus::Serving
            } else {
                tracing::warn!("database unreachable");
                ServingStatus::NotServing
            };
            set_health(&health, status).await;
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
