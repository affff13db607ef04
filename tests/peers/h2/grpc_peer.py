#!/usr/bin/env python3
"""gRPC test peer (server and client) for the HTTP/2 capture tests.

Both sides use plain grpcio with generic handlers and hand-encoded protobuf
bytes (no protoc, no generated code). The message used for requests and
responses is:

    message Msg { string name = 1; uint64 count = 2; bytes payload = 3; }

Server (h2c prior knowledge, one process, runs until SIGTERM/SIGINT):

    grpc_peer.py server --port P --log FILE [--host ADDR]

  * /pkg.Service/Unary  (unary-unary): replies name = "hello " + name and
    payload = request payload reversed.
  * /pkg.Service/Watch  (unary-stream): replies `count` messages, message i
    (0-based) having name = f"{name}-{i}".
  * name == "fail" on either method: aborts with NOT_FOUND, "no such thing".
  * Every call appends one JSON line to FILE:
    {"method", "request_hex", "metadata"}.
  * Prints "listening" on stdout once the port is bound.

Client (one channel, hence one HTTP/2 connection, calls run in order):

    grpc_peer.py client --target HOST:PORT --plan PLAN --out FILE

  PLAN is comma-separated: "unary:NAME", "unary:NAME:SIZE" (SIZE payload
  bytes, byte i = (i*7 + SIZE) % 256), "watch:NAME:COUNT". Each call carries
  the metadata "x-call: <n>" (n = 1-based index in the plan). FILE gets one
  JSON line per call: {"method", "request_hex", "responses_hex", "code",
  "details"}. Exit status is 0 only if every call behaved as expected
  (name "fail" -> NOT_FOUND, anything else -> OK with the expected replies).
"""

import argparse
import json
import signal
import sys
import threading
from concurrent import futures

import grpc

SERVICE = "pkg.Service"
UNARY = "/pkg.Service/Unary"
WATCH = "/pkg.Service/Watch"


# --------------------------------------------------------------------------
# Hand-written protobuf encoding of Msg{name=1, count=2, payload=3}.
# --------------------------------------------------------------------------

def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf, pos):
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def encode_msg(name=None, count=None, payload=None):
    """Encode a Msg; fields left at None (or empty/zero) are omitted."""
    out = bytearray()
    if name:
        raw = name.encode("utf-8")
        out += b"\x0a" + _varint(len(raw)) + raw
    if count:
        out += b"\x10" + _varint(count)
    if payload:
        out += b"\x1a" + _varint(len(payload)) + payload
    return bytes(out)


def decode_msg(buf):
    """Decode a Msg into a dict with keys name, count, payload."""
    msg = {"name": "", "count": 0, "payload": b""}
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _read_varint(buf, pos)
            if field == 2:
                msg["count"] = val
        elif wire == 2:
            ln, pos = _read_varint(buf, pos)
            if pos + ln > len(buf):
                raise ValueError("truncated length-delimited field")
            val = bytes(buf[pos:pos + ln])
            pos += ln
            if field == 1:
                msg["name"] = val.decode("utf-8")
            elif field == 3:
                msg["payload"] = val
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError("unsupported wire type %d" % wire)
    if pos != len(buf):
        raise ValueError("truncated fixed-width field")
    return msg


def make_payload(size):
    return bytes((i * 7 + size) % 256 for i in range(size))


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------

class CallLog:
    def __init__(self, path):
        self._fh = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, method, request, context):
        md = {}
        for item in context.invocation_metadata() or ():
            key, value = item.key, item.value
            if isinstance(value, bytes):
                value = value.hex()
            md[key] = value
        line = json.dumps({"method": method, "request_hex": request.hex(),
                           "metadata": md})
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self):
        with self._lock:
            self._fh.close()


