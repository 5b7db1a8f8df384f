//! Access tokens: compact JWTs (RFC 7519) signed with HMAC-SHA256 by a key kept in
//! `<data>/secrets/gateway-jwt.key`, so they stay valid across restarts and outages until
//! they expire. Only the exact header this gateway writes is accepted (no `alg` choice, no
//! `none`); the signature is checked in constant time before the claims are parsed.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use crate::users::Role;

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user name.
    pub sub: String,
    pub role: Role,
    /// Issued at and expiry, seconds since the Unix epoch.
    pub iat: i64,
    pub exp: i64,
    /// The token's ID.
    pub jti: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("invalid token signature")]
    Signature,
    #[error("token expired")]
    Expired,
}

pub struct Signer {
    key: ring::hmac::Key,
}

impl Signer {
    pub fn new(secret: &[u8; 32]) -> Self {
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let head = format!("{}.{}", B64.encode(HEADER), B64.encode(payload));
        let tag = ring::hmac::sign(&self.key, head.as_bytes());
        format!("{head}.{}", B64.encode(tag.as_ref()))
    }

    /// Verifies signature and expiry at `now` (seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.splitn(3, '.');
        let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        if B64.decode(h).map_err(|_| TokenError::Malformed)? != HEADER.as_bytes() {
            return Err(TokenError::Malformed);
        }
        let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
        let signed = &token[..h.len() + 1 + p.len()];
        ring::hmac::verify(&self.key, signed.as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        let payload = B64.decode(p).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "ada".into(),
            role: Role::Operator,
            iat: 100,
            exp,
            jti: "j1".into(),
        }
    }

    #[test]
    fn round_trip_expiry_and_tampering() {
        let s = Signer::new(&[7; 32]);
        let t = s.sign(&claims(200));
        assert_eq!(s.verify(&t, 150).unwrap(), claims(200));
        assert_eq!(s.verify(&t, 200), Err(TokenError::Expired));
        // Another key.
        assert_eq!(
            Signer::new(&[8; 32]).verify(&t, 150),
            Err(TokenError::Signature)
        );
        // A changed payload (role raised) keeps the old signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let mut c = claims(200);
        c.role = Role::Admin;
        let forged = B64.encode(serde_json::to_vec(&c).unwrap());
        parts[1] = &forged;
        assert_eq!(s.verify(&parts.join("."), 150), Err(TokenError::Signature));
        // alg none, garbage.
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(serde_json::to_vec(&claims(200)).unwrap())
        );
        assert_eq!(s.verify(&none, 150), Err(TokenError::Malformed));
        assert_eq!(s.verify("abc", 150), Err(TokenError::Malformed));
        assert_eq!(s.verify("a.b.c", 150), Err(TokenError::Malformed));
    }
}
