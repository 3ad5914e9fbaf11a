//! What both binaries' metrics endpoints share: the exposition (the `prometheus-client` crate's OpenMetrics text)
//! and the router answering `/metrics`, `/healthz` and `/readyz` (served by `http::serve`). Each binary owns its
//! own metrics; this module never records anything.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// Label sets of every family: (name, value) pairs.
pub type Labels = Vec<(&'static str, String)>;

/// One label.
pub fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// Buckets for latencies from 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The content type of the OpenMetrics text format (Prometheus scrapes it).
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// A future answering one scrape or probe.
pub type Answering<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the endpoint asks its binary: the exposition, and readiness (ready?, why).
#[derive(Clone)]
pub struct Probes {
    pub exposition: Arc<dyn Fn() -> Answering<String> + Send + Sync>,
    pub ready: Arc<dyn Fn() -> Answering<(bool, String)> + Send + Sync>,
}

/// `/metrics`, `/healthz` (the process is up) and `/readyz` (200 or 503 with the reason).
pub fn router(probes: Probes) -> axum::Router {
    let (exposition, ready) = (probes.exposition, probes.ready);
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let exposition = exposition.clone();
                async move { ([(header::CONTENT_TYPE, OPENMETRICS_TEXT)], exposition().await) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    let (ok, why) = ready().await;
                    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    (status, format!("{why}\n")).into_response()
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::histogram::Histogram;

    #[test]
    fn renders_openmetrics_text_with_escaped_labels() {
        let mut registry = Registry::default();
        let things = Family::<Labels, Counter>::default();
        registry.register("x", "Things", things.clone());
        things.get_or_create(&labels(&[("reason", "a \"b\"")])).inc_by(3);
        let latency = Histogram::new([0.1, 1.0]);
        registry.register("lat_seconds", "Latency", latency.clone());
        for seconds in [0.05, 0.5, 5.0] {
            latency.observe(seconds);
        }
        let text = encode(&registry);
        assert!(text.contains("# TYPE x counter\nx_total{reason=\"a \\\"b\\\"\"} 3\n"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"1.0\"} 2\n"), "{text}");
        assert!(text.contains("lat_seconds_count 3\n") && text.ends_with("# EOF\n"), "{text}");
    }
}
