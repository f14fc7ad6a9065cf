//! The value syntaxes of compose files that are read into Docker's units: short ports
//! (`[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`), short volumes, CPU counts and byte sizes. A value that does
//! not read is refused naming its key.

use super::{Refusal, spec::PortPublish};

pub(crate) fn check_protocol(proto: &str, path: &str) -> Result<(), Refusal> {
    if proto == "tcp" || proto == "udp" {
        Ok(())
    } else {
        Err(Refusal::at(path, format!("`{path}`: protocol {proto:?} is not supported; use tcp or udp")))
    }
}

pub(crate) fn port_number(s: &str, path: &str) -> Result<u16, Refusal> {
    if s.contains('-') {
        return Err(Refusal::at(path, format!("`{path}`: port ranges ({s:?}) are not supported; publish each port")));
    }
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| Refusal::at(path, format!("`{path}`: {s:?} is not a port from 1 to 65535")))
}

/// `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`, with `[v6]` host IPs.
pub(crate) fn short_port(s: &str, path: &str) -> Result<PortPublish, Refusal> {
    let (spec, proto) = s.rsplit_once('/').unwrap_or((s, "tcp"));
    check_protocol(proto, path)?;
    let (host_ip, rest) = if let Some(v6) = spec.strip_prefix('[') {
        let (ip, rest) = v6
            .split_once(']')
            .ok_or_else(|| Refusal::at(path, format!("`{path}`: {s:?} has an unclosed '[' in its host IP")))?;
        let rest = rest
            .strip_prefix(':')
            .ok_or_else(|| Refusal::at(path, format!("`{path}`: {s:?} needs ':' after the host IP")))?;
        (Some(ip.to_string()), rest)
    } else {
        (None, spec)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (host_ip, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [h, c]) => (None, Some(*h), *c),
        (None, [ip, h, c]) => (Some(ip.to_string()), Some(*h), *c),
        (Some(ip), [h, c]) => (Some(ip), Some(*h), *c),
        _ => {
            return Err(Refusal::at(
                path,
                format!("`{path}`: {s:?} is not [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]"),
            ));
        }
    };
    Ok(PortPublish {
        container_port: port_number(container, path)?,
        protocol: proto.to_string(),
        host_ip: ip.filter(|i| !i.is_empty()),
        host_port: host.filter(|h| !h.is_empty()).map(|h| port_number(h, path)).transpose()?,
    })
}

/// Whether a short volume (`src:target[:mode]`) mounts a host path.
pub(crate) fn short_volume_is_bind(s: &str) -> bool {
    match s.split_once(':') {
        Some((src, _)) => src.starts_with('/') || src.starts_with('.') || src.starts_with('~'),
        None => false,
    }
}

pub(crate) fn parse_cpus(s: &str, path: &str) -> Result<i64, Refusal> {
    let cpus: f64 = s
        .trim()
        .parse()
        .map_err(|_| Refusal::at(path, format!("`{path}`: {s:?} is not a number of CPUs such as 0.5")))?;
    if !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0) {
        return Err(Refusal::at(path, format!("`{path}`: {s:?} must be more than 0 and at most 1024 CPUs")));
    }
    Ok((cpus * 1e9).round() as i64)
}

/// A byte size as Docker reads it (`512m`, `1g`, `1.5GB`, `1024`): binary units, case-insensitive.
pub(crate) fn parse_bytes(s: &str, path: &str) -> Result<i64, Refusal> {
    let t = s.trim().to_ascii_lowercase();
    let num_end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(num_end);
    let unit = unit.trim();
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0f64.powi(4),
        "p" => 1024.0f64.powi(5),
        _ => f64::NAN,
    };
    let value: f64 = num.parse().unwrap_or(f64::NAN);
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 4.0 * 1024.0 * 1024.0 || bytes > 1024.0f64.powi(5) {
        return Err(Refusal::at(
            path,
            format!("`{path}`: {s:?} must be a size such as 512m or 2g, at least 4m (Docker's smallest memory limit)"),
        ));
    }
    Ok(bytes as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_read_like_docker() {
        assert_eq!(parse_bytes("512m", "k"), Ok(512 << 20));
        assert_eq!(parse_bytes("1g", "k"), Ok(1 << 30));
        assert_eq!(parse_bytes("1.5GB", "k"), Ok(3 << 29));
        assert_eq!(parse_bytes("64Mi", "k"), Ok(64 << 20));
        assert_eq!(parse_bytes("8388608", "k"), Ok(8 << 20));
        assert!(parse_bytes("1k", "k").is_err(), "below Docker's minimum");
        assert!(parse_bytes("-1m", "k").is_err());
        assert!(parse_bytes("1x", "k").is_err());
    }

    #[test]
    fn short_ports() {
        let p = short_port("[::1]:8080:80/udp", "k").unwrap();
        assert_eq!(
            (p.host_ip.as_deref(), p.host_port, p.container_port, p.protocol.as_str()),
            (Some("::1"), Some(8080), 80, "udp")
        );
        let p = short_port("127.0.0.1::80", "k").unwrap();
        assert_eq!((p.host_port, p.container_port), (None, 80));
        let p = short_port("8081", "k").unwrap();
        assert_eq!((p.host_ip, p.host_port), (None, None), "no host IP named: the operator's publish address");
        assert!(short_port("a:b:c:d", "k").is_err());
        assert!(short_port("0", "k").is_err());
    }
}
