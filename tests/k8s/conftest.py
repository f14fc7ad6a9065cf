"""Fixtures for the Kubernetes-mode suites: the kmock API emulator, the operator binary, and HTTP helpers."""
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEST_IMAGE = 'aenv-test/sandbox:local'


def operator_binary() -> pathlib.Path:
    explicit = os.environ.get('AENV_OPERATOR_BIN')
    if explicit:
        return pathlib.Path(explicit)
    target = pathlib.Path(os.environ.get('CARGO_TARGET_DIR', ROOT / 'target'))
    return target / 'debug' / 'aenv-operator'


def http(method: str, url: str, body=None, content_type='application/json', timeout=10):
    """(status, parsed JSON or text) of one request; never raises on an HTTP error status."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header('Content-Type', content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors='replace')


def wait_for(what: str, fn, timeout: float = 30.0, interval: float = 0.2, log=None):
    """Calls fn until it returns something truthy; fails with `what` (and the operator log) on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    tail = f"\n--- operator log ---\n{log()[-6000:]}" if log else ''
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last value: {last!r}{tail}")


def docker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(['docker', *args], capture_output=True, text=True)


@pytest.fixture(scope='session')
def kmock_url():
    """A kmock KubernetesEmulator on a loopback port, for the whole session."""
    proc = subprocess.Popen([sys.executable, str(pathlib.Path(__file__).with_name('kmock_server.py'))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.match(r'PORT=(\d+)', line or '')
    if not m:
        proc.kill()
        pytest.fail(f"kmock did not start: {line!r} {proc.stderr.read()}")
    yield f"http://127.0.0.1:{m.group(1)}"
    proc.terminate()
    proc.wait(timeout=10)


class Operator:
    """`aenv-operator serve` in Kubernetes mode against kmock, on a port it picks itself."""

    def __init__(self, kmock_url: str, namespace: str, extra: list[str], operator_id: str | None = None):
        binary = operator_binary()
        if not binary.exists():
            pytest.fail(f"{binary} is missing: build it first (cargo build -p aenv-operator, or scripts/test)")
        self.dir = tempfile.TemporaryDirectory(prefix='aenv-k8s-test-')
        self.log_path = pathlib.Path(self.dir.name) / 'operator.log'
        # Replicas of one release share an operator id.
        self.operator_id = operator_id or f"kmock-{os.getpid()}-{int(time.time() * 1000) % 1_000_000}"
        self.namespace = namespace
        args = [str(binary), 'serve', '--store', 'kubernetes', '--kube-api-url', kmock_url,
                '--namespace', namespace, '--operator-id', self.operator_id,
                '--api-listen', '127.0.0.1:0', '--data-dir', str(pathlib.Path(self.dir.name) / 'unused'),
                '--resync-interval', '2s', *extra]
        env = dict(os.environ, RUST_LOG='info,aenv_operator=debug,aenv_engine_k8s=debug', NO_COLOR='1')
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(self.log_path, 'w'), env=env)
        self.port = wait_for('the operator to listen', self._port, timeout=60, log=self.log)
        wait_for('/healthz', lambda: self.api('GET', '/healthz')[0] == 200, log=self.log)

    def log(self) -> str:
        return self.log_path.read_text(errors='replace') if self.log_path.exists() else ''

    def _port(self):
        if self.proc.poll() is not None:
            pytest.fail(f"the operator exited with {self.proc.returncode}:\n{self.log()[-6000:]}")
        m = re.search(r'REST API listening addr=\S*:(\d+)', self.log())
        return int(m.group(1)) if m else None

    def api(self, method: str, path: str, body=None):
        return http(method, f"http://127.0.0.1:{self.port}{path}", body)

    def containers(self) -> list[str]:
        out = docker('ps', '-a', '--filter', f'label=aenv.io/operator-id={self.operator_id}', '--format', '{{.Names}}')
        return sorted(n for n in out.stdout.split() if n)

    def kill(self):
        """SIGKILL: the process vanishes without giving its Lease up."""
        self.proc.kill()
        self.proc.wait(timeout=15)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for name in self.containers():
            docker('rm', '-f', name)
        self.dir.cleanup()


@pytest.fixture
def make_operator(kmock_url):
    started = []

    def make(namespace: str, *extra: str, operator_id: str | None = None) -> Operator:
        op = Operator(kmock_url, namespace, list(extra), operator_id)
        started.append(op)
        return op

    yield make
    for op in started:
        op.stop()


@pytest.fixture(scope='session')
def test_image():
    if docker('image', 'inspect', TEST_IMAGE).returncode != 0:
        build = subprocess.run(['bash', str(ROOT / 'scripts/build-test-image.sh'), TEST_IMAGE],
                               capture_output=True, text=True)
        assert build.returncode == 0, build.stderr
    return TEST_IMAGE
