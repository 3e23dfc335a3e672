"""A plain HTTP server of a folder (Python's http.server), for the tests that stream shards over
HTTP. With --faults, it fails some requests for .tar files the ways real servers do: the first
request for a shard is answered 500, the second is cut off halfway through its body (the
connection closed), the third and later are served whole.

    python3 http_shards.py DIR PORT [--faults]
"""

import http.server
import os
import sys
import threading

root, port = sys.argv[1], int(sys.argv[2])
faults = "--faults" in sys.argv[3:]
seen = {}
lock = threading.Lock()


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=root, **kwargs)

    def log_message(self, *args):
        pass

    def do_GET(self):
        with lock:
            n = seen.get(self.path, 0)
            seen[self.path] = n + 1
        if faults and self.path.endswith(".tar") and n == 0:
            self.send_error(500, "injected failure")
            return
        if faults and self.path.endswith(".tar") and n == 1:
            path = os.path.join(root, self.path.lstrip("/"))
            with open(path, "rb") as f:
                body = f.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.close()
            return
        super().do_GET()


http.server.ThreadingHTTPServer.allow_reuse_address = True
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("serving", flush=True)
server.serve_forever()
