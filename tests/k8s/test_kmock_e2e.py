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
