"""The cluster DNS of the real-pods node (tests/support/node.py): a small UDP DNS server.

There is no CoreDNS image here (no registry) and no kube-proxy (its iptables rules are not
needed for one node): this server answers ``<service>.<namespace>.svc.cluster.local`` with the
addresses of the service's ready endpoints (from its EndpointSlices, as a headless Service
would), ``kubernetes.default.svc.cluster.local`` with the API server relay address, and every
other name with NXDOMAIN. Pods connect straight to the pod, on the Service's port; the
operator's Services always use the container's port number, so that is the same port. It runs
inside the node's network namespace, started by ``Node`` as
``python -m tests.support.nodedns ADDRESS API_SERVER CA CERT KEY``.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import sys
import urllib.parse
import urllib.request

DOMAIN = "cluster.local"
TTL = 1


def _name(packet: bytes, offset: int) -> tuple[str, int]:
    labels = []
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1:offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    return ".".join(labels).lower(), offset + 1


class Resolver:
    def __init__(self, api: str, ca: str, cert: str, key: str, api_address: str) -> None:
        self.api = api
        self.api_address = api_address
        self.context = ssl.create_default_context(cafile=ca)
        self.context.load_cert_chain(cert, key)

    def addresses(self, name: str) -> list[str] | None:
        """The A records of ``name``; None when the name does not exist."""
        suffix = f".svc.{DOMAIN}"
        if not name.endswith(suffix):
            return None
        parts = name[: -len(suffix)].split(".")
        if len(parts) != 2:
            return None
        service, namespace = parts
        if (service, namespace) == ("kubernetes", "default"):
            return [self.api_address]
        query = urllib.parse.urlencode({"labelSelector": f"kubernetes.io/service-name={service}"})
        url = f"{self.api}/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices?{query}"
        with urllib.request.urlopen(url, context=self.context, timeout=5) as response:
            slices = json.load(response)["items"]
        if not slices:
            return None
        return [address for piece in slices for endpoint in piece.get("endpoints") or []
                if (endpoint.get("conditions") or {}).get("ready", True)
                for address in endpoint.get("addresses") or []]

    def answer(self, query: bytes) -> bytes:
        (ident, _flags, qdcount) = struct.unpack("!HHH", query[:6])
        name, end = _name(query, 12)
        qtype, _qclass = struct.unpack("!HH", query[end:end + 4])
        question = query[12:end + 4]
        try:
            found = self.addresses(name) if qdcount == 1 else None
            rcode = 3 if found is None else 0
        except (OSError, ValueError, KeyError):
            found, rcode = None, 2  # SERVFAIL: the client retries
        records = b""
        count = 0
        for address in (found or []) if qtype == 1 else []:
            records += struct.pack("!HHHIH", 0xC00C, 1, 1, TTL, 4) + socket.inet_aton(address)
            count += 1
        header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, count, 0, 0)
        return header + question + records


def main(argv: list[str]) -> None:
    address, api, ca, cert, key, api_address = argv
    resolver = Resolver(api, ca, cert, key, api_address)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((address, 53))
    print(f"nodedns: serving on {address}:53", flush=True)
    while True:
        query, client = server.recvfrom(512)
        if len(query) < 17:
            continue
        try:
            server.sendto(resolver.answer(query), client)
        except (IndexError, struct.error, UnicodeError):
            continue


if __name__ == "__main__":
    main(sys.argv[1:])
