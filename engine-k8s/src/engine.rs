use aenv_core::{
    Engine, EngineError, EngineEvent, EnvInstance, EnvInstanceSpec, EnvService, EnvServiceStatus, ExecOutput,
    ExecRequest, FileUpload, InstanceStats, InvalidSpec, ManagedObject, NativeServices, Observed, OwnedObject,
    PathContent, Phase, SandboxPath, Workload, labels,
};
use std::collections::BTreeMap;

use async_trait::async_trait;
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{PersistentVolumeClaim, Pod, Service},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{
    Error,
    error::{api_code, classify},
    pod::{managed_of, observe, owned_of, pod_for},
    service::{check_service, deployment_differs, deployment_for, k8s_service_for, observe_deployment, pvc_for},
};

/// How the engine runs Pods.
#[derive(Clone, Debug)]
pub struct KubeEngineConfig {
    /// The operator's stable id, put on every Pod as `aenv.io/operator-id`.
    pub operator_id: String,
    /// The namespace Pods are made in (AEnvironment's `aenv-sandbox`).
    pub namespace: String,
    /// Whether instances live in the same API server (the Kubernetes store): then a Pod in the instance's own
    /// namespace carries an owner reference to its EnvInstance.
    pub owner_references: bool,
    /// `terminationGracePeriodSeconds` of the Pods, and the grace of deletions; 0 kills at once, which suits
    /// sandboxes.
    pub grace_period_seconds: i64,
    /// The cluster's DNS suffix of Services (AEnvironment's `SERVICE_DOMAIN_SUFFIX`): a service's address is
    /// `<name>.<namespace>.<suffix>:<port>`.
    pub service_domain_suffix: String,
}

impl KubeEngineConfig {
    pub fn new(operator_id: impl Into<String>, namespace: impl Into<String>) -> Self {
        KubeEngineConfig {
            operator_id: operator_id.into(),
            namespace: namespace.into(),
            owner_references: true,
            grace_period_seconds: 0,
            service_domain_suffix: "svc.cluster.local".into(),
        }
    }
}

/// The Kubernetes engine: one Pod per instance; a Deployment, a Service and a claim per EnvService.
#[derive(Clone)]
pub struct KubeEngine {
    pods: Api<Pod>,
    deployments: Api<Deployment>,
    services: Api<Service>,
    claims: Api<PersistentVolumeClaim>,
    config: KubeEngineConfig,
}

use aenv_core::labels::is_dns_label;

impl KubeEngine {
    pub fn new(client: Client, config: KubeEngineConfig) -> Result<Self, Error> {
        if !is_dns_label(&config.namespace) {
            return Err(Error::InvalidNamespace(config.namespace));
        }
        Ok(KubeEngine {
            pods: Api::namespaced(client.clone(), &config.namespace),
            deployments: Api::namespaced(client.clone(), &config.namespace),
            services: Api::namespaced(client.clone(), &config.namespace),
            claims: Api::namespaced(client, &config.namespace),
            config,
        })
    }

    /// Checks at start-up that Pods in the sandbox namespace can be listed (namespace there, RBAC granted).
    pub async fn check(&self) -> Result<(), Error> {
        self.pods
            .list_metadata(&ListParams::default().limit(1))
            .await
            .map(|_| ())
            .map_err(|source| Error::Check { namespace: self.config.namespace.clone(), source })
    }

    /// `aenv.io/managed-by=aenv-operator,aenv.io/operator-id=<id>`: the Pods this operator made.
    pub fn owned_selector(&self) -> String {
        format!(
            "{}={},{}={}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_VALUE,
            labels::OPERATOR_ID,
            self.config.operator_id
        )
    }

    async fn get(&self, name: &str) -> Result<Option<Pod>, EngineError> {
        match self.pods.get_opt(name).await {
            Ok(pod) => Ok(pod),
            // kube's get_opt only maps a 404 with reason NotFound; some servers spell the reason otherwise.
            Err(e) if api_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(classify(&format!("reading Pod {name}"), e)),
        }
    }

