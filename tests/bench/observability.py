"""Benchmark: what observability costs, and what the broker's own metrics report.

Run: .venv/bin/python -m tests.bench.observability [--enterprises 800] [--requests 200]

1. One JSON log line (an access line through the handler ``broker serve`` configures, into
   memory): microseconds per line.
2. Aggregate queries (drawn shapes, each a fresh computation) against a broker on loopback
   without tracing, then against one exporting every span to an OTLP/HTTP receiver on
   loopback: p50 and p99 of each (run one after the other on a shared machine: compare with
   care).
3. What ``/metrics`` says after the untraced run: the audit append's mean and the bucket under
   which half of the appends fall; and how long a scrape takes.
"""

from __future__ import annotations

import argparse
import io
import logging
import logging.config
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from broker.demo.county import generate_county
from broker.observability.logs import logging_config
from tests.bench.http import _percentile, body, draw_queries, served_county


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that accepts and drops every export."""

    def do_POST(self) -> None:
        """Read the export, answer 200."""
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def json_line_microseconds(lines: int = 20_000) -> float:
    """Microseconds to format and write one access line as ``broker serve`` does."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logging.config.dictConfig(logging_config("json", "info"))
    handler = root.handlers[-1]
    assert isinstance(handler, logging.StreamHandler)
    handler.stream = io.StringIO()
    access = logging.getLogger("uvicorn.access")
    start = time.perf_counter()
    for _ in range(lines):
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "POST",
                    "/v1/queries/aggregate?x=1", "1.1", 200)
    spent = time.perf_counter() - start
    root.handlers[:], root.level = saved
    return spent / lines * 1e6


def query_latencies(enterprises: int, requests: int, **settings: Any) -> tuple[list[float],
                                                                              str]:
    """Seconds per aggregate query, and the ``/metrics`` text after them."""
    county = generate_county(enterprises=enterprises)
    months = sorted(str(m) for m in county.monthly["month"].unique())
    shapes = draw_queries(requests, months, seed=7)
    seconds: list[float] = []
    with served_county(county, **settings) as served:
        for q in shapes:
            start = time.perf_counter()
            r = served.client.post("/v1/queries/aggregate", headers=served.headers,
                                   json=body(served.contract, q))
            seconds.append(time.perf_counter() - start)
            assert r.status_code in (200, 403), r.text
        scrapes = []
        for _ in range(20):
            start = time.perf_counter()
            text = served.client.get("/metrics").text
            scrapes.append(time.perf_counter() - start)
        print(f"/metrics scrape (p50 of 20, kept connection): "
              f"{statistics.median(scrapes) * 1000:.2f} ms")
    return seconds, text


def main() -> None:
    """Run the three measurements and print them."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--enterprises", type=int, default=800)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    print(f"one JSON access line: {json_line_microseconds():.1f} us")

    plain, text = query_latencies(args.enterprises, args.requests)
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    try:
        traced, _ = query_latencies(args.enterprises, args.requests,
                                    otlp_endpoint=f"http://127.0.0.1:{sink.server_address[1]}")
    finally:
        sink.shutdown()
    for name, values in (("untraced", plain), ("traced", traced)):
        print(f"aggregate {name}: p50 {statistics.median(values) * 1000:.1f} ms, "
              f"p99 {_percentile(values, 0.99) * 1000:.1f} ms ({len(values)} queries)")

    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(text) for s in family.samples}
    count = found[("broker_audit_append_seconds_count", ())]
    total = found[("broker_audit_append_seconds_sum", ())]
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in found.items()
                     if name == "broker_audit_append_seconds_bucket")
    median_bucket = next(le for le, v in buckets if v >= count / 2)
    print(f"audit appends: {count:.0f}, mean {total / count * 1e6:.0f} us, "
          f"half under {median_bucket * 1e6:.0f} us")
    for (name, labels), v in sorted(found.items()):
        if name in ("broker_queries_total", "broker_cells_withheld_total",
                    "broker_denials_total"):
            print(f"  {name}{dict(labels)} {v:.0f}")


if __name__ == "__main__":
    main()
