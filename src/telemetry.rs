//! Logging: `tracing` to stderr, filtered by `RUST_LOG`, pretty or JSON.

use std::io::IsTerminal as _;

use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::fmt;
use tracing_subscriber::layer::Context;
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,h2=warn,tower=warn,hyper=warn,tokio_postgres=warn";

/// The span the demo loader plays its round in. Under the default filter, the info lines of the
/// use cases it drives (hundreds of "enterprise registered", "need submitted") are left out, as
/// if they were at debug; the loader's own lines and every warning stay. `RUST_LOG` shows them.
pub const DEMO_SPAN: &str = "demo_load";

/// Installs the global subscriber. Safe to call more than once (later calls do nothing). Pretty
/// output has ANSI colours only when stderr is a terminal.
pub fn init(format: LogFormat) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let quiet_demo = from_env.is_none();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Pretty => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .compact()
                    .with_filter(quiet_demo.then(demo_filter)),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr)
                    .with_filter(quiet_demo.then(demo_filter)),
            )
            .try_init(),
    };
    // Already installed (tests start many servers in one process): keep the first.
    let _ = result;
}

/// See [`DEMO_SPAN`].
fn demo_filter<S>() -> DynFilterFn<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    DynFilterFn::new(|metadata, context| !muted_in_demo(metadata, context))
}

fn muted_in_demo<S>(metadata: &Metadata<'_>, context: &Context<'_, S>) -> bool
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if !metadata.is_event()
        || *metadata.level() < Level::INFO
        || metadata.target().starts_with("finmatch::demo")
    {
        return false;
    }
    context
        .lookup_current()
        .is_some_and(|span| span.scope().any(|s| s.name() == DEMO_SPAN))
}