    fn ours(&self, pod: &Pod) -> bool {
        self.owns(&pod.metadata)
    }

    fn owns(&self, meta: &ObjectMeta) -> bool {
        meta.labels.as_ref().and_then(|l| l.get(labels::OPERATOR_ID)).is_some_and(|id| *id == self.config.operator_id)
    }

    /// Brings the labels and annotations the store holds onto an existing Pod when they differ (Pod labels can
    /// change, unlike a container's): a sandbox claimed from a warm pool gets its owner, TTL, expiry and user
    /// labels by one merge patch. Keys are added or changed, never removed.
    async fn relabel(&self, pod: Pod, inst: &EnvInstance) -> Result<Pod, EngineError> {
        let want = pod_for(inst, &self.config)?;
        let differing = |have: &Option<BTreeMap<String, String>>, want: &Option<BTreeMap<String, String>>| {
            want.iter()
                .flatten()
                .filter(|(k, v)| have.as_ref().and_then(|h| h.get(*k)) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let labels = differing(&pod.metadata.labels, &want.metadata.labels);
        let annotations = differing(&pod.metadata.annotations, &want.metadata.annotations);
        if labels.is_empty() && annotations.is_empty() {
            return Ok(pod);
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({ "metadata": { "labels": labels, "annotations": annotations } });
        match self.pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(patched) => {
                debug!(pod = %name, "Pod labels brought up to date");
                Ok(patched)
            }
            // Gone meanwhile: what was read is reported; the next look sees it gone.
            Err(e) if api_code(&e) == Some(404) => Ok(pod),
            Err(e) => Err(classify(&format!("relabelling Pod {name}"), e)),
        }
    }

    async fn delete_pod(&self, name: &str) -> Result<(), EngineError> {
        let params = DeleteParams {
            grace_period_seconds: Some(self.config.grace_period_seconds.max(0) as u32),
            ..Default::default()
        };
        match self.pods.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(e) if api_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(classify(&format!("deleting Pod {name}"), e)),
        }
    }
}

#[async_trait]
impl Engine for KubeEngine {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn validate(&self, spec: &EnvInstanceSpec) -> Result<(), InvalidSpec> {
        if spec.placement.is_some() {
            return Err(InvalidSpec::new(
                "deployConfig.placement",
                "field `deployConfig.placement` is in Docker Swarm's syntax (--engine swarm); the Kubernetes engine does not read it: remove it",
            ));
        }
        if let Workload::Stack { .. } = spec.workload() {
            return Err(InvalidSpec::new(
                "deployConfig.composeFile",
                "field `deployConfig.composeFile`: compose stacks run on the Docker engine only; this operator runs instances as Kubernetes Pods",
            ));
        }
        if !spec.volumes.is_empty() {
            return Err(InvalidSpec::new(
                "volumes",
                "field `volumes`: named volumes (EnvService storage) run on the Docker engine only for now; the Kubernetes engine runs instances as Pods without them",
            ));
        }
        if let Some(network) = spec.network.as_deref().filter(|n| !n.is_empty() && *n != "bridge") {
            return Err(InvalidSpec::new(
                "deployConfig.network",
                format!(
                    "field `deployConfig.network`: {network:?} cannot be chosen for a Pod; Pods join the cluster's Pod network (leave the field out)"
                ),
            ));
        }
        Ok(())
    }

