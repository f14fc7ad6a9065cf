//! From the checked model to a [`StackSpec`]: what the runner creates, with every value in the form the Docker API
//! takes (nano CPUs, bytes, `KEY=value`, mounts, port bindings). Values are read here (with `values.rs` for the
//! short syntaxes), so their refusals name the key they come from, in the order the file's services come.

use std::collections::{BTreeMap, BTreeSet};

use bollard::models::{DeviceMapping, HealthConfig};
use serde_norway::Value;
use sha2::{Digest, Sha256};

use super::{
    Refusal, checks,
    model::{
        Command, ComposeFile, DependsOn, DependsOnOptions, Entrypoint, Environment, Healthcheck, HealthcheckTest,
        Labels, Mount, Port, Ports, Service, ServiceDef, Shaped, Tmpfs, VolumeDef, scalar_text,
    },
    spec::{Condition, Dependency, MountSpec, PortPublish, ServiceSpec, StackSpec, VolumeSpec},
    values::{check_protocol, parse_bytes, parse_cpus, port_number, short_port, short_volume_is_bind},
};

/// The label that marks the main service.
pub(crate) const MAIN_LABEL: &str = "aenv.main";

/// Builds the runnable stack from a file [`checks::file`] passed; `doc` is the interpolated document it was read
/// from (the config hashes cover each service's text).
pub(crate) fn stack(file: &ComposeFile, doc: &Value, vars: &BTreeMap<String, String>) -> Result<StackSpec, Refusal> {
    let mut volumes = Vec::new();
    if let Some(Shaped::Ok(defs)) = &file.volumes {
        for (name, def) in &defs.0 {
            let name = name.as_str().unwrap_or_default();
            checks::volume_name(name)?;
            let labels = match def {
                VolumeDef::Def(v) => labels_of(&v.labels, &format!("volumes.{name}.labels"))?,
                _ => BTreeMap::new(),
            };
            volumes.push(VolumeSpec { name: name.to_string(), labels });
        }
    }
    let declared: BTreeSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();

    let entries = match &file.services {
        Some(Shaped::Ok(s)) => s.0.as_slice(),
        _ => &[],
    };
    let names: Vec<String> = entries.iter().filter_map(|(k, _)| k.as_str()).map(String::from).collect();
    let mut services = Vec::new();
    for (name, svc) in entries {
        let (Some(name), ServiceDef::Def(svc)) = (name.as_str(), svc) else { continue };
        let text = doc.get("services").and_then(|s| s.get(name));
        services.push(service_spec(name, svc, text, vars, &declared, &names)?);
    }
    checks::no_cycles(&services)?;

    let labelled: Vec<&str> = services
        .iter()
        .filter(|s| s.labels.get(MAIN_LABEL).is_some_and(|v| v.eq_ignore_ascii_case("true")))
        .map(|s| s.name.as_str())
        .collect();
    let main = match labelled.as_slice() {
        [] => services.first().map(|s| s.name.clone()).unwrap_or_default(),
        [one] => one.to_string(),
        [_, second, ..] => {
            return Err(Refusal::at(
                format!("services.{second}.labels"),
                format!("only one service may be labelled {MAIN_LABEL}=true (found: {})", labelled.join(", ")),
            ));
        }
    };
    Ok(StackSpec { services, volumes, main })
}

fn labels_of(labels: &Labels, path: &str) -> Result<BTreeMap<String, String>, Refusal> {
    let pairs: Vec<(String, String)> = match labels {
        Labels::List(items) => items
            .iter()
            .map(|item| match item.0.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (item.0.clone(), String::new()),
            })
            .collect(),
        Labels::Map(m) => m.0.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect(),
    };
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        checks::label_key(&k, path)?;
        out.insert(k, v);
    }
    Ok(out)
}

fn split_words(s: &str, path: &str) -> Result<Vec<String>, Refusal> {
    shlex::split(s).ok_or_else(|| Refusal::at(path, format!("`{path}`: unbalanced quotes in {s:?}")))
}

