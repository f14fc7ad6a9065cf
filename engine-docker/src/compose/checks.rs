//! What the model cannot say by its types: the shape of the file, the keys this engine does not run, the host
//! policy, names and `depends_on` cycles. Every refusal names the compose key.
//!
//! [`file`] runs on the model before anything is converted (a value of the wrong type was refused when the model
//! was read). A value of the wrong shape, a key that is not a string, a key the policy guards or a value this
//! engine refuses (`restart: always`) is refused on its own: top-level keys first, then volumes, then each
//! service, the first in the file within each. Then every unsupported key, listed together in file order. The
//! checks that need the converted stack ([`no_cycles`]) or a single value ([`volume_name`], [`label_key`]) are
//! called from `convert.rs` where the conversion meets them, so that refusals come in the order they always did.

use std::collections::HashMap;

use serde_norway::{Mapping, Value};

use super::{
    Refusal, join,
    model::{
        ComposeFile, DependsOn, DependsOnOptions, Mount, Ports, SERVICE_KEYS, Service, ServiceDef, Shaped, TOP_KEYS,
        TopVolume, VolumeDef, scalar_text,
    },
    spec::{ServiceSpec, StackSpec},
    values::short_volume_is_bind,
};
use crate::{Allowance, Policy};

/// Most services one stack may have.
const MAX_SERVICES: usize = 32;

/// What the checks of a part of the file found: the refusals (each with its place in the file), and the keys this
/// engine does not run (gathered to be refused together).
struct Findings {
    order: HashMap<String, usize>,
    refused: Vec<(usize, Refusal)>,
    unsupported: Vec<String>,
}

impl Findings {
    fn refuse(&mut self, r: Result<(), Refusal>) {
        if let Err(e) = r {
            self.refused.push((position(&self.order, &e.key), e));
        }
    }

    /// Gathers the unknown keys of one mapping of the file; `x-` extension keys pass where `extensions` says so.
    fn gather(&mut self, unknown: &Mapping, path: &str, extensions: bool) {
        for k in unknown.keys() {
            match k.as_str() {
                Some(key) if extensions && key.starts_with("x-") => {}
                Some(key) => self.unsupported.push(join(path, key)),
                None => {
                    // Placed where the walk of `document_order` met it.
                    let at = position(&self.order, &join(path, "?"));
                    self.refused.push((at, Refusal::at(path, format!("keys must be strings (found {k:?})"))));
                }
            }
        }
    }

    /// The first refusal in the file, if there is one so far.
    fn first(&mut self) -> Result<(), Refusal> {
        match std::mem::take(&mut self.refused).into_iter().min_by_key(|(at, _)| *at) {
            Some((_, first)) => Err(first),
            None => Ok(()),
        }
    }
}

fn key_str<'a>(k: &'a Value, path: &str) -> Result<&'a str, Refusal> {
    k.as_str().ok_or_else(|| Refusal::at(path, format!("keys must be strings (found {k:?})")))
}

/// The checks of a whole file, before conversion. Refusals come section by section (top-level keys, volumes, then
/// each service), the first in the file within each; then the unsupported keys, together.
pub(crate) fn file(file: &ComposeFile, doc: &Value, policy: &Policy) -> Result<(), Refusal> {
    let mut found = Findings { order: document_order(doc), refused: Vec::new(), unsupported: Vec::new() };
    found.gather(&file.unknown, "", true);
    found.first()?;

    match &file.volumes {
        None => {}
        Some(Shaped::Bad) => return Err(Refusal::at("volumes", "`volumes` must be a mapping of volume names")),
        Some(Shaped::Ok(volumes)) => {
            for (name, def) in &volumes.0 {
                let name = key_str(name, "volumes")?;
                let path = format!("volumes.{name}");
                match def {
                    VolumeDef::Empty => {}
                    VolumeDef::Bad => {
                        return Err(Refusal::at(&path, format!("`{path}` must be a mapping or empty")));
                    }
                    VolumeDef::Def(def) => top_volume(def, &path, &mut found),
                }
                found.first()?;
            }
        }
    }

    let services = match &file.services {
        Some(Shaped::Ok(s)) if !s.0.is_empty() => s,
        Some(Shaped::Ok(_)) | None => {
            return Err(Refusal::at("services", "the file has no services: add `services:` with at least one service"));
        }
        Some(Shaped::Bad) => return Err(Refusal::at("services", "`services` must be a mapping of service names")),
    };
    if services.0.len() > MAX_SERVICES {
        return Err(Refusal::at(
            "services",
            format!("a stack may have at most {MAX_SERVICES} services (this one has {})", services.0.len()),
        ));
    }
    for (name, svc) in &services.0 {
        let name = key_str(name, "services")?;
        service_name(name)?;
        let path = format!("services.{name}");
        let ServiceDef::Def(svc) = svc else {
            return Err(Refusal::at(&path, format!("`{path}` must be a mapping with at least an `image`")));
        };
        // A service's unsupported keys in file order (nested ones where their parent is).
        let start = found.unsupported.len();
        service(svc, &path, policy, &mut found);
        found.first()?;
        let order = &found.order;
        found.unsupported[start..].sort_by_key(|k| position(order, k));
    }

    let Some(first) = found.unsupported.first() else { return Ok(()) };
    Err(Refusal::at(
        first.clone(),
        format!(
            "unsupported compose key(s): {}. This engine runs these service keys: {} (top level: {}; see docs/compose.md)",
            found.unsupported.join(", "),
            SERVICE_KEYS.join(", "),
            TOP_KEYS.join(", ")
        ),
    ))
}

