//! What a request may ask of the Docker host beyond a plain sandbox. Everything is refused unless the operator's
//! policy allows it (`aenv-operator serve --allow host-network,privileged,...`): agents run untrusted code.

use aenv_core::InvalidSpec;

use crate::registry::Registries;

use std::str::FromStr;

/// One thing the policy can allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Allowance {
    /// `network: host` (the container shares the host's network stack).
    HostNetwork,
    /// `privileged: true`.
    Privileged,
    /// Bind mounts of host paths.
    BindMounts,
    /// `pid: host` / `ipc: host`.
    HostNamespaces,
    /// `cap_add`.
    CapAdd,
    /// `devices`.
    Devices,
    /// Joining a Docker network the operator did not create.
    ExternalNetworks,
    /// A compose port with a fixed host port or a host IP other than `--publish-host-ip`.
    HostPorts,
}

impl Allowance {
    pub const ALL: [Allowance; 8] = [
        Allowance::HostNetwork,
        Allowance::Privileged,
        Allowance::BindMounts,
        Allowance::HostNamespaces,
        Allowance::CapAdd,
        Allowance::Devices,
        Allowance::ExternalNetworks,
        Allowance::HostPorts,
    ];

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Allowance::HostNetwork => "host-network",
            Allowance::Privileged => "privileged",
            Allowance::BindMounts => "bind-mounts",
            Allowance::HostNamespaces => "host-namespaces",
            Allowance::CapAdd => "cap-add",
            Allowance::Devices => "devices",
            Allowance::ExternalNetworks => "external-networks",
            Allowance::HostPorts => "host-ports",
        }
    }
}

impl FromStr for Allowance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Allowance::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = Allowance::ALL.iter().map(|a| a.as_str()).collect();
            format!("unknown allowance {s:?}; choose from {}", names.join(", "))
        })
    }
}

/// The host address published ports bind to unless the operator says otherwise: loopback.
pub const DEFAULT_PUBLISH_HOST_IP: &str = "127.0.0.1";

/// The operator's policy: the set of allowances, and the host address where ports are published. The default
/// allows nothing and publishes on loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    allowed: Vec<Allowance>,
    publish_host_ip: String,
    registries: Registries,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed: Vec::new(),
            publish_host_ip: DEFAULT_PUBLISH_HOST_IP.to_string(),
            registries: Registries::default(),
        }
    }
}

impl Policy {
    pub fn allowing(allowed: impl IntoIterator<Item = Allowance>) -> Self {
        let mut allowed: Vec<_> = allowed.into_iter().collect();
        allowed.dedup();
        Policy { allowed, ..Policy::default() }
    }

    /// Publishes ports on `ip` (`--publish-host-ip`) rather than on loopback.
    pub fn publishing_on(mut self, ip: impl Into<String>) -> Self {
        self.publish_host_ip = ip.into();
        self
    }

    /// Pulls from the registries `registries` lists too (`--registry-allow`).
    pub fn with_registries(mut self, registries: Registries) -> Self {
        self.registries = registries;
        self
    }

    /// `Ok` when `image` may be pulled; otherwise why not.
    pub fn check_registry(&self, image: &str) -> Result<(), String> {
        self.registries.check(image)
    }

    /// `Ok` when `image` may be pulled (its registry is not an internal address, or is listed); otherwise the API
    /// message, naming `key`.
    pub fn check_image(&self, image: &str, key: &str) -> Result<(), InvalidSpec> {
        self.registries.check(image).map_err(|why| InvalidSpec::new(key, format!("field `{key}`: {why}")))
    }

    /// [`Policy::check_image`], and the addresses the registry's name resolves to
    /// ([`Registries::check_resolved`], lenient: a name that does not resolve is judged again before a pull).
    pub async fn check_image_resolved(&self, image: &str, key: &str) -> Result<(), InvalidSpec> {
        self.registries
            .check_resolved(image, false)
            .await
            .map_err(|why| InvalidSpec::new(key, format!("field `{key}`: {why}")))
    }

    /// Before a pull: the registry as [`Policy::check_registry`] judges it, and the addresses its name resolves
    /// to; a name that does not resolve is refused.
    pub async fn check_registry_resolved(&self, image: &str) -> Result<(), String> {
        self.registries.check_resolved(image, true).await
    }

    /// The host address every published port binds to (single containers always; stack ports unless the
    /// policy allows [`Allowance::HostPorts`] and the file names another).
    pub fn publish_host_ip(&self) -> &str {
        &self.publish_host_ip
    }

    /// Whether `ip` (as a compose file writes it, IPv6 without brackets) is the publish address.
    pub fn is_publish_host_ip(&self, ip: &str) -> bool {
        match (ip.parse::<std::net::IpAddr>(), self.publish_host_ip.parse::<std::net::IpAddr>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => ip == self.publish_host_ip,
        }
    }

    pub fn allows(&self, a: Allowance) -> bool {
        self.allowed.contains(&a)
    }

    /// `Ok` when allowed; otherwise the API message, naming the request key and the flag that allows it.
    pub fn check(&self, a: Allowance, key: &str) -> Result<(), InvalidSpec> {
        if self.allows(a) {
            Ok(())
        } else {
            Err(InvalidSpec::new(
                key,
                format!(
                    "`{key}` is not allowed by this operator's policy (an operator started with --allow {} permits it)",
                    a.as_str()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_refuses_and_names_the_flag() {
        let p = Policy::default();
        let err = p.check(Allowance::HostNetwork, "deployConfig.network").unwrap_err();
        assert_eq!(err.field, "deployConfig.network");
        let err = err.message;
        assert!(err.contains("deployConfig.network") && err.contains("--allow host-network"), "{err}");
        let p = Policy::allowing([Allowance::HostNetwork]);
        assert!(p.check(Allowance::HostNetwork, "x").is_ok());
        assert!(!p.allows(Allowance::Privileged));
        assert_eq!("bind-mounts".parse::<Allowance>(), Ok(Allowance::BindMounts));
        assert!("root".parse::<Allowance>().unwrap_err().contains("host-network"));
        assert_eq!("host-ports".parse::<Allowance>(), Ok(Allowance::HostPorts));
    }

    #[test]
    fn the_publish_address_compares_as_an_address() {
        let p = Policy::default();
        assert_eq!(p.publish_host_ip(), "127.0.0.1");
        assert!(p.is_publish_host_ip("127.0.0.1"));
        assert!(!p.is_publish_host_ip("127.0.0.14") && !p.is_publish_host_ip("0.0.0.0"));
        let p = Policy::default().publishing_on("::1");
        assert!(p.is_publish_host_ip("0:0:0:0:0:0:0:1") && !p.is_publish_host_ip("127.0.0.1"));
    }
}
