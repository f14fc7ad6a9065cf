//! What a request may ask of the Docker host beyond a plain sandbox. Everything is refused unless the operator's
//! policy allows it (`aenv-operator serve --allow host-network,privileged,...`): agents run untrusted code.

use aenv_core::InvalidSpec;

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
}

impl Allowance {
    pub const ALL: [Allowance; 7] = [
        Allowance::HostNetwork,
        Allowance::Privileged,
        Allowance::BindMounts,
        Allowance::HostNamespaces,
        Allowance::CapAdd,
        Allowance::Devices,
        Allowance::ExternalNetworks,
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

/// The operator's policy: the set of allowances. The default allows nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    allowed: Vec<Allowance>,
}

impl Policy {
    pub fn allowing(allowed: impl IntoIterator<Item = Allowance>) -> Self {
        let mut allowed: Vec<_> = allowed.into_iter().collect();
        allowed.dedup();
        Policy { allowed }
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
    }
}
