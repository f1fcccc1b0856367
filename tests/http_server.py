"""A web server on 127.0.0.1 for the download tests, so that none needs the internet."""
import contextlib
import http.server
import socket
import threading


@contextlib.contextmanager
def serve(files, truncated=(), unsized=()):
    """Serves ``files`` over HTTP on 127.0.0.1, from a thread, while the block runs.

    Args:
        files (dict): URL path (e.g. ``'/file'``) -> the bytes sent for it; any
            other path answers 404.
        truncated (iterable): paths that announce their full size, send the
            first half and close the connection (an interrupted transfer).
        unsized (iterable): paths sent without a Content-Length header.

    Yields:
        str: the base URL, ``http://127.0.0.1:<port>`` (no trailing slash).
    """
    handler = type('Handler', (_Handler,), {'files': dict(files),
                                            'truncated': frozenset(truncated),
                                            'unsized': frozenset(unsized)})
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f'http://127.0.0.1:{httpd.server_address[1]}'
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port_url(path):
    """``http://127.0.0.1:<port>/<path>`` at a port that was just free: nothing
    listens there, so connecting fails at once, as when offline."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return f'http://127.0.0.1:{s.getsockname()[1]}/{path}'


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers GET from the class attributes that :func:`serve` sets."""
    files, truncated, unsized = {}, frozenset(), frozenset()

    def do_GET(self):
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if self.path not in self.unsized:
            self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if self.path in self.truncated else body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass  # keeps pytest's captured stderr to the tests' own output
