"""Times `Environment(env).initialize()` of the real AEnvironment SDK (aenvironment==0.1.7) against an operator
on HOST:8080/8081, ROUNDS times, releasing each. Prints one JSON line: {"seconds": [...]}.

    python sdk_init.py HOST ENV_NAME@VERSION ROUNDS
"""

import asyncio
import json
import sys
import time

from aenv import Environment


async def main(host: str, env: str, rounds: int) -> None:
    seconds = []
    for _ in range(rounds):
        e = Environment(env, aenv_url=f"http://{host}", ttl="10m", timeout=30.0, startup_timeout=120.0, max_retries=1)
        started = time.perf_counter()
        await e.initialize()
        seconds.append(time.perf_counter() - started)
        inst = e._instance
        assert inst is not None and inst.status == "Running" and inst.ip, inst
        await e.release()
    print(json.dumps({"seconds": seconds}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
