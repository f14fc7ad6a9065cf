//! Compose stacks as env instances, run natively through the Docker API (no `docker compose` CLI).
//!
//! An instance whose spec carries `compose_file` is a stack: one network `<id>_default` on which every service
//! is reachable by its name, one volume `<id>_<name>` per top-level volume, one container `<id>-<service>-1` per
//! service, created in `depends_on` order. Every object carries the operator's labels
//! ([`aenv_core::labels`]) and the labels Compose v2 puts on its own (`com.docker.compose.project=<id>`, ...), so
//! that `docker compose -p <id> ps` and `docker compose ls` show the stack.
//!
//! - [`parse`]: YAML → interpolation → key and policy checks → [`parse::StackSpec`] (API messages name the key);
//! - [`run`]: apply (network, volumes, containers, `depends_on` waits) and delete;
//! - [`status`]: what the stack's containers say (phase, per-service state, IP, ports), and the orphan sweep's view.

mod interpolate;
pub(crate) mod parse;
pub(crate) mod run;
pub(crate) mod status;

use aenv_core::{EnvInstanceSpec, InvalidSpec};

use crate::Policy;

/// Compose's own labels.
pub(crate) mod compose_labels {
    pub const PROJECT: &str = "com.docker.compose.project";
    pub const SERVICE: &str = "com.docker.compose.service";
    pub const CONTAINER_NUMBER: &str = "com.docker.compose.container-number";
    pub const ONEOFF: &str = "com.docker.compose.oneoff";
    pub const CONFIG_HASH: &str = "com.docker.compose.config-hash";
    pub const CONFIG_FILES: &str = "com.docker.compose.project.config_files";
    pub const WORKING_DIR: &str = "com.docker.compose.project.working_dir";
    pub const NETWORK: &str = "com.docker.compose.network";
    pub const VOLUME: &str = "com.docker.compose.volume";
}

/// On every object of a stack: the name of its main service, so that a list call can judge the stack by it.
pub(crate) const MAIN_SERVICE_LABEL: &str = "aenv.io/main-service";

pub(crate) fn container_name(instance: &str, service: &str) -> String {
    format!("{instance}-{service}-1")
}

pub(crate) fn network_name(instance: &str) -> String {
    format!("{instance}_default")
}

pub(crate) fn volume_name(instance: &str, volume: &str) -> String {
    format!("{instance}_{volume}")
}

/// deployConfig keys that describe a single container and mean nothing for a stack: refused rather than ignored.
fn refuse_single_container_keys(spec: &EnvInstanceSpec) -> Result<(), InvalidSpec> {
    let mut keys = Vec::new();
    if !spec.args.is_empty() {
        keys.push("deployConfig.arguments");
    }
    if spec.network.is_some() {
        keys.push("deployConfig.network");
    }
    if !spec.ports.is_empty() {
        keys.push("deployConfig.ports");
    }
    if spec.readiness.is_some() {
        keys.push("deployConfig.readiness");
    }
    match keys.first() {
        None => Ok(()),
        Some(first) => Err(InvalidSpec::new(
            *first,
            format!(
                "{} do(es) not apply to a compose stack: set command, ports and healthcheck on a service in deployConfig.composeFile",
                keys.join(", ")
            ),
        )),
    }
}

/// The check the API runs before it stores a stack instance, and again at apply time (the policy may have changed
/// since; a refusal then fails the instance): the file parses, every key is supported, the host policy allows
/// what it asks for.
pub(crate) fn plan(
    spec: &EnvInstanceSpec,
    compose_file: &str,
    policy: &Policy,
) -> Result<parse::StackSpec, InvalidSpec> {
    refuse_single_container_keys(spec)?;
    parse::parse(compose_file, &spec.env, policy).map_err(|m| InvalidSpec::new("deployConfig.composeFile", m))
}
