//! EnvServices on the Kubernetes engine (a Deployment, a ClusterIP Service, a PersistentVolumeClaim), against a
//! tower-test mock API server: every request the engine sends is checked (method, path, body) and answered by
//! the scenario, as in `pods.rs`.

use std::{collections::BTreeMap, time::Duration};

use aenv_core::{
    Engine, EnvInstanceSpec, EnvService, EnvServiceSpec, ErrorKind, Resources, ServicePhase,
    envservice::{EphemeralStorage, volume_name},
};
use aenv_engine_k8s::{KubeEngine, KubeEngineConfig, check_service, deployment_for, observe_deployment};
use http::{Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Client, client::Body};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Send = tower_test::mock::SendResponse<Response<Body>>;

const NS: &str = "aenv-sandbox";

fn engine() -> (KubeEngine, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let engine = KubeEngine::new(Client::new(service, "default"), KubeEngineConfig::new("op-1", NS)).unwrap();
    (engine, handle)
}

async fn expect(handle: &mut Handle, method: &str, path: &str) -> (String, Value, Send) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
        .expect("the client hung up");
    assert_eq!((request.method().as_str(), request.uri().path()), (method, path), "the next request");
    let query = request.uri().query().unwrap_or_default().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (query, body, send)
}

fn reply(send: Send, status: u16, body: Value) {
    let response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    send.send_response(response);
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": "not found"})
}

async fn quiet(handle: &mut Handle, why: &str) {
    if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await {
        panic!("{why}: unexpected {} {}", request.method(), request.uri());
    }
}

/// `web`: 1 replica of mini@1.0.0 with storage, requests and ephemeral storage, owned by alice, living in the
/// API server (a uid) in the sandbox namespace.
fn service() -> EnvService {
    let mut svc = EnvService::new(
        "web",
        EnvServiceSpec {
            env_name: "mini@1.0.0".into(),
            replicas: 1,
            env: BTreeMap::from([("MODE".into(), "a".into())]),
            owner: Some("alice".into()),
            pvc_name: Some("data".into()),
            mount_path: Some("/home/admin/data".into()),
            storage_size: Some("5Gi".into()),
            port: 8081,
            resources: Resources { cpu: Some("2".into()), memory: Some("4Gi".into()) },
            requests: Resources { cpu: Some("500m".into()), memory: Some("1Gi".into()) },
            ephemeral_storage: EphemeralStorage { request: Some("1Gi".into()), limit: Some("10Gi".into()) },
            ..Default::default()
        },
    );
    svc.metadata.namespace = Some(NS.into());
    svc.metadata.uid = Some("svc-uid".into());
    svc
}

/// What each replica runs (the service controller's `replica_spec` of the template).
fn replica(svc: &EnvService) -> EnvInstanceSpec {
    let template = EnvInstanceSpec {
        image: Some("aenv-test/sandbox:local".into()),
        env: BTreeMap::from([("MODE".into(), "plain".into())]),
        ..Default::default()
    };
    aenv_core::envservice::replica_spec(&template, "mini", "1.0.0", &svc.spec)
}

fn with_status(mut object: Value, status: Value) -> Value {
    object["metadata"]["resourceVersion"] = json!("7");
    object["status"] = status;
    object
}

