"""Two replicas with --leader-elect against one kmock: the writes that take quota are served by the holder of the
Lease (a follower forwards them), so an owner's maxInstances, --max-instances and pool demand hold across
replicas exactly; a spoofed forwarding mark buys nothing; killing the leader hands the API over once its Lease
expires. The real binary twice, the real Docker daemon behind the leader."""
import concurrent.futures
import json
import os
import pathlib
import tempfile
import threading
import time
import urllib.error
import urllib.request

from conftest import docker, http, wait_for

GROUP = '/apis/aenv.io/v1alpha1'
ALICE = 'alice-token-0123456789'
CAROL = 'carol-token-0123456789'
BOB = 'bob-token-0123456789ab'
# alice's and carol's maxInstances. Two replicas that each count alone accept two creates of a cap of 1 fired at
# both at once (the binary before this change did, every time); and one more live instance than --max-instances
# leaves room for.
# Owners' names are this run's own: the Docker engine names owners' networks by owner, and a network another run
# left behind on the shared daemon is not this operator's.
TAG = f"{os.getpid() % 10000}{int(time.time() * 1000) % 100000}"
CAPS = {f'alice-{TAG}': (ALICE, 1), f'carol-{TAG}': (CAROL, 3)}
BOB_OWNER = f'bob-{TAG}'
MAX_LIVE = 1 + 3 + 1  # --max-instances: room for one of bob's


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 10000}{int(time.time() * 1000) % 100000}"