fn top_volume(def: &TopVolume, path: &str, found: &mut Findings) {
    found.gather(&def.unknown, path, true);
    if let Some(driver) = &def.driver
        && driver.as_str() != Some("local")
    {
        let path = format!("{path}.driver");
        found.refuse(Err(Refusal::at(
            &path,
            format!("`{path}`: only the `local` driver is supported (stack volumes live on the Docker host)"),
        )));
    }
}

/// A service's keys: the policy, the values this engine refuses, the shapes, the unknown keys.
fn service(svc: &Service, p: &str, policy: &Policy, found: &mut Findings) {
    let key = |k: &str| format!("{p}.{k}");
    let guard = |allowance: Allowance, path: &str| policy.check(allowance, path).map_err(Refusal::from);
    found.gather(&svc.unknown, p, true);

    if svc.privileged.0 {
        found.refuse(guard(Allowance::Privileged, &key("privileged")));
    }
    if let Some(mode) = &svc.network_mode {
        let path = key("network_mode");
        found.refuse(match mode.as_str() {
            Some("host") => guard(Allowance::HostNetwork, &path),
            other => Err(Refusal::at(
                &path,
                format!(
                    "`{path}`: {other:?} is not supported; a stack's services share its own network (only `host` may be asked for, when the policy allows it)"
                ),
            )),
        });
    }
    for (name, mode) in [("pid", &svc.pid), ("ipc", &svc.ipc)] {
        let Some(mode) = mode else { continue };
        let path = key(name);
        found.refuse(match mode.as_str() {
            Some("host") => guard(Allowance::HostNamespaces, &path),
            other => Err(Refusal::at(
                &path,
                format!("`{path}`: {other:?} is not supported (only `host`, when the policy allows it)"),
            )),
        });
    }
    if !svc.cap_add.is_empty() {
        found.refuse(guard(Allowance::CapAdd, &key("cap_add")));
    }
    if !svc.devices.is_empty() {
        found.refuse(guard(Allowance::Devices, &key("devices")));
    }
    if let Some(restart) = &svc.restart
        && restart.as_str() != Some("no")
    {
        let path = key("restart");
        found.refuse(Err(Refusal::at(
            &path,
            format!(
                "`{path}`: only \"no\" is supported (a sandbox's services are not restarted; a service that fails fails the instance)"
            ),
        )));
    }
    if let Some(cpus) = &svc.cpus
        && scalar_text(cpus).is_none()
    {
        let path = key("cpus");
        found.refuse(Err(Refusal::at(&path, format!("`{path}` must be a number such as 0.5"))));
    }

    if let Ports::Long(ports) = &svc.ports {
        for (i, port) in ports.iter().enumerate() {
            found.gather(&port.unknown, &format!("{p}.ports[{i}]"), false);
        }
    }
    for (i, mount) in svc.volumes.iter().enumerate() {
        let path = format!("{p}.volumes[{i}]");
        match mount {
            Mount::Short(s) => {
                if short_volume_is_bind(s) {
                    found.refuse(guard(Allowance::BindMounts, &path));
                }
            }
            Mount::Long(m) => {
                found.gather(&m.unknown, &path, false);
                if let Some(v) = &m.volume {
                    found.gather(&v.unknown, &format!("{path}.volume"), false);
                }
                if let Some(t) = &m.tmpfs {
                    found.gather(&t.unknown, &format!("{path}.tmpfs"), false);
                }
                if m.kind == "bind" {
                    found.refuse(guard(Allowance::BindMounts, &path));
                }
            }
            Mount::Bad => found.refuse(Err(Refusal::at(&path, format!("`{path}` must be a string or a mapping")))),
        }
    }
    if let Some(h) = &svc.healthcheck {
        found.gather(&h.unknown, &key("healthcheck"), false);
    }
    if let DependsOnOptions::Conditional(deps) = &svc.depends_on {
        let path = key("depends_on");
        for (dep, cond) in &deps.0 {
            let dep = match key_str(dep, &path) {
                Ok(dep) => dep,
                Err(e) => {
                    let at = position(&found.order, &join(&path, "?"));
                    found.refused.push((at, e));
                    continue;
                }
            };
            let dep_path = format!("{path}.{dep}");
            match cond {
                DependsOn::Condition(c) => found.gather(&c.unknown, &dep_path, false),
                DependsOn::Bad => found.refuse(Err(Refusal::at(
                    &dep_path,
                    format!("`{dep_path}` must be a mapping such as {{condition: service_healthy}}"),
                ))),
            }
        }
    }
    if let Some(deploy) = &svc.deploy {
        let path = key("deploy");
        found.gather(&deploy.unknown, &path, false);
        if let Some(resources) = &deploy.resources {
            let path = format!("{path}.resources");
            found.gather(&resources.unknown, &path, false);
            if let Some(limits) = &resources.limits {
                found.gather(&limits.unknown, &format!("{path}.limits"), false);
            }
        }
    }
}

