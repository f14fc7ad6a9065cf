"""The Helm chart, rendered and linted offline with helm-python-sdk (Helm's Go SDK through ctypes)."""
import pathlib
import re
import subprocess
import tempfile

import helm_python as helm
import pytest
import yaml

from conftest import ROOT, operator_binary

CHART = ROOT / 'charts' / 'aenv-operator'


def render(values: dict, namespace: str = 'aenv') -> list[dict]:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values, name='demo', namespace=namespace)
    docs = []
    for path, text in files.items():
        if path.endswith('.yaml'):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def one(docs, kind, name_suffix=''):
    found = [d for d in docs if d['kind'] == kind and d['metadata']['name'].endswith(name_suffix)]
    assert len(found) == 1, [(d['kind'], d['metadata']['name']) for d in docs]
    return found[0]


def operator_container(docs):
    return one(docs, 'Deployment')['spec']['template']['spec']['containers'][0]


def rules(docs):
    return [(r['apiGroups'][0], res, tuple(r['verbs']), d['kind'], d['metadata'].get('namespace'))
            for d in docs if d['kind'] in ('Role', 'ClusterRole') for r in d['rules'] for res in r['resources']]


def test_the_chart_lints_clean():
    result = helm.lint(str(CHART))
    assert result['errors'] == [], result
    assert [m for m in result['messages'] if m['severity'] > 1] == [], result


def test_docker_disabled_runs_pods_with_pod_rbac_in_the_sandbox_namespace_only():
    docs = render({'docker': {'enabled': False}, 'sandboxNamespace': 'aenv-sandbox'})
    c = operator_container(docs)
    assert '--engine=kubernetes' in c['args'] and '--store=kubernetes' in c['args']
    assert '--sandbox-namespace=aenv-sandbox' in c['args']
    assert not any(a.startswith('--docker-host') for a in c['args'])
    assert 'volumeMounts' not in c
    assert 'volumes' not in one(docs, 'Deployment')['spec']['template']['spec']
    assert not any(e['name'].startswith('DOCKER_') for e in c['env'])
    pods = [r for r in rules(docs) if r[1] == 'pods']
    assert pods == [('', 'pods', ('get', 'list', 'watch', 'create', 'patch', 'delete'), 'Role', 'aenv-sandbox')], pods
    execs = [r for r in rules(docs) if r[1] == 'pods/exec']
    assert execs == [('', 'pods/exec', ('get', 'create'), 'Role', 'aenv-sandbox')], execs
    # EnvServices: Deployment, Service and claim, in the sandbox namespace too.
    service_objects = [r for r in rules(docs) if r[1] in ('deployments', 'services', 'persistentvolumeclaims')]
    assert service_objects == [
        ('apps', 'deployments', ('get', 'create', 'patch', 'delete'), 'Role', 'aenv-sandbox'),
        ('', 'services', ('get', 'create', 'delete'), 'Role', 'aenv-sandbox'),
        ('', 'persistentvolumeclaims', ('get', 'create', 'delete'), 'Role', 'aenv-sandbox'),
    ], service_objects
    binding = one(docs, 'RoleBinding', '-pods')
    assert binding['metadata']['namespace'] == 'aenv-sandbox'
    assert binding['subjects'] == [{'kind': 'ServiceAccount', 'name': 'demo-aenv-operator', 'namespace': 'aenv'}]


def test_docker_enabled_with_the_socket_mounts_it_and_grants_no_pods():
    docs = render({'docker': {'enabled': True, 'host': 'unix:///var/run/docker.sock'}})
    c = operator_container(docs)
    assert '--engine=docker' in c['args'] and '--docker-host=unix:///var/run/docker.sock' in c['args']
    assert c['volumeMounts'] == [{'name': 'docker-socket', 'mountPath': '/var/run/docker.sock'}]
    volumes = one(docs, 'Deployment')['spec']['template']['spec']['volumes']
    assert volumes == [{'name': 'docker-socket', 'hostPath': {'path': '/var/run/docker.sock', 'type': 'Socket'}}]
    assert not any(r[1] in ('pods', 'pods/exec') for r in rules(docs)), rules(docs)
    assert not any(r[1] in ('deployments', 'persistentvolumeclaims') for r in rules(docs)), rules(docs)
    assert not any(e['name'].startswith('DOCKER_TLS') for e in c['env'])


