//! What `--web.config.file` asks of every request, in exporter-toolkit's order: the rate limit
//! (429), the extra response headers, basic auth (401 with `WWW-Authenticate: Basic`). A file
//! broken since start-up answers 500, as exporter-toolkit does.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use base64::Engine as _;

use super::web_config::{WebConfig, WebConfigSource};

/// exporter-toolkit's stand-in hash for unknown users (of "fakepassword"), so that a wrong user
/// name takes as long as a wrong password.
const UNKNOWN_USER_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

/// Most (user, hash, password) checks remembered: bcrypt costs tens of milliseconds a check,
/// and Prometheus sends the same credentials every scrape.
const CACHE_SIZE: usize = 100;

pub struct Gate {
    source: Arc<WebConfigSource>,
    /// The start-up file's `rate_limit` (exporter-toolkit does not reload it either).
    limiter: Option<Mutex<TokenBucket>>,
    checked: Mutex<HashMap<(String, String, String), bool>>,
}

impl Gate {
    pub fn new(source: Arc<WebConfigSource>) -> Gate {
        let limiter = source
            .current()
            .ok()
            .and_then(|config| config.rate_limit)
            .map(|(interval, burst)| Mutex::new(TokenBucket::new(interval, burst)));
        Gate {
            source,
            limiter,
            checked: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `credentials` (basic auth's user and password) are those of a user of `config`.
    async fn authorized(&self, config: &WebConfig, credentials: Option<(String, String)>) -> bool {
        let Some((user, password)) = credentials else {
            return false;
        };
        let known = config.users.get(&user);
        let hash = known.map_or(UNKNOWN_USER_HASH, String::as_str).to_owned();
        let key = (user, hash.clone(), password.clone());
        let remembered = lock(&self.checked).get(&key).copied();
        if let Some(matches) = remembered {
            return matches && known.is_some();
        }
        // Off the connections' thread: a check takes tens of milliseconds.
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|verified| verified.unwrap_or(false));
        let mut checked = lock(&self.checked);
        if checked.len() >= CACHE_SIZE {
            checked.clear();
        }
        checked.insert(key, matches);
        matches && known.is_some()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The axum middleware.
pub async fn gate(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let config = match gate.source.current() {
        Ok(config) => config,
        Err(_) => {
            // Logged by the source when it was loaded.
            return (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n").into_response();
        }
    };
    if let Some(limiter) = &gate.limiter
        && !lock(limiter).allow(Instant::now())
    {
        return (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n").into_response();
    }
    let credentials = basic_credentials(&request);
    let mut response = if config.users.is_empty() || gate.authorized(&config, credentials).await {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic")],
            "Unauthorized\n",
        )
            .into_response()
    };
    for (name, value) in &config.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// `Authorization: Basic base64(user:password)`.
fn basic_credentials(request: &Request) -> Option<(String, String)> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Go's `rate.Limiter`: `burst` tokens, one more every `interval`.
#[derive(Debug)]
pub struct TokenBucket {
    interval: Duration,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(interval: Duration, burst: u32) -> Self {
        TokenBucket {
            interval,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: None,
        }
    }

    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let earned =
                now.saturating_duration_since(last).as_secs_f64() / self.interval.as_secs_f64();
            self.tokens = (self.tokens + earned).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_lets_a_burst_through_then_one_per_interval() {
        let mut bucket = TokenBucket::new(Duration::from_secs(1), 2);
        let start = Instant::now();
        assert!(bucket.allow(start));
        assert!(bucket.allow(start));
        assert!(!bucket.allow(start));
        assert!(!bucket.allow(start + Duration::from_millis(500)));
        assert!(bucket.allow(start + Duration::from_millis(1000)));
        assert!(!bucket.allow(start + Duration::from_millis(1100)));
    }

    #[test]
    fn basic_credentials_are_read_from_the_authorization_header() {
        let request = |value: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, value)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        // "prometheus:s3cr:et"
        let good = request("Basic cHJvbWV0aGV1czpzM2NyOmV0");
        assert_eq!(
            basic_credentials(&good),
            Some(("prometheus".into(), "s3cr:et".into()))
        );
        assert_eq!(basic_credentials(&request("Bearer abc")), None);
        assert_eq!(basic_credentials(&request("Basic !!!")), None);
    }
}