fn service_spec(
    name: &str,
    svc: &Service,
    text: Option<&Value>,
    vars: &BTreeMap<String, String>,
    declared: &BTreeSet<&str>,
    all: &[String],
) -> Result<ServiceSpec, Refusal> {
    let p = format!("services.{name}");
    let image = svc.image.as_ref().map(|i| i.0.clone()).filter(|i| !i.trim().is_empty()).ok_or_else(|| {
        Refusal::at(
            format!("{p}.image"),
            format!("`{p}.image` is required (this engine runs images; it does not build them)"),
        )
    })?;
    let command = match &svc.command {
        None => None,
        Some(Command::Simple(s)) => Some(split_words(s, &format!("{p}.command"))?),
        Some(Command::Args(a)) => Some(a.clone()),
    };
    let entrypoint = match &svc.entrypoint {
        None => None,
        Some(Entrypoint::Simple(s)) => Some(split_words(s, &format!("{p}.entrypoint"))?),
        Some(Entrypoint::List(a)) => Some(a.clone()),
    };
    let environment = environment(&svc.environment, &p, vars)?;
    let labels = labels_of(&svc.labels, &format!("{p}.labels"))?;

    let mut ports = Vec::new();
    match &svc.ports {
        Ports::Short(items) => {
            for (i, item) in items.iter().enumerate() {
                ports.push(short_port(&item.0, &format!("{p}.ports[{i}]"))?);
            }
        }
        Ports::Long(items) => {
            for (i, port) in items.iter().enumerate() {
                ports.push(long_port(port, &format!("{p}.ports[{i}]"))?);
            }
        }
    }

    let mut expose = Vec::new();
    for (i, e) in svc.expose.iter().enumerate() {
        let e = &e.0;
        let path = format!("{p}.expose[{i}]");
        let (port, proto) = e.split_once('/').unwrap_or((e.as_str(), "tcp"));
        let port: u16 = port.trim().parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            Refusal::at(&path, format!("`{path}`: {e:?} must be a port from 1 to 65535, optionally with /tcp or /udp"))
        })?;
        check_protocol(proto, &path)?;
        expose.push(format!("{port}/{proto}"));
    }

    let depends_on = dependencies(&svc.depends_on, name, &p, all)?;
    let healthcheck = svc.healthcheck.as_ref().map(|h| healthcheck(h, &format!("{p}.healthcheck"))).transpose()?;

    let mut mounts = Vec::new();
    for (i, v) in svc.volumes.iter().enumerate() {
        if let Some(m) = mount(v, &format!("{p}.volumes[{i}]"), declared)? {
            mounts.push(m);
        }
    }
    let mut tmpfs = BTreeMap::new();
    let tmpfs_items: Vec<String> = match &svc.tmpfs {
        None => Vec::new(),
        Some(Tmpfs::Simple(s)) => vec![s.clone()],
        Some(Tmpfs::List(l)) => l.clone(),
    };
    for (i, t) in tmpfs_items.iter().enumerate() {
        let (path, opts) = t.split_once(':').unwrap_or((t.as_str(), ""));
        if !path.starts_with('/') {
            let key = format!("{p}.tmpfs[{i}]");
            return Err(Refusal::at(
                &key,
                format!("`{key}`: {t:?} must be an absolute container path, optionally with :options"),
            ));
        }
        tmpfs.insert(path.to_string(), opts.to_string());
    }

    // Limits: the `cpus` / `mem_limit` shorthands and `deploy.resources.limits`, which must agree when both are set.
    let limits = svc.deploy.as_ref().and_then(|d| d.resources.as_ref()).and_then(|r| r.limits.as_ref());
    let short_cpus =
        svc.cpus.as_ref().and_then(scalar_text).map(|c| parse_cpus(&c, &format!("{p}.cpus"))).transpose()?;
    let deploy_cpus = limits
        .and_then(|l| l.cpus.as_ref())
        .map(|c| parse_cpus(&c.0, &format!("{p}.deploy.resources.limits.cpus")))
        .transpose()?;
    let nano_cpus = match (short_cpus, deploy_cpus) {
        (Some(a), Some(b)) if a != b => {
            return Err(Refusal::at(
                format!("{p}.cpus"),
                format!("`{p}.cpus` and `{p}.deploy.resources.limits.cpus` differ; set one of them"),
            ));
        }
        (a, b) => a.or(b),
    };
    let short_mem = svc.mem_limit.as_ref().map(|m| parse_bytes(&m.0, &format!("{p}.mem_limit"))).transpose()?;
    let deploy_mem = limits
        .and_then(|l| l.memory.as_ref())
        .map(|m| parse_bytes(&m.0, &format!("{p}.deploy.resources.limits.memory")))
        .transpose()?;
    let memory = match (short_mem, deploy_mem) {
        (Some(a), Some(b)) if a != b => {
            return Err(Refusal::at(
                format!("{p}.mem_limit"),
                format!("`{p}.mem_limit` and `{p}.deploy.resources.limits.memory` differ; set one of them"),
            ));
        }
        (a, b) => a.or(b),
    };

    let working_dir = svc.working_dir.as_ref().map(|w| w.0.clone());
    if let Some(wd) = &working_dir
        && !wd.starts_with('/')
    {
        return Err(Refusal::at(
            format!("{p}.working_dir"),
            format!("`{p}.working_dir` must be an absolute path (got {wd:?})"),
        ));
    }

    let devices = svc
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let parts: Vec<&str> = d.split(':').collect();
            let (host, container, perms) = match parts.as_slice() {
                [h] => (*h, *h, "rwm"),
                [h, c] => (*h, *c, "rwm"),
                [h, c, perms] => (*h, *c, *perms),
                _ => {
                    let key = format!("{p}.devices[{i}]");
                    return Err(Refusal::at(&key, format!("`{key}`: {d:?} must be host[:container[:permissions]]")));
                }
            };
            Ok(DeviceMapping {
                path_on_host: Some(host.to_string()),
                path_in_container: Some(container.to_string()),
                cgroup_permissions: Some(perms.to_string()),
            })
        })
        .collect::<Result<Vec<_>, Refusal>>()?;

    let config_hash = {
        let mut h = Sha256::new();
        h.update(text.and_then(|t| serde_json::to_vec(t).ok()).unwrap_or_default());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let host = |v: &Option<Value>| v.as_ref().and_then(Value::as_str) == Some("host");

    Ok(ServiceSpec {
        name: name.to_string(),
        image,
        command,
        entrypoint,
        environment,
        labels,
        ports,
        expose,
        depends_on,
        healthcheck,
        mounts,
        tmpfs,
        nano_cpus,
        memory,
        working_dir,
        user: svc.user.as_ref().map(|u| u.0.clone()).filter(|u| !u.is_empty()),
        hostname: svc.hostname.as_ref().map(|h| h.0.clone()).filter(|h| !h.is_empty()),
        read_only: svc.read_only.0,
        init: svc.init.0,
        cap_drop: svc.cap_drop.clone(),
        privileged: svc.privileged.0,
        host_network: host(&svc.network_mode),
        pid_host: host(&svc.pid),
        ipc_host: host(&svc.ipc),
        cap_add: svc.cap_add.clone(),
        devices,
        config_hash,
    })
}

