"""Drives a running aenv-operator with the real AEnvironment Python SDK (aenvironment==0.1.7).

    python tests/sdk/sdk_flow.py HOST ENV_NAME@VERSION

The SDK always talks to ports 8080 (control) and 8081 (data plane) of HOST. Prints one line per step and exits
non-zero at the first step that does not behave as the SDK's users rely on.
"""

import asyncio
import sys

from aenv import Environment
from aenv.client.scheduler_client import AEnvSchedulerClient
from aenv.core.models import EnvStatus


def step(msg: str) -> None:
    print(f"ok: {msg}", flush=True)


async def scheduler_client_flow(host: str, env: str) -> None:
    async with AEnvSchedulerClient(f"http://{host}:8080", timeout=30.0, max_retries=0) as c:
        inst = await c.create_env_instance(
            name=env, ttl="10m", environment_variables={"FOO": "bar"}, owner="alice", labels={"exp": "e1"}
        )
        # The create's answer waits until the sandbox serves (--create-wait).
        assert inst.status == "Running" and inst.ip, inst
        step(f"create_env_instance -> {inst.id} {inst.status}")
        inst = await c.wait_for_status(inst.id, EnvStatus.RUNNING, timeout=120, check_interval=0.5)
        assert inst.status == "Running" and inst.ip, inst
        step(f"wait_for_status -> Running {inst.ip}")
        got = await c.get_env_instance(inst.id)
        assert got.id == inst.id and got.ip == inst.ip and got.env is not None and got.env.name == env.split("@")[0], got
        step("get_env_instance")
        listed = await c.list_env_instances()
        assert any(i.id == inst.id for i in listed), listed
        step(f"list_env_instances -> {len(listed)} instance(s)")
        deleted = await c.delete_env_instance(inst.id)
        assert deleted is True
        step("delete_env_instance")


async def environment_flow(host: str, env: str) -> None:
    e = Environment(env, aenv_url=f"http://{host}", ttl="10m", timeout=30.0, startup_timeout=120.0, max_retries=1)
    await e.initialize()
    inst = e._instance
    assert inst is not None and inst.status == "Running" and inst.ip, inst
    step(f"Environment.initialize -> {inst.id} Running {inst.ip}, /health answered through :8081")
    async with AEnvSchedulerClient(f"http://{host}:8080", max_retries=0) as c:
        await c.get_env_instance(inst.id)
    await e.release()
    async with AEnvSchedulerClient(f"http://{host}:8080", max_retries=0) as c:
        for _ in range(100):
            try:
                current = await c.get_env_instance(inst.id)
            except Exception:
                break  # 404: gone
            assert current.status == "Terminated", current
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the released instance was not deleted")
    step("Environment.release -> deleted")


async def main() -> None:
    host, env = sys.argv[1], sys.argv[2]
    await scheduler_client_flow(host, env)
    await environment_flow(host, env)
    print("all SDK steps passed", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