def test_docker_enabled_over_tls_mounts_the_secret_and_sets_the_docker_variables():
    docs = render({'docker': {'enabled': True, 'host': 'tcp://docker.example:2376',
                              'tls': {'verify': True, 'secretName': 'docker-client-certs'}}})
    c = operator_container(docs)
    assert '--engine=docker' in c['args'] and '--docker-host=tcp://docker.example:2376' in c['args']
    env = {e['name']: e.get('value') for e in c['env']}
    assert env['DOCKER_TLS_VERIFY'] == '1' and env['DOCKER_CERT_PATH'] == '/etc/aenv/docker-tls'
    assert c['volumeMounts'] == [{'name': 'docker-tls', 'mountPath': '/etc/aenv/docker-tls', 'readOnly': True}]
    volumes = one(docs, 'Deployment')['spec']['template']['spec']['volumes']
    assert volumes == [{'name': 'docker-tls', 'secret': {'secretName': 'docker-client-certs', 'items': [
        {'key': 'ca.pem', 'path': 'ca.pem'}, {'key': 'cert.pem', 'path': 'cert.pem'},
        {'key': 'key.pem', 'path': 'key.pem'}]}}], 'no host socket over TCP'
    assert not any(r[1] == 'pods' for r in rules(docs))


@pytest.mark.parametrize('values, message', [
    ({'docker': {'enabled': False, 'compose': {'enabled': True}}}, 'compose stacks run on the Docker engine only'),
    ({'docker': {'enabled': True, 'host': 'tcp://d:2376', 'tls': {'verify': True}}}, 'docker.tls.secretName'),
    ({'docker': {'enabled': True, 'tls': {'verify': True, 'secretName': 's'}}}, 'needs a tcp://'),
    ({'gateway': {'auth': {'enabled': True}}}, 'gateway.auth.secretName'),
])
def test_contradictory_values_are_refused_with_a_message(values, message):
    with pytest.raises(Exception, match=re.escape(message)):
        render(values)


def test_instances_rbac_status_events_and_the_lease_with_replicas():
    docs = render({'replicaCount': 2})
    c = operator_container(docs)
    assert '--leader-elect' in c['args'] and '--leader-elect-namespace=aenv' in c['args']
    # Followers forward the writes that take quota to the leader's Pod address.
    assert '--advertise-url=http://$(POD_IP):8080' in c['args'] and '--forward-timeout=60s' in c['args']
    env = {e['name']: e for e in c['env']}
    assert env['POD_IP']['valueFrom']['fieldRef']['fieldPath'] == 'status.podIP'
    r = rules(docs)
    assert ('aenv.io', 'envinstances/status', ('get', 'update', 'patch'), 'Role', 'aenv') in r
    assert any(x[0] == 'aenv.io' and x[1] == 'envservices' and 'watch' in x[2] for x in r), r
    assert any(x[1] == 'envservices/status' and 'patch' in x[2] for x in r), r
    assert ('events.k8s.io', 'events', ('create', 'patch'), 'Role', 'aenv') in r
    assert ('coordination.k8s.io', 'leases', ('get', 'list', 'watch', 'create', 'update', 'patch'), 'Role', 'aenv') in r
    single = render({})
    assert '--leader-elect' not in operator_container(single)['args']
    assert not any(a.startswith('--advertise-url') for a in operator_container(single)['args'])
    assert not any(x[1] == 'leases' for x in rules(single))
    cluster = render({'watchAllNamespaces': True})
    assert '--all-namespaces' in operator_container(cluster)['args']
    assert any(x[1] == 'envinstances' and x[3] == 'ClusterRole' for x in rules(cluster))
    one(cluster, 'ClusterRoleBinding')


def test_the_service_exposes_the_api_the_proxy_and_metrics():
    svc = one(render({}), 'Service')
    ports = {p['name']: (p['port'], p['targetPort']) for p in svc['spec']['ports']}
    assert ports == {'http': (8080, 'http'), 'proxy': (8081, 'proxy'), 'metrics': (9090, 'http')}


def test_chart_crds_equal_the_repository_crds_which_equal_the_binary_output():
    chart_crds = sorted(p.name for p in (CHART / 'crds').iterdir())
    repo_crds = sorted(p.name for p in (ROOT / 'crds').iterdir())
    assert chart_crds == repo_crds == [
        'envinstances.aenv.io.yaml', 'environments.aenv.io.yaml', 'envpools.aenv.io.yaml', 'envservices.aenv.io.yaml']
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([str(operator_binary()), 'crds', '--out-dir', out], check=True)
        for name in repo_crds:
            generated = (pathlib.Path(out) / name).read_bytes()
            assert (ROOT / 'crds' / name).read_bytes() == generated, f'crds/{name} is stale'
            assert (CHART / 'crds' / name).read_bytes() == generated, \
                f'charts/aenv-operator/crds/{name} differs: cp crds/*.yaml charts/aenv-operator/crds/'


