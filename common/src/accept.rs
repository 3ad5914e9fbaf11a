//! Accepting connections, the same for every listener of both binaries (gRPC, join, metrics, status page): an
//! accept loop that pauses after a failed accept instead of spinning, and a TLS handshake bounded by a timeout.
//! Never decides what is served on a connection.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How long an accept loop waits after a failed accept (out of file descriptors and the like) before it tries
/// again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Hands every connection `listener` accepts to `accepted` until `token` is cancelled. A failed accept leaves the
/// listener fine: it is logged and tried again after [`ACCEPT_ERROR_PAUSE`], never in a spin.
pub async fn each(listener: &TcpListener, token: &CancellationToken, mut accepted: impl FnMut(TcpStream, SocketAddr)) {
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            result = listener.accept() => match result {
                Ok((stream, peer)) => accepted(stream, peer),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; trying again shortly");
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                    }
                }
            },
        }
    }
}

/// The server side of a TLS handshake on `tcp`, given up after `timeout`: the stream, or why not.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, HandshakeFailed> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(HandshakeFailed::Refused(e)),
        Err(_) => Err(HandshakeFailed::TimedOut),
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailed {
    #[error("TLS handshake failed: {0}")]
    Refused(std::io::Error),
    #[error("TLS handshake timed out")]
    TimedOut,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_accepts_until_cancelled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let (seen, mut peers) = tokio::sync::mpsc::unbounded_channel();
        let looping = tokio::spawn({
            let token = token.clone();
            async move { each(&listener, &token, |_, peer| seen.send(peer).unwrap()).await }
        });
        let client = TcpStream::connect(addr).await.unwrap();
        assert_eq!(peers.recv().await.unwrap(), client.local_addr().unwrap());
        token.cancel();
        looping.await.unwrap();
    }

    #[tokio::test]
    async fn a_silent_client_times_the_handshake_out() {
        crate::tls::install_crypto_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(
            vec![key.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
        );
        let acceptor = TlsAcceptor::from(std::sync::Arc::new(config.unwrap()));
        let failed = handshake(&acceptor, tcp, Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(failed, HandshakeFailed::TimedOut), "{failed}");
    }
}