/// `KEY=value` entries; `KEY` alone takes the instance's value, as Compose takes the shell's (absent, it is not set).
fn environment(env: &Environment, p: &str, vars: &BTreeMap<String, String>) -> Result<Vec<String>, Refusal> {
    let mut out = Vec::new();
    let mut push = |k: &str, v: Option<String>| -> Result<(), Refusal> {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            let path = format!("{p}.environment");
            return Err(Refusal::at(&path, format!("`{path}` has an invalid variable name {k:?}")));
        }
        match v.or_else(|| vars.get(k).cloned()) {
            Some(v) if v.contains('\0') => {
                let path = format!("{p}.environment.{k}");
                Err(Refusal::at(&path, format!("`{path}` contains a NUL character")))
            }
            Some(v) => {
                out.push(format!("{k}={v}"));
                Ok(())
            }
            None => Ok(()),
        }
    };
    match env {
        Environment::List(items) => {
            for item in items {
                match item.split_once('=') {
                    Some((k, v)) => push(k, Some(v.to_string()))?,
                    None => push(item, None)?,
                }
            }
        }
        Environment::KvPair(m) => {
            for (k, v) in &m.0 {
                push(k, v.as_ref().map(ToString::to_string))?;
            }
        }
    }
    Ok(out)
}

fn dependencies(deps: &DependsOnOptions, name: &str, p: &str, all: &[String]) -> Result<Vec<Dependency>, Refusal> {
    let deps: Vec<(&str, &str, bool)> = match deps {
        DependsOnOptions::Simple(list) => list.iter().map(|d| (d.as_str(), "service_started", true)).collect(),
        DependsOnOptions::Conditional(m) => m
            .0
            .iter()
            .filter_map(|(d, c)| match (d.as_str(), c) {
                (Some(d), DependsOn::Condition(c)) => Some((d, c.condition.as_str(), c.required.is_none_or(|r| r.0))),
                // Refused by the checks.
                _ => None,
            })
            .collect(),
    };
    let mut out = Vec::new();
    for (dep, condition, required) in deps {
        let path = format!("{p}.depends_on.{dep}");
        if !all.iter().any(|s| s == dep) {
            return Err(Refusal::at(&path, format!("`{path}`: there is no service {dep:?} in the file")));
        }
        if dep == name {
            return Err(Refusal::at(&path, format!("`{path}`: a service cannot depend on itself")));
        }
        let condition = match condition {
            "service_started" => Condition::Started,
            "service_healthy" => Condition::Healthy,
            "service_completed_successfully" => Condition::CompletedSuccessfully,
            other => {
                let key = format!("{path}.condition");
                return Err(Refusal::at(
                    &key,
                    format!(
                        "`{key}`: {other:?} is not a condition; use service_started, service_healthy or service_completed_successfully"
                    ),
                ));
            }
        };
        out.push(Dependency { service: dep.to_string(), condition, required });
    }
    Ok(out)
}

