"""Kubernetes mode end to end against kmock's KubernetesEmulator: the real operator binary (--store kubernetes)
with the real Docker engine behind it. kmock is an emulator, not an API server (no resourceVersion, no
creationTimestamp, no garbage collector, no schema validation); see docs/kubernetes.md."""
import json
import os
import time

from conftest import docker, http, wait_for

GROUP = '/apis/aenv.io/v1alpha1'


def cr_path(ns: str, name: str = '') -> str:
    return f"{GROUP}/namespaces/{ns}/envinstances" + (f"/{name}" if name else '')


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 10000}{int(time.time() * 1000) % 100000}"


def test_a_cr_runs_as_a_container_and_its_deletion_removes_it_through_the_finalizer(kmock_url, make_operator, test_image):
    ns = unique('e2e-cr')
    op = make_operator(ns, '--leader-elect', '--leader-elect-lease-duration', '4s', '--leader-elect-renew-grace', '1s')
    name = unique('kubectl-made')
    # What `kubectl apply -f instance.yaml` sends: no finalizer, no status.
    body = {
        'apiVersion': 'aenv.io/v1alpha1', 'kind': 'EnvInstance',
        'metadata': {'name': name, 'namespace': ns},
        'spec': {'envName': 'kmock-demo', 'envVersion': '1.0.0', 'image': test_image, 'owner': 'alice',
                 'ttl': '10m', 'env': {'TASK': 'kmock'}, 'resources': {'cpu': '0.5', 'memory': '64Mi'}},
    }
    status, created = http('POST', kmock_url + cr_path(ns), body)
    assert status in (200, 201), created

    def running():
        _, cr = http('GET', kmock_url + cr_path(ns, name))
        st = (cr or {}).get('status') or {}
        return cr if st.get('phase') == 'Running' and st.get('ip') else None

    cr = wait_for('the CR to be Running with an IP', running, timeout=60, log=op.log)
    assert 'aenv.io/cleanup' in cr['metadata'].get('finalizers', []), cr['metadata']
    assert cr['status']['expireTime'], cr['status']

    inspect = docker('inspect', name)
    assert inspect.returncode == 0, inspect.stderr
    container = json.loads(inspect.stdout)[0]
    labels = container['Config']['Labels']
    assert labels['aenv.io/operator-id'] == op.operator_id
    assert labels['aenv.io/namespace'] == ns
    assert labels['aenv.env_name'] == 'kmock-demo'
    assert 'TASK=kmock' in container['Config']['Env']
    assert container['HostConfig']['NanoCpus'] == 500_000_000
    ips = [n['IPAddress'] for n in container['NetworkSettings']['Networks'].values() if n['IPAddress']]
    assert cr['status']['ip'] in ips, (cr['status'], ips)

    # The REST API reads the same object from the reflector cache (which follows the watch a moment later).
    def cached_running():
        status, got = op.api('GET', f'/env-instance/{name}')
        return status == 200 and got['data']['status'] == 'Running' and got['data']['ip'] == cr['status']['ip']

    wait_for('the REST API to show it Running', cached_running, timeout=10, log=op.log)

    # Only the leader reconciles: the Lease names this replica.
    status, lease = http('GET', f"{kmock_url}/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/aenv-operator")
    assert status == 200 and lease['spec'].get('holderIdentity'), lease

    # Status changes are published as Events (best effort, so waited for rather than assumed).
    def event_about_it():
        _, events = http('GET', f"{kmock_url}/apis/events.k8s.io/v1/namespaces/{ns}/events")
        return [e for e in (events or {}).get('items', []) if (e.get('regarding') or {}).get('name') == name]

    events = wait_for('an Event about the instance', event_about_it, timeout=10, log=op.log)
    assert any(e.get('reason') == 'Running' for e in events), events

    # kubectl delete: the finalizer holds the object until the container is gone.
    status, _ = http('DELETE', kmock_url + cr_path(ns, name))
    assert status == 200
    wait_for('the CR to go', lambda: http('GET', kmock_url + cr_path(ns, name))[0] == 404, timeout=30, log=op.log)
    assert docker('inspect', name).returncode != 0, 'the container must be removed before the finalizer'
    assert op.containers() == []