    async fn apply(&self, inst: &EnvInstance) -> Result<Observed, EngineError> {
        let name = inst.metadata.name.clone().unwrap_or_default();
        let probe = inst.spec.readiness.clone().unwrap_or_default().enabled;
        let pod = match self.get(&name).await? {
            Some(pod) if !self.ours(&pod) => {
                return Err(EngineError::permanent(format!(
                    "a Pod named {name} exists in namespace {} and was not created by this operator",
                    self.config.namespace
                )));
            }
            Some(pod) => self.relabel(pod, inst).await?,
            None if inst.status.as_ref().is_some_and(|s| s.container_id.is_some()) => {
                return Ok(Observed {
                    phase: Phase::Terminated,
                    message: Some(format!("Pod {name} was removed outside the operator")),
                    ..Default::default()
                });
            }
            None => {
                let pod = pod_for(inst, &self.config)?;
                match self.pods.create(&PostParams::default(), &pod).await {
                    Ok(created) => {
                        debug!(pod = %name, namespace = %self.config.namespace, "Pod created");
                        created
                    }
                    // Made by an earlier attempt a moment ago (the read came from before it): observe it.
                    Err(e) if api_code(&e) == Some(409) => self.get(&name).await?.ok_or_else(|| {
                        EngineError::transient(format!("Pod {name} exists and vanished at once; retrying"))
                    })?,
                    Err(e) => return Err(classify(&format!("creating Pod {name}"), e)),
                }
            }
        };
        Ok(observe(&pod, probe))
    }

    async fn delete(&self, inst: &EnvInstance) -> Result<(), EngineError> {
        let name = inst.metadata.name.clone().unwrap_or_default();
        self.delete_pod(&name).await
    }

    async fn delete_owned(&self, object: &OwnedObject) -> Result<(), EngineError> {
        self.delete_pod(&object.id).await
    }

    async fn list_owned(&self) -> Result<Vec<OwnedObject>, EngineError> {
        let pods = self
            .pods
            .list(&ListParams::default().labels(&self.owned_selector()))
            .await
            .map_err(|e| classify("listing Pods", e))?;
        Ok(pods.items.into_iter().filter_map(|pod| owned_of(&pod)).collect())
    }

    async fn list_managed(&self) -> Result<Vec<ManagedObject>, EngineError> {
        let selector = format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
        let pods =
            self.pods.list(&ListParams::default().labels(&selector)).await.map_err(|e| classify("listing Pods", e))?;
        Ok(pods.items.iter().filter_map(managed_of).collect())
    }