#[tokio::test]
async fn a_new_service_is_a_claim_a_deployment_and_a_cluster_ip_service() {
    let (engine, mut handle) = engine();
    let svc = service();
    let claim = volume_name(Some("alice"), "data");
    let claim_path = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/{claim}");
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(&mut handle, "GET", &claim_path).await;
        reply(send, 404, not_found());
        let (_, pvc, send) =
            expect(&mut handle, "POST", &format!("/api/v1/namespaces/{NS}/persistentvolumeclaims")).await;
        reply(send, 201, pvc.clone());
        let (_, _, send) = expect(&mut handle, "GET", &format!("/apis/apps/v1/namespaces/{NS}/deployments/web")).await;
        reply(send, 404, not_found());
        let (_, deployment, send) =
            expect(&mut handle, "POST", &format!("/apis/apps/v1/namespaces/{NS}/deployments")).await;
        reply(send, 201, deployment.clone());
        let (_, _, send) = expect(&mut handle, "GET", &format!("/api/v1/namespaces/{NS}/services/web")).await;
        reply(send, 404, not_found());
        let (_, service, send) = expect(&mut handle, "POST", &format!("/api/v1/namespaces/{NS}/services")).await;
        reply(send, 201, service.clone());
        quiet(&mut handle, "three objects, nothing more").await;
        (pvc, deployment, service)
    });
    let status = engine.native_services().unwrap().apply_service(&svc, &replica(&svc)).await.unwrap();
    let (pvc, deployment, service) = server.await.unwrap();
    assert_eq!((status.phase, status.replicas, status.available_replicas), (ServicePhase::Pending, 0, 0));

    // The claim: per-owner name, ReadWriteOnce, the size asked for, no owner (it outlives the service).
    assert_eq!(pvc["metadata"]["name"], claim.as_str());
    assert!(claim.starts_with("aenv-pvc-") && claim.ends_with("-data") && claim != "aenv-pvc-data", "{claim}");
    assert_eq!(pvc["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "5Gi");
    assert!(pvc["metadata"].get("ownerReferences").is_none(), "kept on delete unless deleteStorage=true");
    assert_eq!(pvc["metadata"]["labels"]["aenv.io/service"], "web");
    assert_eq!(pvc["metadata"]["labels"]["aenv.io/operator-id"], "op-1");

    // The Deployment.
    let owner = json!([{"apiVersion": "aenv.io/v1alpha1", "kind": "EnvService", "name": "web", "uid": "svc-uid",
                        "controller": true}]);
    let meta = &deployment["metadata"];
    assert_eq!((meta["name"].as_str(), meta["namespace"].as_str()), (Some("web"), Some(NS)));
    assert_eq!(meta["ownerReferences"], owner);
    for (key, value) in [
        ("aenv.io/managed-by", "aenv-operator"),
        ("aenv.io/operator-id", "op-1"),
        ("aenv.io/service", "web"),
        ("business/aenv-name", "mini"),
        ("business/aenv-version", "1.0.0"),
        ("business/aenv-owner", "alice"),
    ] {
        assert_eq!(meta["labels"][key], value, "label {key}");
    }
    assert!(meta["annotations"]["aenv.io/spec-hash"].is_string());
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 1);
    let selector = json!({"aenv.io/operator-id": "op-1", "aenv.io/service": "web"});
    assert_eq!(spec["selector"], json!({"matchLabels": selector}));
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}),
        "a new replica is ready before an old one goes"
    );
    let template = &spec["template"];
    let pod_labels = template["metadata"]["labels"].as_object().unwrap();
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the template carries the selector");
    }
    assert!(
        !pod_labels.contains_key("aenv.io/instance"),
        "a replica Pod names no instance, so the Pod sweep never takes it for an orphan"
    );
    let pod = &template["spec"];
    assert_eq!(pod["restartPolicy"], "Always");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["volumes"], json!([{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]));
    let main = &pod["containers"][0];
    assert_eq!(main["image"], "aenv-test/sandbox:local");
    let env: BTreeMap<String, String> = main["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().into(), e["value"].as_str().unwrap().into()))
        .collect();
    assert_eq!((env["MODE"].as_str(), env["envNAME"].as_str()), ("a", "mini"), "the service's variables win");
    assert_eq!(
        main["resources"],
        json!({"limits": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "10Gi"},
               "requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "1Gi"}})
    );
    assert_eq!(main["readinessProbe"]["httpGet"], json!({"path": "/health", "port": 8081}));
    assert_eq!(main["volumeMounts"], json!([{"name": "data", "mountPath": "/home/admin/data"}]));
    assert!(main["ports"].as_array().unwrap().iter().any(|p| p["containerPort"] == 8081));

    // The Service: ClusterIP on the port, the same selector, owned by the EnvService.
    assert_eq!(service["metadata"]["name"], "web");
    assert_eq!(service["metadata"]["ownerReferences"], owner);
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(service["spec"]["selector"], selector);
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "http", "port": 8081, "targetPort": 8081, "protocol": "TCP"}])
    );
    assert_eq!(engine.native_services().unwrap().service_address(&svc), "web.aenv-sandbox.svc.cluster.local:8081");
}

