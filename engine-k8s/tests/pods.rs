//! The Kubernetes engine against a tower-test mock API server (kube-rs' own unit-test approach): every request
//! the engine sends is checked (method, path, query, body) and answered by the scenario.

use std::{collections::BTreeMap, time::Duration};

use aenv_core::{
    Engine, EnvInstance, EnvInstanceSpec, EnvInstanceStatus, ErrorKind, OwnedKind, OwnedObject, Phase, ReadinessProbe,
    Resources,
};
use aenv_engine_k8s::{KubeEngine, KubeEngineConfig, observe, pod_for};
use http::{Request, Response, StatusCode};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time};
use kube::{Client, client::Body};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn engine(namespace: &str) -> (KubeEngine, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let engine = KubeEngine::new(client, KubeEngineConfig::new("op-1", namespace)).unwrap();
    (engine, handle)
}

/// Takes the next request; asserts its method and path; returns its query and JSON body, and the responder.
async fn expect(
    handle: &mut Handle,
    method: &str,
    path: &str,
) -> (String, Value, tower_test::mock::SendResponse<Response<Body>>) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
        .expect("the client hung up");
    assert_eq!(request.method().as_str(), method, "method of {}", request.uri());
    assert_eq!(request.uri().path(), path);
    let query = request.uri().query().unwrap_or_default().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (query, body, send)
}

fn reply(send: tower_test::mock::SendResponse<Response<Body>>, status: u16, body: Value) {
    let response = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap();
    send.send_response(response);
}

fn not_found(name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": format!("pods \"{name}\" not found")})
}

fn instance(name: &str, namespace: &str) -> EnvInstance {
    let mut inst = EnvInstance::new(
        name,
        EnvInstanceSpec {
            env_name: "mini-terminal".into(),
            env_version: "1.0.1".into(),
            owner: Some("alice".into()),
            image: Some("aenv-test/sandbox:local".into()),
            args: vec!["sleep".into(), "3600".into()],
            env: BTreeMap::from([("TASK".into(), "demo".into())]),
            resources: Resources { cpu: Some("1C".into()), memory: Some("512Mi".into()) },
            ttl: Some("30m".into()),
            labels: BTreeMap::from([("team".into(), "rl".into())]),
            ..Default::default()
        },
    );
    inst.metadata.namespace = Some(namespace.into());
    inst.metadata.uid = Some("5f0c-uid".into());
    inst.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
    inst
}

/// The labels and annotations the engine gives the Pod of `instance("demo-abc123", "aenv-sandbox")`.
fn inst_labels() -> (Value, Value) {
    let inst = instance("demo-abc123", "aenv-sandbox");
    let pod = pod_for(&inst, &KubeEngineConfig::new("op-1", "aenv-sandbox")).unwrap();
    (json!(pod.metadata.labels), json!(pod.metadata.annotations))
}

/// `pod` with `labels` and `annotations` merged into its metadata.
fn labelled(mut pod: Value, (labels, annotations): &(Value, Value)) -> Value {
    for (field, extra) in [("labels", labels), ("annotations", annotations)] {
        let target = pod["metadata"][field].as_object().cloned().unwrap_or_default();
        let mut merged = target;
        merged.extend(extra.as_object().cloned().unwrap_or_default());
        pod["metadata"][field] = Value::Object(merged);
    }
    pod
}

fn pod_json(name: &str, operator_id: &str, status: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "aenv-sandbox", "uid": "pod-uid-1",
                     "labels": {"aenv.io/operator-id": operator_id, "aenv.io/instance": name,
                                "aenv.io/namespace": "aenv-sandbox", "aenv.io/managed-by": "aenv-operator"}},
        "spec": {"containers": [{"name": "main", "image": "aenv-test/sandbox:local"}]},
        "status": status,
    })
}

