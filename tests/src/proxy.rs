//! A TCP fault proxy on loopback for tests: it forwards connections to a target and, on command, resets every
//! live connection (a network blip: both ends see the connection die, no process does) or refuses to forward new
//! ones for a while (a partition: connections are accepted and then closed before a byte goes through).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Default)]
struct State {
    live: Mutex<Vec<AbortHandle>>,
    partitioned: AtomicBool,
    accepted: AtomicU64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: AbortHandle,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.reset();
    }
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let accepting = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                accepting.accepted.fetch_add(1, Ordering::Relaxed);
                if accepting.partitioned.load(Ordering::Relaxed) {
                    drop(client);
                    continue;
                }
                let forward = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                let mut live = accepting.live.lock().unwrap();
                live.retain(|h| !h.is_finished());
                live.push(forward.abort_handle());
            }
        })
        .abort_handle();
        Proxy { addr, state, accept }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Listens on 127.0.0.1:0 and forwards to the host and port of `url` (`http://127.0.0.1:N`).
    pub async fn before(url: &str) -> Proxy {
        let authority = url.split("://").nth(1).unwrap_or(url).trim_end_matches('/');
        Proxy::start(authority.parse().unwrap_or_else(|e| panic!("{url}: not a loopback address: {e}"))).await
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every live connection.
    pub fn reset(&self) {
        for handle in self.state.live.lock().unwrap().drain(..) {
            handle.abort();
        }
    }

    /// While on, new connections are closed at once (and live ones are cut).
    pub fn partition(&self, on: bool) {
        self.state.partitioned.store(on, Ordering::Relaxed);
        if on {
            self.reset();
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }
}