def call(op, method: str, path: str, token: str, body=None, headers=None):
    """(status, JSON or text, response headers) of one request to `op` as the owner of `token`."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{op.port}{path}", data=data, method=method)
    req.add_header('Authorization', f'Bearer {token}')
    if data is not None:
        req.add_header('Content-Type', 'application/json')
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw, hdrs = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), e.headers
    try:
        return status, json.loads(raw) if raw else None, hdrs
    except ValueError:
        return status, raw.decode(errors='replace'), hdrs


def create_body(image: str) -> dict:
    return {'name': 'replicated', 'version': '1.0.0', 'artifacts': [{'type': 'image', 'content': image}],
            'deployConfig': {'ttl': '10m', 'arguments': ['sleep', '600'], 'readiness': False}}


def lease(kmock_url: str, ns: str) -> dict:
    _, got = http('GET', f"{kmock_url}/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/aenv-operator")
    return got or {}


def holder(kmock_url: str, ns: str):
    return ((lease(kmock_url, ns).get('spec') or {}).get('holderIdentity'))


def instance_crs(kmock_url: str, ns: str, *owners: str) -> list:
    _, listed = http('GET', f"{kmock_url}{GROUP}/namespaces/{ns}/envinstances")
    return [i for i in (listed or {}).get('items', [])
            if i['spec'].get('owner') in owners and not i['metadata'].get('deletionTimestamp')]


def test_two_replicas_hold_caps_and_pool_demand_exactly_and_hand_over_when_the_leader_dies(
        kmock_url, make_operator, test_image, request):
    ns = unique('e2e-replicas')
    tokens = tempfile.NamedTemporaryFile('w', suffix='.json', delete=False)
    json.dump({'tokens': [{'token': t, 'owner': o, 'maxInstances': cap} for o, (t, cap) in CAPS.items()]
              + [{'token': BOB, 'owner': BOB_OWNER}]}, tokens)
    tokens.close()
    operator_id = unique('kmock-replicas')

    def remove_networks():
        # A killed leader leaves its owners' networks behind: this run's own, removed at the end.
        nets = docker('network', 'ls', '-q', '--filter', f'label=aenv.io/operator-id={operator_id}').stdout.split()
        if nets:
            docker('network', 'rm', *nets)

    request.addfinalizer(remove_networks)
    # A short Lease, for a quick hand-over, with 2 s of slack for a leader's late renewal on a busy machine (a
    # follower that sees the Lease expire answers 503 until it is renewed or taken over).
    common = ['--leader-elect', '--leader-elect-lease-duration', '6s', '--leader-elect-renew-grace', '2s',
              '--tokens-file', tokens.name, '--max-instances', str(MAX_LIVE), '--forward-timeout', '20s',
              '--proxy-listen', '127.0.0.1:0']
    first = make_operator(ns, *common, '--leader-elect-identity', 'replica-1', operator_id=operator_id)
    wait_for('replica-1 to hold the Lease', lambda: holder(kmock_url, ns) == 'replica-1', timeout=30, log=first.log)
    second = make_operator(ns, *common, '--leader-elect-identity', 'replica-2', operator_id=operator_id)
    leader, follower = first, second
    logs = lambda: f"--- leader ---\n{leader.log()[-4000:]}\n--- follower ---\n{follower.log()[-4000:]}"

    # The leader publishes its API's URL on the Lease; the follower forwards to it (a body the leader refuses
    # says so without creating anything).
    meta = wait_for('the URL on the Lease', lambda: (lease(kmock_url, ns).get('metadata') or {}).get('annotations'),
                    timeout=20, log=logs)
    assert meta.get('aenv.io/api-url-holder') == 'replica-1', meta
    assert meta.get('aenv.io/api-url') == f"http://127.0.0.1:{leader.port}", meta
    wait_for('the follower to forward',
             lambda: call(follower, 'POST', '/env-instance', ALICE, {'name': 'x'})[0] not in (503, 401), timeout=20, log=logs)

    # A client cannot spoof the forwarding mark into a local count: the follower refuses it with 503.
    status, answer, hdrs = call(follower, 'POST', '/env-instance', ALICE, create_body(test_image),
                                headers={'aenv-forwarded-by': 'replica-1'})
    assert status == 503 and hdrs.get('Retry-After') == '1', (status, answer)
    assert 'does not hold the Lease' in answer['message'], answer
    assert instance_crs(kmock_url, ns, *CAPS) == []
    # Without a valid token the follower answers 401 itself.
    assert call(follower, 'POST', '/env-instance', 'not-a-token-at-all', create_body(test_image))[0] == 401

    # Owners' caps: concurrent creates through both replicas at once, more than the cap: exactly the cap is
    # accepted.
    def fire(n: int, token: str):
        barrier = threading.Barrier(n)

        def one(i: int):
            barrier.wait()
            return call((leader, follower)[i % 2], 'POST', '/env-instance', token, create_body(test_image))

        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
            futures = [pool.submit(one, i) for i in range(n)]
            return [(i % 2, *f.result()[:2]) for i, f in enumerate(futures)]

    for owner, (token, cap) in CAPS.items():
        answers = fire(12, token)
        accepted = [a for a in answers if a[1] == 200]
        assert len(accepted) == cap, (owner, answers)
        assert all(a[1] == 403 and 'Instance count exceeds limit' in a[2]['message']
                   for a in answers if a[1] != 200), answers
        assert {a[0] for a in answers if a[1] == 403} == {0, 1}, 'both replicas refused past the cap'
        assert len(instance_crs(kmock_url, ns, owner)) == cap

    # --max-instances: alice and carol hold 4, bob (no cap of his own) gets exactly the one left through both.
    answers = fire(12, BOB)
    bobs = [a[2]['data']['id'] for a in answers if a[1] == 200]
    assert len(bobs) == MAX_LIVE - 4, answers
    assert all(a[1] == 403 and 'live instances' in a[2]['message'] for a in answers if a[1] != 200), answers
    assert len(instance_crs(kmock_url, ns, BOB_OWNER)) == MAX_LIVE - 4

    # Room again (deletes are served where they arrive).
    for iid in bobs:
        deleted = call(follower, 'DELETE', f'/env-instance/{iid}', BOB)
        assert deleted[0] == 200, deleted
    for owner, (token, _) in CAPS.items():
        for cr in instance_crs(kmock_url, ns, owner):
            deleted = call(follower, 'DELETE', f"/env-instance/{cr['metadata']['name']}", token)
            assert deleted[0] == 200, deleted
    wait_for('the deletions', lambda: instance_crs(kmock_url, ns, *CAPS, BOB_OWNER) == [], timeout=30, log=logs)

    # Pool demand: a pool made through the follower fills; a create sent to the follower is served from it and
    # counts as a hit on the leader, whose pool controller writes it into the pool's status.
    status, env, _ = call(follower, 'POST', '/env', BOB, {'name': 'pooled', 'version': '1.0.0',
                                                           'artifacts': [{'type': 'image', 'content': test_image}]})
    assert status == 200, env
    status, made, _ = call(follower, 'POST', '/env-pool', BOB, {'name': 'warm', 'envName': 'pooled@1.0.0', 'replicas': 1})
    assert status == 200, made
    pools = f"{kmock_url}{GROUP}/namespaces/{ns}/envpools"
    wait_for('the pool to hold a ready sandbox',
             lambda: ((http('GET', f"{pools}/warm")[1] or {}).get('status') or {}).get('ready') == 1,
             timeout=90, log=logs)
    status, claimed, _ = call(follower, 'POST', '/env-instance', BOB, {
        'envName': 'pooled@1.0.0', 'datasource': '', 'ttl': '10m', 'arguments': [],
        'environment_variables': {'envNAME': 'pooled', 'envversion': '1.0.0'}})
    assert status == 200 and claimed['data']['status'] == 'Running', claimed
    _, cr = http('GET', f"{kmock_url}{GROUP}/namespaces/{ns}/envinstances/{claimed['data']['id']}")
    assert cr['metadata']['annotations']['aenv.io/claimed-from'] == 'warm', cr['metadata']
    # The hit was counted by the leader (whose pool controller sizes the pool by its demand), none by the
    # follower. (The pool's status carries it too, but kmock's watches fail for want of resourceVersions, so a
    # status write from a stale cache may take it back there: not asserted.)
    def hits(op) -> str:
        _, text = http('GET', f"http://127.0.0.1:{op.port}/metrics")
        return [line for line in text.splitlines() if line.startswith('aenv_pool_claims_total{')]

    assert hits(leader) == ['aenv_pool_claims_total{result="hit"} 1'], hits(leader)
    assert hits(follower) == [], hits(follower)

    # The leader dies without giving its Lease up: the follower says so (503) rather than counting itself...
    leader.kill()
    status, answer, hdrs = call(follower, 'POST', '/env-instance', BOB, create_body(test_image))
    assert status == 503 and hdrs.get('Retry-After') == '1', (status, answer)
    # ...and once the Lease expires it takes over and serves creates itself.
    wait_for('replica-2 to hold the Lease', lambda: holder(kmock_url, ns) == 'replica-2', timeout=40, log=logs)
    created = wait_for('a create served by the new leader',
                       lambda: (lambda a: a if a[0] == 200 else None)(
                           call(follower, 'POST', '/env-instance', BOB, create_body(test_image))),
                       timeout=20, log=logs)
    assert created[1]['data']['id'], created
    meta = (lease(kmock_url, ns).get('metadata') or {}).get('annotations') or {}
    assert meta.get('aenv.io/api-url-holder') == 'replica-2', meta
    pathlib.Path(tokens.name).unlink()
    second.stop()
