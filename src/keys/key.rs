//! A secret API key, and the mask that is the only form of it ever printed.

use std::fmt;

use ureq::http::HeaderValue;

/// A secret API key. `Display` and `Debug` print only its mask; the secret is reachable only
/// through [`ApiKey::secret`], which the request builder calls to inject it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    secret: String,
    /// The mask, made once: every answer's log line names its key.
    masked: String,
    /// The key as header values (`Bearer <key>` and bare), made once and marked sensitive:
    /// a clone per request shares their bytes instead of allocating new ones.
    bearer: Option<HeaderValue>,
    bare: Option<HeaderValue>,
    /// The first 8 bytes of the key's SHA-256: how STATE_FILE and the affinity tables name
    /// the key without holding it.
    id: u64,
}

impl ApiKey {
    /// Wraps a key.
    pub fn new(secret: impl Into<String>) -> Self {
        let secret = secret.into();
        let masked = mask_secret(&secret);
        let sensitive = |text: &str| {
            HeaderValue::from_str(text).ok().map(|mut value| {
                value.set_sensitive(true);
                value
            })
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_ref()[..8]);
        ApiKey {
            id: u64::from_be_bytes(first),
            bearer: sensitive(&format!("Bearer {secret}")),
            bare: sensitive(&secret),
            secret,
            masked,
        }
    }

    /// `Bearer <key>`, for the `Authorization` header (`None` if the key cannot be a header).
    pub(crate) fn bearer_header(&self) -> Option<HeaderValue> {
        self.bearer.clone()
    }

    /// The bare key as a header value (`None` if it cannot be one).
    pub(crate) fn bare_header(&self) -> Option<HeaderValue> {
        self.bare.clone()
    }

    /// A name for the key that reveals nothing of it (a SHA-256 prefix), stable across restarts
    /// and instances.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// [`ApiKey::id`] as 16 hex digits, as STATE_FILE writes it.
    pub fn id_hex(&self) -> String {
        format!("{:016x}", self.id)
    }

    /// The key itself, for the upstream request only.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// A form that is safe to log: first 4 and last 4 characters for keys of 12 or more
    /// characters, `***` for shorter ones (too little would be left hidden).
    pub fn mask(&self) -> String {
        self.masked.clone()
    }
}

/// Masks any secret the way keys are masked; also used for client tokens.
pub fn mask_secret(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "***".to_string();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

/// `url` with everything between its scheme and the last `@` (a `user:password`, which may
/// itself hold `/`, `?` or `#`) replaced by `***`: the only form of a URL with credentials
/// that is ever shown.
pub fn mask_userinfo(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) if at > scheme.len() => {
            format!("{scheme}://***{}", &url[at..])
        }
        _ => url.to_string(),
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({})", self.masked)
    }
}
