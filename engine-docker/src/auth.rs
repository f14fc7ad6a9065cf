//! Registry credentials from the Docker CLI's config file (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`): the `auths` entries written by `docker login`. Credential helpers (`credsStore`,
//! `credHelpers`) are not run.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde_json::Value;

/// The registry host of an image reference (`docker.io` for Docker Hub short names).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first,
        _ => "docker.io",
    }
}

fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker/config.json"))
}

/// Credentials for the image's registry, if the config file has them.
pub fn credentials_for(image: &str) -> Option<DockerCredentials> {
    let text = std::fs::read_to_string(config_path()?).ok()?;
    credentials_in(&text, image)
}

/// The lookup itself, on the config file's text.
pub fn credentials_in(config: &str, image: &str) -> Option<DockerCredentials> {
    let config: Value = serde_json::from_str(config).ok()?;
    let registry = registry_of(image);
    let auths = config.get("auths")?.as_object()?;
    let (server, entry) = auths.iter().find(|(key, _)| {
        let host = key.trim_start_matches("https://").trim_start_matches("http://");
        let host = host.split('/').next().unwrap_or(host);
        host == registry || (registry == "docker.io" && (host == "index.docker.io" || host == "registry-1.docker.io"))
    })?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(entry.get("auth")?.as_str()?).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some(DockerCredentials {
        username: Some(user.to_string()),
        password: Some(pass.to_string()),
        serveraddress: Some(server.clone()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries() {
        assert_eq!(registry_of("alpine"), "docker.io");
        assert_eq!(registry_of("library/alpine:3"), "docker.io");
        assert_eq!(registry_of("ghcr.io/org/img:1"), "ghcr.io");
        assert_eq!(registry_of("localhost:5000/img"), "localhost:5000");
        assert_eq!(registry_of("localhost/img"), "localhost");
    }

    #[test]
    fn finds_the_matching_auth_entry() {
        // base64("alice:s3cret") and base64("bob:pw")
        let config = r#"{"auths":{"https://index.docker.io/v1/":{"auth":"YWxpY2U6czNjcmV0"},
                        "registry.example.com:5000":{"auth":"Ym9iOnB3"}}}"#;
        let hub = credentials_in(config, "alpine:3").unwrap();
        assert_eq!((hub.username.as_deref(), hub.password.as_deref()), (Some("alice"), Some("s3cret")));
        let own = credentials_in(config, "registry.example.com:5000/team/img").unwrap();
        assert_eq!(own.username.as_deref(), Some("bob"));
        assert_eq!(own.serveraddress.as_deref(), Some("registry.example.com:5000"));
        assert!(credentials_in(config, "ghcr.io/x/y").is_none());
        assert!(credentials_in("not json", "alpine").is_none());
    }
}