#[tokio::test]
async fn an_unchanged_service_writes_nothing_and_a_change_is_applied_to_the_deployment() {
    let (engine, mut handle) = engine();
    let mut svc = service();
    svc.spec.pvc_name = None;
    svc.spec.storage_size = None;
    svc.spec.replicas = 2;
    let config = KubeEngineConfig::new("op-1", NS);
    let running = serde_json::to_value(deployment_for(&svc, &replica(&svc), &config).unwrap()).unwrap();
    let running =
        with_status(running, json!({"replicas": 2, "availableReplicas": 2, "updatedReplicas": 2, "readyReplicas": 2}));
    let mut changed = svc.clone();
    changed.spec.env.insert("MODE".into(), "b".into());
    let server = tokio::spawn(async move {
        // Unchanged: three reads, no write.
        let (_, _, send) = expect(&mut handle, "GET", &format!("/apis/apps/v1/namespaces/{NS}/deployments/web")).await;
        reply(send, 200, running.clone());
        let (_, _, send) = expect(&mut handle, "GET", &format!("/api/v1/namespaces/{NS}/services/web")).await;
        reply(
            send,
            200,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web",
            "labels": {"aenv.io/operator-id": "op-1"}}}),
        );
        // Unchanged, so the next request is the next look's read, not a write. Changed: the Deployment is applied
        // (server-side, forced, as the operator's field manager).
        let (_, _, send) = expect(&mut handle, "GET", &format!("/apis/apps/v1/namespaces/{NS}/deployments/web")).await;
        reply(send, 200, running.clone());
        let (query, put, send) =
            expect(&mut handle, "PATCH", &format!("/apis/apps/v1/namespaces/{NS}/deployments/web")).await;
        assert!(query.contains("fieldManager=aenv-operator") && query.contains("force=true"), "{query}");
        let answered = with_status(
            put.clone(),
            json!({"replicas": 3, "availableReplicas": 2, "updatedReplicas": 1, "readyReplicas": 2}),
        );
        reply(send, 200, answered);
        let (_, _, send) = expect(&mut handle, "GET", &format!("/api/v1/namespaces/{NS}/services/web")).await;
        reply(
            send,
            200,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web",
            "labels": {"aenv.io/operator-id": "op-1"}}}),
        );
        quiet(&mut handle, "one apply").await;
        (put, running)
    });
    let native = engine.native_services().unwrap();
    let status = native.apply_service(&svc, &replica(&svc)).await.unwrap();
    assert_eq!((status.phase, status.available_replicas, status.updated_replicas), (ServicePhase::Running, 2, 2));
    let status = native.apply_service(&changed, &replica(&changed)).await.unwrap();
    let (put, running) = server.await.unwrap();
    assert_eq!((put["apiVersion"].as_str(), put["kind"].as_str()), (Some("apps/v1"), Some("Deployment")));
    assert_ne!(
        put["metadata"]["annotations"]["aenv.io/spec-hash"],
        running["metadata"]["annotations"]["aenv.io/spec-hash"]
    );
    let env = put["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    assert!(env.contains(&json!({"name": "MODE", "value": "b"})), "{env:?}");
    assert_eq!(put["spec"]["selector"], running["spec"]["selector"], "the selector never changes");
    assert_eq!(
        (status.phase, status.replicas, status.available_replicas, status.updated_replicas),
        (ServicePhase::Updating, 3, 2, 1),
        "an old replica serves until the new one is ready"
    );
}

