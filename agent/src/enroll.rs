//! Where the agent's identity comes from: certificate files it is given, or its state directory, or a join token.
//! Joining: the agent makes its own key (it never leaves the agent), learns which CA to trust (`--tls-ca`, a
//! `--ca-pin sha256:…` of the CA's public key, or the CA bundle the join listener serves, signed with the token's
//! secret), sends a certificate signing request with the token, and keeps the certificate and key in one file under
//! `--state-dir` (written atomically, 0600), so a restarted agent reconnects without joining again. Renewal: at
//! about half the certificate's life (jittered) a new key's request goes over the live stream; the answer replaces
//! the file and the next connection uses it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use outpost_common::ids::WorkerId;
use outpost_common::join::{self, JoinToken};
use outpost_common::pb;
use outpost_common::tls::TlsFiles;
use rcgen::{CertificateParams, KeyPair};
use tokio::time::Instant;
use tracing::{info, warn};

/// The enrollment flags.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "enroll")]
#[command(next_help_heading = "Joining with a token")]
pub struct Args {
    /// A file holding a join token (`outpostctl tokens create`); used when the agent has no certificate yet.
    #[arg(long, env = "OUTPOST_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// The join token itself (prefer the file; the value is never logged).
    #[arg(long = "join-token", env = "OUTPOST_JOIN_TOKEN", hide_env_values = true, hide = true)]
    pub join_token: Option<String>,
    /// The controller's join listener (default: the --controller host, its port + 1).
    #[arg(long, env = "OUTPOST_JOIN_URL")]
    pub join_url: Option<String>,
    /// Where a joined agent keeps its certificate, key and CA.
    #[arg(long, env = "OUTPOST_STATE_DIR", default_value = "/var/lib/outpost-agent")]
    pub state_dir: PathBuf,
    /// Trust the controller's CA only if its public key hashes to this (`sha256:<hex>`, as kubeadm's discovery hash).
    #[arg(long, env = "OUTPOST_CA_PIN")]
    pub ca_pin: Option<String>,
    /// How long to keep trying while the join listener cannot be reached (a controller that is still starting,
    /// e.g. beside the agent in one pod or task); a refusal ends the wait at once.
    #[arg(long, env = "OUTPOST_JOIN_WAIT", value_parser = outpost_common::duration::parse, default_value = "5m")]
    pub join_wait: Duration,
    /// The first pause between join attempts (doubling, with jitter, up to 10 s).
    #[arg(long, env = "OUTPOST_JOIN_RETRY_MIN", value_parser = outpost_common::duration::parse, default_value = "500ms")]
    pub join_retry_min: Duration,
}

/// Why a join attempt failed: worth another try, or final.
enum JoinFailure {
    /// The join listener could not be reached, or answered UNAVAILABLE.
    Unreachable(anyhow::Error),
    Refused(anyhow::Error),
}

impl JoinFailure {
    /// A failed gRPC call: UNAVAILABLE (and transport errors, which tonic reports so) may pass.
    fn of_status(status: tonic::Status, what: &str) -> JoinFailure {
        let error = anyhow::anyhow!("{what}: {}", status.message());
        match status.code() {
            tonic::Code::Unavailable => JoinFailure::Unreachable(error),
            _ => JoinFailure::Refused(error),
        }
    }
}

/// The identity the agent connects with.
pub struct Credentials {
    pub files: TlsFiles,
    pub worker: WorkerId,
    /// Set when the certificate was issued by the controller (so the agent renews it).
    pub renewal: Option<Renewal>,
    /// The certificate is one kept from an earlier join (not given, not joined just now).
    pub from_earlier_join: bool,
}

impl Args {
    /// Whether the agent was given a join token.
    pub fn has_token(&self) -> bool {
        self.join_token.is_some() || self.join_token_file.is_some()
    }
}

struct StateDir(PathBuf);

impl StateDir {
    fn identity(&self) -> PathBuf {
        self.0.join("agent.pem")
    }
    fn ca(&self) -> PathBuf {
        self.0.join("ca.pem")
    }
    fn worker(&self) -> PathBuf {
        self.0.join("worker-id")
    }
    fn files(&self) -> TlsFiles {
        // Certificate and key live in one file, so replacing it swaps both at once.
        TlsFiles { cert: self.identity(), key: self.identity(), ca: self.ca() }
    }