    fn events(&self) -> BoxStream<'static, EngineEvent> {
        let (tx, rx) = mpsc::channel(1024);
        let stream =
            watcher(self.pods.clone(), watcher::Config::default().labels(&self.owned_selector())).default_backoff();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut listed_once = false;
            while let Some(item) = stream.next().await {
                let event = match item {
                    Ok(watcher::Event::Apply(pod) | watcher::Event::Delete(pod)) => changed(&pod),
                    // A fresh listing after the first: events were missed meanwhile.
                    Ok(watcher::Event::Init) if listed_once => Some(EngineEvent::Resync),
                    Ok(watcher::Event::InitDone) => {
                        listed_once = true;
                        None
                    }
                    Ok(_) => None,
                    Err(e) => {
                        warn!(error = %e, "Pod watch broke; reconnecting");
                        None
                    }
                };
                if let Some(event) = event
                    && tx.send(event).await.is_err()
                {
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
    }

    fn exec(&self, inst: &EnvInstance, request: ExecRequest) -> BoxStream<'static, Result<ExecOutput, EngineError>> {
        if let Some(service) = request.service.as_deref() {
            let e = no_services(service);
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        crate::ops::exec(self.pods.clone(), inst.metadata.name.clone().unwrap_or_default(), request)
    }

    async fn read_path(
        &self,
        inst: &EnvInstance,
        service: Option<&str>,
        path: &SandboxPath,
        max_bytes: u64,
    ) -> Result<PathContent, EngineError> {
        if let Some(service) = service {
            return Err(no_services(service));
        }
        crate::ops::read_path(&self.pods, inst.metadata.name.as_deref().unwrap_or_default(), path, max_bytes).await
    }

    async fn write_file(&self, inst: &EnvInstance, upload: FileUpload) -> Result<(), EngineError> {
        if let Some(service) = upload.service.as_deref() {
            return Err(no_services(service));
        }
        crate::ops::write_file(&self.pods, inst.metadata.name.as_deref().unwrap_or_default(), upload).await
    }

    fn can_pause(&self, _spec: &EnvInstanceSpec) -> Result<(), EngineError> {
        Err(EngineError::unsupported(
            "the Kubernetes engine cannot pause a sandbox: Kubernetes has no API to freeze a Pod's processes (pause runs on the Docker engine); delete the instance, or snapshot and restore it on Docker",
        ))
    }

    async fn stats(&self, _inst: &EnvInstance, _service: Option<&str>) -> Result<InstanceStats, EngineError> {
        Err(EngineError::unsupported(
            "the Kubernetes engine does not read per-sandbox stats; the cluster's metrics pipeline has them (`kubectl top pod -n <sandbox namespace> <id>`, metrics-server)",
        ))
    }

    async fn snapshot(&self, _inst: &EnvInstance, _reference: &str, _template: &str) -> Result<String, EngineError> {
        Err(EngineError::unsupported(
            "the Kubernetes engine cannot snapshot a sandbox: Kubernetes has no API to commit a Pod's filesystem to an image (snapshot and fork run on the Docker engine)",
        ))
    }

    async fn remove_snapshot(&self, _reference: &str) -> Result<(), EngineError> {
        Err(EngineError::unsupported("the Kubernetes engine makes no snapshots"))
    }

    fn native_services(&self) -> Option<&dyn NativeServices> {
        Some(self)
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.pods
            .list_metadata(&ListParams::default().limit(1))
            .await
            .map(|_| ())
            .map_err(|e| classify("listing Pods", e))
    }
}

/// A service named for a Pod, which has one container.
fn no_services(service: &str) -> EngineError {
    EngineError::permanent(format!(
        "query `service` ({service:?}) chooses a service of a compose stack; a Pod of the Kubernetes engine has one container: leave it out"
    ))
}

/// The field manager of the operator's server-side applies.
const FIELD_MANAGER: &str = "aenv-operator";

/// Reads one object of a service; `None` when it is not there.
async fn read<K>(api: &Api<K>, what: &str, name: &str) -> Result<Option<K>, EngineError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(object) => Ok(object),
        Err(e) if api_code(&e) == Some(404) => Ok(None),
        Err(e) => Err(classify(&format!("reading {what} {name}"), e)),
    }
}

/// Creates `object` unless it is there; `Ok(None)` when it was there already (made by an earlier look).
async fn create<K>(api: &Api<K>, what: &str, object: &K) -> Result<Option<K>, EngineError>
where
    K: Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug + kube::Resource,
{
    let name = object.meta().name.clone().unwrap_or_default();
    match api.create(&PostParams::default(), object).await {
        Ok(made) => {
            debug!(%name, "{what} created");
            Ok(Some(made))
        }
        Err(e) if api_code(&e) == Some(409) => Ok(None),
        Err(e) => Err(classify(&format!("creating {what} {name}"), e)),
    }
}

/// Deletes one object of a service; nothing to do when it is gone.
async fn remove<K>(api: &Api<K>, what: &str, name: &str) -> Result<(), EngineError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            debug!(%name, "{what} deleted");
            Ok(())
        }
        Err(e) if api_code(&e) == Some(404) => Ok(()),
        Err(e) => Err(classify(&format!("deleting {what} {name}"), e)),
    }
}

impl KubeEngine {
    fn foreign(&self, what: &str, name: &str) -> EngineError {
        EngineError::permanent(format!(
            "a {what} named {name} exists in namespace {} and was not created by this operator: pick another service_name",
            self.config.namespace
        ))
    }

