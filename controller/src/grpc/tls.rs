//! The server side of mTLS: accepts TCP connections, completes the TLS handshake with the latest good
//! configuration, and hands the streams to the gRPC server. The certificate, key and CA files are re-read when
//! they change (checked every `--tls-reload-interval`), so a rotation needs no restart; files that cannot be used
//! keep the previous configuration. Never looks at identities (that is `identity.rs`, per request).

use std::io;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use outpost_common::tls::{TlsFiles, TlsMaterial};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// When each file last changed, as far as the file system says (modification time and size).
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    [&files.cert, &files.key, &files.ca]
        .iter()
        .map(|path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

/// The TLS settings of the server and the files they come from.
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<(Arc<ServerConfig>, Stamp)>,
    make: Make,
    /// Where each look at changed files is counted, and under which listener's name.
    counted: Option<(crate::metrics::Metrics, crate::metrics::Listener)>,
}

/// How the files become a server configuration.
type Make = fn(&TlsMaterial) -> Result<Arc<ServerConfig>, outpost_common::tls::Error>;

impl Reloading {
    /// Loads the files now (client certificates required); they must be usable at start-up.
    pub fn load(files: TlsFiles) -> Result<Reloading, outpost_common::tls::Error> {
        Reloading::load_with(files, TlsMaterial::rustls_server_config)
    }

    /// The same, made into a configuration by `make` (the join listener asks for no client certificate).
    pub fn load_with(files: TlsFiles, make: Make) -> Result<Reloading, outpost_common::tls::Error> {
        let seen = stamp(&files);
        let config = make(&files.load()?)?;
        Ok(Reloading { files, current: RwLock::new((config, seen)), make, counted: None })
    }

    /// Counts each reload (loaded or failed) in `outpost_tls_reloads` as `listener`'s.
    pub fn counted(self, metrics: crate::metrics::Metrics, listener: crate::metrics::Listener) -> Reloading {
        Reloading { counted: Some((metrics, listener)), ..self }
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Re-reads the files if they changed since the last look. Returns whether a new configuration is in use.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.files);
        if self.current.read().unwrap_or_else(|e| e.into_inner()).1 == now {
            return false;
        }
        let loaded = self.files.load().and_then(|material| (self.make)(&material));
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        // Either way this version of the files has been looked at; a fix will change them again.
        current.1 = now;
        if let Some((metrics, listener)) = &self.counted {
            metrics.tls_reloaded(*listener, loaded.is_ok());
        }
        match loaded {
            Ok(config) => {
                current.0 = config;
                info!(cert = %self.files.cert.display(), "TLS files changed: new connections use the new certificate");
                true
            }
            Err(e) => {
                warn!(error = %e, "TLS files changed but cannot be used; keeping the previous certificate");
                false
            }
        }
    }
}

/// Looks at the TLS files every `interval` (off the runtime's threads) until `token` is cancelled.
async fn watch_files(tls: Arc<Reloading>, interval: Duration, token: CancellationToken) {
    let mut reload = tokio::time::interval(interval);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = reload.tick() => {
                let tls = tls.clone();
                let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
            }
        }
    }
}

/// Accepted and handshaken connections, until `token` is cancelled; meanwhile the TLS files are looked at every
/// `reload_interval` (new connections use what loaded last).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Reloading>,
    handshake_timeout: Duration,
    reload_interval: Duration,
    token: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let (streams, received) = mpsc::channel(64);
    tokio::spawn(watch_files(tls.clone(), reload_interval, token.clone()));
    tokio::spawn(async move {
        outpost_common::accept::each(&listener, &token, |tcp, peer| {
            let acceptor = TlsAcceptor::from(tls.config());
            let streams = streams.clone();
            tokio::spawn(async move {
                match outpost_common::accept::handshake(&acceptor, tcp, handshake_timeout).await {
                    Ok(stream) => {
                        let _ = streams.send(Ok(stream)).await;
                    }
                    Err(e) => debug!(peer = %peer, error = %e, "no TLS connection"),
                }
            });
        })
        .await;
    });
    ReceiverStream::new(received)
}