    fn write(&self, path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(&self.0).with_context(|| format!("creating {}", self.0.display()))?;
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    fn save_identity(&self, cert_pem: &str, key: &KeyPair) -> anyhow::Result<()> {
        self.write(&self.identity(), &format!("{cert_pem}\n{}", key.serialize_pem()), true)
    }
}

/// (not before, not after) of the first certificate in a PEM text.
fn validity(pem: &str) -> anyhow::Result<(SystemTime, SystemTime)> {
    outpost_common::identity::pem_validity(pem).context("no readable certificate")
}

use rustls::pki_types::pem::PemObject;

/// Works out the agent's identity: the files given, else the state directory, else a join.
/// With `join_again`, a certificate from an earlier join is set aside and the token used (the controller's CA was
/// rotated while the agent was away).
pub async fn credentials(
    args: &Args,
    given: Option<TlsFiles>,
    worker: Option<&str>,
    pools: &[String],
    controller: &str,
    join_again: bool,
) -> anyhow::Result<Credentials> {
    if let Some(files) = given {
        let worker = worker.context("--worker-id is needed with --tls-cert")?;
        let worker = WorkerId::parse(worker).context("--worker-id")?;
        return Ok(Credentials { files, worker, renewal: None, from_earlier_join: false });
    }
    let state = StateDir(args.state_dir.clone());
    let token = match (&args.join_token, &args.join_token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(file)) => {
            Some(std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?)
        }
        (None, None) => None,
    };
    let earlier = if join_again { None } else { std::fs::read_to_string(state.identity()).ok() };
    if let Some(pem) = earlier {
        let (_, not_after) = validity(&pem).with_context(|| format!("{}", state.identity().display()))?;
        let saved_worker = std::fs::read_to_string(state.worker()).context("the state directory has no worker-id")?;
        if not_after > SystemTime::now() {
            info!(state_dir = %args.state_dir.display(), worker = saved_worker.trim(), "using the certificate from an earlier join");
            return Ok(Credentials {
                files: state.files(),
                worker: WorkerId::parse(saved_worker.trim())?,
                renewal: Some(Renewal::new(state, &pem)),
                from_earlier_join: true,
            });
        }
        if token.is_none() {
            bail!(
                "the certificate in {} expired at {}; the agent needs a join token again (--join-token-file or \
                 OUTPOST_JOIN_TOKEN)",
                state.identity().display(),
                humantime::format_rfc3339_seconds(not_after)
            );
        }
        warn!("the certificate from an earlier join expired; joining again");
    }
    let Some(token) = token else {
        bail!(
            "no certificate: give --tls-cert, --tls-key and --tls-ca, or a join token (--join-token-file or OUTPOST_JOIN_TOKEN)"
        )
    };
    let token = JoinToken::parse(&token).context("the join token")?;
    let join_url = match &args.join_url {
        Some(url) => url.clone(),
        None => default_join_url(controller)?,
    };
    let (joined, key) = join_with_retries(args, &token, &join_url, worker).await?;
    if !pools.iter().any(|p| p.trim() == joined.pool) || pools.len() != 1 {
        bail!("the join token is for pool {}, but the agent was started for {}", joined.pool, pools.join(","));
    }
    state.write(&state.ca(), &joined.ca_pem, false)?;
    state.write(&state.worker(), &joined.worker_id, false)?;
    state.save_identity(&joined.cert_pem, &key)?;
    info!(worker = %joined.worker_id, pool = %joined.pool, state_dir = %args.state_dir.display(), "joined the fleet");
    Ok(Credentials {
        files: state.files(),
        worker: WorkerId::parse(&joined.worker_id)?,
        renewal: Some(Renewal::new(state, &joined.cert_pem)),
        from_earlier_join: false,
    })
}

