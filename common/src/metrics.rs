//! Prometheus text exposition, and the tiny HTTP endpoint both binaries serve it on (`/metrics`, `/healthz`,
//! `/readyz`). The one place `common` touches the network: a loopback-or-pod-IP listener the binary hands in.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Writes `# HELP` and `# TYPE` lines.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line; `labels` are (name, value) pairs (values escaped).
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let _ = write!(out, "{label}=\"{escaped}\"");
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A histogram of seconds with fixed buckets, lock-free.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Buckets for latencies from 100 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        if let Some(index) = self.bounds.iter().position(|b| seconds <= *b) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        family(out, name, "histogram", help);
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            sample(out, &format!("{name}_bucket"), &[("le", &bound.to_string())], cumulative as f64);
        }
        let count = self.count.load(Ordering::Relaxed);
        sample(out, &format!("{name}_bucket"), &[("le", "+Inf")], count as f64);
        sample(out, &format!("{name}_sum"), &[], self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        sample(out, &format!("{name}_count"), &[], count as f64);
    }
}

/// An HTTP answer: status, content type, body.
pub type Answer = (u16, &'static str, String);
/// Answers a GET for a path.
pub type Handler = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// Serves GET requests (one per connection) until `token` is cancelled. A client that has not sent its whole
/// request within `read_timeout` is disconnected (a silent connection must not hold a task forever).
pub async fn serve(
    listener: TcpListener,
    handler: Handler,
    read_timeout: std::time::Duration,
    token: CancellationToken,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            _ = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 8192];
            let mut read = 0;
            let request = async {
                while read < buffer.len() {
                    match stream.read(&mut buffer[read..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                    if buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            };
            if tokio::time::timeout(read_timeout, request).await.is_err() {
                return;
            }
            let request = String::from_utf8_lossy(&buffer[..read]);
            let mut words = request.split_whitespace();
            let (status, content_type, body) = match (words.next(), words.next()) {
                (Some("GET"), Some(path)) => handler(path.to_owned()).await,
                _ => (405, "text/plain", "only GET\n".to_owned()),
            };
            let reason = match status {
                200 => "OK",
                404 => "Not Found",
                405 => "Method Not Allowed",
                _ => "Service Unavailable",
            };
            let head = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_that_sends_nothing_is_disconnected_after_the_read_timeout() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: Handler = Arc::new(|_path| Box::pin(async { (200, "text/plain", "ok\n".to_owned()) }));
        let token = CancellationToken::new();
        tokio::spawn(serve(listener, handler, std::time::Duration::from_millis(200), token.clone()));
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), silent.read(&mut byte)).await;
        assert!(matches!(closed, Ok(Ok(0))), "the server kept a silent connection: {closed:?}");
        token.cancel();
    }

    #[test]
    fn renders_the_text_format() {
        let mut out = String::new();
        family(&mut out, "x_total", "counter", "Things.");
        sample(&mut out, "x_total", &[("reason", "a \"b\"")], 3.0);
        let histogram = Histogram::new(&[0.1, 1.0]);
        histogram.observe(0.05);
        histogram.observe(0.5);
        histogram.observe(5.0);
        histogram.render(&mut out, "lat_seconds", "Latency.");
        assert_eq!(
            out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{reason=\"a \\\"b\\\"\"} 3\n\
             # HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\nlat_seconds_bucket{le=\"0.1\"} 1\n\
             lat_seconds_bucket{le=\"1\"} 2\nlat_seconds_bucket{le=\"+Inf\"} 3\nlat_seconds_sum 5.55\nlat_seconds_count 3\n"
        );
    }
}