fn long_port(port: &Port, path: &str) -> Result<PortPublish, Refusal> {
    let protocol = port.protocol.clone().unwrap_or_else(|| "tcp".into());
    check_protocol(&protocol, path)?;
    if port.target.0 == 0 {
        let key = format!("{path}.target");
        return Err(Refusal::at(&key, format!("`{key}` must be a port from 1 to 65535")));
    }
    let host_port = match &port.published {
        None => None,
        Some(s) if s.0.is_empty() => None,
        Some(s) => Some(port_number(&s.0, &format!("{path}.published"))?),
    };
    Ok(PortPublish {
        container_port: port.target.0,
        protocol,
        host_ip: port.host_ip.as_ref().map(|i| i.0.clone()).filter(|i| !i.is_empty()),
        host_port,
    })
}

/// A service's mount; `None` for what the checks refused.
fn mount(v: &Mount, path: &str, declared: &BTreeSet<&str>) -> Result<Option<MountSpec>, Refusal> {
    let named = |source: &str| -> Result<String, Refusal> {
        if declared.contains(source) {
            Ok(source.to_string())
        } else {
            Err(Refusal::at(
                path,
                format!("`{path}`: volume {source:?} is not declared under the top-level `volumes` key"),
            ))
        }
    };
    let absolute = |target: &str| -> Result<String, Refusal> {
        if target.starts_with('/') {
            Ok(target.to_string())
        } else {
            Err(Refusal::at(path, format!("`{path}`: the container path {target:?} must be absolute")))
        }
    };
    let spec = match v {
        Mount::Bad => return Ok(None),
        Mount::Short(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [t] => (None, *t, ""),
                [s, t] => (Some(*s), *t, ""),
                [s, t, m] => (Some(*s), *t, *m),
                _ => return Err(Refusal::at(path, format!("`{path}`: {s:?} is not [SOURCE:]TARGET[:MODE]"))),
            };
            let mut read_only = false;
            for opt in mode.split(',').filter(|o| !o.is_empty()) {
                match opt {
                    "ro" => read_only = true,
                    "rw" => read_only = false,
                    other => {
                        return Err(Refusal::at(
                            path,
                            format!("`{path}`: the mount option {other:?} is not supported (use ro or rw)"),
                        ));
                    }
                }
            }
            let target = absolute(target)?;
            match source {
                None => MountSpec::Volume { source: None, target, read_only, nocopy: false },
                Some(src) if short_volume_is_bind(&format!("{src}:")) => {
                    if !src.starts_with('/') {
                        return Err(Refusal::at(
                            path,
                            format!(
                                "`{path}`: the host path {src:?} must be absolute (a stack has no project directory)"
                            ),
                        ));
                    }
                    MountSpec::Bind { source: src.to_string(), target, read_only }
                }
                Some(src) => MountSpec::Volume { source: Some(named(src)?), target, read_only, nocopy: false },
            }
        }
        Mount::Long(a) => {
            let target = absolute(&a.target)?;
            match a.kind.as_str() {
                "volume" => MountSpec::Volume {
                    source: a.source.as_deref().filter(|s| !s.is_empty()).map(named).transpose()?,
                    target,
                    read_only: a.read_only.0,
                    nocopy: a.volume.as_ref().and_then(|v| v.nocopy).unwrap_or(false),
                },
                "bind" => {
                    let source = a.source.clone().unwrap_or_default();
                    if !source.starts_with('/') {
                        let key = format!("{path}.source");
                        return Err(Refusal::at(
                            &key,
                            format!(
                                "`{key}`: the host path {source:?} must be absolute (a stack has no project directory)"
                            ),
                        ));
                    }
                    MountSpec::Bind { source, target, read_only: a.read_only.0 }
                }
                "tmpfs" => {
                    MountSpec::Tmpfs { target, size: a.tmpfs.as_ref().map(|t| t.size.0 as i64).filter(|s| *s > 0) }
                }
                other => {
                    let key = format!("{path}.type");
                    return Err(Refusal::at(
                        &key,
                        format!("`{key}`: {other:?} is not supported (use volume or tmpfs)"),
                    ));
                }
            }
        }
    };
    Ok(Some(spec))
}