def test_the_rest_api_writes_crs_and_deletes_them(kmock_url, make_operator, test_image):
    ns = unique('e2e-rest')
    op = make_operator(ns)
    status, created = op.api('POST', '/env-instance', {
        'name': 'rest-demo', 'version': '2.0.0', 'owner': 'bob',
        'artifacts': [{'type': 'image', 'content': test_image}],
        'deployConfig': {'ttl': '10m', 'arguments': ['sleep', '600'], 'readiness': False},
    })
    assert status == 200, created
    iid = created['data']['id']
    status, cr = http('GET', kmock_url + cr_path(ns, iid))
    assert status == 200, cr
    assert cr['metadata']['finalizers'] == ['aenv.io/cleanup'], cr['metadata']
    assert cr['spec']['args'] == ['sleep', '600']

    def running():
        _, got = op.api('GET', f'/env-instance/{iid}')
        return got if (got or {}).get('data', {}).get('status') == 'Running' else None

    wait_for('Running through the REST API', running, timeout=60, log=op.log)
    assert op.containers() == [iid]

    status, answer = op.api('DELETE', f'/env-instance/{iid}')
    assert status == 200, answer
    wait_for('the CR to go', lambda: http('GET', kmock_url + cr_path(ns, iid))[0] == 404, timeout=30, log=op.log)
    wait_for('the container to go', lambda: op.containers() == [], timeout=10, log=op.log)
    wait_for('a 404 from the REST API', lambda: op.api('GET', f'/env-instance/{iid}')[0] == 404, timeout=10, log=op.log)


def test_an_expired_cr_is_removed_with_its_container(kmock_url, make_operator, test_image):
    ns = unique('e2e-ttl')
    op = make_operator(ns)
    name = unique('short-lived')
    body = {
        'apiVersion': 'aenv.io/v1alpha1', 'kind': 'EnvInstance',
        'metadata': {'name': name, 'namespace': ns},
        'spec': {'envName': 'ttl-demo', 'envVersion': '1', 'image': test_image, 'ttl': '4s',
                 'readiness': {'enabled': False}},
    }
    status, created = http('POST', kmock_url + cr_path(ns), body)
    assert status in (200, 201), created
    wait_for('the container', lambda: op.containers() == [name], timeout=30, log=op.log)
    wait_for('the CR to expire and go', lambda: http('GET', kmock_url + cr_path(ns, name))[0] == 404,
             timeout=30, log=op.log)
    wait_for('the container to go', lambda: op.containers() == [], timeout=10, log=op.log)


def test_objects_that_cannot_be_read_are_skipped_and_reported_while_the_others_run(kmock_url, make_operator, test_image):
    """Issue 13, finding 11: kmock runs no schema validation, so objects a real API server might refuse (or that an
    older or newer version wrote) reach the operator. Each is skipped, logged, and reported on itself (a Warning
    Event and a Failed status naming the field); every other object keeps reconciling."""
    ns = unique('e2e-bad')

    def instance(name, **spec):
        base = {'envName': 'kmock-bad', 'envVersion': '1', 'image': test_image, 'ttl': '10m',
                'readiness': {'path': '/health', 'port': 8081}}
        base.update(spec)
        return {'apiVersion': 'aenv.io/v1alpha1', 'kind': 'EnvInstance',
                'metadata': {'name': name, 'namespace': ns}, 'spec': base}

    def phase(name):
        _, cr = http('GET', kmock_url + cr_path(ns, name))
        return ((cr or {}).get('status') or {}).get('phase'), ((cr or {}).get('status') or {}).get('message', '')

    # Written before the operator starts: they are in its first listing, which used to fail as a whole.
    sometimes, good_before = unique('sometimes'), unique('good-before')
    for body in (instance(sometimes, imagePullPolicy='Sometimes'), instance(good_before)):
        status, created = http('POST', kmock_url + cr_path(ns), body)
        assert status in (200, 201), created
    op = make_operator(ns)
    wait_for('the readable instance to run', lambda: phase(good_before)[0] == 'Running', timeout=60, log=op.log)
    failed = wait_for('the unreadable one to be Failed naming the field',
                      lambda: phase(sometimes)[0] == 'Failed' and phase(sometimes), timeout=20, log=op.log)
    assert 'spec.imagePullPolicy' in failed[1] and 'Sometimes' in failed[1], failed

    # Written while it runs: a number where a quantity string belongs (does not deserialize), and memory "lots"
    # (deserializes; the engine refuses it), next to a good one.
    number, lots, good_after = unique('number'), unique('lots'), unique('good-after')
    for body in (instance(number, resources={'memory': 5}), instance(lots, resources={'memory': 'lots'}),
                 instance(good_after)):
        status, created = http('POST', kmock_url + cr_path(ns), body)
        assert status in (200, 201), created
    wait_for('the good one written later to run', lambda: phase(good_after)[0] == 'Running', timeout=60, log=op.log)
    failed = wait_for('the number to be Failed', lambda: phase(number)[0] == 'Failed' and phase(number),
                      timeout=20, log=op.log)
    assert 'spec.resources.memory' in failed[1], failed
    failed = wait_for('memory "lots" to be Failed', lambda: phase(lots)[0] == 'Failed' and phase(lots),
                      timeout=30, log=op.log)
    assert 'memory' in failed[1], failed

    def warnings_about(name):
        _, events = http('GET', f"{kmock_url}/apis/events.k8s.io/v1/namespaces/{ns}/events")
        return [e for e in (events or {}).get('items', [])
                if (e.get('regarding') or {}).get('name') == name and e.get('reason') == 'Unreadable']

    events = wait_for('a Warning Event on the unreadable object', lambda: warnings_about(sometimes), timeout=10,
                      log=op.log)
    assert events[0].get('type') == 'Warning' and 'spec.imagePullPolicy' in events[0].get('note', ''), events
    assert op.log().count('skipping an object that cannot be read') >= 2
    # Reported once each, not in a loop (the Failed status written comes back through the watch, still unreadable).
    time.sleep(3)
    assert len(warnings_about(sometimes)) == 1, warnings_about(sometimes)
    assert sorted(op.containers()) == sorted([good_before, good_after])

    # An unreadable object goes with a plain delete; the readable ones still go through the finalizer.
    for name in (sometimes, number, lots, good_before, good_after):
        assert http('DELETE', kmock_url + cr_path(ns, name))[0] == 200
    wait_for('every object to go', lambda: all(http('GET', kmock_url + cr_path(ns, n))[0] == 404
                                               for n in (sometimes, number, lots, good_before, good_after)),
             timeout=30, log=op.log)
    wait_for('their containers to go', lambda: op.containers() == [], timeout=30, log=op.log)