#[tokio::test]
async fn a_missing_pod_is_created_with_the_aenvironment_shape() {
    let (engine, mut handle) = engine("aenv-sandbox");
    let inst = instance("mini-terminal-k3j9x2", "aenv-sandbox");
    let server = tokio::spawn(async move {
        let (_, _, send) =
            expect(&mut handle, "GET", "/api/v1/namespaces/aenv-sandbox/pods/mini-terminal-k3j9x2").await;
        reply(send, 404, not_found("mini-terminal-k3j9x2"));
        let (_, mut pod, send) = expect(&mut handle, "POST", "/api/v1/namespaces/aenv-sandbox/pods").await;
        let sent = pod.clone();
        pod["metadata"]["uid"] = json!("pod-uid-1");
        pod["status"] = json!({"phase": "Pending"});
        reply(send, 201, pod);
        sent
    });
    let observed = engine.apply(&inst).await.unwrap();
    let pod = server.await.unwrap();

    assert_eq!(observed.phase, Phase::Pending);
    assert_eq!(observed.container_id.as_deref(), Some("pod-uid-1"));
    let meta = &pod["metadata"];
    assert_eq!(meta["name"], "mini-terminal-k3j9x2", "the Pod is named by the instance id");
    assert_eq!(meta["namespace"], "aenv-sandbox");
    let labels = &meta["labels"];
    for (key, value) in [
        ("business/aenv-name", "mini-terminal"),
        ("business/aenv-version", "1.0.1"),
        ("business/aenv-ttl", "30m"),
        ("business/aenv-owner", "alice"),
        ("aenv.io/managed-by", "aenv-operator"),
        ("aenv.io/operator-id", "op-1"),
        ("aenv.io/instance", "mini-terminal-k3j9x2"),
        ("aenv.io/namespace", "aenv-sandbox"),
        ("aenv.env_name", "mini-terminal"),
        ("team", "rl"),
    ] {
        assert_eq!(labels[key], value, "label {key}");
    }
    assert_eq!(meta["annotations"]["aenv.io/expire-at"], "2026-01-01T00:30:00Z", "expiry is an annotation");
    assert_eq!(
        meta["ownerReferences"],
        json!([{"apiVersion": "aenv.io/v1alpha1", "kind": "EnvInstance", "name": "mini-terminal-k3j9x2",
                "uid": "5f0c-uid", "controller": true}])
    );
    let spec = &pod["spec"];
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(spec["terminationGracePeriodSeconds"], 0);
    let main = &spec["containers"][0];
    assert_eq!(main["name"], "main");
    assert_eq!(main["image"], "aenv-test/sandbox:local");
    assert_eq!(main["imagePullPolicy"], "IfNotPresent");
    assert_eq!(main["args"], json!(["sleep", "3600"]), "arguments are honoured");
    assert_eq!(main["env"], json!([{"name": "TASK", "value": "demo"}]));
    let quantities = json!({"cpu": "1", "memory": "512Mi"});
    assert_eq!(main["resources"], json!({"limits": quantities, "requests": quantities}), "1C is cpu 1");
    assert_eq!(main["readinessProbe"]["httpGet"], json!({"path": "/health", "port": 8081}));
}

#[tokio::test]
async fn no_owner_reference_across_namespaces_and_no_optional_labels_that_are_not_label_values() {
    let (engine, mut handle) = engine("aenv-sandbox");
    let mut inst = instance("demo-abc123", "default");
    inst.spec.owner = Some("alice@example.com".into());
    inst.spec.resources = Resources { cpu: Some("500m".into()), memory: Some("2G".into()) };
    inst.spec.readiness = Some(ReadinessProbe { enabled: false, ..Default::default() });
    inst.spec.image_pull_policy = Some(aenv_core::PullPolicy::Never);
    inst.spec.args.clear();
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(&mut handle, "GET", "/api/v1/namespaces/aenv-sandbox/pods/demo-abc123").await;
        reply(send, 404, not_found("demo-abc123"));
        let (_, pod, send) = expect(&mut handle, "POST", "/api/v1/namespaces/aenv-sandbox/pods").await;
        reply(send, 201, pod.clone());
        pod
    });
    engine.apply(&inst).await.unwrap();
    let pod = server.await.unwrap();
    assert!(pod["metadata"].get("ownerReferences").is_none(), "an owner in another namespace would be GC'd");
    assert!(pod["metadata"]["labels"].get("business/aenv-owner").is_none());
    assert_eq!(pod["metadata"]["annotations"]["aenv.io/owner"], "alice@example.com");
    assert_eq!(pod["metadata"]["labels"]["aenv.io/namespace"], "default");
    let main = &pod["spec"]["containers"][0];
    assert_eq!(main["resources"]["limits"], json!({"cpu": "500m", "memory": "2G"}));
    assert_eq!(main["imagePullPolicy"], "Never");
    assert!(main.get("args").is_none(), "no arguments: the image's CMD runs");
    assert!(main.get("readinessProbe").is_none());
}

