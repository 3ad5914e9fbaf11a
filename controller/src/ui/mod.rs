//! The status page (`--ui-listen`): a web page of the fleet, its pools and tasks, served with axum on its own
//! listener. Every page needs a session opened with a login token (`auth.rs`); pages are server-rendered HTML
//! (`pages.rs`, `html.rs`) whose live part a small script refreshes. Operator logins get cancel, retry and drain
//! buttons (`actions.rs`: same-origin, a form token bound to the session, each one audited); admin logins also
//! the audit page. It must never serve without authentication, nor in plain HTTP on a non-loopback address unless
//! the operator says so.

mod actions;
pub mod auth;
mod html;
mod limit;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use outpost_common::duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::enroll::Enrollment;
use crate::logs::LogTails;
use crate::scheduler::Scheduler;
pub use auth::Logins;
pub use limit::LoginLimiter;

/// The status page's flags.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "ui")]
#[command(next_help_heading = "Status page")]
pub struct Args {
    /// Serve the status page on this address (off without it). Log in with a token from
    /// `outpostctl ui-tokens create`.
    #[arg(long, env = "OUTPOST_UI_LISTEN")]
    pub ui_listen: Option<SocketAddr>,
    /// Serve the status page over HTTPS with the controller's certificate (--tls-cert, --tls-key).
    #[arg(long, env = "OUTPOST_UI_TLS")]
    pub ui_tls: bool,
    /// Allow plain HTTP on a non-loopback --ui-listen (only behind a proxy that terminates TLS).
    #[arg(long, env = "OUTPOST_UI_ALLOW_PLAIN_HTTP")]
    pub ui_allow_plain_http: bool,
    /// How long a login lasts.
    #[arg(long, env = "OUTPOST_UI_SESSION_TTL", value_parser = duration::parse, default_value = "12h")]
    pub ui_session_ttl: Duration,
    /// How often an open page refreshes its live part.
    #[arg(long, env = "OUTPOST_UI_REFRESH_INTERVAL", value_parser = duration::parse, default_value = "2s")]
    pub ui_refresh_interval: Duration,
    /// A request whose head has not arrived within this time is dropped.
    #[arg(long, env = "OUTPOST_UI_READ_TIMEOUT", value_parser = duration::parse, default_value = "10s")]
    pub ui_read_timeout: Duration,
    /// Login attempts allowed per source address within --ui-login-window (past that: 429 with Retry-After).
    #[arg(long, env = "OUTPOST_UI_LOGIN_ATTEMPTS_PER_ADDRESS", default_value_t = 10)]
    pub ui_login_attempts_per_address: usize,
    /// Login attempts allowed in all within --ui-login-window.
    #[arg(long, env = "OUTPOST_UI_LOGIN_ATTEMPTS_TOTAL", default_value_t = 100)]
    pub ui_login_attempts_total: usize,
    /// The window the login attempts are counted in.
    #[arg(long, env = "OUTPOST_UI_LOGIN_WINDOW", value_parser = duration::parse, default_value = "1m")]
    pub ui_login_window: Duration,
    /// DataHub's web UI (e.g. https://tenant.acryl.io): task pages link to it.
    #[arg(long, env = "DATAHUB_FRONTEND_URL")]
    pub datahub_url: Option<String>,
}

impl Args {
    pub fn validate(&self) -> Result<(), duration::Invalid> {
        duration::positive("--ui-session-ttl", self.ui_session_ttl)?;
        duration::positive("--ui-refresh-interval", self.ui_refresh_interval)?;
        duration::positive("--ui-read-timeout", self.ui_read_timeout)?;
        duration::positive("--ui-login-window", self.ui_login_window)?;
        if self.ui_login_attempts_per_address == 0 || self.ui_login_attempts_total == 0 {
            return Err(duration::Invalid(
                "--ui-login-attempts-per-address and --ui-login-attempts-total must be at least 1".into(),
            ));
        }
        if let Some(addr) = self.ui_listen
            && !addr.ip().is_loopback()
            && !self.ui_tls
            && !self.ui_allow_plain_http
        {
            return Err(duration::Invalid(format!(
                "--ui-listen {addr} is not a loopback address: add --ui-tls (HTTPS with the controller's certificate), \
                 or --ui-allow-plain-http behind a proxy that terminates TLS"
            )));
        }
        Ok(())
    }
}

