//! The CRDs as YAML, as `aenv-operator crds` prints them and `crds/` keeps them.

use aenv_core::{EnvInstance, EnvPool, EnvService, Environment};
use kube::CustomResourceExt;

/// Each CRD as `(file name, YAML)`: `envinstances.aenv.io.yaml`, `environments.aenv.io.yaml`,
/// `envpools.aenv.io.yaml`, `envservices.aenv.io.yaml`.
pub fn files() -> Result<Vec<(String, String)>, crate::Error> {
    [EnvInstance::crd(), Environment::crd(), EnvPool::crd(), EnvService::crd()]
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = yaml_serde::to_string(&crd).map_err(|e| crate::Error::Config(e.to_string()))?;
            Ok((format!("{name}.yaml"), yaml))
        })
        .collect()
}

/// Every CRD as one multi-document YAML stream.
pub fn render() -> Result<String, crate::Error> {
    Ok(files()?.into_iter().map(|(_, yaml)| format!("---\n{yaml}")).collect())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// `crds/` must hold exactly what the binary prints; regenerate with
    /// `cargo run -p aenv-operator -- crds --out-dir crds`.
    #[test]
    fn checked_in_crds_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
        for (file, yaml) in super::files().unwrap() {
            let on_disk = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
            assert!(
                on_disk == yaml,
                "crds/{file} is stale: run `cargo run -p aenv-operator -- crds --out-dir crds` and commit the result"
            );
        }
    }
}