def run_server(args):
    log = CallLog(args.log)

    def unary(request, context):
        log.write(UNARY, request, context)
        msg = decode_msg(request)
        if msg["name"] == "fail":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return encode_msg(name="hello " + msg["name"],
                          payload=msg["payload"][::-1])

    def watch(request, context):
        log.write(WATCH, request, context)
        msg = decode_msg(request)
        if msg["name"] == "fail":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        for i in range(msg["count"]):
            yield encode_msg(name="%s-%d" % (msg["name"], i))

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Watch": grpc.unary_stream_rpc_method_handler(watch),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    addr = "%s:%d" % (("[%s]" % args.host) if ":" in args.host else args.host,
                      args.port)
    try:
        bound = server.add_insecure_port(addr)
    except RuntimeError as exc:
        print("cannot bind %s: %s" % (addr, exc), file=sys.stderr)
        return 1
    if not bound:
        print("cannot bind %s" % addr, file=sys.stderr)
        return 1

    stop = threading.Event()

    def on_signal(_signo, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server.start()
    print("listening", flush=True)
    while not stop.wait(0.2):
        pass
    server.stop(grace=1).wait()
    log.close()
    return 0


# --------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------

def parse_plan(plan):
    calls = []
    for item in plan.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        kind = parts[0]
        if kind == "unary" and len(parts) in (2, 3):
            size = int(parts[2]) if len(parts) == 3 else 0
            if size < 0:
                raise ValueError("negative payload size in %r" % item)
            calls.append(("unary", parts[1], size))
        elif kind == "watch" and len(parts) == 3:
            count = int(parts[2])
            if count < 0:
                raise ValueError("negative count in %r" % item)
            calls.append(("watch", parts[1], count))
        else:
            raise ValueError("bad plan item %r" % item)
    if not calls:
        raise ValueError("empty plan")
    return calls


def run_client(args):
    try:
        calls = parse_plan(args.plan)
    except ValueError as exc:
        print("bad --plan: %s" % exc, file=sys.stderr)
        return 2

    options = [
        # A private subchannel pool: this channel owns its one connection.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_http_proxy", 0),
        ("grpc.enable_retries", 0),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    channel = grpc.insecure_channel(args.target, options=options)
    unary_call = channel.unary_unary(UNARY)
    watch_call = channel.unary_stream(WATCH)

    all_ok = True
    with open(args.out, "w", encoding="utf-8") as out:
        for n, (kind, name, arg) in enumerate(calls, start=1):
            metadata = (("x-call", str(n)),)
            responses = []
            code, details = "OK", ""
            if kind == "unary":
                method = UNARY
                request = encode_msg(name=name, payload=make_payload(arg))
                try:
                    responses.append(unary_call(request, metadata=metadata,
                                                timeout=args.timeout))
                except grpc.RpcError as exc:
                    code, details = exc.code().name, exc.details() or ""
                expected = [encode_msg(name="hello " + name,
                                       payload=make_payload(arg)[::-1])]
            else:
                method = WATCH
                request = encode_msg(name=name, count=arg)
                try:
                    for resp in watch_call(request, metadata=metadata,
                                           timeout=args.timeout):
                        responses.append(resp)
                except grpc.RpcError as exc:
                    code, details = exc.code().name, exc.details() or ""
                expected = [encode_msg(name="%s-%d" % (name, i))
                            for i in range(arg)]

            if name == "fail":
                ok = code == "NOT_FOUND" and not responses
            else:
                ok = code == "OK" and responses == expected
            if not ok:
                all_ok = False
                print("call %d (%s %s) unexpected: code=%s details=%r "
                      "responses=%d" % (n, kind, name, code, details,
                                        len(responses)), file=sys.stderr)
            out.write(json.dumps({
                "method": method,
                "request_hex": request.hex(),
                "responses_hex": [r.hex() for r in responses],
                "code": code,
                "details": details,
            }) + "\n")
            out.flush()
    channel.close()
    return 0 if all_ok else 1


def main():
    parser = argparse.ArgumentParser(
        description="gRPC peer (generic handlers, hand-encoded protobuf) "
                    "for HTTP/2 capture tests.")
    sub = parser.add_subparsers(dest="mode", required=True)

    srv = sub.add_parser("server", help="run the pkg.Service server (h2c)")
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--log", required=True,
                     help="append one JSON line per call here")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1)")

    cli = sub.add_parser("client", help="run a plan of calls on one channel")
    cli.add_argument("--target", required=True, help="HOST:PORT")
    cli.add_argument("--plan", required=True,
                     help="e.g. unary:alice,unary:bob:70000,watch:carol:5,"
                          "unary:fail")
    cli.add_argument("--out", required=True,
                     help="write one JSON line per call here")
    cli.add_argument("--timeout", type=float, default=10.0,
                     help="per-call deadline in seconds (default 10)")

    args = parser.parse_args()
    if args.mode == "server":
        return run_server(args)
    return run_client(args)


if __name__ == "__main__":
    sys.exit(main())
