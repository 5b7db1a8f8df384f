//! The gateway as the node builds it, over real TLS with the node CA it creates, in front of
//! the real core-metadata: what is public, what needs a token, login, proxying with the
//! request ID, and what it refuses.

use outpost_gateway::{Config, Gateway};
use outpost_testkit::{Service, WAIT, context, free_port, metadata, until, within};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Front {
    gw: Service,
    base: String,
    http: reqwest::Client,
    cfg: Config,
}

impl Front {
    async fn start() -> (Self, outpost_testkit::Served) {
        Self::start_with(|_| {}).await
    }

    /// A gateway whose configuration `adjust` changes first.
    async fn start_with(adjust: impl FnOnce(&mut Config)) -> (Self, outpost_testkit::Served) {
        let (_md, md_at) = metadata::serve(None).await;
        let test = context("gateway", &[("core-metadata", md_at.url())]).off_bus();
        let port = free_port();
        let cfg = Config {
            listen: ([127, 0, 0, 1], port).into(),
            port: free_port(),
            access_log: String::new(),
            // Cached reads are fresh for a second, then served only when core-metadata fails.
            cache_ttl_s: 1,
            ..Config::default()
        };
        let mut cfg = cfg;
        adjust(&mut cfg);
        let gw = within(
            "the gateway builds",
            Service::build_in::<Gateway>(test, cfg.clone()),
        )
        .await;
        let ca = std::fs::read_to_string(gw.test.ctx.data_dir.join("tls/ca.pem")).expect("CA");
        let tls = outpost_pki::client_config(&ca, None).expect("client TLS");
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(std::time::Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("client");
        let front = Self {
            gw,
            base: format!("https://localhost:{port}"),
            http,
            cfg,
        };
        front.listening().await;
        (front, md_at)
    }

    async fn listening(&self) {
        until("the gateway listens", WAIT, async || {
            self.call(Method::GET, "/api/v3/ping", None, None)
                .await
                .ok()
        })
        .await;
    }

    /// Stops the gateway and starts it again on the same data dir and configuration.
    async fn restart(self) -> Self {
        let Self {
            gw,
            base,
            http,
            cfg,
        } = self;
        let test = gw.stop().await;
        let gw = within(
            "the gateway builds again",
            Service::build_in::<Gateway>(test, cfg.clone()),
        )
        .await;
        let front = Self {
            gw,
            base,
            http,
            cfg,
        };
        front.listening().await;
        front
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        rb.send().await
    }

    async fn status(&self, method: Method, path: &str, token: Option<&str>) -> StatusCode {
        self.call(method, path, token, None)
            .await
            .expect("the gateway answers")
            .status()
    }

    async fn login(&self, password: &str) -> reqwest::Response {
        let body = json!({"username": "admin", "password": password});
        self.call(Method::POST, "/api/v3/auth/login", None, Some(body))
            .await
            .expect("the gateway answers")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_reach_nothing_but_login_and_a_token_reaches_the_services() {
    let (f, md_at) = Front::start().await;

    // Public: ping and the CA. Everything else needs a token, and says how to give one.
    let ca = f
        .call(Method::GET, "/api/v3/ca.pem", None, None)
        .await
        .expect("the CA");
    assert_eq!(ca.status(), StatusCode::OK);
    for path in [
        "/core-metadata/api/v3/deviceprofile/all",
        "/no-such-service/api/v3/ping",
        "/api/v3/auth/user",
    ] {
        let r = f.call(Method::GET, path, None, None).await.expect("answer");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(r.headers().contains_key("www-authenticate"), "{path}");
    }

    // A wrong password is refused; the admin credential the gateway created works.
    assert_eq!(
        f.login("not the password").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let secret = f.gw.test.ctx.data_dir.join("secrets/admin-password");
    let password = std::fs::read_to_string(secret).expect("the admin credential");
    let login = f.login(password.trim()).await;
    assert_eq!(login.status(), StatusCode::OK);
    let login: Value = login.json().await.expect("a token");
    assert_eq!(login["role"], "admin", "{login}");
    let token = login["accessToken"].as_str().expect("accessToken");

    // Proxied to core-metadata, with the caller's request ID both ways.
    let r = f
        .http
        .get(format!("{}/core-metadata/api/v3/deviceprofile/all", f.base))
        .bearer_auth(token)
        .header("X-Correlation-ID", "gw-service-1")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-correlation-id"], "gw-service-1");
    let body: Value = r.json().await.expect("JSON");
    assert_eq!(body["totalCount"], 0, "{body}");

    // A service the node does not run, and a token that is not one.
    let unknown = f
        .status(Method::GET, "/no-such-service/api/v3/ping", Some(token))
        .await;
    assert_eq!(unknown, StatusCode::NOT_FOUND);
    let forged = f
        .status(
            Method::GET,
            "/core-metadata/api/v3/ping",
            Some("e30.e30.e30"),
        )
        .await;
    assert_eq!(forged, StatusCode::UNAUTHORIZED);

    // core-metadata goes away: what was read before is served stale, and marked so; what
    // was not, is unavailable.
    md_at.stop().await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let stale = f
        .call(
            Method::GET,
            "/core-metadata/api/v3/deviceprofile/all",
            Some(token),
            None,
        )
        .await
        .expect("answer");
    assert_eq!(stale.status(), StatusCode::OK);
    let warning = stale
        .headers()
        .get("warning")
        .map(|w| w.to_str().unwrap_or_default());
    assert_eq!(warning, Some("110 - \"Response is Stale\""));
    let gone = f
        .status(Method::GET, "/core-metadata/api/v3/device/all", Some(token))
        .await;
    assert!(
        gone == StatusCode::BAD_GATEWAY || gone == StatusCode::SERVICE_UNAVAILABLE,
        "{gone}"
    );
    f.gw.stop().await;
}

impl Front {
    /// A client whose connections come from `ip` (an address of 127.0.0.0/8).
    fn client_from(&self, ip: [u8; 4]) -> reqwest::Client {
        let ca = std::fs::read_to_string(self.gw.test.ctx.data_dir.join("tls/ca.pem")).expect("CA");
        let tls = outpost_pki::client_config(&ca, None).expect("client TLS");
        let port = self
            .base
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .local_address(std::net::IpAddr::from(ip))
            .resolve("localhost", ([127, 0, 0, 1], port).into())
            .timeout(std::time::Duration::from_secs(10))
            .no_proxy()
            .build()
            .expect("client")
    }

    /// Logs `user` in from `ip`: the access and refresh tokens.
    async fn tokens_from(&self, ip: [u8; 4], user: &str, password: &str) -> (String, Value) {
        let t: Value = self
            .client_from(ip)
            .post(format!("{}/api/v3/auth/login", self.base))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("tokens");
        let access = t["accessToken"].as_str().expect("accessToken").to_string();
        (access, t["refreshToken"].clone())
    }

    async fn login_from(&self, ip: [u8; 4], user: &str, password: &str) -> StatusCode {
        self.client_from(ip)
            .post(format!("{}/api/v3/auth/login", self.base))
            .json(&json!({"username": user, "password": password}))
            .send()
            .await
            .expect("the gateway answers")
            .status()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_lock_the_admin_out_logout_ends_the_token_and_viewers_cannot_push_events()
{
    let (f, _md_at) = Front::start().await;
    let secret = f.gw.test.ctx.data_dir.join("secrets/admin-password");
    let password = std::fs::read_to_string(secret).expect("the admin credential");
    let password = password.trim();
    let owner = [127, 0, 0, 2];
    assert_eq!(f.login_from(owner, "admin", password).await, StatusCode::OK);

    // One stranger guessing from one address runs out of tries; the owner does not.
    let stranger = [127, 0, 0, 1];
    for _ in 0..5 {
        assert_eq!(
            f.login_from(stranger, "admin", "guess").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        f.login_from(stranger, "admin", "guess").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(f.login_from(owner, "admin", password).await, StatusCode::OK);

    // Guessing from many addresses is capped per account, still not for the owner's.
    let mut refused = false;
    for host in 10..=25u8 {
        for _ in 0..5 {
            refused |= f.login_from([127, 0, 0, host], "admin", "guess").await
                == StatusCode::TOO_MANY_REQUESTS;
        }
    }
    assert!(
        refused,
        "the account's cap on unknown addresses never applied"
    );
    assert_eq!(
        f.login_from([127, 0, 0, 99], "admin", password).await,
        StatusCode::TOO_MANY_REQUESTS,
        "a new address is held back while the account is under attack"
    );
    assert_eq!(f.login_from(owner, "admin", password).await, StatusCode::OK);

    // After a restart the gateway still knows where the owner logged in from: a new
    // attack from many addresses holds back new addresses, never the owner's.
    let f = Box::pin(f.restart()).await;
    let mut refused = false;
    for host in 30..=45u8 {
        for _ in 0..5 {
            refused |= f.login_from([127, 0, 0, host], "admin", "guess").await
                == StatusCode::TOO_MANY_REQUESTS;
        }
    }
    assert!(refused, "the account's cap never applied after the restart");
    assert_eq!(
        f.login_from([127, 0, 0, 98], "admin", password).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(f.login_from(owner, "admin", password).await, StatusCode::OK);

    // Logout ends the access token at once, not when it expires.
    let client = f.client_from(owner);
    let (access, refresh) = f.tokens_from(owner, "admin", password).await;
    let access = access.as_str();
    let whoami = |t: String| {
        let (client, url) = (client.clone(), format!("{}/api/v3/auth/whoami", f.base));
        async move {
            client
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .expect("answer")
                .status()
        }
    };
    assert_eq!(whoami(access.to_string()).await, StatusCode::OK);
    let out = client
        .post(format!("{}/api/v3/auth/logout", f.base))
        .bearer_auth(access)
        .json(&json!({"refreshToken": refresh}))
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert_eq!(whoami(access.to_string()).await, StatusCode::UNAUTHORIZED);

    // A viewer reads devices but cannot make a device service push an event into
    // core-data: that is a write.
    let (admin, _) = f.tokens_from(owner, "admin", password).await;
    let added = client
        .post(format!("{}/api/v3/auth/user", f.base))
        .bearer_auth(&admin)
        .json(&json!({"username": "watcher", "password": "watcher-password-1", "role": "viewer"}))
        .send()
        .await
        .expect("add user");
    assert!(added.status().is_success(), "{}", added.status());
    let (viewer, _) = f.tokens_from(owner, "watcher", "watcher-password-1").await;
    for path in [
        "/core-command/api/v3/device/name/d1/Temperature?ds-pushevent=true",
        "/core-command/api/v3/device/name/d1/Temperature?ds%2Dpushevent=true",
        "/device-virtual/api/v3/device/name/d1/Temperature?ds-pushevent=true",
    ] {
        let r = client
            .get(format!("{}{path}", f.base))
            .bearer_auth(&viewer)
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    f.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_never_lead_out_of_their_directory() {
    // The served directory: a page, a subdirectory whose index.html links to a file
    // outside, a file that links outside, and a hidden file.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("ui");
    let outside = dir.path().join("secret.txt");
    std::fs::write(&outside, "not for the web").expect("write");
    std::fs::create_dir_all(root.join("linked")).expect("mkdir");
    std::fs::write(root.join("index.html"), "<p>console</p>").expect("write");
    std::os::unix::fs::symlink(&outside, root.join("linked/index.html")).expect("link");
    std::os::unix::fs::symlink(&outside, root.join("leak.txt")).expect("link");
    std::fs::write(root.join(".hidden"), "hidden").expect("write");
    let served = root.clone();
    let (f, _md) = Front::start_with(move |c| c.static_dir = Some(served)).await;

    for path in ["/ui/", "/ui/index.html"] {
        let r = f.call(Method::GET, path, None, None).await.expect("answer");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.text().await.expect("body"), "<p>console</p>", "{path}");
    }
    for path in [
        "/ui/linked/",
        "/ui/linked/index.html",
        "/ui/leak.txt",
        "/ui/.hidden",
        "/ui/linked%2Findex.html",
        "/ui/%2Ehidden",
    ] {
        let r = f.call(Method::GET, path, None, None).await.expect("answer");
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let body = r.text().await.expect("body");
        assert!(!body.contains("not for the web"), "{path}: {body}");
    }
}
