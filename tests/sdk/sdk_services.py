"""Drives a running aenv-operator's /env-service with the real AEnvironment Python SDK (aenvironment==0.1.7).

    python tests/sdk/sdk_services.py API_URL ENV_NAME@VERSION SERVICE_NAME

Prints one line per step and exits non-zero at the first step that does not behave as the SDK's users rely on.
"""

import asyncio
import sys
import time

import httpx
from aenv.client.scheduler_client import AEnvSchedulerClient


def step(msg: str) -> None:
    print(f"ok: {msg}", flush=True)


async def wait(c: AEnvSchedulerClient, sid: str, pred, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        svc = await c.get_env_service(sid)
        if pred(svc):
            return svc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: last {svc}")
        await asyncio.sleep(0.2)


async def main(api: str, env: str, sid: str) -> None:
    name = env.split("@")[0]
    async with AEnvSchedulerClient(api, timeout=30.0, max_retries=0) as c:
        svc = await c.create_env_service(
            name=env, service_name=sid, replicas=2, port=8081, environment_variables={"MODE": "a"},
            cpu_request="100m", cpu_limit="1", memory_request="64Mi", memory_limit="256Mi",
        )
        assert svc.id == sid and svc.replicas == 2 and svc.status in ("Pending", "Running"), svc
        assert svc.env is not None and svc.env.name == name, svc
        step(f"create_env_service -> {svc.id} {svc.status}")
        svc = await wait(c, sid, lambda s: s.status == "Running" and s.available_replicas == 2, "never Running")
        assert svc.service_url, svc
        step(f"get_env_service -> Running, 2 available, {svc.service_url}")
        r = httpx.get(f"{svc.service_url}/health", timeout=10)
        assert r.status_code == 200 and "healthy" in r.text, r.text
        step("service_url answers from a replica")
        listed = await c.list_env_services()
        assert [s.id for s in listed] == [sid], listed
        by_env = await c.list_env_services(env_name=name)
        assert [s.id for s in by_env] == [sid], by_env
        assert await c.list_env_services(env_name="no-such-env") == []
        step("list_env_services (all, by env, none)")
        svc = await c.update_env_service(sid, replicas=3, environment_variables={"MODE": "b"})
        assert svc.replicas == 3 and svc.environment_variables == {"MODE": "b"}, svc
        step(f"update_env_service -> {svc.status}")
        await wait(c, sid, lambda s: s.status == "Running" and s.available_replicas == 3, "update never finished")
        step("rolled to 3 replicas with MODE=b")
        try:
            await c.create_env_service(name=env, replicas=2, storage_size="1Gi")
            raise AssertionError("replicas 2 with storage_size was accepted")
        except AssertionError:
            raise
        except Exception as e:  # the SDK raises its EnvironmentError with the server's message
            assert "replicas" in str(e) and "storage_size" in str(e), e
        step("replicas > 1 with storage_size refused, naming both")
        assert await c.delete_env_service(sid, delete_storage=True) is True
        step("delete_env_service")
        try:
            await c.get_env_service(sid)
            raise AssertionError("a deleted service is still readable")
        except AssertionError:
            raise
        except Exception:
            pass
        try:
            await c.update_env_service(sid, replicas=1)
            raise AssertionError("a deleted service was updated")
        except AssertionError:
            raise
        except Exception as e:
            assert "not found" in str(e), e
        step("get/update of a deleted service fail (404)")
    print("all SDK service steps passed", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