fn position(order: &HashMap<String, usize>, key: &str) -> usize {
    order.get(key).copied().unwrap_or(usize::MAX)
}

/// The position of every key and item path of the document (`services.web.ports[0].name`), in file order.
fn document_order(doc: &Value) -> HashMap<String, usize> {
    fn walk(v: &Value, path: &str, order: &mut HashMap<String, usize>) {
        match v {
            Value::Mapping(m) => {
                for (k, item) in m {
                    let p = join(path, k.as_str().unwrap_or("?"));
                    let next = order.len();
                    order.entry(p.clone()).or_insert(next);
                    walk(item, &p, order);
                }
            }
            Value::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    let next = order.len();
                    order.entry(p.clone()).or_insert(next);
                    walk(item, &p, order);
                }
            }
            Value::Tagged(t) => walk(&t.value, path, order),
            _ => {}
        }
    }
    let mut order = HashMap::new();
    walk(doc, "", &mut order);
    order
}

pub(crate) fn service_name(name: &str) -> Result<(), Refusal> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Refusal::at(
            format!("services.{name}"),
            format!(
                "service name {name:?} must be 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
            ),
        ))
    }
}

pub(crate) fn volume_name(name: &str) -> Result<(), Refusal> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Refusal::at(
            format!("volumes.{name}"),
            format!("volume name {name:?} must be letters, digits, '-', '_' or '.', starting with a letter or digit"),
        ))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A label key the file may set: not empty, no blanks, none of the operator's.
pub(crate) fn label_key(k: &str, path: &str) -> Result<(), Refusal> {
    if k.is_empty() || k.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Refusal::at(path, format!("`{path}` has an invalid label key {k:?}")));
    }
    if aenv_core::labels::is_reserved(k) || k.starts_with(super::COMPOSE_LABEL_PREFIX) {
        return Err(Refusal::at(
            path,
            format!(
                "`{path}` sets the reserved label {k:?}: keys under aenv.io/, aenv.env_name and com.docker.compose. are the operator's"
            ),
        ));
    }
    Ok(())
}

