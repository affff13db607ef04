#!/usr/bin/env python3
"""Two-phase raw HTTP/2 client on ONE TCP connection (hyper-h2, h2c prior
knowledge), for testing a capture that starts in the middle of a connection.

    h2_session.py --host ADDR --port P --authority NAME \\
        --phase1 N --wait-file PATH --phase2 M --out FILE

Phase 1 sends N GET requests one after another (path /index.html?p1=<i>,
i = 1..N), each with the headers

    user-agent: capture-test
    x-session:  s-<16 random hex chars, chosen once per run>
    x-seq:      <i>

hyper-h2's HPACK encoder inserts every one of these (and the pseudo-headers
that are not in the static table) into the dynamic table with incremental
indexing. Then "phase1 done" is printed on stdout and the script waits (polling
every 50 ms, at most --wait-timeout seconds, default 60) for PATH to exist.

Phase 2 sends M more GET requests on the SAME connection (path
/index.html?p2=<i>, i = 1..M) with the same headers, so they are encoded as
references to dynamic-table entries that were inserted in phase 1 (x-seq
values 1..min(N,M) repeat phase 1's and are fully indexed). Every third
request (i = 3, 6, ...) also carries a new header "x-new: v<i>", encoded as
a new literal with incremental indexing.

Keep N small (a few dozen at most): each phase-1 request adds about 100
bytes of entries and the default 4096-byte table evicts oldest first, so a
large N pushes the x-session/user-agent entries out before phase 2.

FILE gets one JSON line per request: {"phase", "path", "headers" (list of
[name, value] exactly as handed to the encoder, pseudo-headers included),
"status"}. The exit status is 0 only if every response was 200.
"""

import argparse
import json
import os
import secrets
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions


class Session:
    def __init__(self, sock, timeout):
        self.sock = sock
        self.timeout = timeout
        config = h2.config.H2Configuration(client_side=True,
                                           header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, headers):
        """Send one GET and wait for its complete response; return status."""
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers, end_stream=True)
        self.flush()
        status = None
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete response on stream %d"
                                   % stream_id)
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    if event.stream_id == stream_id:
                        for name, value in event.headers:
                            if name == ":status":
                                status = int(value)
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    if event.stream_id == stream_id:
                        raise ConnectionError("stream %d reset (error %s)"
                                              % (stream_id, event.error_code))
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise ConnectionError("GOAWAY from server (error %s)"
                                          % event.error_code)
                elif isinstance(event, h2.events.StreamEnded):
                    if event.stream_id == stream_id:
                        self.flush()
                        return status
            self.flush()

    def close(self):
        try:
            self.conn.close_connection()
            self.flush()
        except Exception:
            pass
        self.sock.close()


def wait_for_file(path, timeout):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def main():
    parser = argparse.ArgumentParser(
        description="Two-phase HTTP/2 (h2c prior knowledge) client on one "
                    "connection, pausing between phases until a file exists.")
    parser.add_argument("--host", required=True, help="server address")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--authority", required=True,
                        help="value of the :authority pseudo-header")
    parser.add_argument("--phase1", type=int, required=True,
                        help="number of requests before the pause")
    parser.add_argument("--wait-file", required=True,
                        help="phase 2 starts once this path exists")
    parser.add_argument("--phase2", type=int, required=True,
                        help="number of requests after the pause")
    parser.add_argument("--out", required=True,
                        help="write one JSON line per request here")
    parser.add_argument("--wait-timeout", type=float, default=60.0,
                        help="seconds to wait for --wait-file (default 60)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for each response (default 10)")
    args = parser.parse_args()
    if args.phase1 < 0 or args.phase2 < 0:
        parser.error("--phase1/--phase2 must be >= 0")

    session_id = "s-" + secrets.token_hex(8)
    common = [
        ("user-agent", "capture-test"),
        ("x-session", session_id),
    ]

    def headers_for(path, seq, extra=()):
        return ([(":method", "GET"), (":scheme", "http"),
                 (":authority", args.authority), (":path", path)]
                + common + [("x-seq", str(seq))] + list(extra))

    failures = 0
    try:
        sock = socket.create_connection((args.host, args.port),
                                        timeout=args.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        print("connect failed: %s" % exc, file=sys.stderr)
        return 1

    session = None
    try:
        with open(args.out, "w", encoding="utf-8") as out:
            session = Session(sock, args.timeout)

            def run(phase, path, headers):
                nonlocal failures
                status = session.request(headers)
                out.write(json.dumps({"phase": phase, "path": path,
                                      "headers": [list(h) for h in headers],
                                      "status": status}) + "\n")
                out.flush()
                if status != 200:
                    failures += 1
                    print("%s -> status %s" % (path, status), file=sys.stderr)

            for i in range(1, args.phase1 + 1):
                path = "/index.html?p1=%d" % i
                run(1, path, headers_for(path, i))

            print("phase1 done", flush=True)
            if not wait_for_file(args.wait_file, args.wait_timeout):
                print("timed out waiting for %s" % args.wait_file,
                      file=sys.stderr)
                return 1

            for i in range(1, args.phase2 + 1):
                path = "/index.html?p2=%d" % i
                extra = [("x-new", "v%d" % i)] if i % 3 == 0 else []
                run(2, path, headers_for(path, i, extra))
    except (OSError, ConnectionError, TimeoutError,
            h2.exceptions.ProtocolError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    finally:
        if session is not None:
            session.close()
        else:
            sock.close()
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