def test_a_pool_cr_fills_with_instance_crs_and_a_claim_is_answered_running(kmock_url, make_operator, test_image):
    ns = unique('e2e-pool')
    op = make_operator(ns)
    status, env = op.api('POST', '/env', {'name': 'pooled', 'version': '1.0.0',
                                          'artifacts': [{'type': 'image', 'content': test_image}]})
    assert status == 200, env
    # What `kubectl apply -f pool.yaml` sends.
    pool = {'apiVersion': 'aenv.io/v1alpha1', 'kind': 'EnvPool', 'metadata': {'name': 'warm', 'namespace': ns},
            'spec': {'envName': 'pooled@1.0.0', 'replicas': 2}}
    pools = f"{GROUP}/namespaces/{ns}/envpools"
    status, created = http('POST', kmock_url + pools, pool)
    assert status in (200, 201), created

    def filled():
        _, p = http('GET', f"{kmock_url}{pools}/warm")
        st = (p or {}).get('status') or {}
        return p if st.get('ready') == 2 else None

    p = wait_for('the pool to hold 2 ready sandboxes', filled, timeout=90, log=op.log)
    assert 'aenv.io/cleanup' in p['metadata'].get('finalizers', []), p['metadata']
    _, listed = http('GET', kmock_url + cr_path(ns))
    waiting = [i for i in listed['items'] if (i['metadata'].get('labels') or {}).get('aenv.io/pool') == 'warm']
    assert len(waiting) == 2, listed
    assert sorted(i['metadata']['name'] for i in waiting) == op.containers()

    # The SDK's create is served from the pool: Running at once, and the CR says where it came from.
    status, claimed = op.api('POST', '/env-instance', {
        'envName': 'pooled@1.0.0', 'datasource': '', 'ttl': '10m', 'arguments': [],
        'environment_variables': {'envNAME': 'pooled', 'envversion': '1.0.0'}})
    assert status == 200 and claimed['data']['status'] == 'Running' and claimed['data']['ip'], claimed
    iid = claimed['data']['id']
    _, cr = http('GET', kmock_url + cr_path(ns, iid))
    assert cr['metadata']['annotations']['aenv.io/claimed-from'] == 'warm', cr['metadata']
    assert 'aenv.io/pool' not in (cr['metadata'].get('labels') or {}), cr['metadata']
    assert cr['spec']['ttl'] == '10m'

    # The pool refills; deleting it (kubectl delete) removes the waiting sandboxes and keeps the claimed one.
    wait_for('the refill', lambda: len(op.containers()) == 3, timeout=60, log=op.log)
    status, _ = http('DELETE', f"{kmock_url}{pools}/warm")
    assert status == 200
    wait_for('the pool CR to go', lambda: http('GET', f"{kmock_url}{pools}/warm")[0] == 404, timeout=30, log=op.log)
    wait_for('only the claimed sandbox left', lambda: op.containers() == [iid], timeout=30, log=op.log)


