"""A real OPC UA peer for Outpost's tests and benchmark, built on asyncua.

    opcua_server.py serve --port P --dir D [--security none,sign,encrypt] [--user NAME:PASSWORD]
                          [--certificates] [--no-anonymous] [--tick-ms MS] [--nodes N]
        an OPC UA server at opc.tcp://127.0.0.1:P/ with the address space below; its
        certificate and key are made in D on the first run (D/server.der, D/server.pem) and
        kept, so a restart presents the same certificate; with --user, that user name and
        password are accepted besides anonymous sessions; with --certificates, any client
        proving it holds the key of the certificate it presents as its identity; with
        --no-anonymous, anonymous sessions are refused
    opcua_server.py read --url U --node ID       read a node as a client; prints JSON
    opcua_server.py write --url U --node ID --type T --value V
                                                 write a node as a client
    opcua_server.py count --url U --nodes N --seconds S
        subscribe to the N benchmark nodes and count the data changes the server publishes
        (the benchmark's reference); prints JSON

`serve` prints "ready <port>" on stdout once it listens, and runs until killed. Run it with
the interpreter `scripts/setup.sh --test` installs (target/peers/asyncua/bin/python).

Address space, namespace `urn:outpost:test` (index 2), under the object `Plant`
(ns=2;s=Plant):

    ns=2;s=Plant.<Type>   one variable of each built-in scalar type, named by the type:
                          Boolean true, SByte -8, Byte 200, Int16 -1234, UInt16 4242,
                          Int32 -123456, UInt32 305419896, Int64 -5000000000,
                          UInt64 9000000000, Float 21.5, Double -0.25, String "outpost",
                          DateTime 2026-01-02T03:04:05Z, ByteString 0x0102ff
    ns=2;s=Plant.Values   Double[] [1.5, 2.5, 3.5]
    ns=2;s=Plant.Setpoint Int16 100, writable
    ns=2;s=Plant.Temperature  Double, +0.1 every tick, +5 every 20 ticks (a deadband test)
    ns=2;s=Plant.Counter  UInt32, +1 every tick
    ns=2;i=1001           Int32 77 (a numeric node id)
    ns=2;s=Plant.Add      method (Int32, Int32) -> Int32
    ns=2;s=Plant.Shifty   Int32 7, until the method ns=2;s=Plant.Retype () -> Boolean makes
                          it the String "seven" (a server changing a node's type)
    ns=2;s=Bench.<i>      with --nodes N: N Double variables, all changing every tick
"""

import argparse
import asyncio
import datetime
import json
import os
import sys
from pathlib import Path

from asyncua import Client, Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography.x509.oid import ExtendedKeyUsageOID

URI = "urn:outpost:test"

SCALARS = [
    ("Boolean", ua.VariantType.Boolean, True),
    ("SByte", ua.VariantType.SByte, -8),
    ("Byte", ua.VariantType.Byte, 200),
    ("Int16", ua.VariantType.Int16, -1234),
    ("UInt16", ua.VariantType.UInt16, 4242),
    ("Int32", ua.VariantType.Int32, -123456),
    ("UInt32", ua.VariantType.UInt32, 305419896),
    ("Int64", ua.VariantType.Int64, -5000000000),
    ("UInt64", ua.VariantType.UInt64, 9000000000),
    ("Float", ua.VariantType.Float, 21.5),
    ("Double", ua.VariantType.Double, -0.25),
    ("String", ua.VariantType.String, "outpost"),
    (
        "DateTime",
        ua.VariantType.DateTime,
        datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    ),
    ("ByteString", ua.VariantType.ByteString, b"\x01\x02\xff"),
]


class Users(UserManager):
    """Anonymous sessions (unless --no-anonymous), the one user name and password given
    with --user, and with --certificates certificate identities."""

    def __init__(self, user, certificates, anonymous):
        self.user = user
        self.certificates = certificates
        self.anonymous = anonymous

    def get_user(self, iserver, username=None, password=None, certificate=None):
        # asyncua passes the secure channel's client certificate with every token.
        if username is not None:
            if self.user and (username, password) == self.user:
                return User(role=UserRole.User, name=username)
            return None
        if certificate is not None and self.certificates:
            return User(role=UserRole.User, name="certificate")
        return User(role=UserRole.User) if self.anonymous else None


