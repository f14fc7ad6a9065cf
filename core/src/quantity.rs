//! CPU and memory quantities as AEnvironment users write them.
//!
//! CPU: `"1C"` (AEnvironment's cores notation), `"2"`, `"0.5"` (cores) or `"500m"` (millicores, as in Kubernetes).
//! Memory: Kubernetes quantities: binary `Ki Mi Gi Ti Pi` (`"512Mi"`, `"2Gi"`), decimal `k K M G T P`
//! (`"2G"` = 2·10⁹ bytes, `"512M"`), fractions (`"1.5Gi"`), or a plain number of bytes. A lowercase `m` or `g`
//! is refused: Kubernetes reads `m` as *milli* and Docker as *mebi*, so the request is ambiguous.

use crate::Error;

/// The smallest memory limit Docker accepts (6 MiB); smaller limits are refused up front.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// An upper bound that catches typos (1024 cores).
pub const MAX_CPU_MILLIS: u64 = 1024 * 1000;

/// Splits `"12.5Gi"` into `(12.5 as a scaled integer of `1/10^frac_digits`, "Gi")`: returns the decimal
/// mantissa digits, the number of fractional digits and the suffix.
fn split_number(s: &str) -> Option<(u128, u32, &str)> {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return None;
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.len() > 9 {
        return None;
    }
    let digits: String = format!("{int}{frac}");
    let mantissa: u128 = digits.parse().ok()?;
    Some((mantissa, frac.len() as u32, suffix))
}

/// Parses a CPU quantity into millicores.
pub fn parse_cpu_millis(input: &str) -> Result<u64, Error> {
    let e = |reason| Error::Cpu { input: input.to_owned(), reason };
    let s = input.trim();
    if s.is_empty() {
        return Err(e("it is empty"));
    }
    if s.starts_with('-') {
        return Err(e("it is negative"));
    }
    let (mantissa, frac_digits, suffix) = split_number(s).ok_or_else(|| e("it is not a number"))?;
    let scale: u128 = match suffix {
        "" | "C" | "c" => 1000,
        "m" => 1,
        _ => return Err(e("unknown suffix")),
    };
    let pow = 10u128.pow(frac_digits);
    let scaled = mantissa.checked_mul(scale).ok_or_else(|| e("it is too large"))?;
    if scaled % pow != 0 {
        return Err(e("it is finer than one millicore"));
    }
    let millis = u64::try_from(scaled / pow).map_err(|_| e("it is too large"))?;
    if millis == 0 {
        return Err(e("it must be more than zero"));
    }
    if millis > MAX_CPU_MILLIS {
        return Err(e("it is more than 1024 cores"));
    }
    Ok(millis)
}

/// Parses a memory quantity into bytes.
pub fn parse_memory_bytes(input: &str) -> Result<u64, Error> {
    let e = |reason| Error::Memory { input: input.to_owned(), reason };
    let s = input.trim();
    if s.is_empty() {
        return Err(e("it is empty"));
    }
    if s.starts_with('-') {
        return Err(e("it is negative"));
    }
    let (mantissa, frac_digits, suffix) = split_number(s).ok_or_else(|| e("it is not a number"))?;
    let scale: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "m" | "g" | "mb" | "gb" | "MB" | "GB" => {
            return Err(e("the suffix is ambiguous between Kubernetes and Docker notation"));
        }
        _ => return Err(e("unknown suffix")),
    };
    let pow = 10u128.pow(frac_digits);
    let bytes = mantissa.checked_mul(scale).ok_or_else(|| e("it is too large"))? / pow;
    let bytes = u64::try_from(bytes).map_err(|_| e("it is too large"))?;
    if bytes < MIN_MEMORY_BYTES {
        return Err(e("it is below the 6Mi minimum a container needs"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(parse_cpu_millis("1C").unwrap(), 1000);
        assert_eq!(parse_cpu_millis("1c").unwrap(), 1000);
        assert_eq!(parse_cpu_millis("2").unwrap(), 2000);
        assert_eq!(parse_cpu_millis("500m").unwrap(), 500);
        assert_eq!(parse_cpu_millis("0.5").unwrap(), 500);
        assert_eq!(parse_cpu_millis("0.5C").unwrap(), 500);
        assert_eq!(parse_cpu_millis("1.25").unwrap(), 1250);
        assert_eq!(parse_cpu_millis(" 4 ").unwrap(), 4000);
    }

    #[test]
    fn cpu_bad_input() {
        for bad in ["", "C", "-1", "0", "0m", "abc", "1.2.3", "1Gi", "0.0001", "1025", "2 C", "1e3", "0.5m"] {
            let err = parse_cpu_millis(bad).expect_err(bad).to_string();
            assert!(err.contains("invalid cpu"), "{bad}: {err}");
        }
    }

    #[test]
    fn memory_forms() {
        assert_eq!(parse_memory_bytes("512Mi").unwrap(), 512 << 20);
        assert_eq!(parse_memory_bytes("2Gi").unwrap(), 2 << 30);
        assert_eq!(parse_memory_bytes("2G").unwrap(), 2_000_000_000);
        assert_eq!(parse_memory_bytes("512M").unwrap(), 512_000_000);
        assert_eq!(parse_memory_bytes("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_memory_bytes("67108864").unwrap(), 64 << 20);
        assert_eq!(parse_memory_bytes("64000k").unwrap(), 64_000_000);
    }

    #[test]
    fn memory_bad_input() {
        for bad in ["", "Gi", "-1Gi", "1Xi", "512m", "2g", "1MB", "5Mi", "0", "1..5Gi", "99999999999Pi", "1 Gi"] {
            let err = parse_memory_bytes(bad).expect_err(bad).to_string();
            assert!(err.contains("invalid memory"), "{bad}: {err}");
        }
        assert!(parse_memory_bytes("512m").unwrap_err().to_string().contains("ambiguous"));
        assert!(parse_memory_bytes("1Mi").unwrap_err().to_string().contains("6Mi"));
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_cpu_millis(&s);
            let _ = parse_memory_bytes(&s);
        }

        #[test]
        fn near_valid_never_panics(s in "-?[0-9.]{0,30}(m|C|c|Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P|E|e3)?") {
            let _ = parse_cpu_millis(&s);
            let _ = parse_memory_bytes(&s);
        }

        /// Accepted values are in range.
        #[test]
        fn accepted_values_are_in_range(n in 0u64..5_000_000, unit in prop::sample::select(vec!["", "m", "C"])) {
            if let Ok(m) = parse_cpu_millis(&format!("{n}{unit}")) {
                prop_assert!(m > 0 && m <= MAX_CPU_MILLIS);
            }
        }

        #[test]
        fn mebibytes_are_exact(n in 6u64..1_000_000) {
            prop_assert_eq!(parse_memory_bytes(&format!("{n}Mi")).unwrap(), n << 20);
        }
    }
}
