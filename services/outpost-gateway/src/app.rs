//! The gateway's state: what every request of both paths (its own routes and the proxy)
//! uses.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::limit::Limiter;
use crate::stats::Metrics;
use crate::users::Users;
use crate::{access, cache, token, upstream};

pub struct App {
    pub cfg: Config,
    pub users: Users,
    pub signer: token::Signer,
    pub upstreams: upstream::Upstreams,
    pub cache: cache::Cache,
    pub limiter: Limiter,
    pub route_limiters: Vec<(String, Limiter)>,
    /// Failed logins of one account from one address.
    pub login_by_user_addr: Limiter,
    /// Failed logins of one account from addresses it never logged in from: a slower cap
    /// on guessing from many addresses, which cannot lock the owner out.
    pub login_by_user: Limiter,
    /// Failed logins from one address, any account.
    pub login_by_addr: Limiter,
    pub m: Metrics,
    pub max_body: usize,
    pub ca_pem: PathBuf,
    /// Keys the MAC with which the gateway vouches for client certificates.
    pub cert_mac_key: [u8; 32],
    /// Calls to services for composed answers.
    pub metadata: outpost_kit::client::ServiceClient,
    pub access: access::AccessLog,
    /// Live readings for the console's streams.
    pub live: std::sync::Arc<crate::live::Hub>,
}

impl App {
    pub fn timeout_for(&self, path: &str) -> Duration {
        let ms = self
            .cfg
            .route_timeouts
            .iter()
            .filter(|t| path.starts_with(&t.prefix))
            .max_by_key(|t| t.prefix.len())
            .map_or(self.cfg.upstream_timeout_ms, |t| t.timeout_ms);
        Duration::from_millis(ms)
    }
}
