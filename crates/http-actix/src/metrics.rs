//! Prometheus metrics of the transport (contract section 3, `GET /metrics`).
//! Names are prefixed `kairos_`; every one is listed in `docs/operations.md`.
//! The server registers the background workers' metrics in the same
//! registry ([`Metrics::registry`]), so `/metrics` shows them all.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Buckets in seconds for request-scale latencies: 100 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every metric the transport records, and the registry `/metrics` renders.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route pattern, method and status.
    pub http_requests: IntCounterVec,
    /// HTTP latency by route pattern and method.
    pub http_latency: HistogramVec,
    /// Switch latency (REST and WebSocket), decide + commit + publish.
    pub switch_latency: Histogram,
    /// Open WebSocket connections.
    pub ws_connections: IntGauge,
    /// This instance's WebSockets registered in presence (contract section 9).
    pub presence_connections: IntGauge,
    /// Distinct (session, user) pairs among those connections.
    pub presence_users: IntGauge,
    /// WebSocket messages sent to clients.
    pub ws_messages_sent: IntCounter,
    /// Primary store errors (unreachable, timeouts, corrupt data), counted
    /// by the transport and, through a clone, by the workers.
    pub store_errors: IntCounter,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric construction fails only on an invalid name or a duplicate
    // registration, both fixed strings in this file: a bug caught by the
    // unit test below, never a runtime condition.
    #[allow(clippy::expect_used)]
    r.expect("static metric definitions are valid")
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = must(IntGauge::new(name, help));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let histogram = |name: &str, help: &str| {
            let h = must(Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            ));
            must(registry.register(Box::new(h.clone())));
            h
        };
        let http_requests = must(IntCounterVec::new(
            Opts::new(
                "kairos_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        ));
        must(registry.register(Box::new(http_requests.clone())));
        let http_latency = must(HistogramVec::new(
            HistogramOpts::new(
                "kairos_http_request_duration_seconds",
                "HTTP request latency",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        ));
        must(registry.register(Box::new(http_latency.clone())));
        Self {
            http_requests,
            http_latency,
            switch_latency: histogram(
                "kairos_switch_duration_seconds",
                "Switch latency: decide, commit and publish",
            ),
            ws_connections: gauge("kairos_ws_connections", "Open WebSocket connections"),
            presence_connections: gauge(
                "kairos_presence_connections",
                "WebSockets this instance registered in presence",
            ),
            presence_users: gauge(
                "kairos_presence_users",
                "Distinct users per session among this instance's presence connections",
            ),
            ws_messages_sent: counter(
                "kairos_ws_messages_sent_total",
                "WebSocket messages sent to clients",
            ),
            store_errors: counter("kairos_store_errors_total", "Primary store errors"),
            registry,
        }
    }

    /// The registry `/metrics` renders; the server registers the workers'
    /// metrics in it.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_renders() {
        let m = Metrics::new();
        m.store_errors.inc();
        m.http_requests
            .with_label_values(&["/v1/time", "GET", "200"])
            .inc();
        let text = m.render();
        assert!(text.contains("kairos_store_errors_total 1"));
        assert!(text.contains(
            "kairos_http_requests_total{method=\"GET\",route=\"/v1/time\",status=\"200\"} 1"
        ));
        assert!(text.contains("kairos_switch_duration_seconds_bucket"));
    }
}
