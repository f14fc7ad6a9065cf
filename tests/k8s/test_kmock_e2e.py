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