#[tokio::test]
async fn a_deployment_scaled_by_hand_is_set_back_and_one_of_someone_else_is_not_taken() {
    let (engine, mut handle) = engine();
    let mut svc = service();
    svc.spec.pvc_name = None;
    svc.spec.storage_size = None;
    let config = KubeEngineConfig::new("op-1", NS);
    let mut scaled = serde_json::to_value(deployment_for(&svc, &replica(&svc), &config).unwrap()).unwrap();
    scaled["spec"]["replicas"] = json!(5);
    let scaled = with_status(scaled, json!({"replicas": 5, "availableReplicas": 5, "updatedReplicas": 5}));
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(&mut handle, "GET", &format!("/apis/apps/v1/namespaces/{NS}/deployments/web")).await;
        reply(send, 200, scaled.clone());
        let (_, put, send) =
            expect(&mut handle, "PATCH", &format!("/apis/apps/v1/namespaces/{NS}/deployments/web")).await;
        assert_eq!(put["spec"]["replicas"], 1, "the service's count wins over `kubectl scale deployment`");
        reply(send, 200, put);
        let (_, _, send) = expect(&mut handle, "GET", &format!("/api/v1/namespaces/{NS}/services/web")).await;
        reply(
            send,
            200,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web",
            "labels": {"aenv.io/operator-id": "op-1"}}}),
        );
        // Someone else's Deployment of the same name.
        let (_, _, send) = expect(&mut handle, "GET", &format!("/apis/apps/v1/namespaces/{NS}/deployments/web")).await;
        reply(
            send,
            200,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {}}}),
        );
        quiet(&mut handle, "nothing written over someone else's Deployment").await;
    });
    let native = engine.native_services().unwrap();
    native.apply_service(&svc, &replica(&svc)).await.unwrap();
    let err = native.apply_service(&svc, &replica(&svc)).await.unwrap_err();
    server.await.unwrap();
    assert!(err.kind() == ErrorKind::Permanent && err.message().contains("not created by this operator"), "{err}");
}

#[tokio::test]
async fn delete_keeps_the_claim_unless_asked_and_leaves_what_is_not_ours() {
    let (engine, mut handle) = engine();
    let svc = service();
    let claim = volume_name(Some("alice"), "data");
    let ours = |kind: &str| json!({"kind": kind, "metadata": {"name": "x", "labels": {"aenv.io/operator-id": "op-1"}}});
    let server = tokio::spawn(async move {
        // Without deleteStorage: the Deployment and the Service go, the claim is not even read.
        let (_, _, send) = expect(&mut handle, "GET", &format!("/apis/apps/v1/namespaces/{NS}/deployments/web")).await;
        reply(send, 200, ours("Deployment"));
        let (_, body, send) =
            expect(&mut handle, "DELETE", &format!("/apis/apps/v1/namespaces/{NS}/deployments/web")).await;
        assert_eq!(body["propagationPolicy"], "Background", "its Pods go with it");
        reply(send, 200, ours("Deployment"));
        let (_, _, send) = expect(&mut handle, "GET", &format!("/api/v1/namespaces/{NS}/services/web")).await;
        reply(send, 200, ours("Service"));
        let (_, _, send) = expect(&mut handle, "DELETE", &format!("/api/v1/namespaces/{NS}/services/web")).await;
        reply(send, 200, ours("Service"));
        // The claim stays: the next request is already the second deletion's. With deleteStorage, everything already gone but the claim; a Service not ours is left alone.
        let (_, _, send) = expect(&mut handle, "GET", &format!("/apis/apps/v1/namespaces/{NS}/deployments/web")).await;
        reply(send, 404, not_found());
        let (_, _, send) = expect(&mut handle, "GET", &format!("/api/v1/namespaces/{NS}/services/web")).await;
        reply(send, 200, json!({"kind": "Service", "metadata": {"name": "web", "labels": {"app": "web"}}}));
        let claim_path = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/{claim}");
        let (_, _, send) = expect(&mut handle, "GET", &claim_path).await;
        reply(send, 200, ours("PersistentVolumeClaim"));
        let (_, _, send) = expect(&mut handle, "DELETE", &claim_path).await;
        reply(send, 200, ours("PersistentVolumeClaim"));
        quiet(&mut handle, "done").await;
    });
    let native = engine.native_services().unwrap();
    native.delete_service(&svc, false).await.unwrap();
    native.delete_service(&svc, true).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn list_owned_never_takes_a_service_pod_for_an_orphan_instance() {
    let (engine, mut handle) = engine();
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(&mut handle, "GET", &format!("/api/v1/namespaces/{NS}/pods")).await;
        let pod = |name: &str, labels: Value| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
                   "spec": {"containers": []}, "status": {"phase": "Running"}})
        };
        let items = json!([
            pod("demo-abc123", json!({"aenv.io/operator-id": "op-1", "aenv.io/instance": "demo-abc123"})),
            // A replica Pod, even one that (by a hand edit) names an instance.
            pod(
                "web-5d8f-x2",
                json!({"aenv.io/operator-id": "op-1", "aenv.io/service": "web",
                                      "aenv.io/instance": "web"})
            ),
        ]);
        reply(send, 200, json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}));
    });
    let owned = engine.list_owned().await.unwrap();
    server.await.unwrap();
    let names: Vec<_> = owned.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(names, ["demo-abc123"]);
}

