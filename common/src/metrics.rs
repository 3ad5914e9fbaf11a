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

/// Declares a metric label's values as an enum: each variant with the word it is exported as. Generates `ALL`
/// (every value, so a family's series can exist from the start), `label()`, and the `prometheus-client` encoding,
/// so a label set that holds it is a `#[derive(EncodeLabelSet)]` struct and no table of words is kept by hand.
#[macro_export]
macro_rules! label_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The word it is exported as.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)+ }
            }
        }

        $crate::label_value!($name);
    };
}

/// The `prometheus-client` label-value encoding of a type with a `label()` word (see [`label_enum!`]).
#[macro_export]
macro_rules! label_value {
    ($($name:ty),+) => {$(
        impl ::prometheus_client::encoding::EncodeLabelValue for $name {
            fn encode(
                &self,
                encoder: &mut ::prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> ::std::fmt::Result {
                ::std::fmt::Write::write_str(encoder, self.label())
            }
        }
    )+};
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

    crate::label_enum! {
        enum Colour {
            DarkRed => "dark_red",
            Blue => "blue",
        }
    }

    #[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
    struct Thing {
        reason: String,
        colour: Colour,
    }

    #[test]
    fn renders_openmetrics_text_with_escaped_labels_and_label_enums_as_their_words() {
        let mut registry = Registry::default();
        let things = Family::<Thing, Counter>::default();
        registry.register("x", "Things", things.clone());
        things.get_or_create(&Thing { reason: "a \"b\"".into(), colour: Colour::DarkRed }).inc_by(3);
        assert_eq!(Colour::ALL, [Colour::DarkRed, Colour::Blue]);
        let latency = Histogram::new([0.1, 1.0]);
        registry.register("lat_seconds", "Latency", latency.clone());
        for seconds in [0.05, 0.5, 5.0] {
            latency.observe(seconds);
        }
        let text = encode(&registry);
        assert!(text.contains("# TYPE x counter\nx_total{reason=\"a \\\"b\\\"\",colour=\"dark_red\"} 3\n"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"1.0\"} 2\n"), "{text}");
        assert!(text.contains("lat_seconds_count 3\n") && text.ends_with("# EOF\n"), "{text}");
    }
}
