"""A CoAP device played by aiocoap (PyPI): sends one request and prints the answer as
`<code> <seconds it took> <payload>`, e.g. `2.04 0.012 `.

  coap_client.py URL [--text T | --json J | --cbor J] [--put] [--non]

--cbor takes JSON and sends it encoded as CBOR (Content-Format 60). A confirmable request
(the default) is retransmitted by aiocoap, with the same Message ID, until it is answered.
"""
import argparse
import asyncio
import json
import time

import cbor2
from aiocoap import POST, PUT, Context, Message, Reliable, Unreliable


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--text")
    ap.add_argument("--json")
    ap.add_argument("--cbor")
    ap.add_argument("--put", action="store_true")
    ap.add_argument("--non", action="store_true")
    a = ap.parse_args()
    if a.cbor is not None:
        payload, cf = cbor2.dumps(json.loads(a.cbor)), 60
    elif a.json is not None:
        payload, cf = a.json.encode(), 50
    else:
        payload, cf = (a.text or "").encode(), 0
    ctx = await Context.create_client_context()
    msg = Message(
        code=PUT if a.put else POST,
        uri=a.url,
        payload=payload,
        transport_tuning=Unreliable if a.non else Reliable,
        content_format=cf,
    )
    start = time.monotonic()
    resp = await ctx.request(msg).response
    took = time.monotonic() - start
    print(f"{resp.code.dotted} {took:.3f} {resp.payload.decode(errors='replace')}", flush=True)
    await ctx.shutdown()


asyncio.run(main())