def test_a_service_cr_runs_replicas_as_instance_crs_and_its_deletion_removes_them(kmock_url, make_operator, test_image):
    ns = unique('e2e-svc')
    op = make_operator(ns)
    status, env = op.api('POST', '/env', {'name': 'served', 'version': '1.0.0',
                                          'artifacts': [{'type': 'image', 'content': test_image}]})
    assert status == 200, env
    # What `kubectl apply -f service.yaml` sends.
    svc = {'apiVersion': 'aenv.io/v1alpha1', 'kind': 'EnvService', 'metadata': {'name': 'web', 'namespace': ns},
           'spec': {'envName': 'served@1.0.0', 'replicas': 2, 'port': 8081}}
    services = f"{GROUP}/namespaces/{ns}/envservices"
    status, created = http('POST', kmock_url + services, svc)
    assert status in (200, 201), created

    def available():
        _, s = http('GET', f"{kmock_url}{services}/web")
        st = (s or {}).get('status') or {}
        return s if st.get('phase') == 'Running' and st.get('availableReplicas') == 2 else None

    s = wait_for('the service to have 2 available replicas', available, timeout=90, log=op.log)
    assert 'aenv.io/cleanup' in s['metadata'].get('finalizers', []), s['metadata']
    _, listed = http('GET', kmock_url + cr_path(ns))
    replicas = [i for i in listed['items'] if (i['metadata'].get('labels') or {}).get('aenv.io/service') == 'web']
    assert len(replicas) == 2, listed
    assert sorted(i['metadata']['name'] for i in replicas) == op.containers()
    # The REST API reads the same object.
    status, got = op.api('GET', '/env-service/web')
    assert status == 200 and got['data']['available_replicas'] == 2, got

    status, _ = http('DELETE', f"{kmock_url}{services}/web")
    assert status == 200
    wait_for('the service CR to go', lambda: http('GET', f"{kmock_url}{services}/web")[0] == 404, timeout=30, log=op.log)
    wait_for('its replicas to go', lambda: op.containers() == [], timeout=30, log=op.log)


