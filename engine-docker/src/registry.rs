//! Which registries images may be pulled from. A pull makes the Docker daemon connect to the registry an image
//! reference names, from the host's network: a tenant naming `127.0.0.1:2375/x` or `10.0.0.5:80/x` would make it
//! reach services on the host's loopback or private network. So registry hosts that are loopback, link-local,
//! private or unspecified IP literals, and `localhost`, are refused unless the operator lists them
//! (`--registry-allow`).
//!
//! A name is judged by the addresses it resolves to, as the daemon would resolve it (the hosts file, then DNS):
//! the machine's own name (which /etc/hosts maps to 127.0.1.1) or a public name pointing at 10.0.0.5 is refused
//! like the address ([`Registries::check_resolved`]). A name that does not resolve is let through when a spec is
//! accepted (the image may be on the host already; the daemon would not find the registry either), and refused
//! when a pull is about to happen: the daemon is never sent to a name the operator could not judge. What stays
//! open: a name whose answer changes between the operator's lookup and the daemon's (DNS rebinding, TTL 0).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

/// The registry host (with its port, if any) an image reference names, as Docker reads it: the first path
/// component when it has a `.` or a `:` or is `localhost`; `None` for Docker Hub (`alpine`, `team/app`).
pub fn registry_host(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

/// The host of `host[:port]` or `[v6][:port]`, without brackets.
fn host_part(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match host_port.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host_port,
    }
}

/// Whether a registry host is one the daemon must not be sent to by default: `localhost` (and `*.localhost`), or
/// an IP literal that is loopback, link-local, private (RFC 1918, unique local fc00::/7), unspecified, shared
/// (100.64.0.0/10) or an IPv4-mapped form of those.
pub fn is_internal(host_port: &str) -> bool {
    let host = host_part(host_port).to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let Ok(ip) = host.parse::<IpAddr>() else { return false };
    ip_is_internal(ip)
}

