//! Serving HTTP/1.1 with axum on a listener the binary hands in: the metrics and health endpoint of both binaries
//! and the controller's status page. Bounded: a request whose head has not arrived within the read timeout is
//! dropped (hyper's header timer), and shutdown waits for requests in flight. Optionally over TLS (rustls, no
//! client certificate). Never decides what is served: that is the router's.

use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `router` until `token` is cancelled, then lets every open connection finish its request in flight and
/// waits for them (at most `read_timeout` more).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    read_timeout: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
    token: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    crate::accept::each(&listener, &token, |stream, peer| {
        // Handlers may ask who is on the other end (`ConnectInfo<SocketAddr>`).
        let service = TowerToHyperService::new(router.clone().layer(axum::Extension(axum::extract::ConnectInfo(peer))));
        let (acceptor, watcher) = (acceptor.clone(), graceful.watcher());
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(read_timeout);
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let Ok(stream) = crate::accept::handshake(&acceptor, stream, read_timeout).await else { return };
                    let _ = watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await;
                }
                None => {
                    let _ = watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await;
                }
            }
        });
    })
    .await;
    let _ = tokio::time::timeout(read_timeout, graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(read_timeout: Duration) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let router = axum::Router::new().route("/healthz", get(|| async { "ok\n" }));
        tokio::spawn(serve(listener, router, read_timeout, None, token.clone()));
        (addr, token)
    }

    #[tokio::test]
    async fn a_client_that_sends_half_a_request_is_disconnected_after_the_read_timeout() {
        let (addr, token) = start(Duration::from_millis(200)).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap(); // never finished
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the server kept a half-sent request open");
        // A whole request is answered.
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("ok\n"), "{answer}");
        token.cancel();
    }
}
