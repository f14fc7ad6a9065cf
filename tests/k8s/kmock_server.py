"""A Kubernetes API emulator (kmock's KubernetesEmulator) on a loopback port, for the operator to talk to.

Run: python kmock_server.py  -> prints "PORT=<n>" once it listens, then serves until killed.
Built-in resources come from kmock's bundled discovery (core, apps, coordination.k8s.io, events.k8s.io, ...);
the aenv.io kinds are declared from the CRDs' names.
"""
import asyncio
import sys

import kmock


def declare_aenv(k: kmock.KubernetesEmulator) -> None:
    verbs = ['get', 'list', 'watch', 'create', 'update', 'patch', 'delete']
    k.resources['aenv.io/v1alpha1/envinstances'] = dict(
        kind='EnvInstance', namespaced=True, singular='envinstance', verbs=verbs,
        shortnames=['envi'], categories=['aenv'], subresources=['status'])
    k.resources['aenv.io/v1alpha1/environments'] = dict(
        kind='Environment', namespaced=True, singular='environment', verbs=verbs,
        shortnames=['aenv'], categories=['aenv'], subresources=[])
    k.resources['aenv.io/v1alpha1/envpools'] = dict(
        kind='EnvPool', namespaced=True, singular='envpool', verbs=verbs,
        shortnames=['envpool'], categories=['aenv'], subresources=['status', 'scale'])
    k.resources['aenv.io/v1alpha1/envservices'] = dict(
        kind='EnvService', namespaced=True, singular='envservice', verbs=verbs,
        shortnames=['envsvc'], categories=['aenv'], subresources=['status', 'scale'])


async def main() -> None:
    async with kmock.KubernetesEmulator() as k, kmock.Server(k) as srv:
        k.resources.load_bundled()
        declare_aenv(k)
        print(f"PORT={srv.port}", flush=True)
        await asyncio.Event().wait()


if __name__ == '__main__':
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
