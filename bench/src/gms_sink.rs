//! A GMS stand-in for throughput benchmarks: HTTP/1.1 keep-alive on loopback, answers `ingestProposal` with
//! 200 and the OpenAPI batch read with no entities, and counts terminal (`SUCCESS`) writes. It does not
//! validate payloads (the integration tests' stand-in does, with DataHub's own classes); it exists so that the
//! benchmark measures Outpost's reporting path, not a Python server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the sink has seen.
#[derive(Default)]
pub struct Counts {
    /// Every HTTP request.
    pub requests: AtomicUsize,
    pub proposals: AtomicUsize,
    pub succeeded: AtomicUsize,
}

/// Listens on 127.0.0.1:0; returns the base URL and the counters.
pub async fn start() -> anyhow::Result<(String, Arc<Counts>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let counts = Arc::new(Counts::default());
    let shared = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, shared.clone()));
        }
    });
    Ok((url, counts))
}

async fn serve(mut stream: TcpStream, counts: Arc<Counts>) -> anyhow::Result<()> {
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Headers, then a body of Content-Length bytes.
        let (head_end, length) = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (end + 4, length);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        };
        while buffer.len() < head_end + length {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        let request_line =
            String::from_utf8_lossy(&buffer[..buffer.iter().position(|b| *b == b'\r').unwrap_or(0)]).into_owned();
        let body = &buffer[head_end..head_end + length];
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let answer: &str = if request_line.contains("ingestProposal") {
            // One proposal, or a batch of them (ingestProposalBatch): each write counts.
            let count = |pattern: &[u8]| body.windows(pattern.len()).filter(|w| *w == pattern).count();
            counts.proposals.fetch_add(count(b"\"entityUrn\"").max(1), Ordering::Relaxed);
            counts.succeeded.fetch_add(count(b"\\\"SUCCESS\\\""), Ordering::Relaxed);
            "{}"
        } else {
            "{\"entities\":[]}"
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        stream.write_all(response.as_bytes()).await?;
        buffer.drain(..head_end + length);
    }
}
