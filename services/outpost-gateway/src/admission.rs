//! Who may call what, for both paths (the gateway's own routes and the proxy): the one
//! admission policy. [`admit`] establishes the caller's identity (access token or API key),
//! checks the role the route needs ([`crate::auth`]) and applies the rate limits per client
//! identity and route; [`gate`] is the same as middleware.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use http::{HeaderValue, StatusCode};
use outpost_kit::ApiError;

use crate::app::App;
use crate::auth::{self, Need};
use crate::observe::LogSlot;
use crate::users::{self, Identity};
use crate::{conn, limit};

fn unauthorized(msg: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, msg).into_response();
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"outpost\""),
    );
    r
}

/// 429 with `Retry-After`.
pub fn too_many(wait: Duration, what: &str) -> Response {
    let secs = limit::retry_after_secs(wait);
    let mut r = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        format!("{what}; retry in {secs} s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    r
}

/// Establishes who calls, checks the role the route needs, and applies rate limits:
/// the caller's identity (none on public routes without a token), or the refusal.
pub fn admit(
    app: &App,
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    peer: Option<std::net::SocketAddr>,
    slot: &LogSlot,
) -> Result<Option<Identity>, Box<Response>> {
    let path = uri.path();
    let need = auth::need(method, path, uri.query());
    let identity = match auth::bearer(headers) {
        Some(t) => match identify(app, t) {
            Some(i) => Some(i),
            None => {
                metrics::counter!(app.m.auth_failures, "reason" => "invalid_token").increment(1);
                if need != Need::Public {
                    return Err(Box::new(unauthorized("invalid or expired token")));
                }
                None
            }
        },
        None => None,
    };
    if let Need::Role(role) = need {
        let Some(id) = &identity else {
            metrics::counter!(app.m.auth_failures, "reason" => "no_token").increment(1);
            return Err(Box::new(unauthorized(
                "this route needs a token: log in at POST /api/v3/auth/login",
            )));
        };
        if id.role < role {
            metrics::counter!(app.m.auth_failures, "reason" => "role").increment(1);
            return Err(Box::new(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{method} on {path} needs the {} role; {} has {}",
                        role.as_str(),
                        id.name,
                        id.role.as_str()
                    ),
                )
                .into_response(),
            ));
        }
    }
    let anonymous;
    let key: &str = match &identity {
        Some(i) => &i.id,
        None => {
            anonymous = peer.map_or_else(|| "addr:?".to_string(), |p| format!("addr:{}", p.ip()));
            &anonymous
        }
    };
    if let Some(i) = &identity {
        slot.set_identity(&i.id);
    }
    if let Err(wait) = app.limiter.take(key) {
        metrics::counter!(app.m.rate_limited, "limit" => "client").increment(1);
        return Err(Box::new(too_many(wait, "too many requests")));
    }
    if let Some((prefix, l)) = app
        .route_limiters
        .iter()
        .filter(|(p, _)| path.starts_with(p.as_str()))
        .max_by_key(|(p, _)| p.len())
        && let Err(wait) = l.take(&format!("{key} {prefix}"))
    {
        metrics::counter!(app.m.rate_limited, "limit" => prefix.clone()).increment(1);
        return Err(Box::new(too_many(wait, "too many requests on this route")));
    }
    Ok(identity)
}

/// [`admit`] as middleware (the gateway's own routes).
pub async fn gate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let slot = req
        .extensions()
        .get::<LogSlot>()
        .cloned()
        .unwrap_or_default();
    match admit_request(&app, &mut req, &slot) {
        Err(refused) => *refused,
        Ok(()) => next.run(req).await,
    }
}

/// [`admit`] for a request: the admitted identity goes into its extensions.
fn admit_request(app: &App, req: &mut Request, slot: &LogSlot) -> Result<(), Box<Response>> {
    let peer = req.extensions().get::<conn::Peer>().map(|p| p.0);
    let identity = admit(app, req.method(), req.uri(), req.headers(), peer, slot)?;
    if let Some(i) = identity {
        req.extensions_mut().insert(i);
    }
    Ok(())
}

fn identify(app: &App, token: &str) -> Option<Identity> {
    if token.starts_with("opk_") {
        return app.users.check_key(token);
    }
    let v = verified(app, token)?;
    // A token ended by logout is refused at once, though its signature is still good.
    if app.users.is_revoked(&v.jti) {
        return None;
    }
    // The user's current role counts (a demoted or removed user loses access at once).
    let role = app.users.token_role(&v.name, v.iat)?;
    Some(Identity {
        id: v.id,
        name: v.name,
        role,
    })
}

/// What a valid access token says, as a request needs it.
#[derive(Clone)]
struct Verified {
    /// `user:<name>`.
    id: Arc<str>,
    name: Arc<str>,
    /// The token's ID, which logout revokes.
    jti: Arc<str>,
    iat: i64,
    exp: i64,
}

/// Who a valid, unexpired access token is for. Signatures already checked are remembered
/// per thread (a token is sent with every request of a session), so the common case is a
/// map lookup; expiry is checked every time, and revocation by [`Users::token_role`] at the
/// caller.
fn verified(app: &App, token: &str) -> Option<Verified> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    const MAX: usize = 4096;
    // Keyed by the signature (the last segment: short, and unique per token) rather than
    // the whole token, which is hashed on every request; the whole token must match too.
    /// Signature → (whole token, what it says).
    type Seen = HashMap<Box<str>, (Box<str>, Verified)>;
    thread_local! {
        static SEEN: RefCell<Seen> = RefCell::new(HashMap::new());
    }
    let key = token.rsplit('.').next().unwrap_or(token);
    let now = users::now_s();
    if let Some(v) = SEEN.with(|m| {
        m.borrow()
            .get(key)
            .filter(|(t, _)| &**t == token)
            .map(|(_, v)| v.clone())
    }) {
        return (v.exp > now).then_some(v);
    }
    let claims = app.signer.verify(token, now).ok()?;
    let v = Verified {
        id: format!("user:{}", claims.sub).into(),
        name: claims.sub.into(),
        jti: claims.jti.into(),
        iat: claims.iat,
        exp: claims.exp,
    };
    SEEN.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= MAX {
            m.retain(|_, (_, v)| v.exp > now);
            if m.len() >= MAX {
                m.clear();
            }
        }
        m.insert(key.into(), (token.into(), v.clone()));
    });
    Some(v)
}