/// Stack ports follow the single-container rule: published on the operator's publish address at an ephemeral
/// host port. A fixed host port or another host IP could listen on every interface or take a host service's port
/// the moment it is free; only an operator started with `--allow host-ports` lets a file ask for them.
pub(crate) fn host_ports(stack: &StackSpec, policy: &Policy) -> Result<(), Refusal> {
    if policy.allows(Allowance::HostPorts) {
        return Ok(());
    }
    for svc in &stack.services {
        for (i, port) in svc.ports.iter().enumerate() {
            let other_ip = port.host_ip.as_deref().filter(|ip| !policy.is_publish_host_ip(ip));
            if port.host_port.is_none() && other_ip.is_none() {
                continue;
            }
            let path = format!("services.{}.ports[{i}]", svc.name);
            let what = match (port.host_port, other_ip) {
                (Some(hp), Some(ip)) => format!("host address {ip} and host port {hp}"),
                (Some(hp), None) => format!("host port {hp}"),
                (None, Some(ip)) => format!("host address {ip}"),
                (None, None) => continue,
            };
            return Err(Refusal::at(
                &path,
                format!(
                    "`{path}` names {what}: ports are published on {} at a port Docker picks (status `ports` says which); write only the container port, e.g. \"{}/{}\" (an operator started with --allow host-ports permits fixed host ports and other addresses)",
                    policy.publish_host_ip(),
                    port.container_port,
                    port.protocol
                ),
            ));
        }
    }
    Ok(())
}

/// Every service's image comes from a registry the policy allows (`--registry-allow`).
pub(crate) fn registries(stack: &StackSpec, policy: &Policy) -> Result<(), Refusal> {
    for svc in &stack.services {
        policy.check_image(&svc.image, &format!("services.{}.image", svc.name))?;
    }
    Ok(())
}