fn healthcheck(h: &Healthcheck, path: &str) -> Result<HealthConfig, Refusal> {
    let nanos = |v: &Option<super::model::Text>, key: &str| -> Result<Option<i64>, Refusal> {
        v.as_ref()
            .map(|s| {
                aenv_core::duration::parse_go_duration(&s.0)
                    .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
                    .map_err(|e| Refusal::at(format!("{path}.{key}"), format!("`{path}.{key}`: {e}")))
            })
            .transpose()
    };
    let test = if h.disable.0 {
        Some(vec!["NONE".to_string()])
    } else {
        match &h.test {
            None => None,
            Some(HealthcheckTest::Single(s)) => Some(vec!["CMD-SHELL".to_string(), s.clone()]),
            Some(HealthcheckTest::Multiple(v)) => {
                match v.first().map(String::as_str) {
                    Some("CMD") | Some("CMD-SHELL") | Some("NONE") => {}
                    _ => {
                        return Err(Refusal::at(
                            format!("{path}.test"),
                            format!(
                                "`{path}.test` must start with CMD, CMD-SHELL or NONE, or be a string (run by the shell)"
                            ),
                        ));
                    }
                }
                Some(v.clone())
            }
        }
    };
    let retries = h.retries.0;
    if retries < 0 {
        return Err(Refusal::at(format!("{path}.retries"), format!("`{path}.retries` must not be negative")));
    }
    Ok(HealthConfig {
        test,
        interval: nanos(&h.interval, "interval")?,
        timeout: nanos(&h.timeout, "timeout")?,
        retries: (retries > 0).then_some(retries),
        start_period: nanos(&h.start_period, "start_period")?,
        start_interval: nanos(&h.start_interval, "start_interval")?,
    })
}
