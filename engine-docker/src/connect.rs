//! Connecting to a Docker daemon: unix socket, plain TCP, or TCP with TLS; the API version is negotiated down to
//! what the daemon speaks (API 1.41 daemons work).

use std::path::{Path, PathBuf};

use bollard::{API_DEFAULT_VERSION, Docker};

use crate::Error;

/// Where the daemon is and how to reach it.
#[derive(Clone, Debug, Default)]
pub struct ConnectOptions {
    /// `unix:///path`, `tcp://host:port`, `http://…`, `https://…`; `None` = the local socket.
    pub host: Option<String>,
    /// Directory with `ca.pem`, `cert.pem` and `key.pem` (as `DOCKER_CERT_PATH`).
    pub cert_path: Option<PathBuf>,
    /// Use TLS for `tcp://` hosts (as `DOCKER_TLS_VERIFY`).
    pub tls_verify: bool,
    /// Timeout of one API call, in seconds.
    pub timeout_secs: u64,
}

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

impl ConnectOptions {
    /// The host as it will be shown in messages.
    pub fn display_host(&self) -> String {
        self.host.clone().unwrap_or_else(|| format!("unix://{}", local_socket()))
    }
}

/// The local socket: `/var/run/docker.sock`, or Docker Desktop's per-user socket when only that one exists.
fn local_socket() -> String {
    if Path::new(DEFAULT_SOCKET).exists() {
        return DEFAULT_SOCKET.to_string();
    }
    if let Some(home) = std::env::var_os("HOME") {
        let desktop = PathBuf::from(home).join(".docker/run/docker.sock");
        if desktop.exists() {
            return desktop.to_string_lossy().into_owned();
        }
    }
    DEFAULT_SOCKET.to_string()
}

/// Connects, negotiates the API version and checks that the daemon answers.
pub async fn connect(opts: &ConnectOptions) -> Result<Docker, Error> {
    let host = opts.display_host();
    let timeout = if opts.timeout_secs == 0 { 120 } else { opts.timeout_secs };
    let connect_err = |source| Error::Connect { host: host.clone(), source };
    let tls =
        !host.starts_with("unix://") && (opts.tls_verify || opts.cert_path.is_some() || host.starts_with("https://"));
    let docker = if let Some(path) = host.strip_prefix("unix://") {
        Docker::connect_with_unix(path, timeout, API_DEFAULT_VERSION).map_err(connect_err)?
    } else if host.starts_with("tcp://") || host.starts_with("http://") || host.starts_with("https://") {
        if tls {
            let dir = opts.cert_path.clone().ok_or_else(|| Error::InvalidHost {
                host: host.clone(),
                reason: "TLS needs a certificate directory: set --docker-cert-path or DOCKER_CERT_PATH".into(),
            })?;
            for file in ["ca.pem", "cert.pem", "key.pem"] {
                if !dir.join(file).is_file() {
                    return Err(Error::InvalidHost {
                        host: host.clone(),
                        reason: format!("{} is missing", dir.join(file).display()),
                    });
                }
            }
            let addr = host.replacen("https://", "tcp://", 1);
            Docker::connect_with_ssl(
                &addr,
                &dir.join("key.pem"),
                &dir.join("cert.pem"),
                &dir.join("ca.pem"),
                timeout,
                API_DEFAULT_VERSION,
            )
            .map_err(connect_err)?
        } else {
            Docker::connect_with_http(&host, timeout, API_DEFAULT_VERSION).map_err(connect_err)?
        }
    } else {
        return Err(Error::InvalidHost {
            host: host.clone(),
            reason: "use unix:///path/to/docker.sock, tcp://host:port or https://host:port".into(),
        });
    };
    let hint = if tls {
        format!(
            "with TLS: is the daemon listening with --tlsverify, are cert.pem and key.pem in {} signed by a CA the daemon trusts, and is ca.pem the CA that signed the daemon's certificate?",
            opts.cert_path.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
        )
    } else if host.starts_with("unix://") {
        "is dockerd running, and may this user use its socket? Point --docker-host or DOCKER_HOST at the daemon".into()
    } else {
        "is dockerd listening there? A daemon on 2376 usually wants TLS: set --docker-tls-verify and --docker-cert-path"
            .into()
    };
    let unreachable = |source| Error::Unreachable { host: host.clone(), source, hint: hint.clone() };
    let docker = docker.negotiate_version().await.map_err(unreachable)?;
    docker.ping().await.map_err(unreachable)?;
    Ok(docker)
}