/// Refuses dependency cycles, naming them.
pub(crate) fn no_cycles(services: &[ServiceSpec]) -> Result<(), Refusal> {
    fn visit<'a>(
        name: &'a str,
        services: &'a [ServiceSpec],
        state: &mut HashMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Result<(), Refusal> {
        match state.get(name) {
            Some(2) => return Ok(()),
            Some(1) => {
                let start = stack.iter().position(|s| *s == name).unwrap_or(0);
                let mut cycle: Vec<&str> = stack[start..].to_vec();
                cycle.push(name);
                return Err(Refusal::at(
                    format!("services.{name}.depends_on"),
                    format!("`depends_on` forms a cycle: {}", cycle.join(" -> ")),
                ));
            }
            _ => {}
        }
        state.insert(name, 1);
        stack.push(name);
        if let Some(svc) = services.iter().find(|s| s.name == name) {
            for dep in &svc.depends_on {
                visit(&dep.service, services, state, stack)?;
            }
        }
        stack.pop();
        state.insert(name, 2);
        Ok(())
    }
    let mut state = HashMap::new();
    for svc in services {
        visit(&svc.name, services, &mut state, &mut Vec::new())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::tests::{err, ok, parse};
    use crate::Policy;

    #[test]
    fn policy_guarded_keys_name_the_key_and_the_flag() {
        let cases = [
            ("privileged: true", "services.web.privileged", "privileged"),
            ("network_mode: host", "services.web.network_mode", "host-network"),
            ("pid: host", "services.web.pid", "host-namespaces"),
            ("ipc: host", "services.web.ipc", "host-namespaces"),
            ("cap_add: [NET_ADMIN]", "services.web.cap_add", "cap-add"),
            ("devices: [\"/dev/fuse:/dev/fuse\"]", "services.web.devices", "devices"),
            ("volumes: [\"/etc:/host-etc:ro\"]", "services.web.volumes[0]", "bind-mounts"),
            ("volumes: [{type: bind, source: /etc, target: /x}]", "services.web.volumes[0]", "bind-mounts"),
        ];
        for (line, key, flag) in cases {
            let yaml = format!("services:\n  web:\n    image: x\n    {line}\n");
            let e = err(&yaml);
            assert!(e.contains(&format!("`{key}`")) && e.contains(&format!("--allow {flag}")), "{line}: {e}");
            let allowed = Policy::allowing(crate::Allowance::ALL);
            parse(&yaml, &BTreeMap::new(), &allowed).unwrap_or_else(|e| panic!("{line} allowed: {e}"));
        }
        // Harmless values of guarded keys pass.
        ok("services:\n  web:\n    image: x\n    privileged: false\n    cap_add: []\n");
        let e = err("services:\n  web:\n    image: x\n    network_mode: none\n");
        assert!(e.contains("services.web.network_mode"), "{e}");
        let e = parse(
            "services:\n  web:\n    image: x\n    volumes: [\"./rel:/x\"]\n",
            &BTreeMap::new(),
            &Policy::allowing([crate::Allowance::BindMounts]),
        )
        .unwrap_err();
        assert!(e.contains("must be absolute"), "{e}");
    }

    #[test]
    fn fixed_host_ports_and_other_addresses_need_the_policy() {
        for (port, key, what) in [
            ("\"0.0.0.0:18999:8081\"", "services.web.ports[0]", "host address 0.0.0.0 and host port 18999"),
            ("\"127.0.0.14:18700:8081\"", "services.web.ports[0]", "host address 127.0.0.14 and host port 18700"),
            ("\"18081:8081\"", "services.web.ports[0]", "host port 18081"),
            ("\"0.0.0.0::8081/udp\"", "services.web.ports[0]", "host address 0.0.0.0"),
            ("\"[::]::8081\"", "services.web.ports[0]", "host address ::"),
            ("{target: 8081, published: 18999}", "services.web.ports[0]", "host port 18999"),
            ("{target: 8081, host_ip: 0.0.0.0}", "services.web.ports[0]", "host address 0.0.0.0"),
        ] {
            // A harmless port first (the same form: a list is all short or all long), so the index is checked.
            let first = if port.starts_with('{') { "{target: 9000}" } else { "\"9000\"" };
            let yaml = format!("services:\n  web:\n    image: x\n    ports: [{first}, {port}]\n");
            let yaml = yaml.replace("ports[0]", "ports[1]");
            let e = super::super::parse(&yaml, &BTreeMap::new(), &Policy::default()).expect_err(&yaml);
            let key = key.replace("ports[0]", "ports[1]");
            assert_eq!(e.field, format!("deployConfig.composeFile.{key}"), "{yaml}");
            assert!(e.message.contains(what) && e.message.contains("--allow host-ports"), "{yaml}: {}", e.message);
            let allowed = Policy::allowing([crate::Allowance::HostPorts]);
            parse(&yaml, &BTreeMap::new(), &allowed).unwrap_or_else(|e| panic!("{port} allowed: {e}"));
        }
        // The publish address itself, written out, is no other address; an ephemeral port on it passes.
        ok("services:\n  web:\n    image: x\n    ports: [\"127.0.0.1::8081\"]\n");
        ok("services:\n  web:\n    image: x\n    ports: [{target: 80, host_ip: 127.0.0.1}]\n");
        let policy = Policy::default().publishing_on("10.1.2.3");
        parse("services:\n  web:\n    image: x\n    ports: [\"10.1.2.3::8081\"]\n", &BTreeMap::new(), &policy)
            .unwrap_or_else(|e| panic!("{e}"));
        let e = parse("services:\n  web:\n    image: x\n    ports: [\"127.0.0.1::8081\"]\n", &BTreeMap::new(), &policy)
            .unwrap_err();
        assert!(e.contains("published on 10.1.2.3"), "{e}");
    }

    #[test]
    fn unsupported_keys_are_listed_together() {
        let e = err(
            "name: proj\nnetworks: {}\nservices:\n  web:\n    image: x\n    build: .\n    container_name: c\n    deploy: {replicas: 2, resources: {reservations: {memory: 1g}}}\n    ports: [{target: 80, name: web}]\n    healthcheck: {test: [\"NONE\"], bogus: 1}\n    depends_on: {db: {condition: service_started, restart: true}}\n  db:\n    image: y\n    volumes: [{type: volume, target: /d, volume: {subpath: a}}]\nvolumes:\n  v: {external: true}\n",
        );
        for key in [
            "name",
            "networks",
            "services.web.build",
            "services.web.container_name",
            "services.web.deploy.replicas",
            "services.web.deploy.resources.reservations",
            "services.web.ports[0].name",
            "services.web.healthcheck.bogus",
            "services.web.depends_on.db.restart",
            "services.db.volumes[0].volume.subpath",
            "volumes.v.external",
        ] {
            assert!(e.contains(key), "{key} missing from: {e}");
        }
        assert!(e.starts_with("deployConfig.composeFile: unsupported compose key(s)"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name_at_every_level() {
        let cases = [
            ("bogus: 1\nservices: {web: {image: x}}\n", "bogus"),
            ("services: {web: {image: x}}\nvolumes: {v: {bogus: 1}}\n", "volumes.v.bogus"),
            ("services: {web: {image: x, bogus: 1}}\n", "services.web.bogus"),
            ("services: {web: {image: x, ports: [{target: 80, bogus: 1}]}}\n", "services.web.ports[0].bogus"),
            (
                "services: {web: {image: x, volumes: [{type: volume, target: /d, bogus: 1}]}}\n",
                "services.web.volumes[0].bogus",
            ),
            (
                "services: {web: {image: x, volumes: [{type: volume, target: /d, volume: {bogus: 1}}]}}\n",
                "services.web.volumes[0].volume.bogus",
            ),
            (
                "services: {web: {image: x, volumes: [{type: tmpfs, target: /t, tmpfs: {size: 4096, bogus: 1}}]}}\n",
                "services.web.volumes[0].tmpfs.bogus",
            ),
            ("services: {web: {image: x, healthcheck: {test: x, bogus: 1}}}\n", "services.web.healthcheck.bogus"),
            (
                "services: {web: {image: x, depends_on: {db: {bogus: 1}}}, db: {image: x}}\n",
                "services.web.depends_on.db.bogus",
            ),
            ("services: {web: {image: x, deploy: {bogus: 1}}}\n", "services.web.deploy.bogus"),
            ("services: {web: {image: x, deploy: {resources: {bogus: 1}}}}\n", "services.web.deploy.resources.bogus"),
            (
                "services: {web: {image: x, deploy: {resources: {limits: {bogus: 1}}}}}\n",
                "services.web.deploy.resources.limits.bogus",
            ),
        ];
        for (yaml, key) in cases {
            let e = super::super::parse(yaml, &BTreeMap::new(), &Policy::default()).expect_err(yaml);
            assert!(
                e.message.starts_with(&format!("deployConfig.composeFile: unsupported compose key(s): {key}. ")),
                "{yaml}: {e:?}"
            );
            assert_eq!(e.field, format!("deployConfig.composeFile.{key}"), "{yaml}");
        }
    }

    #[test]
    fn extension_keys_pass_at_the_top_in_services_and_volumes_only() {
        let s = ok("x-top: {any: [thing]}\nservices:\n  web: {image: x, x-svc: 1}\nvolumes:\n  v: {x-vol: true}\n");
        assert_eq!(s.services.len(), 1);
        assert_eq!(s.volumes.len(), 1);
        let e = err("services:\n  web: {image: x, healthcheck: {test: x, x-hc: 1}}\n");
        assert!(e.contains("unsupported compose key(s): services.web.healthcheck.x-hc."), "{e}");
    }

    #[test]
    fn unsupported_keys_come_in_file_order() {
        let e = err(
            "name: p\nservices:\n  web:\n    image: x\n    build: .\n    ports: [{target: 80, name: a}]\n    container_name: c\n  db:\n    image: y\n    secrets: [s]\nvolumes:\n  v: {external: true}\nnetworks: {}\n",
        );
        assert!(
            e.contains(
                "unsupported compose key(s): name, networks, volumes.v.external, services.web.build, services.web.ports[0].name, services.web.container_name, services.db.secrets. "
            ),
            "{e}"
        );
    }

    #[test]
    fn keys_must_be_strings() {
        for yaml in [
            "1: x\nservices: {web: {image: x}}\n",
            "services: {web: {image: x, 1: x}}\n",
            "services: {web: {image: x, healthcheck: {1: x}}}\n",
            "services: {web: {image: x, volumes: [{type: volume, target: /d, 1: x}]}}\n",
            "services: {web: {image: x, depends_on: {1: {}}}}\n",
            "services: {1: {image: x}}\n",
        ] {
            let e = err(yaml);
            assert!(e.contains("keys must be strings (found Number(1))"), "{yaml}: {e}");
        }
    }

    #[test]
    fn of_several_refusals_in_a_service_the_first_in_the_file_is_reported() {
        let e = err("services:\n  web:\n    image: x\n    restart: always\n    privileged: true\n");
        assert!(e.contains("services.web.restart"), "{e}");
        let e = err("services:\n  web:\n    image: x\n    privileged: true\n    restart: always\n");
        assert!(e.contains("services.web.privileged"), "{e}");
        // Refusals of a value come before the list of unsupported keys.
        let e = err("services:\n  web:\n    image: x\n    build: .\n    restart: always\n");
        assert!(e.contains("services.web.restart") && !e.contains("services.web.build"), "{e}");
    }

    #[test]
    fn every_listed_service_key_is_in_the_model() {
        for key in super::SERVICE_KEYS {
            let yaml = if *key == "image" {
                "services:\n  web:\n    image: x\n".to_string()
            } else {
                format!("services:\n  web:\n    image: x\n    {key}: null\n")
            };
            if let Err(e) = parse(&yaml, &BTreeMap::new(), &Policy::default()) {
                assert!(!e.contains("unsupported compose key"), "{key}: {e}");
            }
        }
    }
}