#[tokio::test]
async fn a_running_pod_reports_its_ip_and_readiness() {
    let (engine, mut handle) = engine("aenv-sandbox");
    let inst = instance("demo-abc123", "aenv-sandbox");
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(&mut handle, "GET", "/api/v1/namespaces/aenv-sandbox/pods/demo-abc123").await;
        let status = json!({"phase": "Running", "podIP": "10.42.0.7",
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]});
        reply(send, 200, labelled(pod_json("demo-abc123", "op-1", status), &inst_labels()));
        handle
    });
    let observed = engine.apply(&inst).await.unwrap();
    let mut handle = server.await.unwrap();
    assert_eq!(observed.phase, Phase::Running);
    assert_eq!(observed.ip.as_deref(), Some("10.42.0.7"));
    assert_eq!(observed.ready, Some(true));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await.is_err(),
        "an existing Pod is observed, not created again"
    );
}

#[tokio::test]
async fn a_pod_gone_after_it_existed_is_terminated_not_recreated() {
    let (engine, mut handle) = engine("aenv-sandbox");
    let mut inst = instance("demo-abc123", "aenv-sandbox");
    inst.status =
        Some(EnvInstanceStatus { phase: Phase::Running, container_id: Some("pod-uid-1".into()), ..Default::default() });
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(&mut handle, "GET", "/api/v1/namespaces/aenv-sandbox/pods/demo-abc123").await;
        reply(send, 404, not_found("demo-abc123"));
        handle
    });
    let observed = engine.apply(&inst).await.unwrap();
    let mut handle = server.await.unwrap();
    assert_eq!(observed.phase, Phase::Terminated);
    assert!(observed.message.unwrap().contains("removed outside the operator"));
    assert!(tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await.is_err(), "no create");
}

#[tokio::test]
async fn a_pod_of_someone_else_is_not_adopted() {
    let (engine, mut handle) = engine("aenv-sandbox");
    let inst = instance("demo-abc123", "aenv-sandbox");
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(&mut handle, "GET", "/api/v1/namespaces/aenv-sandbox/pods/demo-abc123").await;
        reply(send, 200, pod_json("demo-abc123", "another-operator", json!({"phase": "Running"})));
    });
    let err = engine.apply(&inst).await.unwrap_err();
    server.await.unwrap();
    assert!(err.kind() == ErrorKind::Permanent && err.message().contains("not created by this operator"), "{err}");
}

#[tokio::test]
async fn an_invalid_pod_is_a_permanent_failure_and_an_unreachable_server_is_retried() {
    let (engine, mut handle) = engine("aenv-sandbox");
    let inst = instance("demo-abc123", "aenv-sandbox");
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(&mut handle, "GET", "/api/v1/namespaces/aenv-sandbox/pods/demo-abc123").await;
        reply(send, 404, not_found("demo-abc123"));
        let (_, _, send) = expect(&mut handle, "POST", "/api/v1/namespaces/aenv-sandbox/pods").await;
        reply(
            send,
            422,
            json!({"kind": "Status", "status": "Failure", "reason": "Invalid", "code": 422,
                                "message": "Pod \"demo-abc123\" is invalid: metadata.labels: Invalid value"}),
        );
        let (_, _, send) = expect(&mut handle, "GET", "/api/v1/namespaces/aenv-sandbox/pods/demo-abc123").await;
        reply(
            send,
            503,
            json!({"kind": "Status", "status": "Failure", "reason": "ServiceUnavailable", "code": 503,
                                "message": "etcdserver: leader changed"}),
        );
    });
    let err = engine.apply(&inst).await.unwrap_err();
    assert!(err.kind() == ErrorKind::Permanent && err.message().contains("is invalid"), "{err}");
    let err = engine.apply(&inst).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    server.await.unwrap();
}

