//! The CRDs as YAML, as `aenv-operator crds` prints them and `crds/` keeps them.

use aenv_core::{EnvInstance, Environment};
use kube::CustomResourceExt;

/// Both CRDs, as one multi-document YAML stream.
pub fn render() -> Result<String, crate::Error> {
    let mut out = String::new();
    for crd in [EnvInstance::crd(), Environment::crd()] {
        out.push_str("---\n");
        out.push_str(&yaml_serde::to_string(&crd).map_err(|e| crate::Error::Config(e.to_string()))?);
    }
    Ok(out)
}
