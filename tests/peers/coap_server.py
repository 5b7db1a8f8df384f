"""A bare aiocoap server: answers 2.04 to every POST or PUT whose payload is CBOR, 4.00
otherwise. The reference of device-coap's benchmark (bench/loadgen/src/coap.rs): the same
datagrams, answered by nothing but a CoAP stack and a CBOR decoder.

  coap_server.py --port PORT

Prints `ready` once it listens on 127.0.0.1:PORT.
"""
import argparse
import asyncio

import aiocoap
import aiocoap.interfaces
import cbor2
from aiocoap import BAD_REQUEST, CHANGED, METHOD_NOT_ALLOWED, POST, PUT, Message


class Sink(aiocoap.interfaces.Resource):
    async def needs_blockwise_assembly(self, request):
        return False

    async def render(self, request):
        if request.code not in (POST, PUT):
            return Message(code=METHOD_NOT_ALLOWED)
        try:
            cbor2.loads(request.payload)
        except Exception:
            return Message(code=BAD_REQUEST)
        return Message(code=CHANGED)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    await aiocoap.Context.create_server_context(Sink(), bind=("127.0.0.1", a.port))
    print("ready", flush=True)
    await asyncio.get_running_loop().create_future()


asyncio.run(main())
