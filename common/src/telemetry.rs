//! Structured logging with `tracing`: human-readable text by default, one JSON object per line
//! with `LOG_FORMAT=json`; the `RUST_LOG` filter applies to both.

use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is unset: our crates at info, chatty dependencies quieter.
const DEFAULT_FILTER: &str = "info,sqlx=warn,lapin=warn,tower_http=info";

/// Installs the global subscriber. Calling it twice (as tests do) keeps the first one.
pub fn init(service: &'static str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer()).try_init(),
    };
    if installed.is_ok() {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "telemetry initialised");
    }
}
