//! Steering the pool at run time: `POST /status/keys/<provider>/<n>/reset` clears a key's
//! cooldowns and benches, `…/disable` takes it out of rotation until `…/enable` (`n` is the
//! `position` /status shows, from 1). Behind the access tokens when PROXY_API_KEYS is set,
//! otherwise for loopback clients only. Each action is logged with the key's mask.

use log::info;

use super::Rendered;
use crate::error::ProxyError;
use crate::json::quote;
use crate::proxy::Proxy;

/// The prefix of every steering path.
const PREFIX: &str = "/status/keys";

/// Whether `path` is under `/status/keys`.
pub fn is_steering(path: &str) -> bool {
    path == PREFIX || path.starts_with("/status/keys/")
}

/// Whether the caller may steer: with a valid token when tokens are required, otherwise only
/// from this machine (`loopback` is asked only then).
pub fn allowed<'a>(
    proxy: &Proxy,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    query: &str,
    loopback: impl FnOnce() -> bool,
) -> Result<(), ProxyError> {
    if proxy.access.required() {
        if proxy.access.allows(headers, query) {
            return Ok(());
        }
        return Err(ProxyError::Unauthorized);
    }
    if loopback() {
        Ok(())
    } else {
        Err(ProxyError::LoopbackOnly)
    }
}

/// Carries out a steering request the caller is [`allowed`] to make, or says why not.
pub fn steer(proxy: &Proxy, method: &str, path: &str) -> Result<Rendered, ProxyError> {
    let not_found = || ProxyError::NoSuchAdminPath {
        path: path.to_string(),
    };
    let parts: Vec<&str> = path[PREFIX.len()..]
        .trim_start_matches('/')
        .split('/')
        .collect();
    let [provider_name, position, action] = parts.as_slice() else {
        return Err(not_found());
    };
    if !matches!(*action, "reset" | "disable" | "enable") {
        return Err(not_found());
    }
    if method != "POST" {
        return Err(ProxyError::MethodNotAllowed { allow: "POST" });
    }
    let providers = proxy.providers();
    let provider = providers
        .iter()
        .find(|p| p.name == *provider_name)
        .ok_or_else(not_found)?;
    let index = position
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=provider.pool.len()).contains(n))
        .ok_or_else(not_found)?
        - 1;
    match *action {
        "reset" => provider.pool.reset(index),
        "disable" => provider.pool.set_disabled(index, true),
        _ => provider.pool.set_disabled(index, false),
    }
    let mask = provider.pool.key(index).mask();
    info!("steer: {} key={mask} {action}", provider.name);
    Ok(Rendered {
        content_type: "application/json",
        body: format!(
            r#"{{"provider":{},"position":{},"key":{},"action":{}}}"#,
            quote(&provider.name),
            index + 1,
            quote(&mask),
            quote(action)
        ),
    })
}