async def serve(args):
    os.makedirs(args.dir, exist_ok=True)
    cert, key = Path(args.dir, "server.der"), Path(args.dir, "server.pem")
    user = tuple(args.user.split(":", 1)) if args.user else None
    server = Server(user_manager=Users(user, args.certificates, not args.no_anonymous))
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}/")
    server.set_server_name("Outpost test server")
    await server.set_application_uri("urn:outpost:test:server")
    policies = {
        "none": ua.SecurityPolicyType.NoSecurity,
        "sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
        "encrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    }
    wanted = [policies[p] for p in args.security.split(",") if p]
    server.set_security_policy(wanted, permission_ruleset=SimpleRoleRuleset())
    tokens = ([] if args.no_anonymous else [ua.AnonymousIdentityToken]) + (
        [ua.UserNameIdentityToken] if user else []
    )
    if args.certificates:
        tokens.append(ua.X509IdentityToken)
    server.set_identity_tokens(tokens)
    # A certificate for secure policies, and for identities a client encrypts or signs to it.
    if args.user or args.certificates or any(p != ua.SecurityPolicyType.NoSecurity for p in wanted):
        await setup_self_signed_certificate(
            key,
            cert,
            "urn:outpost:test:server",
            "127.0.0.1",
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            {"countryName": "DE", "organizationName": "Outpost", "commonName": "outpost-test-server"},
        )
        await server.load_certificate(cert)
        await server.load_private_key(key)

    ns = await server.register_namespace(URI)
    objects = server.nodes.objects
    plant = await objects.add_object(ua.NodeId("Plant", ns), ua.QualifiedName("Plant", ns))
    for name, vt, value in SCALARS:
        await plant.add_variable(ua.NodeId(f"Plant.{name}", ns), name, ua.Variant(value, vt))
    await plant.add_variable(
        ua.NodeId("Plant.Values", ns), "Values", ua.Variant([1.5, 2.5, 3.5], ua.VariantType.Double)
    )
    setpoint = await plant.add_variable(
        ua.NodeId("Plant.Setpoint", ns), "Setpoint", ua.Variant(100, ua.VariantType.Int16)
    )
    await setpoint.set_writable()
    temperature = await plant.add_variable(
        ua.NodeId("Plant.Temperature", ns), "Temperature", ua.Variant(20.0, ua.VariantType.Double)
    )
    counter = await plant.add_variable(
        ua.NodeId("Plant.Counter", ns), "Counter", ua.Variant(0, ua.VariantType.UInt32)
    )
    await plant.add_variable(ua.NodeId(1001, ns), "Numeric", ua.Variant(77, ua.VariantType.Int32))

    async def add(parent, a, b):
        return [ua.Variant(a.Value + b.Value, ua.VariantType.Int32)]

    await plant.add_method(
        ua.NodeId("Plant.Add", ns),
        "Add",
        add,
        [ua.VariantType.Int32, ua.VariantType.Int32],
        [ua.VariantType.Int32],
    )
    shifty = await plant.add_variable(
        ua.NodeId("Plant.Shifty", ns), "Shifty", ua.Variant(7, ua.VariantType.Int32)
    )

    async def retype(parent):
        # A server changing a node's type under its clients: the node made again, a String.
        await server.delete_nodes([shifty])
        await plant.add_variable(
            ua.NodeId("Plant.Shifty", ns), "Shifty", ua.Variant("seven", ua.VariantType.String)
        )
        return [ua.Variant(True, ua.VariantType.Boolean)]

    await plant.add_method(ua.NodeId("Plant.Retype", ns), "Retype", retype, [], [ua.VariantType.Boolean])
    bench = []
    if args.nodes > 0:
        folder = await objects.add_object(ua.NodeId("Bench", ns), ua.QualifiedName("Bench", ns))
        for i in range(args.nodes):
            bench.append(
                await folder.add_variable(
                    ua.NodeId(f"Bench.{i}", ns), f"B{i}", ua.Variant(0.0, ua.VariantType.Double)
                )
            )

    async with server:
        print(f"ready {args.port}", flush=True)
        tick = 0
        while True:
            await asyncio.sleep(args.tick_ms / 1000)
            tick += 1
            t = 20.0 + tick * 0.1 + (tick // 20) * 5
            await temperature.write_value(ua.Variant(t, ua.VariantType.Double))
            await counter.write_value(ua.Variant(tick, ua.VariantType.UInt32))
            for i, node in enumerate(bench):
                await node.write_value(ua.Variant(float(tick * 1000 + i), ua.VariantType.Double))


def jsonable(v):
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, datetime.datetime):
        return v.isoformat()
    if isinstance(v, list):
        return [jsonable(x) for x in v]
    return v


async def read(args):
    async with Client(url=args.url) as c:
        dv = await c.get_node(args.node).read_data_value()
        print(json.dumps({"value": jsonable(dv.Value.Value), "type": dv.Value.VariantType.name}))


async def write(args):
    vt = getattr(ua.VariantType, args.type)
    value = json.loads(args.value) if vt not in (ua.VariantType.String,) else args.value
    async with Client(url=args.url) as c:
        await c.get_node(args.node).write_value(ua.Variant(value, vt))


class Counter:
    """Counts the data changes of a subscription."""

    def __init__(self):
        self.changes = 0

    def datachange_notification(self, node, val, data):
        self.changes += 1


async def count(args):
    async with Client(url=args.url) as c:
        ns = await c.get_namespace_index(URI)
        handler = Counter()
        sub = await c.create_subscription(100, handler)
        nodes = [c.get_node(ua.NodeId(f"Bench.{i}", ns)) for i in range(args.nodes)]
        await sub.subscribe_data_change(nodes, queuesize=10)
        await asyncio.sleep(1)
        start = handler.changes
        await asyncio.sleep(args.seconds)
        print(json.dumps({"changes": handler.changes - start, "seconds": args.seconds}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--dir", required=True)
    s.add_argument("--security", default="none")
    s.add_argument("--user")
    s.add_argument("--certificates", action="store_true")
    s.add_argument("--no-anonymous", action="store_true")
    s.add_argument("--tick-ms", type=int, default=100)
    s.add_argument("--nodes", type=int, default=0)
    r = sub.add_parser("read")
    r.add_argument("--url", required=True)
    r.add_argument("--node", required=True)
    w = sub.add_parser("write")
    w.add_argument("--url", required=True)
    w.add_argument("--node", required=True)
    w.add_argument("--type", required=True)
    w.add_argument("--value", required=True)
    c = sub.add_parser("count")
    c.add_argument("--url", required=True)
    c.add_argument("--nodes", type=int, required=True)
    c.add_argument("--seconds", type=float, default=10)
    args = p.parse_args()
    try:
        asyncio.run({"serve": serve, "read": read, "write": write, "count": count}[args.cmd](args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