#[tokio::test]
async fn delete_removes_the_pod_at_once_and_tolerates_its_absence() {
    let (engine, mut handle) = engine("aenv-sandbox");
    let inst = instance("demo-abc123", "aenv-sandbox");
    let server = tokio::spawn(async move {
        let (_, body, send) = expect(&mut handle, "DELETE", "/api/v1/namespaces/aenv-sandbox/pods/demo-abc123").await;
        assert_eq!(body["gracePeriodSeconds"], 0);
        reply(send, 200, pod_json("demo-abc123", "op-1", json!({"phase": "Running"})));
        let (_, _, send) = expect(&mut handle, "DELETE", "/api/v1/namespaces/aenv-sandbox/pods/demo-abc123").await;
        reply(send, 404, not_found("demo-abc123"));
    });
    engine.delete(&inst).await.unwrap();
    engine.delete(&inst).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn list_owned_is_one_call_with_the_operator_selector() {
    let (engine, mut handle) = engine("aenv-sandbox");
    let server = tokio::spawn(async move {
        let (query, _, send) = expect(&mut handle, "GET", "/api/v1/namespaces/aenv-sandbox/pods").await;
        let selector = query.split('&').find_map(|kv| kv.strip_prefix("labelSelector=")).unwrap_or_default();
        assert_eq!(
            selector.replace("%2F", "/").replace("%3D", "=").replace("%2C", ","),
            "aenv.io/managed-by=aenv-operator,aenv.io/operator-id=op-1"
        );
        let mut pod = pod_json("demo-abc123", "op-1", json!({"phase": "Failed"}));
        pod["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        reply(send, 200, json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod]}));
    });
    let owned = engine.list_owned().await.unwrap();
    server.await.unwrap();
    assert_eq!(
        owned,
        vec![OwnedObject {
            kind: OwnedKind::Container,
            namespace: "aenv-sandbox".into(),
            instance: "demo-abc123".into(),
            id: "demo-abc123".into(),
            phase: Phase::Failed,
            created: Some("2026-01-01T00:00:00Z".parse().unwrap()),
        }]
    );
}

#[tokio::test]
async fn list_managed_finds_every_operator_s_instance_pods_with_their_id_and_expiry() {
    let (engine, mut handle) = engine("aenv-sandbox");
    let server = tokio::spawn(async move {
        let (query, _, send) = expect(&mut handle, "GET", "/api/v1/namespaces/aenv-sandbox/pods").await;
        let selector = query.split('&').find_map(|kv| kv.strip_prefix("labelSelector=")).unwrap_or_default();
        assert_eq!(
            selector.replace("%2F", "/").replace("%3D", "=").replace("%2C", ","),
            "aenv.io/managed-by=aenv-operator",
            "whichever operator id"
        );
        let mut lost = pod_json("lost-abc123", "op-gone", json!({"phase": "Running"}));
        lost["metadata"]["annotations"] = json!({"aenv.io/expire-at": "2026-01-01T00:10:00Z"});
        let unexpiring = pod_json("keep-abc123", "op-2", json!({"phase": "Running"}));
        let mut replica = pod_json("svc-abc123", "op-2", json!({"phase": "Running"}));
        replica["metadata"]["labels"]["aenv.io/service"] = json!("svc");
        let items = json!([lost, unexpiring, replica]);
        reply(send, 200, json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}));
    });
    let managed = engine.list_managed().await.unwrap();
    server.await.unwrap();
    let seen: Vec<_> =
        managed.iter().map(|m| (m.object.instance.as_str(), m.operator_id.as_str(), m.expires_at)).collect();
    assert_eq!(
        seen,
        vec![("lost-abc123", "op-gone", Some("2026-01-01T00:10:00Z".parse().unwrap())), ("keep-abc123", "op-2", None),],
        "a service's Pods belong to its Deployment, not to an instance"
    );
}

#[tokio::test]
async fn validate_refuses_what_a_pod_cannot_do() {
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let engine =
        KubeEngine::new(Client::new(service, "default"), KubeEngineConfig::new("op-1", "aenv-sandbox")).unwrap();
    let compose = EnvInstanceSpec { compose_file: Some("services: {}".into()), ..Default::default() };
    assert_eq!(engine.validate(&compose).unwrap_err().field, "deployConfig.composeFile");
    let host = EnvInstanceSpec { network: Some("host".into()), ..Default::default() };
    assert_eq!(engine.validate(&host).unwrap_err().field, "deployConfig.network");
    assert!(engine.validate(&EnvInstanceSpec::default()).is_ok());
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    assert!(KubeEngine::new(Client::new(service, "default"), KubeEngineConfig::new("op-1", "Bad_NS")).is_err());
}

fn pod(status: Value) -> Pod {
    serde_json::from_value(pod_json("demo-abc123", "op-1", status)).unwrap()
}

