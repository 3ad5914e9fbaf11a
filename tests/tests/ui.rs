//! The status page over HTTP: nothing without a login, logins only with a token an admin made (hashed at rest,
//! revocable), the session cookie's attributes, cross-site posts refused, security headers, TLS, and a refusal to
//! serve plain HTTP on a non-loopback address. The browser test (`browser.rs`) drives the pages themselves.

use std::time::Duration;

use outpost_integration_tests::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn ui_token(cluster: &Cluster, controller: &Controller) -> String {
    let out = cluster.ctl(controller, &["--json", "ui-tokens", "create", "--ttl", "1h", "--description", "tests"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    created["token"].as_str().unwrap().to_owned()
}

async fn login(http: &reqwest::Client, base: &str, token: &str) -> reqwest::Response {
    form(http.post(format!("{base}/login")), token).send().await.unwrap()
}

/// The login form as a browser posts it (tokens are `[a-z0-9.]`: nothing to encode).
fn form(request: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
    request.header("content-type", "application/x-www-form-urlencoded").body(format!("token={token}"))
}

fn cookie_of(response: &reqwest::Response) -> String {
    let set = response.headers().get("set-cookie").expect("a session cookie").to_str().unwrap().to_owned();
    set.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_needs_a_login_with_a_token_an_admin_made() {
    let cluster = Cluster::new(bins!());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let controller = cluster.controller("outpost.db").args(&["--ui-listen", &listen]).start().await;
    let admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").slots(2).start(&controller);
    wait_workers(&admin, 1).await;
    let (http, base) = (client(), format!("http://{listen}"));

    // Nothing without a session: pages send the browser to the login, the live refresh gets 401.
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/login");
    assert_eq!(http.get(format!("{base}/tasks?fragment=1")).send().await.unwrap().status(), 401);
    let forged = http.get(format!("{base}/")).header("cookie", "outpost_session=forged").send().await.unwrap();
    assert_eq!(forged.status(), 303);

    // A wrong token is refused with one message for every reason.
    let wrong = login(&http, &base, "abcdef.0123456789abcdef").await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("That token is not valid"));

    let token = ui_token(&cluster, &controller);
    // Posted from another site: refused even with the right token.
    let cross = http.post(format!("{base}/login")).header("origin", "http://evil.example");
    let cross = form(cross, &token).send().await.unwrap();
    assert_eq!(cross.status(), 403);

    let logged_in = login(&http, &base, &token).await;
    assert_eq!(logged_in.status(), 303);
    let set_cookie = logged_in.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP on loopback: {set_cookie}");
    let cookie = cookie_of(&logged_in);
    let fleet = http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(fleet.status(), 200);
    let headers = fleet.headers().clone();
    assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    let html = fleet.text().await.unwrap();
    assert!(html.contains("<caption>Workers</caption>") && html.contains(">w-1</a>"), "{html}");
    // The token's secret never reaches the database file.
    let secret = token.split('.').nth(1).unwrap();
    let db = std::fs::read(cluster.path("outpost.db")).unwrap();
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));

    // Revoked: the session ends at its next request.
    let id = token.split('.').next().unwrap();
    let out = cluster.ctl(&controller, &["ui-tokens", "revoke", id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(after.status(), 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_over_tls_with_secure_cookies_and_never_plain_on_an_open_address() {
    let cluster = Cluster::new(bins!());
    // Plain HTTP on a non-loopback address: refused at start, saying what to do.
    let mut refused = cluster.controller("refused.db").args(&["--ui-listen", "0.0.0.0:0"]).spawn();
    let status = refused.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    assert!(refused.log().contains("is not a loopback address: add --ui-tls"), "{}", refused.log());

    let listen = format!("127.0.0.1:{}", free_port());
    let controller = cluster.controller("outpost.db").args(&["--ui-listen", &listen, "--ui-tls"]).start().await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(cluster.certs.join("ca.pem")).unwrap()).unwrap();
    let http =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).tls_certs_only([ca]).build().unwrap();
    let base = format!("https://localhost:{}", listen.rsplit(':').next().unwrap());
    let token = ui_token(&cluster, &controller);
    let logged_in = login(&http, &base, &token).await;
    assert_eq!(logged_in.status(), 303);
    assert!(logged_in.headers()["set-cookie"].to_str().unwrap().contains("; Secure"));
    let tasks = http.get(format!("{base}/tasks")).header("cookie", cookie_of(&logged_in)).send().await.unwrap();
    assert_eq!(tasks.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_channel_fails_is_shown_failing_with_the_error_in_words() {
    let cluster = Cluster::new(bins!());
    // Open-source DataHub: it cannot hand out a DataHub Cloud queue, so the pool's cloud_credentials channel fails.
    let gms = cluster.gms(&[]).await;
    let (gms_url, listen) = (format!("{}/gms", gms.base), format!("127.0.0.1:{}", free_port()));
    let flags =
        ["--gms-url", &gms_url, "--queue-from-gms", "default", "--sqs-retry-backoff", "100ms", "--ui-listen", &listen];
    let controller = cluster.controller("outpost.db").args(&flags).start().await;
    let admin = cluster.admin(&controller).await;
    wait_channel(&admin, "default", "cloud_credentials", "failing", |c| c.consecutive_failures >= 1).await;
    let (http, base) = (client(), format!("http://{listen}"));
    let cookie = cookie_of(&login(&http, &base, &ui_token(&cluster, &controller)).await);
    let html = http.get(format!("{base}/?fragment=1")).header("cookie", &cookie).send().await.unwrap();
    let html = html.text().await.unwrap();
    let row = html.split("<tr>").find(|row| row.contains("cloud_credentials")).unwrap_or_else(|| panic!("{html}"));
    assert!(row.contains(">default</a>"), "{row}");
    assert!(row.contains("FAILING") && row.contains("no call has succeeded yet"), "{row}");
    assert!(row.contains("this GMS has no listExecutorConfigs (open-source DataHub?)"), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_past_the_limit_from_one_address_are_answered_429_with_retry_after() {
    let cluster = Cluster::new(bins!());
    let listen = format!("127.0.0.1:{}", free_port());
    let flags = ["--ui-listen", &listen, "--ui-login-attempts-per-address", "5", "--ui-login-window", "1m"];
    let controller = cluster.controller("outpost.db").args(&flags).start().await;
    let (http, base) = (client(), format!("http://{listen}"));
    for _ in 0..5 {
        assert_eq!(login(&http, &base, "abcdef.0123456789abcdef").await.status(), 401, "a wrong token");
    }
    // The sixth attempt within the minute is held back, even with the right token.
    let held = login(&http, &base, &ui_token(&cluster, &controller)).await;
    assert_eq!(held.status(), 429);
    let retry_after: u64 = held.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(held.text().await.unwrap().contains("Too many login attempts; try again in"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_survives_a_controller_restart_and_ends_with_its_token() {
    let cluster = Cluster::new(bins!());
    let listen = format!("127.0.0.1:{}", free_port());
    let mut controller = cluster.controller("outpost.db").args(&["--ui-listen", &listen]).start().await;
    let (http, base) = (client(), format!("http://{listen}"));
    let out = cluster.ctl(&controller, &["--json", "ui-tokens", "create", "--ttl", "1h"]);
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cookie = cookie_of(&login(&http, &base, created["token"].as_str().unwrap()).await);
    assert_eq!(http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap().status(), 200);

    controller.proc.kill();
    let controller = cluster.controller("outpost.db").args(&["--ui-listen", &listen]).start().await;
    let page = http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status(), 200, "still logged in after the restart");
    // Only the session id's hash is stored.
    let session = cookie.split_once('=').unwrap().1;
    let database = std::fs::read(cluster.path("outpost.db")).unwrap_or_default();
    let wal = std::fs::read(cluster.path("outpost.db-wal")).unwrap_or_default();
    let contains = |bytes: &[u8]| bytes.windows(session.len()).any(|w| w == session.as_bytes());
    assert!(!contains(&database) && !contains(&wal), "a session id reached the database");

    let out = cluster.ctl(&controller, &["ui-tokens", "revoke", created["id"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = http.get(format!("{base}/")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(
        (page.status().as_u16(), page.headers()["location"].to_str().unwrap()),
        (303, "/login"),
        "revoked: logged out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_page_is_for_admin_logins_and_filters_by_actor_and_action() {
    let cluster = Cluster::new(bins!());
    let listen = format!("127.0.0.1:{}", free_port());
    let controller = cluster.controller("outpost.db").args(&["--ui-listen", &listen]).start().await;
    let (http, base) = (client(), format!("http://{listen}"));
    let token = |role: &str| {
        let out = cluster.ctl(&controller, &["--json", "ui-tokens", "create", "--role", role]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        created["token"].as_str().unwrap().to_owned()
    };
    let (admin_token, viewer_token) = (token("admin"), token("viewer"));
    let admin = cookie_of(&login(&http, &base, &admin_token).await);
    let viewer = cookie_of(&login(&http, &base, &viewer_token).await);
    assert_eq!(http.get(format!("{base}/audit")).header("cookie", &viewer).send().await.unwrap().status(), 403);
    let page = |query: &'static str| {
        let request = http.get(format!("{base}/audit{query}")).header("cookie", &admin);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.text().await.unwrap()
        }
    };
    // The two login tokens minted above are the trail so far; a filter keeps what it names.
    let all = page("").await;
    assert_eq!(all.matches("<td>CreateUiToken</td>").count(), 2, "{all}");
    assert!(all.contains("<label for=\"actor\">Actor</label>"), "{all}");
    let none = page("?actor=nobody&action=").await;
    assert!(none.contains("Nothing recorded yet.") && none.contains("value=\"nobody\""), "{none}");
    let by_action = page("?actor=&action=CreateUiToken").await;
    assert_eq!(by_action.matches("<td>CreateUiToken</td>").count(), 2);
}