/// Whether an address is one the daemon must not be sent to by default (see [`is_internal`]).
pub fn ip_is_internal(ip: IpAddr) -> bool {
    let v4_internal = |v4: std::net::Ipv4Addr| {
        let [a, b, ..] = v4.octets();
        v4.is_loopback()
            || v4.is_private()
            || v4.is_link_local()
            || v4.is_unspecified()
            || v4.is_broadcast()
            || (a == 100 && (64..128).contains(&b))
            || a == 0
    };
    match ip {
        IpAddr::V4(v4) => v4_internal(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_internal(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback() || v6.is_unspecified() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Whether `host_port` (a registry host as the reference writes it) matches `pattern`: `host`, `host:port`, or
/// `*.domain` (any subdomain), compared without case. A pattern without a port matches every port of its host.
pub fn matches(pattern: &str, host_port: &str) -> bool {
    let pattern = pattern.trim().to_ascii_lowercase();
    let host_port = host_port.to_ascii_lowercase();
    let pattern_has_port = pattern.starts_with('[') && pattern.contains("]:")
        || (!pattern.starts_with('[') && pattern.matches(':').count() == 1);
    let subject = if pattern_has_port { host_port.clone() } else { host_part(&host_port).to_string() };
    let pattern = if pattern_has_port { pattern } else { host_part(&pattern).to_string() };
    match pattern.strip_prefix("*.") {
        Some(domain) => subject.ends_with(&format!(".{domain}")),
        None => subject == pattern,
    }
}

/// The operator's registry rule: internal hosts refused unless a pattern lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registries {
    allowed: Vec<String>,
}

impl Registries {
    pub fn allowing(patterns: impl IntoIterator<Item = String>) -> Self {
        Registries { allowed: patterns.into_iter().filter(|p| !p.trim().is_empty()).collect() }
    }

    /// `Ok` when the image may be pulled; otherwise why not (for a message that names the key).
    pub fn check(&self, image: &str) -> Result<(), String> {
        let Some(host) = registry_host(image) else { return Ok(()) };
        if !is_internal(host) || self.allowed.iter().any(|p| matches(p, host)) {
            return Ok(());
        }
        Err(format!(
            "image {image:?} names the registry {host}, a loopback, link-local or private address the Docker daemon is not sent to (an operator started with --registry-allow {host} permits it)"
        ))
    }

    /// [`Registries::check`], then the addresses the registry's name resolves to: refused when one of them is
    /// internal (and the name is not listed). A name that does not resolve (or not within 5 s) is refused when
    /// `strict` (a pull is next), else let through.
    pub async fn check_resolved(&self, image: &str, strict: bool) -> Result<(), String> {
        self.check(image)?;
        let Some((host_port, host, port)) = self.name_to_resolve(image) else { return Ok(()) };
        let lookup = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host.as_str(), port))).await;
        let addrs: Vec<SocketAddr> = match lookup {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) if strict => {
                return Err(format!(
                    "image {image:?} names the registry {host_port}, whose name does not resolve here ({e}): the operator judges a registry by its addresses before the daemon pulls; use a name that resolves, or list it with --registry-allow"
                ));
            }
            Err(_) if strict => {
                return Err(format!(
                    "image {image:?} names the registry {host_port}, whose name did not resolve within 5 s: the operator judges a registry by its addresses before the daemon pulls; try again, or list it with --registry-allow"
                ));
            }
            _ => return Ok(()),
        };
        judge_addresses(image, &host_port, addrs.iter().map(SocketAddr::ip))
    }

    /// The registry's name and port when it is a name to resolve: not an IP literal, not `localhost` (judged by
    /// spelling), not Docker Hub, and not listed.
    fn name_to_resolve(&self, image: &str) -> Option<(String, String, u16)> {
        let host_port = registry_host(image)?;
        let host = host_part(host_port);
        if host.parse::<IpAddr>().is_ok()
            || is_internal(host_port)
            || self.allowed.iter().any(|p| matches(p, host_port))
        {
            return None;
        }
        let port = match host_port.rsplit_once(':') {
            Some((_, p)) if !host_port.starts_with('[') || host_port.contains("]:") => p.parse().unwrap_or(443),
            _ => 443,
        };
        Some((host_port.to_string(), host.to_string(), port))
    }
}