def test_with_the_kubernetes_engine_a_service_is_a_deployment_a_cluster_ip_service_and_a_claim(kmock_url, make_operator):
    """--engine kubernetes: no Pods run under kmock (it has no kubelet and no Deployment controller), so the test
    plays the Deployment controller's part by writing the Deployment's status, as the real one would."""
    ns = unique('e2e-k8svc')
    op = make_operator(ns, '--engine', 'kubernetes')
    status, env = op.api('POST', '/env', {'name': 'served', 'version': '1.0.0',
                                          'artifacts': [{'type': 'image', 'content': 'aenv-test/sandbox:local'}]})
    assert status == 200, env
    body = {'envName': 'served@1.0.0', 'service_name': 'web', 'replicas': 1, 'port': 8081, 'pvc_name': 'data',
            'storage_size': '2Gi', 'environment_variables': {'MODE': 'a'}, 'cpu_request': '250m', 'cpu_limit': '1',
            'memory_request': '64Mi', 'memory_limit': '128Mi', 'ephemeral_storage_limit': '1Gi'}
    status, made = op.api('POST', '/env-service', body)
    assert status == 200, made
    assert made['data']['service_url'] == f"http://web.{ns}.svc.cluster.local:8081", made

    deployment_path = f"{kmock_url}/apis/apps/v1/namespaces/{ns}/deployments/web"

    def deployment():
        code, d = http('GET', deployment_path)
        return d if code == 200 else None

    d = wait_for('the Deployment', deployment, timeout=30, log=op.log)
    assert d['spec']['replicas'] == 1
    assert d['spec']['strategy'] == {'type': 'RollingUpdate', 'rollingUpdate': {'maxUnavailable': 0, 'maxSurge': 1}}
    assert d['metadata']['labels']['aenv.io/operator-id'] == op.operator_id
    pod = d['spec']['template']['spec']
    main = pod['containers'][0]
    assert main['image'] == 'aenv-test/sandbox:local'
    assert {'name': 'MODE', 'value': 'a'} in main['env'], main['env']
    assert main['resources'] == {'limits': {'cpu': '1', 'memory': '128Mi', 'ephemeral-storage': '1Gi'},
                                 'requests': {'cpu': '250m', 'memory': '64Mi'}}, main['resources']
    claim = pod['volumes'][0]['persistentVolumeClaim']['claimName']
    assert main['volumeMounts'] == [{'name': 'data', 'mountPath': '/home/admin/data'}]

    def k8s_service():
        code, s = http('GET', f"{kmock_url}/api/v1/namespaces/{ns}/services/web")
        return s if code == 200 else None

    s = wait_for('the Service', k8s_service, timeout=30, log=op.log)
    assert s['spec']['type'] == 'ClusterIP' and s['spec']['ports'][0]['port'] == 8081, s['spec']
    assert s['spec']['selector'] == d['spec']['selector']['matchLabels'], (s['spec'], d['spec'])
    claim_path = f"{kmock_url}/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}"
    code, pvc = http('GET', claim_path)
    assert code == 200 and pvc['spec']['resources']['requests']['storage'] == '2Gi', pvc
    assert pvc['spec']['accessModes'] == ['ReadWriteOnce']

    # Pending until the Deployment says its replica is available.
    status, got = op.api('GET', '/env-service/web')
    assert got['data']['status'] == 'Pending' and got['data']['available_replicas'] == 0, got
    code, _ = http('PATCH', deployment_path,
                   {'status': {'replicas': 1, 'readyReplicas': 1, 'availableReplicas': 1, 'updatedReplicas': 1}},
                   content_type='application/merge-patch+json')
    assert code == 200

    def running():
        _, got = op.api('GET', '/env-service/web')
        data = (got or {}).get('data') or {}
        return got if data.get('status') == 'Running' and data.get('available_replicas') == 1 else None

    wait_for('the service to read Running with 1 available', running, timeout=30, log=op.log)
    _, cr = http('GET', f"{kmock_url}{GROUP}/namespaces/{ns}/envservices/web")
    assert cr['status']['availableReplicas'] == 1 and cr['status']['updatedReplicas'] == 1, cr['status']
    _, listed = http('GET', kmock_url + cr_path(ns))
    assert listed['items'] == [], 'no EnvInstance per replica: the Deployment keeps them'

    # A rolling update is the Deployment's new template.
    status, _ = op.api('PUT', '/env-service/web', {'environment_variables': {'MODE': 'b'}})
    assert status == 200

    def rolled():
        d = deployment()
        env = d['spec']['template']['spec']['containers'][0]['env'] if d else []
        return {'name': 'MODE', 'value': 'b'} in env

    wait_for('the Deployment to carry MODE=b', rolled, timeout=30, log=op.log)

    # Storage keeps one replica: more is refused, naming both fields, and nothing changes.
    status, refused = op.api('PUT', '/env-service/web', {'replicas': 2})
    assert status == 400 and 'storage_size' in refused['message'], refused

    # DELETE without deleteStorage: the Deployment and the Service go, the claim stays.
    status, _ = op.api('DELETE', '/env-service/web')
    assert status == 200
    wait_for('the Deployment to go', lambda: http('GET', deployment_path)[0] == 404, timeout=30, log=op.log)
    wait_for('the Service to go', lambda: k8s_service() is None, timeout=30, log=op.log)
    assert http('GET', claim_path)[0] == 200, 'the claim is kept'

    # The same pvc_name mounts the same claim; deleteStorage=true removes it.
    status, made = op.api('POST', '/env-service', dict(body, service_name='web2'))
    assert status == 200, made
    d2 = wait_for('the second Deployment',
                  lambda: (lambda r: r[1] if r[0] == 200 else None)(
                      http('GET', f"{kmock_url}/apis/apps/v1/namespaces/{ns}/deployments/web2")),
                  timeout=30, log=op.log)
    assert d2['spec']['template']['spec']['volumes'][0]['persistentVolumeClaim']['claimName'] == claim
    status, _ = op.api('DELETE', '/env-service/web2?deleteStorage=true')
    assert status == 200
    wait_for('the claim to go', lambda: http('GET', claim_path)[0] == 404, timeout=30, log=op.log)
    wait_for('the service CR to go',
             lambda: http('GET', f"{kmock_url}{GROUP}/namespaces/{ns}/envservices/web2")[0] == 404,
             timeout=30, log=op.log)