    /// The Deployment as `want` says: made when missing, applied (server-side) when its spec or replica count
    /// differs, left alone otherwise. The Deployment as the server has it now.
    async fn converge_deployment(&self, want: Deployment) -> Result<Deployment, EngineError> {
        let name = want.metadata.name.clone().unwrap_or_default();
        let have = match read(&self.deployments, "Deployment", &name).await? {
            Some(have) => have,
            None => match create(&self.deployments, "Deployment", &want).await? {
                Some(made) => return Ok(made),
                None => read(&self.deployments, "Deployment", &name).await?.ok_or_else(|| {
                    EngineError::transient(format!("Deployment {name} exists and vanished at once; retrying"))
                })?,
            },
        };
        if !self.owns(&have.metadata) {
            return Err(self.foreign("Deployment", &name));
        }
        if !deployment_differs(&have, &want) {
            return Ok(have);
        }
        // Server-side apply, forced: the fields this operator owns become what it wants now (a field it set
        // before and no longer sets is dropped, `kubectl scale deployment` is undone), others' fields stay.
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match self.deployments.patch(&name, &params, &Patch::Apply(&want)).await {
            Ok(applied) => {
                debug!(deployment = %name, "Deployment updated");
                Ok(applied)
            }
            Err(e) => Err(classify(&format!("updating Deployment {name}"), e)),
        }
    }
}

#[async_trait]
impl NativeServices for KubeEngine {
    fn validate_service(&self, name: &str, service: &aenv_core::EnvServiceSpec) -> Result<(), InvalidSpec> {
        check_service(name, service)
    }

    async fn apply_service(
        &self,
        service: &EnvService,
        replica: &EnvInstanceSpec,
    ) -> Result<EnvServiceStatus, EngineError> {
        let name = service.metadata.name.clone().unwrap_or_default();
        if let Some(claim) = pvc_for(service, replica, &self.config)? {
            let claim_name = claim.metadata.name.clone().unwrap_or_default();
            match read(&self.claims, "PersistentVolumeClaim", &claim_name).await? {
                Some(have) if !self.owns(&have.metadata) => {
                    return Err(self.foreign("PersistentVolumeClaim", &claim_name));
                }
                Some(_) => {}
                None => {
                    create(&self.claims, "PersistentVolumeClaim", &claim).await?;
                }
            }
        }
        let deployment = self.converge_deployment(deployment_for(service, replica, &self.config)?).await?;
        match read(&self.services, "Service", &name).await? {
            Some(have) if !self.owns(&have.metadata) => return Err(self.foreign("Service", &name)),
            Some(_) => {}
            None => {
                create(&self.services, "Service", &k8s_service_for(service, replica, &self.config)).await?;
            }
        }
        Ok(observe_deployment(&deployment))
    }

    async fn delete_service(&self, service: &EnvService, delete_storage: bool) -> Result<(), EngineError> {
        let name = service.metadata.name.clone().unwrap_or_default();
        if let Some(have) = read(&self.deployments, "Deployment", &name).await?
            && self.owns(&have.metadata)
        {
            remove(&self.deployments, "Deployment", &name).await?;
        }
        if let Some(have) = read(&self.services, "Service", &name).await?
            && self.owns(&have.metadata)
        {
            remove(&self.services, "Service", &name).await?;
        }
        if let Some(volume) = service.spec.volume().filter(|_| delete_storage)
            && let Some(have) = read(&self.claims, "PersistentVolumeClaim", &volume.name).await?
            && self.owns(&have.metadata)
        {
            remove(&self.claims, "PersistentVolumeClaim", &volume.name).await?;
        }
        Ok(())
    }

    fn service_address(&self, service: &EnvService) -> String {
        format!(
            "{}.{}.{}:{}",
            service.metadata.name.as_deref().unwrap_or_default(),
            self.config.namespace,
            self.config.service_domain_suffix,
            service.spec.port
        )
    }
}

/// The instance a Pod event is about.
fn changed(pod: &Pod) -> Option<EngineEvent> {
    let (namespace, instance) = labels::instance_of(|k| pod.metadata.labels.as_ref()?.get(k))?;
    Some(EngineEvent::Changed { namespace, instance })
}