fn deployment(replicas: i32, generation: i64, status: Value) -> Deployment {
    serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "generation": generation},
        "spec": {"replicas": replicas, "selector": {}, "template": {}}, "status": status}))
    .unwrap()
}

#[test]
fn deployment_status_maps_to_service_phases() {
    let cases = [
        (deployment(2, 1, json!({})), ServicePhase::Pending, None),
        (
            deployment(
                2,
                1,
                json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
            ),
            ServicePhase::Pending,
            None,
        ),
        (
            deployment(
                2,
                1,
                json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
            ),
            ServicePhase::Running,
            None,
        ),
        (
            deployment(
                2,
                2,
                json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 2}),
            ),
            ServicePhase::Updating,
            None,
        ),
        (
            // The controller has not seen the new template yet: what it reports is of the old one.
            deployment(
                2,
                3,
                json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
            ),
            ServicePhase::Updating,
            None,
        ),
        (
            deployment(
                1,
                1,
                json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 0,
                "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                "message": "ReplicaSet \"web-5d8f\" has timed out progressing."}]}),
            ),
            ServicePhase::Failed,
            Some("ProgressDeadlineExceeded: ReplicaSet \"web-5d8f\" has timed out progressing."),
        ),
        (
            deployment(
                1,
                1,
                json!({"observedGeneration": 1, "replicas": 0,
                "conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                "message": "pods \"web-x\" is forbidden: exceeded quota"}]}),
            ),
            ServicePhase::Failed,
            Some("FailedCreate: pods \"web-x\" is forbidden: exceeded quota"),
        ),
        (deployment(0, 1, json!({"observedGeneration": 1})), ServicePhase::Running, None),
    ];
    for (deployment, phase, error) in cases {
        let status = observe_deployment(&deployment);
        assert_eq!(status.phase, phase, "{:?}", deployment.status);
        assert_eq!(status.last_error.as_deref(), error, "{:?}", deployment.status);
    }
}

#[test]
fn what_kubernetes_cannot_take_is_refused_naming_the_field() {
    let spec = service().spec;
    assert!(check_service("web", &spec).is_ok());
    assert_eq!(check_service("1web", &spec).unwrap_err().field, "service_name", "a Service name starts with a letter");
    let above = EnvServiceSpec { requests: Resources { cpu: Some("3".into()), memory: None }, ..spec.clone() };
    let e = check_service("web", &above).unwrap_err();
    assert!(e.field == "cpu_request" && e.message.contains("above its limit"), "{e:?}");
    let bad =
        EnvServiceSpec { ephemeral_storage: EphemeralStorage { request: Some("lots".into()), limit: None }, ..spec };
    assert_eq!(check_service("web", &bad).unwrap_err().field, "ephemeral_storage_request");
}
