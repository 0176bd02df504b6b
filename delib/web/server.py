"""The web server of ``delib view``: the standard library's threading HTTP server on loopback.

Routes (all relative to where the view is served)::

    /                    the runs, newest first; ?q=WORDS searches every turn
    /runs/RUN            a run's transcript (live while the run is going on)
    /runs/RUN/events     server-sent events: each record finished after ?after=N, then "end"
    /sweeps/NAME         a sweep's report, its cells linked to their transcripts

Each request opens the archive (``open_store``) and closes it again: a store's connections are
not shared between the server's threads.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from delib.archive.store import open_store
from delib.errors import DelibError
from delib.experiments import report
from delib.experiments.sweep import find
from delib.web import pages

POLL = 0.25  # seconds between looks at a running run's records
HEARTBEAT = 15.0  # seconds between comments that keep an idle event stream open


class ViewServer(ThreadingHTTPServer):
    """``delib view`` on ``host:port`` (port 0: a free one), serving the archive ``location``."""

    daemon_threads = True

    def __init__(self, location: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.location = location
        self.stopping = threading.Event()
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> ViewServer:
        threading.Thread(target=self.serve_forever, daemon=True, name="delib-view").start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: ViewServer

    def log_message(self, *args: Any) -> None:  # quiet; the CLI says where it serves
        pass

    def _send(self, status: int, body: str, kind: str = "text/html; charset=utf-8") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy", pages.CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = parse_qs(url.query)
        store = open_store(self.server.location)
        try:
            if not parts:
                self._send(200, self._front(store, (query.get("q") or [""])[0].strip()))
            elif parts[0] == "runs" and len(parts) == 2:
                run_id = store.find(parts[1])
                manifest, records = store.manifest(run_id), store.records(run_id)
                live = manifest.get("stop_reason") is None and store.running(run_id)
                self._send(200, pages.run_page(run_id, manifest, records, live))
            elif parts[0] == "runs" and len(parts) == 3 and parts[2] == "events":
                after = int((query.get("after") or ["0"])[0] or 0)
                self._events(store, store.find(parts[1]), max(after, 0))
            elif parts[0] == "sweeps" and len(parts) == 2:
                sweep = find(store, parts[1])
                table = report.rows(store, sweep)
                links = {r["cell"]: f"../{pages.run_link(r['run'])}" for r in table if r.get("run")}
                self._send(200, report.report_page(sweep, table, links))
            else:
                self._send(404, pages.not_found(f"no page at {url.path}"))
        except (DelibError, KeyError, ValueError) as exc:
            self._send(404, pages.not_found(str(exc)))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        finally:
            store.close()

    def _front(self, store: Any, q: str) -> str:
        rows, problems = store.listing()
        running = {r["run_id"] for r in rows if r.get("stop_reason") is None
                   and store.running(r["run_id"])}  # fmt: skip
        hits = None
        if q:
            hits, more = store.search(q, 50)
            problems = [*problems, *more]
        return pages.runs_page(rows, running, store.sweep_names(), problems, q, hits)

    def _events(self, store: Any, run_id: str, after: int) -> None:
        """Each record of the run past ``after`` as it is written, then ``end`` with the stop
        reason once the run has stopped (or its process is gone)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", pages.CSP)
        self.end_headers()
        sent, quiet = after, time.monotonic()
        while not self.server.stopping.is_set():
            records = store.records(run_id)
            for record in records[sent:]:
                data = json.dumps(pages.live_record(record), ensure_ascii=False)
                self.wfile.write(f"event: record\ndata: {data}\n\n".encode())
                quiet = time.monotonic()
            sent = max(sent, len(records))
            reason = store.manifest(run_id).get("stop_reason")
            if reason is not None or not store.running(run_id):
                if len(store.records(run_id)) == sent:  # nothing written in between
                    self.wfile.write(f"event: end\ndata: {reason or 'stopped'}\n\n".encode())
                    self.wfile.flush()
                    return
                continue
            if time.monotonic() - quiet > HEARTBEAT:
                self.wfile.write(b": still running\n\n")
                quiet = time.monotonic()
            self.wfile.flush()
            time.sleep(POLL)
