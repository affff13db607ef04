#!/usr/bin/env python3
"""Minimal HTTP/1.1 server that accepts "Upgrade: h2c" (RFC 7540 section 3.2),
for testing capture of connections that switch from HTTP/1.1 to HTTP/2.

    h2c_upgrade.py server --port P --log FILE [--host ADDR]

* A request with "Upgrade: h2c" and an "HTTP2-Settings" header gets
  "101 Switching Protocols"; the connection then speaks HTTP/2 (hyper-h2,
  H2Connection.initiate_upgrade_connection): the upgrading request is
  answered on stream 1, later requests arrive as ordinary HTTP/2 streams.
* A request without an upgrade is answered over HTTP/1.1 (keep-alive).
* A connection opening with the HTTP/2 preface (prior knowledge) is also
  served as HTTP/2.
* Every response is 200, content-type text/plain, body "upgraded <path>\\n".
* Each request appends one JSON line to FILE:
  {"method", "path", "http": "1.1" | "2"}; HTTP/2 lines also carry
  "stream" (the stream id; 1 for the upgrading request).
* Prints "listening" on stdout once bound; runs until SIGTERM/SIGINT.

Example: curl --http2 http://127.0.0.1:P/a http://127.0.0.1:P/b
(curl sends Upgrade: h2c for http:// URLs with --http2, then sends /b as
stream 3 on the same upgraded connection).
"""

import argparse
import json
import signal
import socket
import socketserver
import sys
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_HEAD = 64 * 1024


class RequestLog:
    def __init__(self, path):
        self._fh = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def write(self, method, path, http, stream=None):
        rec = {"method": method, "path": path, "http": http}
        if stream is not None:
            rec["stream"] = stream
        with self._lock:
            self._fh.write(json.dumps(rec) + "\n")
            self._fh.flush()

    def close(self):
        with self._lock:
            self._fh.close()


def body_for(path):
    return ("upgraded %s\n" % path).encode("utf-8")


class Handler(socketserver.BaseRequestHandler):
    def setup(self):
        self.request.settimeout(30)
        self.buf = b""

    def recv_more(self):
        data = self.request.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def handle(self):
        try:
            self.serve()
        except (EOFError, OSError, h2.exceptions.ProtocolError):
            pass

    # ---------------- HTTP/1.1 ----------------

    def read_head(self):
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD:
                raise EOFError
            self.recv_more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return method, target, headers

    def read_body(self, headers):
        length = int(headers.get("content-length", "0") or "0")
        while len(self.buf) < length:
            self.recv_more()
        self.buf = self.buf[length:]

    def serve(self):
        # Prior knowledge: the connection opens with the HTTP/2 preface.
        while len(self.buf) < len(PREFACE) and b"\r\n\r\n" not in self.buf:
            self.recv_more()
        if self.buf.startswith(PREFACE):
            return self.serve_h2(None, None)
        while True:
            method, path, headers = self.read_head()
            self.read_body(headers)
            tokens = {t.strip().lower()
                      for t in headers.get("connection", "").split(",")}
            upgrade = headers.get("upgrade", "").lower()
            if ("h2c" in [u.strip() for u in upgrade.split(",")]
                    and "http2-settings" in headers
                    and "upgrade" in tokens):
                self.request.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\n"
                    b"Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
                return self.serve_h2((method, path),
                                     headers["http2-settings"])
            self.server.log.write(method, path, "1.1")
            body = body_for(path)
            close = "close" in tokens
            resp = ("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    "Content-Length: %d\r\n%s\r\n"
                    % (len(body), "Connection: close\r\n" if close else ""))
            self.request.sendall(resp.encode("latin-1") +
                                 (b"" if method == "HEAD" else body))
            if close:
                return

    # ---------------- HTTP/2 ----------------

    def serve_h2(self, upgraded, settings_header):
        config = h2.config.H2Configuration(client_side=False,
                                           header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=config)
        if upgraded is not None:
            conn.initiate_upgrade_connection(settings_header)
            method, path = upgraded
            self.server.log.write(method, path, "2", 1)
            self.respond(conn, 1, method, path)
        else:
            conn.initiate_connection()
        self.request.sendall(conn.data_to_send())

        pending = {}   # stream id -> (method, path) awaiting END_STREAM
        data = self.buf
        self.buf = b""
        while True:
            if not data:
                data = self.request.recv(65536)
                if not data:
                    return
            events = conn.receive_data(data)
            data = b""
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    hdrs = dict(event.headers)
                    req = (hdrs.get(":method", ""), hdrs.get(":path", ""))
                    if event.stream_ended is not None:
                        self.finish_stream(conn, event.stream_id, req)
                    else:
                        pending[event.stream_id] = req
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    req = pending.pop(event.stream_id, None)
                    if req is not None:
                        self.finish_stream(conn, event.stream_id, req)
                elif isinstance(event, h2.events.StreamReset):
                    pending.pop(event.stream_id, None)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    out = conn.data_to_send()
                    if out:
                        self.request.sendall(out)
                    return
            out = conn.data_to_send()
            if out:
                self.request.sendall(out)

    def finish_stream(self, conn, stream_id, req):
        method, path = req
        self.server.log.write(method, path, "2", stream_id)
        self.respond(conn, stream_id, method, path)

    @staticmethod
    def respond(conn, stream_id, method, path):
        body = body_for(path)
        conn.send_headers(stream_id, [
            (":status", "200"),
            ("content-type", "text/plain"),
            ("content-length", str(len(body))),
        ], end_stream=(method == "HEAD"))
        if method != "HEAD":
            conn.send_data(stream_id, body, end_stream=True)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, log):
        self.log = log
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, Handler)


def run_server(args):
    log = RequestLog(args.log)
    try:
        server = Server((args.host, args.port), log)
    except OSError as exc:
        print("cannot bind %s:%d: %s" % (args.host, args.port, exc),
              file=sys.stderr)
        return 1

    def on_signal(_signo, _frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print("listening", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    log.close()
    return 0


def main():
    parser = argparse.ArgumentParser(
        description="HTTP/1.1 server accepting Upgrade: h2c, for HTTP/2 "
                    "capture tests.")
    sub = parser.add_subparsers(dest="mode", required=True)
    srv = sub.add_parser("server", help="run the server")
    srv.add_argument("--port", type=int, required=True)
    srv.add_argument("--log", required=True,
                     help="append one JSON line per request here")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1)")
    args = parser.parse_args()
    return run_server(args)


if __name__ == "__main__":
    sys.exit(main())