/// Joins, trying again with backoff while the join listener cannot be reached, for up to `--join-wait`.
async fn join_with_retries(
    args: &Args,
    token: &JoinToken,
    join_url: &str,
    worker: Option<&str>,
) -> anyhow::Result<(pb::JoinResponse, KeyPair)> {
    let deadline = Instant::now() + args.join_wait;
    let mut attempt = 0;
    loop {
        match join_once(args, token, join_url, worker).await {
            Ok(joined) => return Ok(joined),
            Err(JoinFailure::Refused(error)) => return Err(error),
            Err(JoinFailure::Unreachable(error)) => {
                let pause =
                    outpost_common::backoff::equal_jitter(args.join_retry_min, Duration::from_secs(10), attempt);
                if Instant::now() + pause > deadline {
                    return Err(error.context(format!(
                        "the join listener {join_url} could not be reached for --join-wait {}",
                        humantime::format_duration(args.join_wait)
                    )));
                }
                warn!(join_url, error = %format!("{error:#}"), retry_in = ?pause, "the join listener cannot be reached yet");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
        }
    }
}

/// One join: the CA to trust, then a certificate for a new key.
async fn join_once(
    args: &Args,
    token: &JoinToken,
    join_url: &str,
    worker: Option<&str>,
) -> Result<(pb::JoinResponse, KeyPair), JoinFailure> {
    let ca_pem = trusted_ca(args, token, join_url).await?;
    let refused = JoinFailure::Refused;
    let key = KeyPair::generate().map_err(|e| refused(e.into()))?;
    let csr = CertificateParams::new(Vec::<String>::new())
        .and_then(|params| params.serialize_request(&key))
        .and_then(|request| request.pem())
        .map_err(|e| refused(e.into()))?;
    let server_name = outpost_common::tls::server_name_of(join_url)
        .context("--join-url must look like https://HOST:PORT")
        .map_err(refused)?;
    let channel = tonic::transport::Endpoint::from_shared(join_url.to_owned())
        .and_then(|endpoint| {
            endpoint.tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
                    .domain_name(server_name),
            )
        })
        .map_err(|e| refused(e.into()))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| {
            JoinFailure::Unreachable(
                anyhow::Error::new(e).context(format!("connecting to the join listener {join_url}")),
            )
        })?;
    let request =
        pb::JoinRequest { token: token.reveal(), worker_id: worker.unwrap_or_default().to_owned(), csr_pem: csr };
    let joined = pb::join_service_client::JoinServiceClient::new(channel)
        .join(request)
        .await
        .map_err(|status| JoinFailure::of_status(status, "the controller refused to join this agent"))?
        .into_inner();
    Ok((joined, key))
}

/// `https://HOST:PORT` of the controller with the port + 1.
fn default_join_url(controller: &str) -> anyhow::Result<String> {
    let (base, port) = controller.trim_end_matches('/').rsplit_once(':').context("--controller has no port")?;
    let port: u16 = port.parse().context("--controller has no port")?;
    Ok(format!("{base}:{}", port + 1))
}

/// The CA bundle to trust: `--tls-ca`'s file, or the join listener's bundle checked against `--ca-pin` or the
/// token's signature.
async fn trusted_ca(args: &Args, token: &JoinToken, join_url: &str) -> Result<String, JoinFailure> {
    let bundle = fetch_bundle(join_url, &token.id).await?;
    check_bundle(args, token, bundle).map_err(JoinFailure::Refused)
}

/// The bundle's CA, if `--ca-pin` or the token's signature vouches for it.
fn check_bundle(args: &Args, token: &JoinToken, bundle: pb::CaBundle) -> anyhow::Result<String> {
    if let Some(pin) = &args.ca_pin {
        let der = rustls::pki_types::CertificateDer::pem_slice_iter(bundle.ca_pem.as_bytes())
            .next()
            .context("the controller served an empty CA bundle")?
            .context("the controller served an unreadable CA bundle")?;
        let actual = join::ca_pin(&der)?;
        if !actual.eq_ignore_ascii_case(pin.trim()) {
            bail!("the controller's CA does not match --ca-pin: it is {actual}, the pin is {pin}; refusing it");
        }
        return Ok(bundle.ca_pem);
    }
    if !token.verifies_bundle(&bundle.ca_pem, &bundle.signature) {
        bail!(
            "the CA bundle the join listener served is not signed with this join token's secret: refusing it (another \
             controller, a tampered bundle, or a token from another fleet)"
        );
    }
    Ok(bundle.ca_pem)
}