/// What the pages read from, and how they behave.
#[derive(Clone)]
pub struct Ui {
    pub scheduler: Scheduler,
    pub enrollment: Enrollment,
    pub logs: LogTails,
    pub logins: Logins,
    pub datahub_url: Option<String>,
    pub refresh: Duration,
    /// Served over TLS: cookies are `Secure`.
    pub secure: bool,
    /// Where the pools' channel health is kept.
    pub metrics: crate::metrics::Metrics,
    /// How often the login form may be tried.
    pub login_limit: LoginLimiter,
    /// The audit trail (page actions and the audit page).
    pub store: crate::store::Store,
}

const COOKIE: &str = "outpost_session";
const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

/// Serves the status page until `token` is cancelled.
pub async fn serve(
    listener: TcpListener,
    ui: Ui,
    read_timeout: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
    token: CancellationToken,
) {
    outpost_common::http::serve(listener, router(ui), read_timeout, tls, token).await;
}

pub fn router(ui: Ui) -> axum::Router {
    let pages = axum::Router::new()
        .route("/", get(pages::fleet))
        .route("/tasks", get(pages::tasks))
        .route("/tasks/{id}", get(pages::task))
        .route("/tasks/{id}/{action}", post(actions::task))
        .route("/workers/{id}/drain", post(actions::drain))
        .route("/audit", get(actions::audit))
        .route_layer(middleware::from_fn_with_state(ui.clone(), require_session));
    axum::Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/ui.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }))
        .route("/assets/ui.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS) }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .merge(pages)
        .layer(middleware::from_fn(security_headers))
        .with_state(ui)
}

/// Headers on every answer: no framing, no sniffing, no caching, no referrer to other sites, scripts and styles from
/// here only.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_owned))
}

/// Pages need a live session: a browser without one is sent to the login page, a script gets 401.
/// The live session is handed to the pages (an [`auth::Session`] extension).
async fn require_session(State(ui): State<Ui>, mut request: Request, next: Next) -> Response {
    let session = match session_cookie(request.headers()) {
        Some(id) => ui.logins.session(&id).await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot check a status page session");
            None
        }),
        None => None,
    };
    if let Some(session) = session {
        request.extensions_mut().insert(session);
        return next.run(request).await;
    }
    let fragment = request.uri().query().is_some_and(|q| q.contains("fragment=1"));
    if fragment {
        return (StatusCode::UNAUTHORIZED, "log in again\n").into_response();
    }
    Redirect::to("/login").into_response()
}

fn login_form(error: Option<&str>) -> String {
    let error = error.map_or(String::new(), |e| {
        format!("<p role=\"alert\" class=\"error\" id=\"login-error\">{}</p>", html::esc(e))
    });
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Log in · Outpost</title>\
         <link rel=\"stylesheet\" href=\"/assets/ui.css\"></head><body><main class=\"login\"><h1>Outpost</h1>{error}\
         <form method=\"post\" action=\"/login\"><label for=\"token\">Login token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required autofocus>\
         <p class=\"hint\">Make one with <code>outpostctl ui-tokens create</code>.</p>\
         <button type=\"submit\">Log in</button></form></main></body></html>"
    )
}

async fn login_page() -> Html<String> {
    Html(login_form(None))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// A form posted from another site is refused (the Origin header, when sent, must be this host).
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    origin.split_once("://").is_some_and(|(_, authority)| authority == host)
}

async fn login(
    State(ui): State<Ui>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site login refused\n").into_response();
    }
    if let Err(wait) = ui.login_limit.attempt(peer.ip(), std::time::Instant::now()) {
        warn!(address = %peer.ip(), "status page login refused: too many attempts");
        let seconds = wait.as_secs().max(1);
        let text = format!("Too many login attempts; try again in {seconds} s.");
        let mut response = (StatusCode::TOO_MANY_REQUESTS, Html(login_form(Some(&text)))).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    match ui.logins.login(&form.token).await {
        Ok(Ok(session)) => {
            info!("status page login");
            let secure = if ui.secure { "; Secure" } else { "" };
            let cookie = format!(
                "{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
                ui.logins.session_ttl().as_secs()
            );
            let mut response = Redirect::to("/").into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Ok(Err(refused)) => {
            warn!(why = ?refused, "status page login refused");
            let text = "That token is not valid (unknown, wrong, expired or revoked).";
            (StatusCode::UNAUTHORIZED, Html(login_form(Some(text)))).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("cannot check the token: {e}\n")).into_response(),
    }
}

async fn logout(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-site logout refused\n").into_response();
    }
    if let Some(session) = session_cookie(&headers)
        && let Err(e) = ui.logins.logout(&session).await
    {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("cannot end the session: {e}\n")).into_response();
    }
    let mut response = Redirect::to("/login").into_response();
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
