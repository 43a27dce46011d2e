"""Serving benchmark: this inference API against ``mlflow models serve`` on the same model, in one run.

Both servers run on loopback with the same number of workers and are loaded by the same wrk command:
single-record requests at concurrency 8 (requests/s, p50 and p99 latency) and batches of 1,000 records
(rows/s). Before the load, both must return the same scores for the same rows.

Targets (2-core machine): at least 10x the single-record throughput of ``mlflow models serve`` with p99 under
10 ms, and at least 100,000 rows/s in batches. Exits 1 when a target is missed.

Then the abuse (``benchmarks/_abuse.py``), on this API with its default limits: the server's RSS growth under
three parallel 300 MB chunked uploads (target: at most 100 MB), and the sockets of 70 trickling clients (half slow
in their headers, half in their body) still open 5 s after the later of the two deadlines (target: none).
``--abuse-only`` skips ``mlflow models serve`` and the load, and serves a model trained on fewer rows.

    python -m benchmarks.bench_serve [--workers 1] [--seconds 15] [--abuse-only]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks._stack import settled_mlflow, wait_until_idle

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MIN_THROUGHPUT_RATIO = 10.0
MAX_P99_MS = 10.0
MIN_BATCH_ROWS_PER_S = 100_000
MAX_UPLOAD_RSS_GROWTH_MB = 100
TRICKLING_CLIENTS = 70
#: How long after the later of the header and body deadlines the trickling sockets must all be closed.
TRICKLE_MARGIN_S = 5.0
BATCH = 1000
CONCURRENCY = 8


def post(url: str, body: bytes) -> Any:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def wait_for(url: str, process: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None:
                raise SystemExit(
                    f"server for {url} exited with {process.returncode} (logs in the work folder)"
                ) from None
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} not ready after {timeout_s}s") from None
            time.sleep(0.5)


def wrk(url: str, body_file: Path, seconds: int, connections: int) -> dict[str, float]:
    """Run wrk and return requests/s and the p50/p99 latency in milliseconds."""
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(ROOT / "benchmarks/wrk_post.lua"), url],
        env={**os.environ, "BODY_FILE": str(body_file)}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in output:
        raise SystemExit(f"wrk saw error responses from {url}:\n{output}")

    def latency(percent: str) -> float:
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    requests = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return {"requests_per_s": requests, "p50_ms": latency("50"), "p99_ms": latency("99")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--abuse-only", action="store_true", help="only the abuse, on a smaller model")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, settled_mlflow(Path(tmp)):
        servers: list[subprocess.Popen[bytes]] = []
        try:
            report = run(Path(tmp), args.workers, args.seconds, servers, abuse_only=args.abuse_only)
        finally:
            for server in reversed(servers):
                server.terminate()
                server.wait(timeout=30)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("serve-abuse.json" if args.abuse_only else "serve.json")).write_text(
        json.dumps(report, indent=2)
    )
    print_table(report)
    sys.exit(0 if all(report["targets"].values()) else 1)


def run(
    work: Path, workers: int, seconds: int, servers: list[Any], abuse_only: bool = False
) -> dict[str, Any]:
    # Long on purpose: one benchmark script read top to bottom (model, servers, equal scores, load, figures).
    import pandas as pd

    from ml.evaluate import evaluate
    from ml.prepare import prepare
    from ml.register import register
    from ml.schema import to_model_input
    from ml.storage import read_manifest, read_published_table
    from ml.train import TrainConfig, train
    from mlops.platform_config import load_platform

    platform = load_platform()
    name = platform.registry.model_name
    rows = 20_000 if abuse_only else 200_000
    print(f"training the model to serve ({rows:,} synthetic rows)", flush=True)
    prepared = str(work / "prepared")
    prepare(f"synthetic://card-transactions?rows={rows}&seed=3", "is_fraud", prepared, time_column="timestamp",
            drop_columns=["transaction_id"])  # fmt: skip
    trained = train(
        prepared,
        TrainConfig(**platform.training.model_dump()),
        experiment="bench-serve",
        run_key="bench/serve",
    )
    result = evaluate(prepared, trained.model_uri, trained.run_id, registered_model_name=name,
                      min_average_precision=0.0, min_improvement=0.0,
                      champion_alias=platform.registry.production_alias)  # fmt: skip
    version = register(asdict(result), run_key="bench/serve", alias=platform.registry.candidate_alias).version
    model_uri = f"models:/{name}/{version}"

    manifest = read_manifest(prepared)
    test = read_published_table(prepared, "test.parquet")
    records = to_model_input(test[manifest["features"]].head(BATCH), manifest["categorical"]).to_dict(
        "records"
    )
    records = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in records]

    ours_port, theirs_port = _free_ports(2)
    env = {
        **os.environ,
        "SERVE_MODEL_URI": model_uri,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}",
        # `mlflow models serve` runs `uvicorn` by name: this interpreter's environment must come first.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    servers.append(subprocess.Popen(
        [sys.executable, "-m", "ml.serve", "--host", "127.0.0.1", "--port", str(ours_port), "--workers",
         str(workers)],
        cwd=ROOT, env={**env, "ML_LOG_LEVEL": "WARNING"},
    ))  # fmt: skip
    ours = f"http://127.0.0.1:{ours_port}"
    if abuse_only:
        wait_for(f"{ours}/ready", servers[-1])
        wait_until_idle(servers[-1].pid)
        abused = abuse(ours_port, servers[-1].pid)
        return {"workers": workers, "model": model_uri, "abuse": abused, "targets": abuse_targets(abused)}
    servers.append(subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(theirs_port), "--workers", str(workers)],
        # The log stays open for the server's lifetime; it is read when the server fails to start.
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=open(work / "mlflow-serve.log", "wb"),  # noqa: SIM115
    ))  # fmt: skip
    theirs = f"http://127.0.0.1:{theirs_port}"
    wait_for(f"{ours}/ready", servers[-2])
    wait_for(f"{theirs}/ping", servers[-1])
    for server in servers:
        wait_until_idle(server.pid)

    bodies = {
        ("ours", "single"): json.dumps(records[0]),
        ("theirs", "single"): json.dumps({"dataframe_records": [records[0]]}),
        ("ours", "batch"): json.dumps({"instances": records}),
        ("theirs", "batch"): json.dumps({"dataframe_records": records}),
    }
    files = {}
    for key, body in bodies.items():
        files[key] = work / f"{key[0]}-{key[1]}.json"
        files[key].write_text(body)

    our_scores = [
        p["probability"] for p in post(f"{ours}/predict", bodies["ours", "batch"].encode())["predictions"]
    ]
    their_scores = [
        row[-1] for row in post(f"{theirs}/invocations", bodies["theirs", "batch"].encode())["predictions"]
    ]
    max_difference = float(pd.Series(our_scores).sub(pd.Series(their_scores)).abs().max())
    if max_difference > 1e-6:
        raise SystemExit(f"the two servers disagree on scores (max difference {max_difference})")

    measured: dict[str, Any] = {}
    for server, url in (("ours", f"{ours}/predict"), ("theirs", f"{theirs}/invocations")):
        for kind in ("single", "batch"):
            print(f"  {server} {kind} ...", flush=True)
            measured[f"{server}_{kind}"] = wrk(url, files[server, kind], seconds, CONCURRENCY)
            if kind == "batch":
                measured[f"{server}_{kind}"]["rows_per_s"] = (
                    measured[f"{server}_{kind}"]["requests_per_s"] * BATCH
                )
    abused = abuse(ours_port, servers[0].pid)
    ratio_single = measured["ours_single"]["requests_per_s"] / measured["theirs_single"]["requests_per_s"]
    ratio_batch = measured["ours_batch"]["rows_per_s"] / measured["theirs_batch"]["rows_per_s"]
    return {
        "workers": workers,
        "concurrency": CONCURRENCY,
        "seconds": seconds,
        "batch_size": BATCH,
        "model": model_uri,
        "max_score_difference": max_difference,
        "measured": measured,
        "ratios": {"single_throughput": ratio_single, "batch_rows": ratio_batch},
        "abuse": abused,
        "targets": {
            f"single-record throughput >= {MIN_THROUGHPUT_RATIO:.0f}x mlflow models serve": ratio_single
            >= MIN_THROUGHPUT_RATIO,
            f"single-record p99 < {MAX_P99_MS:.0f} ms": measured["ours_single"]["p99_ms"] < MAX_P99_MS,
            f"batches >= {MIN_BATCH_ROWS_PER_S:,} rows/s": measured["ours_batch"]["rows_per_s"]
            >= MIN_BATCH_ROWS_PER_S,
            **abuse_targets(abused),
        },
    }


def abuse(port: int, pid: int) -> dict[str, Any]:
    """Three parallel 300 MB chunked uploads, then 70 trickling clients, against the API on ``port``."""
    from benchmarks._abuse import parallel_uploads, trickling_clients
    from ml.serve.settings import Settings

    limits = Settings(model_uri="unused")  # the server's limits: the same environment, the same defaults
    print("  abuse: 3 parallel chunked uploads of 300 MB ...", flush=True)
    uploads = parallel_uploads(port, pid)
    wait_s = max(limits.header_timeout_s, limits.body_timeout_s) + TRICKLE_MARGIN_S
    print(f"  abuse: {TRICKLING_CLIENTS} trickling clients for {wait_s:g} s ...", flush=True)
    trickling = trickling_clients(port, pid, TRICKLING_CLIENTS, wait_s)
    return {
        "limits": {"max_body_bytes": limits.max_body_bytes, "header_timeout_s": limits.header_timeout_s,
                   "body_timeout_s": limits.body_timeout_s},
        "uploads": uploads,
        "trickling": trickling,
    }  # fmt: skip


def abuse_targets(abused: dict[str, Any]) -> dict[str, bool]:
    uploads, trickling = abused["uploads"], abused["trickling"]
    return {
        f"RSS growth under 3 parallel 300 MB chunked uploads <= {MAX_UPLOAD_RSS_GROWTH_MB} MB": uploads[
            "rss_growth_mb"
        ]
        <= MAX_UPLOAD_RSS_GROWTH_MB,
        f"0 of {trickling['clients']} trickling sockets open after {trickling['wait_s']:g} s": trickling[
            "open_after_wait"
        ]
        == 0,
    }


def _free_ports(count: int) -> list[int]:
    from tests.conftest import free_port

    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def print_table(report: dict[str, Any]) -> None:
    if "measured" in report:
        print_load(report)
    uploads, trickling = report["abuse"]["uploads"], report["abuse"]["trickling"]
    print(f"\nAbuse ({report['workers']} worker(s), default limits: {report['abuse']['limits']})")
    print(f"- {uploads['uploads']} parallel chunked uploads of {uploads['size_mb']:.0f} MB: server RSS "
          f"{uploads['rss_before_mb']:.0f} MB -> peak {uploads['rss_peak_mb']:.0f} MB "
          f"(+{uploads['rss_growth_mb']:.1f} MB); the server took "
          f"{', '.join(f'{mb:.1f}' for mb in uploads['sent_mb'])} MB of them and answered "
          f"{', '.join(uploads['answers'])} ({uploads['seconds']:.1f} s)")  # fmt: skip
    closed = ", ".join(f"{part} after {span[0]:.1f}-{span[1]:.1f} s" if span else f"{part}: none closed"
                       for part, span in trickling["closed_after_s"].items())  # fmt: skip
    print(f"- {trickling['clients']} trickling clients (half headers, half body): {trickling['open_after_wait']} "
          f"sockets still open after {trickling['wait_s']:g} s (server side: "
          f"{trickling['server_connections_after_wait']} established); closed: {closed}")  # fmt: skip
    for target, met in report["targets"].items():
        print(f"{'MET ' if met else 'MISSED'}  {target}")


def print_load(report: dict[str, Any]) -> None:
    m, r = report["measured"], report["ratios"]
    print(f"\n{report['workers']} worker(s), concurrency {report['concurrency']}, {report['seconds']} s per run, "
          f"batches of {report['batch_size']}; scores agree to {report['max_score_difference']:.1e}\n")  # fmt: skip
    print("| Load | This API | `mlflow models serve` | Ratio |\n|---|---:|---:|---:|")
    print(f"| single record: requests/s | {m['ours_single']['requests_per_s']:,.0f} | "
          f"{m['theirs_single']['requests_per_s']:,.0f} | {r['single_throughput']:.1f}x |")  # fmt: skip
    for percentile in ("p50", "p99"):
        print(f"| single record: {percentile} latency (ms) | {m['ours_single'][f'{percentile}_ms']:.2f} | "
              f"{m['theirs_single'][f'{percentile}_ms']:.2f} | |")  # fmt: skip
    print(f"| batches of {report['batch_size']}: rows/s | {m['ours_batch']['rows_per_s']:,.0f} | "
          f"{m['theirs_batch']['rows_per_s']:,.0f} | {r['batch_rows']:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