/// Asks the join listener for its CA bundle over TLS that does not check the server (nothing is trusted yet): the
/// bundle's signature or pin is what is checked.
async fn fetch_bundle(join_url: &str, token_id: &str) -> Result<pb::CaBundle, JoinFailure> {
    let refused = JoinFailure::Refused;
    let authority = join_url.split_once("://").map_or(join_url, |(_, r)| r).trim_end_matches('/').to_owned();
    let server_name = outpost_common::tls::server_name_of(join_url)
        .context("--join-url must look like https://HOST:PORT")
        .map_err(refused)?;
    let mut config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let (config, authority, server_name) = (config.clone(), authority.clone(), server_name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&authority).await?;
            let name = rustls::pki_types::ServerName::try_from(server_name)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    // The scheme is http because the connector above does the TLS.
    let plain = format!("http://{}", join_url.split_once("://").map_or(join_url, |(_, r)| r));
    let channel = tonic::transport::Endpoint::from_shared(plain)
        .map_err(|e| refused(e.into()))?
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            JoinFailure::Unreachable(
                anyhow::Error::new(e).context(format!("connecting to the join listener {join_url}")),
            )
        })?;
    let bundle = pb::join_service_client::JoinServiceClient::new(channel)
        .get_ca_bundle(pb::GetCaBundleRequest { token_id: token_id.to_owned() })
        .await
        .map_err(|status| JoinFailure::of_status(status, "the join listener has no CA bundle for this token"))?;
    Ok(bundle.into_inner())
}

/// The handshake signatures ring verifies (the server must still prove it holds its certificate's key).
static ALGORITHMS: std::sync::LazyLock<rustls::crypto::WebPkiSupportedAlgorithms> =
    std::sync::LazyLock::new(|| rustls::crypto::ring::default_provider().signature_verification_algorithms);

/// Accepts any server certificate (used only to fetch a CA bundle whose signature is checked afterwards).
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &ALGORITHMS)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ALGORITHMS)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        ALGORITHMS.supported_schemes()
    }
}

/// Renewing a certificate the controller issued, over the live stream.
pub struct Renewal {
    state: StateDir,
    /// The key of a request sent and not yet answered.
    pending: Option<KeyPair>,
    due: Instant,
}

impl Renewal {
    fn new(state: StateDir, cert_pem: &str) -> Renewal {
        let mut renewal = Renewal { state, pending: None, due: Instant::now() };
        renewal.schedule(cert_pem);
        renewal
    }

    /// Due at half the certificate's life, give or take a tenth of it.
    fn schedule(&mut self, cert_pem: &str) {
        let Ok((not_before, not_after)) = validity(cert_pem) else { return };
        let life = not_after.duration_since(not_before).unwrap_or_default();
        let half = life / 2;
        let jitter = life.mul_f64(fastrand::f64() * 0.2);
        let at = not_before + half - life / 10 + jitter;
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        self.due = Instant::now() + wait;
    }

    pub fn due(&self) -> Instant {
        self.due
    }

    /// A request for a new key; asked again after a while if no answer comes.
    pub fn request(&mut self) -> anyhow::Result<pb::RenewCertificate> {
        let key = KeyPair::generate()?;
        let csr = CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?.pem()?;
        self.pending = Some(key);
        self.due = Instant::now() + Duration::from_secs(30);
        Ok(pb::RenewCertificate { csr_pem: csr })
    }

    /// A CA bundle from the controller (a CA rotation): kept for the next connection when a CA trusted now signed
    /// it; a certificate the new signing CA did not issue is renewed at once.
    pub fn take_bundle(&mut self, offered: &pb::TrustBundle) -> anyhow::Result<crate::trust::Taken> {
        let trusted = std::fs::read_to_string(self.state.ca()).context("reading the trusted CAs")?;
        let cert = std::fs::read_to_string(self.state.identity()).context("reading the agent's certificate")?;
        let taken = crate::trust::check(&trusted, &cert, offered)?;
        if let crate::trust::Taken::Updated { renew, .. } = taken {
            self.state.write(&self.state.ca(), &offered.ca_pem, false)?;
            if renew && self.pending.is_none() {
                self.due = Instant::now();
            }
        }
        Ok(taken)
    }

    /// The controller's answer: the new certificate and the pending key replace the old pair.
    pub fn complete(&mut self, answer: pb::Certificate) -> anyhow::Result<i64> {
        if !answer.error.is_empty() {
            bail!("the controller refused to renew the certificate: {}", answer.error);
        }
        let key = self.pending.take().context("a certificate nobody asked for")?;
        self.state.save_identity(&answer.cert_pem, &key)?;
        self.schedule(&answer.cert_pem);
        Ok(answer.expires_unix_ms)
    }
}