#[test]
fn pod_phases_map_to_aenv_phases() {
    let scheduled = json!([{"type": "PodScheduled", "status": "True"}]);
    let cases = [
        (json!({}), Phase::Pending, None),
        (
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}),
            Phase::Pending,
            Some("not scheduled: 0/3 nodes are available"),
        ),
        (json!({"phase": "Pending", "conditions": scheduled}), Phase::Creating, None),
        (
            json!({"phase": "Pending", "conditions": scheduled, "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}),
            Phase::Creating,
            Some("the container is waiting: ImagePullBackOff: Back-off pulling image"),
        ),
        (
            json!({"phase": "Pending", "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "InvalidImageName", "message": "bad ref"}}}]}),
            Phase::Failed,
            Some("the container cannot start: InvalidImageName: bad ref"),
        ),
        (json!({"phase": "Running", "podIP": "10.0.0.9"}), Phase::Running, None),
        (
            json!({"phase": "Succeeded", "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}),
            Phase::Failed,
            Some("the container exited with code 0 (Completed)"),
        ),
        (
            json!({"phase": "Failed", "containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
            Phase::Failed,
            Some("the container exited with code 137 (killed for exceeding its memory limit)"),
        ),
        (
            json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}),
            Phase::Failed,
            Some("the Pod failed (Evicted): The node was low on resource: memory."),
        ),
    ];
    for (status, phase, message) in cases {
        let observed = observe(&pod(status.clone()), true);
        assert_eq!(observed.phase, phase, "{status}");
        assert_eq!(observed.message.as_deref(), message, "{status}");
        if phase != Phase::Running {
            assert_eq!(observed.ip, None, "no IP unless running: {status}");
        }
    }
    let running = observe(&pod(json!({"phase": "Running", "podIP": "10.0.0.9"})), true);
    assert_eq!((running.ip.as_deref(), running.ready), (Some("10.0.0.9"), Some(false)), "probe not passed yet");
    let mut deleting = pod(json!({"phase": "Running", "podIP": "10.0.0.9"}));
    deleting.metadata.deletion_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
    assert_eq!(observe(&deleting, false).phase, Phase::Terminated);
}

#[test]
fn quantities_in_kubernetes_notation() {
    use aenv_engine_k8s::{cpu_quantity, memory_quantity};
    for (input, want) in [("1C", "1"), ("2", "2"), ("0.5", "500m"), ("500m", "500m"), ("1.25C", "1250m")] {
        assert_eq!(cpu_quantity(input).unwrap().0, want, "{input}");
    }
    for (input, want) in
        [("512Mi", "512Mi"), ("2Gi", "2Gi"), ("1.5Gi", "1536Mi"), ("64000k", "64M"), ("2G", "2G"), ("15500k", "15500k")]
    {
        assert_eq!(memory_quantity(input).unwrap().0, want, "{input}");
    }
    assert!(cpu_quantity("abc").is_err() && memory_quantity("512m").is_err());
}

/// A sandbox claimed from a warm pool: its Pod was made without an owner, a TTL or user labels; the claim put them
/// in the store, and the next apply brings them onto the Pod by one merge patch (and no other write).
#[tokio::test]
async fn a_claimed_sandbox_gets_the_store_s_labels_by_one_patch() {
    let (engine, mut handle) = engine("aenv-sandbox");
    let inst = instance("demo-abc123", "aenv-sandbox");
    let server = tokio::spawn(async move {
        let (_, _, send) = expect(&mut handle, "GET", "/api/v1/namespaces/aenv-sandbox/pods/demo-abc123").await;
        let status = json!({"phase": "Running", "podIP": "10.42.0.7",
            "conditions": [{"type": "Ready", "status": "True"}]});
        reply(send, 200, pod_json("demo-abc123", "op-1", status.clone()));
        let (_, patch, send) = expect(&mut handle, "PATCH", "/api/v1/namespaces/aenv-sandbox/pods/demo-abc123").await;
        let meta = &patch["metadata"];
        reply(
            send,
            200,
            labelled(pod_json("demo-abc123", "op-1", status), &(meta["labels"].clone(), meta["annotations"].clone())),
        );
        (patch, handle)
    });
    let observed = engine.apply(&inst).await.unwrap();
    let (patch, mut handle) = server.await.unwrap();
    assert_eq!(observed.phase, Phase::Running);
    let labels = &patch["metadata"]["labels"];
    for (key, value) in
        [("aenv.io/owner", "alice"), ("business/aenv-owner", "alice"), ("business/aenv-ttl", "30m"), ("team", "rl")]
    {
        assert_eq!(labels[key], value, "label {key}");
    }
    assert!(labels.get("aenv.io/instance").is_none(), "labels the Pod has already are not sent again");
    assert_eq!(patch["metadata"]["annotations"]["aenv.io/expire-at"], "2026-01-01T00:30:00Z");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await.is_err(),
        "one patch, no create"
    );
}
