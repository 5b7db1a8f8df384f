"""A real Modbus peer for Outpost's tests and benchmark, built on pymodbus.

    modbus_server.py serve --port P [--log F]    a Modbus TCP server with the register map below;
                                                 with --log, each connection and request it
                                                 receives is appended to F as a JSON line
    modbus_server.py serve-rtu                   the same map as a Modbus RTU server on a serial
                                                 line made of two linked pseudo-terminals; prints
                                                 "ready <path>", the client's end
    modbus_server.py read --port P --table holding --address A --count N
                                                 read registers or bits as a client; prints JSON
    modbus_server.py poll --port P --address A --count N --seconds S
                                                 read the same registers in a loop (benchmark
                                                 reference); prints JSON with the poll count

`serve` prints "ready <port>" on stdout once it listens, and runs until killed. Run it with
the interpreter `scripts/setup.sh --test` installs (target/peers/pymodbus/bin/python).

Register map (addresses are 0-based, as on the wire):

    holding registers
      0      Int16   -1234
      1-2    Uint32  305419896 (0x12345678), word-swapped: low word first
      3-4    Float32 21.5
      5      Int16   235 (a Float32 resource scaled by 0.1 reads 23.5)
      6-9    Int64   -5000000000
      10-13  Float64 -0.5
      14-19  (not mapped: reading them is an illegal data address)
      20-23  String  "OUTPOST" (NUL-padded, two characters per register)
      30     Uint16  100 (a setpoint to write)
      31-32  Float32 1.5 (to write)
      40     Uint16  0b1000 (bit 3 set)
      1000-3999  Uint16 the address minus 1000 (benchmark block)
    input registers
      0      Uint16  4242
      1-2    Float32 -3.25
    coils            0: on, 1: off, 2: on, 3-15: off
    discrete inputs  0: on, 1: off, 2-15: off
"""

import argparse
import asyncio
import json
import os
import struct
import sys
import time
import tty

from pymodbus import FramerType
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


def words(fmt, value):
    """The big-endian registers of a value packed with struct format `fmt`."""
    raw = struct.pack(">" + fmt, value)
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def string_words(text, registers):
    raw = text.encode().ljust(registers * 2, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def regs(address, values):
    return SimData(address, values=values, datatype=DataType.REGISTERS)


def device():
    holding = [
        regs(0, words("h", -1234)),
        regs(1, list(reversed(words("I", 305419896)))),
        regs(3, words("f", 21.5)),
        regs(5, words("h", 235)),
        regs(6, words("q", -5000000000)),
        regs(10, words("d", -0.5)),
        regs(20, string_words("OUTPOST", 4)),
        regs(30, words("H", 100)),
        regs(31, words("f", 1.5)),
        regs(40, [0b1000]),
        regs(1000, [i for i in range(3000)]),
    ]
    inputs = [regs(0, words("H", 4242)), regs(1, words("f", -3.25))]
    coils = [SimData(0, values=[True, False, True] + [False] * 13, datatype=DataType.BITS)]
    discretes = [SimData(0, values=[True] + [False] * 15, datatype=DataType.BITS)]
    # id 0: every unit ID reaches this device.
    return SimDevice(0, simdata=(coils, discretes, holding, inputs))


def tracer(log):
    """Callbacks that append what the server receives to the file `log`, a JSON object per
    line: {"connect": true|false} per connection, {"fc", "address", "count"} per request."""
    if not log:
        return {}
    out = open(log, "a", buffering=1)

    def pdu(sending, p):
        if not sending:
            out.write(json.dumps({"fc": p.function_code, "address": getattr(p, "address", None),
                                  "count": getattr(p, "count", None)}) + "\n")
        return p

    def connect(connected):
        out.write(json.dumps({"connect": connected}) + "\n")

    return {"trace_pdu": pdu, "trace_connect": connect}


async def serve(host, port, log):
    server = ModbusTcpServer(device(), address=(host, port), **tracer(log))
    await server.serve_forever(background=True)
    print(f"ready {port}", flush=True)
    await asyncio.Event().wait()


def pty_end():
    """A pseudo-terminal: (master fd, slave fd, slave path); raw until its user sets a mode."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


async def serve_rtu(baudrate):
    # Two pseudo-terminals joined master to master: what one end's user writes, the other
    # end's user reads, like a null-modem cable. Both slave fds stay open here (unused), so
    # the masters never see a hang-up between clients.
    m_server, _s_server, server_path = pty_end()
    m_client, _s_client, client_path = pty_end()

    def relay(src, dst):
        try:
            data = os.read(src, 4096)
        except BlockingIOError:
            return
        os.write(dst, data)

    loop = asyncio.get_running_loop()
    loop.add_reader(m_server, relay, m_server, m_client)
    loop.add_reader(m_client, relay, m_client, m_server)
    server = ModbusSerialServer(
        device(), framer=FramerType.RTU, port=server_path, baudrate=baudrate
    )
    await server.serve_forever(background=True)
    print(f"ready {client_path}", flush=True)
    await asyncio.Event().wait()


async def read(host, port, table, address, count):
    client = AsyncModbusTcpClient(host, port=port, timeout=5, retries=0)
    if not await client.connect():
        sys.exit(f"cannot connect to {host}:{port}")
    call = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coils": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }[table]
    rr = await call(address, count=count, device_id=1)
    client.close()
    if rr.isError():
        print(json.dumps({"error": str(rr)}))
        return
    out = rr.bits[:count] if table in ("coils", "discrete") else rr.registers
    print(json.dumps({"values": out}))


async def poll(host, port, address, count, seconds):
    """One connection reading `count` registers in a loop, one request at a time."""
    client = AsyncModbusTcpClient(host, port=port, timeout=5, retries=0)
    if not await client.connect():
        sys.exit(f"cannot connect to {host}:{port}")
    polls = 0
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        left, at = count, address
        while left > 0:
            n = min(left, 125)
            rr = await client.read_holding_registers(at, count=n, device_id=1)
            if rr.isError():
                sys.exit(f"read failed: {rr}")
            left, at = left - n, at + n
        polls += 1
    elapsed = time.monotonic() - start
    client.close()
    print(json.dumps({"polls": polls, "seconds": elapsed}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--log", help="append each connection and request received to this file")
    t = sub.add_parser("serve-rtu")
    t.add_argument("--baudrate", type=int, default=19200)
    r = sub.add_parser("read")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--table", choices=["holding", "input", "coils", "discrete"], default="holding")
    r.add_argument("--address", type=int, required=True)
    r.add_argument("--count", type=int, default=1)
    q = sub.add_parser("poll")
    q.add_argument("--host", default="127.0.0.1")
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--address", type=int, default=1000)
    q.add_argument("--count", type=int, required=True)
    q.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args()
    if a.cmd == "serve":
        asyncio.run(serve(a.host, a.port, a.log))
    elif a.cmd == "serve-rtu":
        asyncio.run(serve_rtu(a.baudrate))
    elif a.cmd == "read":
        asyncio.run(read(a.host, a.port, a.table, a.address, a.count))
    else:
        asyncio.run(poll(a.host, a.port, a.address, a.count, a.seconds))


if __name__ == "__main__":
    main()
