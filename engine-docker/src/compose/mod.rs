//! Compose stacks as env instances, run natively through the Docker API (no `docker compose` CLI).
//!
//! An instance whose spec carries `compose_file` is a stack: one network `<id>_default` on which every service
//! is reachable by its name, one volume `<id>_<name>` per top-level volume, one container `<id>-<service>-1` per
//! service, created in `depends_on` order. Every object carries the operator's labels
//! ([`aenv_core::labels`]) and the labels Compose v2 puts on its own (`com.docker.compose.project=<id>`, ...), so
//! that `docker compose -p <id> ps` and `docker compose ls` show the stack.
//!
//! A file becomes a [`StackSpec`] in [`parse`], in three steps, each refusing with a message that names the key
//! (an [`InvalidSpec`] whose field is the key under `deployConfig.composeFile`):
//! - [`model`]: YAML → interpolation ([`interpolate`]) → the serde model of the compose subset this engine runs
//!   ([`de`]: how it reads YAML values); a value of the wrong type is refused here, before the checks;
//! - [`checks`]: shapes, the host policy, values this engine refuses, then unsupported keys (together, by name);
//!   names and cycles;
//! - [`convert`]: the model → [`StackSpec`] ([`spec`]; values in the Docker API's units, short syntaxes read by
//!   [`values`]).
//!
//! Then [`run`] applies it (network, volumes, containers, `depends_on` waits) and deletes it, and [`status`] reads
//! what the stack's containers say (phase, per-service state, IP, ports), and the orphan sweep's view.
//!
//! [`plan`] and the [`StackSpec`] it returns are public: the Swarm engine (`aenv-engine-swarm`) runs the same
//! parsed, checked file as services on an overlay network.

mod checks;
mod convert;
mod de;
mod interpolate;
mod model;
pub(crate) mod run;
mod spec;
pub(crate) mod status;
mod values;

use std::collections::BTreeMap;

use aenv_core::{EnvInstanceSpec, InvalidSpec};

pub use self::{
    run::apply_instance_limits,
    spec::{Condition, Dependency, MountSpec, PortPublish, ServiceSpec, StackSpec, VolumeSpec},
};
use crate::Policy;

/// The request field that carries the file; every refusal of the file is under it.
const FIELD: &str = "deployConfig.composeFile";

/// The prefix of Compose's own labels.
pub const COMPOSE_LABEL_PREFIX: &str = "com.docker.compose.";

/// Compose's own labels.
pub mod compose_labels {
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
pub const MAIN_SERVICE_LABEL: &str = "aenv.io/main-service";

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

/// Why a compose file is refused: the key at fault, as a path in the file (`services.web.ports[0]`; empty for the
/// file as a whole), and the message for the API user, which names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub key: String,
    pub message: String,
}

impl Refusal {
    pub fn at(key: impl Into<String>, message: impl Into<String>) -> Self {
        Refusal { key: key.into(), message: message.into() }
    }

    /// A refusal of the whole file (not YAML, not a mapping, ...).
    pub fn file(message: impl Into<String>) -> Self {
        Refusal::at("", message)
    }
}

/// The path of `key` under `path` in a compose document, as refusals name it (`services.web` + `ports`).
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

/// A policy refusal names the compose key it was asked for.
impl From<InvalidSpec> for Refusal {
    fn from(e: InvalidSpec) -> Self {
        Refusal { key: e.field, message: e.message }
    }
}

impl From<Refusal> for InvalidSpec {
    fn from(r: Refusal) -> Self {
        let field = if r.key.is_empty() { FIELD.to_string() } else { format!("{FIELD}.{}", r.key) };
        InvalidSpec::new(field, format!("{FIELD}: {}", r.message))
    }
}

/// Parses, interpolates, checks and converts a compose file.
pub(crate) fn parse(yaml: &str, vars: &BTreeMap<String, String>, policy: &Policy) -> Result<StackSpec, InvalidSpec> {
    let read = model::read(yaml, vars)?;
    checks::file(&read.file, &read.doc, policy)?;
    let stack = convert::stack(&read.file, &read.doc, vars)?;
    checks::host_ports(&stack, policy)?;
    checks::registries(&stack, policy)?;
    Ok(stack)
}