/// Refuses a registry name one of whose addresses is internal, as [`Registries::check`] refuses the address.
fn judge_addresses(image: &str, host_port: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Result<(), String> {
    match addrs.into_iter().find(|ip| ip_is_internal(*ip)) {
        None => Ok(()),
        Some(ip) => Err(format!(
            "image {image:?} names the registry {host_port}, which resolves to {ip}, a loopback, link-local or private address the Docker daemon is not sent to (an operator started with --registry-allow {host_port} permits it)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_of_a_reference() {
        assert_eq!(registry_host("alpine"), None);
        assert_eq!(registry_host("team/app:1"), None);
        assert_eq!(registry_host("ghcr.io/team/app:1"), Some("ghcr.io"));
        assert_eq!(registry_host("localhost/app"), Some("localhost"));
        assert_eq!(registry_host("127.0.0.1:5000/app@sha256:abc"), Some("127.0.0.1:5000"));
        assert_eq!(registry_host("[::1]:5000/app"), Some("[::1]:5000"));
    }

    #[test]
    fn internal_hosts() {
        for host in [
            "localhost",
            "LOCALHOST:5000",
            "reg.localhost",
            "127.0.0.1:5000",
            "127.9.9.9",
            "10.0.0.5",
            "172.16.3.4:80",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0:2375",
            "100.64.0.1",
            "[::1]:5000",
            "[fe80::1]",
            "[fd00::5]:443",
            "[::ffff:127.0.0.1]:5000",
            "[::]",
        ] {
            assert!(is_internal(host), "{host}");
        }
        for host in ["ghcr.io", "registry-1.docker.io:443", "8.8.8.8", "[2001:db8::1]:5000", "172.32.0.1", "quay.io"] {
            assert!(!is_internal(host), "{host}");
        }
    }

    #[test]
    fn a_name_is_judged_by_its_addresses() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        let e = judge_addresses("vm:5998/x:1", "vm:5998", [v4("127.0.1.1")]).unwrap_err();
        assert!(e.contains("resolves to 127.0.1.1") && e.contains("--registry-allow vm:5998"), "{e}");
        assert!(judge_addresses("r.example/x", "r.example", [v4("8.8.8.8"), v4("10.0.0.5")]).is_err(), "any one");
        assert!(judge_addresses("r.example/x", "r.example", [v4("169.254.169.254")]).is_err());
        assert!(judge_addresses("r.example/x", "r.example", [v4("::ffff:192.168.0.1")]).is_err());
        assert!(judge_addresses("r.example/x", "r.example", [v4("8.8.8.8"), v4("2001:db8::1")]).is_ok());
        // Listed names, literals and Docker Hub are not looked up.
        let listed = Registries::allowing(["vm:5998".to_string()]);
        assert_eq!(listed.name_to_resolve("vm:5998/x:1"), None);
        assert_eq!(listed.name_to_resolve("vm:5999/x:1").map(|(_, h, p)| (h, p)), Some(("vm".into(), 5999)));
        assert_eq!(listed.name_to_resolve("ghcr.io/a/b").map(|(_, h, p)| (h, p)), Some(("ghcr.io".into(), 443)));
        assert_eq!(listed.name_to_resolve("10.0.0.1:80/x"), None);
        assert_eq!(listed.name_to_resolve("alpine"), None);
    }

    #[tokio::test]
    async fn the_machine_s_own_name_is_refused_like_loopback() {
        // The machine's name, which the hosts file maps to a loopback address: a name, not `localhost`.
        let own = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        let none = Registries::default();
        let e = none.check_resolved(&format!("{own}:5998/x:1"), false).await.unwrap_err();
        assert!(e.contains("resolves to") && e.contains("--registry-allow"), "{e}");
        // A name that does not resolve: let through when a spec is accepted, refused before a pull.
        assert!(none.check_resolved("no-such-host.invalid/x:1", false).await.is_ok());
        let e = none.check_resolved("no-such-host.invalid/x:1", true).await.unwrap_err();
        assert!(e.contains("does not resolve") || e.contains("did not resolve"), "{e}");
        assert!(none.check_resolved("alpine:3", true).await.is_ok(), "Docker Hub: no lookup");
    }

    #[test]
    fn patterns() {
        assert!(matches("127.0.0.1", "127.0.0.1:5000"), "no port: every port");
        assert!(matches("127.0.0.1:5000", "127.0.0.1:5000"));
        assert!(!matches("127.0.0.1:5000", "127.0.0.1:5001"));
        assert!(!matches("127.0.0.1:5000", "127.0.0.1"));
        assert!(matches("*.corp.example", "reg.corp.example:443"));
        assert!(!matches("*.corp.example", "corp.example.evil"));
        assert!(matches("[::1]:5000", "[::1]:5000") && matches("::1", "[::1]:5000"));
        assert!(matches("LocalHost", "localhost:5000"));
    }

    #[test]
    fn internal_registries_are_refused_unless_listed() {
        let none = Registries::default();
        assert!(none.check("alpine:3.20").is_ok());
        assert!(none.check("ghcr.io/team/app").is_ok());
        let e = none.check("127.0.0.1:5000/team/app:1").unwrap_err();
        assert!(e.contains("127.0.0.1:5000") && e.contains("--registry-allow 127.0.0.1:5000"), "{e}");
        assert!(none.check("169.254.169.254/latest").is_err());
        assert!(none.check("localhost/app").is_err());
        let listed = Registries::allowing(["127.0.0.1:5000".to_string(), "*.internal".to_string()]);
        assert!(listed.check("127.0.0.1:5000/team/app:1").is_ok());
        assert!(listed.check("127.0.0.1:5001/team/app:1").is_err());
        assert!(listed.check("10.0.0.1.internal/x").is_ok(), "not an IP literal: a name, allowed anyway");
    }
}