def test_every_value_is_commented():
    lines = (CHART / 'values.yaml').read_text().splitlines()
    free_form = ('resources',)  # its content is Kubernetes' own schema, passed through
    uncommented, skip_indent = [], None
    for i, line in enumerate(lines):
        m = re.match(r'^(\s*)([A-Za-z][\w.-]*):(.*)$', line)
        if not m:
            continue
        indent = len(m.group(1))
        if skip_indent is not None:
            if indent > skip_indent:
                continue
            skip_indent = None
        key, rest = m.group(2), m.group(3).strip()
        if key in free_form:
            skip_indent = indent
        if rest == '' and key not in free_form:
            continue  # a parent mapping: its leaves carry the comments
        previous = next((p.strip() for p in reversed(lines[:i]) if p.strip()), '')
        if not previous.startswith('#'):
            uncommented.append(key)
    assert uncommented == [], f'values without a comment: {uncommented}'


def test_gateway_auth_mounts_the_tokens_file_and_without_it_the_operator_is_told_it_is_insecure():
    c = operator_container(render({}))
    assert '--insecure' in c['args'] and not any(a.startswith('--tokens-file') for a in c['args'])
    assert '--proxy-listen=0.0.0.0:8081' in c['args'] and '--api-listen=0.0.0.0:8080' in c['args']
    docs = render({'gateway': {'auth': {'enabled': True, 'secretName': 'aenv-tokens'}}})
    c = operator_container(docs)
    assert '--tokens-file=/etc/aenv/tokens/tokens.json' in c['args'] and '--insecure' not in c['args']
    assert {'name': 'tokens', 'mountPath': '/etc/aenv/tokens', 'readOnly': True} in c['volumeMounts']
    volumes = one(docs, 'Deployment')['spec']['template']['spec']['volumes']
    tokens = [v for v in volumes if v['name'] == 'tokens'][0]
    assert tokens['secret'] == {'secretName': 'aenv-tokens', 'items': [{'key': 'tokens.json', 'path': 'tokens.json'}]}
    assert '--proxy-auth' not in c['args']
    c = operator_container(render({'gateway': {'auth': {'enabled': True, 'secretName': 't', 'proxyAuth': True}}}))
    assert '--proxy-auth' in c['args']
    # Auth works with the Pod engine too (no Docker volumes then).
    c = operator_container(render({'docker': {'enabled': False}, 'gateway': {'auth': {'enabled': True, 'secretName': 't'}}}))
    assert [m['name'] for m in c['volumeMounts']] == ['tokens']


def test_connection_limits_and_the_maximum_ttl_reach_the_operator():
    args = operator_container(render({}))['args']
    for flag in ('--header-read-timeout=10s', '--idle-timeout=5m', '--max-connections=1024',
                 '--max-connections-per-ip=128', '--max-ttl=168h'):
        assert flag in args, (flag, args)
    args = operator_container(render({'gateway': {'maxConnectionsPerIp': 4000}, 'engine': {'maxTtl': '24h'}}))['args']
    assert '--max-connections-per-ip=4000' in args and '--max-ttl=24h' in args


def test_compose_is_opt_in_with_the_docker_engine():
    args = operator_container(render({'docker': {'enabled': True}}))['args']
    assert '--disable-compose' in args, 'docker.compose.enabled defaults to false: stacks are refused with a 400'
    args = operator_container(render({'docker': {'enabled': True, 'compose': {'enabled': True}}}))['args']
    assert '--disable-compose' not in args


def test_docker_allow_and_registry_allow_become_flags():
    args = operator_container(render({'docker': {'enabled': True}}))['args']
    assert not any(a.startswith(('--allow', '--registry-allow')) for a in args), args
    values = {'docker': {'enabled': True, 'allow': ['host-ports', 'cap-add'],
                         'registryAllow': ['127.0.0.1:5000', '*.corp.example']}}
    args = operator_container(render(values))['args']
    assert '--allow=host-ports,cap-add' in args and '--registry-allow=127.0.0.1:5000,*.corp.example' in args, args


def test_every_flag_the_chart_passes_is_one_the_binary_knows():
    help_text = subprocess.run([str(operator_binary()), 'serve', '--help'], capture_output=True, text=True, check=True).stdout
    for values in ({}, {'docker': {'enabled': False}}, {'gateway': {'auth': {'enabled': True, 'secretName': 't'}}},
                   {'gateway': {'auth': {'enabled': True, 'secretName': 't', 'proxyAuth': True}}},
                   {'docker': {'enabled': True}}, {'docker': {'enabled': True, 'compose': {'enabled': True}}},
                   {'docker': {'enabled': True, 'allow': ['host-ports'], 'registryAllow': ['127.0.0.1:5000']}},
                   {'replicaCount': 2}):
        for arg in operator_container(render(values))['args']:
            flag = arg.split('=')[0]
            assert f'{flag} ' in help_text or f'{flag}\n' in help_text or f'{flag} <' in help_text, f'{flag} is not a flag of serve'