/// The check the API runs before it stores a stack instance, and again at apply time (the policy may have changed
/// since; a refusal then fails the instance): the file parses, every key is supported, the host policy allows
/// what it asks for.
pub fn plan(spec: &EnvInstanceSpec, compose_file: &str, policy: &Policy) -> Result<StackSpec, InvalidSpec> {
    refuse_single_container_keys(spec)?;
    parse(compose_file, &spec.env, policy)
}

#[cfg(test)]
pub(super) mod tests {
    use super::{
        spec::{Condition, Dependency, MountSpec, PortPublish, VolumeSpec},
        *,
    };

    /// The pipeline, with the API message as the error.
    pub(crate) fn parse(yaml: &str, vars: &BTreeMap<String, String>, policy: &Policy) -> Result<StackSpec, String> {
        super::parse(yaml, vars, policy).map_err(|e| e.message)
    }

    pub(crate) fn ok(yaml: &str) -> StackSpec {
        parse(yaml, &BTreeMap::new(), &Policy::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    pub(crate) fn err(yaml: &str) -> String {
        parse(yaml, &BTreeMap::new(), &Policy::default()).expect_err("must be refused")
    }

    const TWO: &str = r#"
services:
  main:
    image: aenv-test/sandbox:local
    labels: ["aenv.main=true", "team=rl"]
    command: sh -c 'wget -qO- http://side:8081/health && sleep 1000'
    environment:
      - A=1
      - PASSTHROUGH
    depends_on:
      side:
        condition: service_healthy
    ports: ["8081", "127.0.0.1:18081:8081/tcp", "0.0.0.0::9000/udp"]
    expose: [8081, "9001/udp"]
    cpus: 0.5
    mem_limit: 256m
    working_dir: /tmp
    user: "65534"
    tmpfs: /scratch:size=1m
    volumes: ["data:/data:ro", "/anon"]
  side:
    image: aenv-test/sandbox:local
    environment: {B: 2, C: null, D: "x"}
    labels: {aenv.main: false}
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://127.0.0.1:8081/health"]
      interval: 500ms
      timeout: 2s
      retries: 20
      start_period: 1s
    deploy:
      resources:
        limits: {cpus: "0.25", memory: 64M}
volumes:
  data: {}
x-note: ignored by design
"#;

    #[test]
    fn two_services_with_every_supported_shape() {
        let vars = BTreeMap::from([("PASSTHROUGH".to_string(), "yes".to_string()), ("C".into(), "from-env".into())]);
        let s = parse(TWO, &vars, &Policy::allowing([crate::Allowance::HostPorts])).unwrap();
        assert_eq!(s.main, "main");
        assert_eq!(s.volumes, vec![VolumeSpec { name: "data".into(), labels: BTreeMap::new() }]);
        let main = s.service("main").unwrap();
        assert_eq!(main.command.as_deref().unwrap(), ["sh", "-c", "wget -qO- http://side:8081/health && sleep 1000"]);
        assert_eq!(main.environment, ["A=1", "PASSTHROUGH=yes"]);
        assert_eq!(main.labels["team"], "rl");
        assert_eq!(
            main.depends_on,
            [Dependency { service: "side".into(), condition: Condition::Healthy, required: true }]
        );
        assert_eq!(main.ports.len(), 3);
        assert_eq!(
            main.ports[0],
            PortPublish { container_port: 8081, protocol: "tcp".into(), host_ip: None, host_port: None }
        );
        assert_eq!(main.ports[1].host_port, Some(18081));
        assert_eq!((main.ports[2].host_ip.as_deref(), main.ports[2].protocol.as_str()), (Some("0.0.0.0"), "udp"));
        assert_eq!(main.expose, ["8081/tcp", "9001/udp"]);
        assert_eq!(main.nano_cpus, Some(500_000_000));
        assert_eq!(main.memory, Some(256 * 1024 * 1024));
        assert_eq!(main.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(main.user.as_deref(), Some("65534"));
        assert_eq!(main.tmpfs["/scratch"], "size=1m");
        assert_eq!(
            main.mounts,
            [
                MountSpec::Volume {
                    source: Some("data".into()),
                    target: "/data".into(),
                    read_only: true,
                    nocopy: false
                },
                MountSpec::Volume { source: None, target: "/anon".into(), read_only: false, nocopy: false },
            ]
        );
        let side = s.service("side").unwrap();
        assert_eq!(side.environment, ["B=2", "C=from-env", "D=x"]);
        assert_eq!(side.labels["aenv.main"], "false");
        let hc = side.healthcheck.as_ref().unwrap();
        assert_eq!(hc.test.as_deref().unwrap()[0], "CMD");
        assert_eq!((hc.interval, hc.timeout, hc.retries), (Some(500_000_000), Some(2_000_000_000), Some(20)));
        assert_eq!((side.nano_cpus, side.memory), (Some(250_000_000), Some(64 * 1024 * 1024)));
        assert_eq!(main.config_hash.len(), 64);
        assert_ne!(main.config_hash, side.config_hash);
    }

    #[test]
    fn main_is_labelled_else_first() {
        let s = ok("services:\n  a: {image: x}\n  b: {image: y, labels: {aenv.main: \"true\"}}\n");
        assert_eq!(s.main, "b");
        let s = ok("services:\n  b: {image: x}\n  a: {image: y}\n");
        assert_eq!(s.main, "b", "first in file order");
        let e =
            err("services:\n  a: {image: x, labels: [aenv.main=true]}\n  b: {image: y, labels: [aenv.main=true]}\n");
        assert!(e.contains("only one service"), "{e}");
    }

    #[test]
    fn interpolation_from_instance_variables() {
        let yaml = "services:\n  web:\n    image: ${IMAGE:-aenv-test/sandbox:local}\n    environment: [\"GREETING=${GREETING}\", \"COST=$$5\"]\n    cpus: ${CPUS:-1}\n    mem_limit: ${MEM}\n    read_only: ${RO:-false}\n";
        let vars = BTreeMap::from([("GREETING".to_string(), "hi".to_string()), ("MEM".into(), "1g".into())]);
        let s = parse(yaml, &vars, &Policy::default()).unwrap();
        let web = s.service("web").unwrap();
        assert_eq!(web.image, "aenv-test/sandbox:local");
        assert_eq!(web.environment, ["GREETING=hi", "COST=$5"]);
        assert_eq!(web.nano_cpus, Some(1_000_000_000));
        assert_eq!(web.memory, Some(1024 * 1024 * 1024));
        let e =
            parse("services:\n  web:\n    image: ${IMG:?set IMG}\n", &BTreeMap::new(), &Policy::default()).unwrap_err();
        assert!(e.contains("services.web.image") && e.contains("set IMG"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            ("services: {}\n", "no services"),
            ("services:\n  web: {command: x}\n", "services.web.image"),
            ("services:\n  web: {image: x, depends_on: [nope]}\n", "services.web.depends_on.nope"),
            ("services:\n  web: {image: x, depends_on: [web]}\n", "itself"),
            ("services:\n  a: {image: x, depends_on: [b]}\n  b: {image: x, depends_on: [a]}\n", "cycle: a -> b -> a"),
            (
                "services:\n  web: {image: x, depends_on: {db: {condition: service_ready}}}\n  db: {image: x}\n",
                "services.web.depends_on.db.condition",
            ),
            ("services:\n  web: {image: x, ports: [\"8000-8010:8000-8010\"]}\n", "ranges"),
            ("services:\n  web: {image: x, ports: [\"80/sctp\"]}\n", "sctp"),
            ("services:\n  web: {image: x, volumes: [\"undeclared:/d\"]}\n", "not declared"),
            ("services:\n  web: {image: x, volumes: [\"v:/d:z\"]}\nvolumes: {v: }\n", "mount option"),
            ("services:\n  web: {image: x, mem_limit: lots}\n", "services.web.mem_limit"),
            ("services:\n  web: {image: x, cpus: 0}\n", "services.web.cpus"),
            ("services:\n  web: {image: x, cpus: 1, deploy: {resources: {limits: {cpus: '2'}}}}\n", "differ"),
            ("services:\n  web: {image: x, working_dir: rel}\n", "services.web.working_dir"),
            ("services:\n  web: {image: x, restart: always}\n", "services.web.restart"),
            ("services:\n  web: {image: x, labels: [\"aenv.io/instance=x\"]}\n", "reserved"),
            ("services:\n  web: {image: x, labels: {com.docker.compose.project: p}}\n", "reserved"),
            ("services:\n  web: {image: x, healthcheck: {test: [\"wget\"]}}\n", "CMD, CMD-SHELL"),
            ("services:\n  web: {image: x, healthcheck: {test: x, interval: 1d}}\n", "healthcheck.interval"),
            ("services:\n  \"bad name\": {image: x}\n", "service name"),
            ("services:\n  web: {image: x, command: \"sh -c 'oops\"}\n", "unbalanced"),
            ("- not\n- a map\n", "must be a mapping"),
            ("services: [\n", "not valid YAML"),
            ("services:\n  web: {image: x, volumes: {type: volume}}\n", "not a valid compose file"),
        ];
        for (yaml, want) in cases {
            let e = err(yaml);
            assert!(e.contains(want), "{yaml:?}: want {want:?} in {e}");
        }
    }

    #[test]
    fn the_field_is_the_key_under_compose_file() {
        let refusal = |yaml: &str| super::parse(yaml, &BTreeMap::new(), &Policy::default()).expect_err("refused");
        let e = refusal("services:\n  web:\n    image: x\n    privileged: true\n");
        assert_eq!(e.field, "deployConfig.composeFile.services.web.privileged");
        assert!(e.message.starts_with("deployConfig.composeFile: `services.web.privileged` is not allowed"), "{e:?}");
        let e = refusal("services:\n  web: {image: x, ports: [\"80/sctp\"]}\n");
        assert_eq!(e.field, "deployConfig.composeFile.services.web.ports[0]");
        let e = refusal("services: [\n");
        assert_eq!(e.field, "deployConfig.composeFile");
        let e = refusal("services:\n  web: {image: x, build: .}\n");
        assert_eq!(e.field, "deployConfig.composeFile.services.web.build");
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::{tests::parse, *};

    /// YAML fragments that look like compose files, stitched together at random.
    fn compose_like() -> impl Strategy<Value = String> {
        let line = prop::sample::select(vec![
            "services:",
            "  web:",
            "  db:",
            "    image: ${IMAGE:-busybox}",
            "    image: img",
            "    command: [sh, -c, x]",
            "    command: \"sh -c 'a b'\"",
            "    entrypoint: sh",
            "    environment: [A=1, B]",
            "    environment: {A: 1}",
            "    labels: [aenv.main=true]",
            "    labels: {a: b}",
            "    ports: [\"8080\", \"127.0.0.1:9000:9000/udp\"]",
            "    expose: [80]",
            "    depends_on: [db]",
            "    depends_on: {db: {condition: service_healthy}}",
            "    depends_on: {web: {condition: service_started}}",
            "    healthcheck: {test: [CMD, true], interval: 1s}",
            "    volumes: [data:/data]",
            "    volumes: [/etc:/host]",
            "    tmpfs: [/tmp]",
            "    cpus: 0.5",
            "    mem_limit: 64m",
            "    deploy: {resources: {limits: {cpus: '1', memory: 1G}}}",
            "    privileged: true",
            "    network_mode: host",
            "    pid: host",
            "    cap_add: [ALL]",
            "    devices: [/dev/null]",
            "    user: 1000",
            "    working_dir: /w",
            "volumes:",
            "  data: {}",
            "networks: {}",
            "x-ext: 1",
            "  - item",
            "{",
            "]",
            "\t",
            "    image: ${",
            "    image: $$x",
            ":",
            "- -",
            "    build: .",
        ]);
        prop::collection::vec(line, 0..14).prop_map(|lines| lines.join("\n"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn compose_like_files_never_panic(yaml in compose_like()) {
            let vars = BTreeMap::from([("IMAGE".to_string(), "img".to_string())]);
            let _ = parse(&yaml, &vars, &Policy::default());
            let _ = parse(&yaml, &vars, &Policy::allowing(crate::Allowance::ALL));
        }

        #[test]
        fn arbitrary_text_never_panics(yaml in "\\PC{0,200}") {
            let _ = parse(&yaml, &BTreeMap::new(), &Policy::default());
        }
    }
}
