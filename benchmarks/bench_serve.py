"""Serving benchmark: this inference API against ``mlflow models serve`` and MLServer on the same model, in one run.

The three servers run on loopback, one process each, and are loaded by the same wrk command at concurrency 8:
single records (requests/s, p50 and p99 latency), and batches of 1,000 and 10,000 rows (rows/s). Each server gets
the batch in its best shape: this API an Arrow stream (and, for comparison, JSON records), ``mlflow models
serve`` ``dataframe_split`` JSON, MLServer (its XGBoost runtime on the model's booster, ``mlserver-xgboost``) one
Open Inference Protocol tensor of the encoded features. Before the load, all three must return the same scores for
the same rows.

Targets (2-core machine): at least 20x the single-record throughput of ``mlflow models serve``; single-record p99 at
most 5 ms; at least 300,000 rows/s in 10,000-row Arrow batches; ahead of MLServer on every load; all with the
prediction record on (``SERVE_RECORD_URI``, as in production), which must have written every scored row, dropping
none. Exits 1 when a target is missed.

Then the abuse (``benchmarks/_abuse.py``), on this API with its default limits: the server's RSS growth under
three parallel 300 MB chunked uploads (target: at most 100 MB), and the sockets of 70 trickling clients (half slow
in their headers, half in their body) still open 5 s after the later of the two deadlines (target: none).
``--abuse-only`` skips the peers and the load, and serves a model trained on fewer rows.

    python -m benchmarks.bench_serve --mlserver .tools/mlserver/bin/mlserver [--workers 1] [--seconds 15]
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
MIN_THROUGHPUT_RATIO = 20.0
MAX_P99_MS = 5.0
MIN_ARROW_ROWS_PER_S = 300_000
MAX_UPLOAD_RSS_GROWTH_MB = 100
TRICKLING_CLIENTS = 70
#: How long after the later of the header and body deadlines the trickling sockets must all be closed.
TRICKLE_MARGIN_S = 5.0
BATCH = 1000
LARGE_BATCH = 10_000
CONCURRENCY = 8
ARROW = "application/vnd.apache.arrow.stream"
#: The loads, each with the rows of one request.
LOADS = {"single": 1, "batch": BATCH, "large": LARGE_BATCH}
SERVERS = ("ours", "mlflow", "mlserver")


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


def wrk(
    url: str, body_file: Path, seconds: int, connections: int, content_type: str = ""
) -> dict[str, float]:
    """Run wrk and return requests/s and the p50/p99 latency in milliseconds."""
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(ROOT / "benchmarks/wrk_post.lua"), url],
        env={**os.environ, "BODY_FILE": str(body_file), "CONTENT_TYPE": content_type}, capture_output=True,
        text=True, check=True,
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
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="serve without the prediction record (to measure what it costs)",
    )
    parser.add_argument(
        "--mlserver", default="mlserver", help="MLServer's command (make bench-serve installs it)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, settled_mlflow(Path(tmp)):
        servers: list[subprocess.Popen[bytes]] = []
        try:
            mlserver = str(Path(args.mlserver).resolve()) if os.sep in args.mlserver else args.mlserver
            report = run(Path(tmp), args.workers, args.seconds, servers, abuse_only=args.abuse_only,
                         mlserver=mlserver, record=not args.no_record)  # fmt: skip
        finally:
            for server in reversed(servers):
                server.terminate()
                server.wait(timeout=30)
    RESULTS.mkdir(exist_ok=True)
    name = "serve-abuse" if args.abuse_only else "serve-unrecorded" if args.no_record else "serve"
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2))
    print_table(report)
    sys.exit(0 if all(report["targets"].values()) else 1)


def run(
    work: Path, workers: int, seconds: int, servers: list[Any], abuse_only: bool = False, mlserver: str = "",
    record: bool = True,
) -> dict[str, Any]:  # fmt: skip
    # Long on purpose: one benchmark script read top to bottom (model, servers, equal scores, load, figures).

    from ml.compare import Rule
    from ml.evaluate import evaluate
    from ml.prepare import prepare
    from ml.register import register
    from ml.schema import to_model_input
    from ml.storage import read_manifest, read_published_table
    from ml.train import TrainConfig, train
    from mlops.models import load_models
    from mlops.platform_config import load_platform

    platform = load_platform()
    # The card-fraud model's registered name: what it serves is that model, trained on the synthetic stream.
    name = load_models().get("card_fraud").registered_model
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
                      min_average_precision=0.0, rule=Rule("superior", 0.0, 0.0),
                      champion_alias=platform.registry.production_alias)  # fmt: skip
    version = register(asdict(result), run_key="bench/serve", alias=platform.registry.candidate_alias).version
    model_uri = f"models:/{name}/{version}"

    manifest = read_manifest(prepared)
    test = read_published_table(prepared, "test.parquet")
    records = to_model_input(test[manifest["features"]].head(LARGE_BATCH), manifest["categorical"]).to_dict(
        "records"
    )
    records = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()} for r in records]
    if len(records) < LARGE_BATCH:
        raise SystemExit(f"the test split has {len(records)} rows, fewer than a batch of {LARGE_BATCH:,}")

    ours_port, theirs_port, mlserver_port = _free_ports(3)
    env = {
        **os.environ,
        "SERVE_MODEL_URI": model_uri,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}",
        # `mlflow models serve` runs `uvicorn` by name: this interpreter's environment must come first.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    # As in production, every scored row is recorded (ml.serve.recorder): the targets hold with it.
    recorded = work / "predictions"
    servers.append(subprocess.Popen(
        [sys.executable, "-m", "ml.serve", "--host", "127.0.0.1", "--port", str(ours_port), "--workers",
         str(workers)],
        cwd=ROOT, env={**env, "ML_LOG_LEVEL": "WARNING", **({"SERVE_RECORD_URI": str(recorded)} if record else {})},
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
    model_folder = mlserver_model(work, model_uri, mlserver_port)
    servers.append(subprocess.Popen(
        [mlserver, "start", str(model_folder)], cwd=model_folder, stdout=subprocess.DEVNULL,
        stderr=open(work / "mlserver.log", "wb"),  # noqa: SIM115
    ))  # fmt: skip
    urls = {
        "ours": f"{ours}/predict",
        "mlflow": f"http://127.0.0.1:{theirs_port}/invocations",
        "mlserver": f"http://127.0.0.1:{mlserver_port}/v2/models/{MLSERVER_MODEL}/infer",
    }
    wait_for(f"{ours}/ready", servers[0])
    wait_for(f"http://127.0.0.1:{theirs_port}/ping", servers[1])
    wait_for(f"http://127.0.0.1:{mlserver_port}/v2/models/{MLSERVER_MODEL}/ready", servers[2])
    for server in servers:
        wait_until_idle(server.pid)

    files = write_bodies(work, records, model_uri)
    max_difference = same_scores(urls, files)
    measured: dict[str, Any] = {}
    for load, rows in LOADS.items():
        for server in SERVERS:
            path, content_type = files[server, load]
            print(f"  {server} {load} ...", flush=True)
            measured[f"{server}_{load}"] = {**wrk(urls[server], path, seconds, CONCURRENCY, content_type)}
            measured[f"{server}_{load}"]["rows_per_s"] = measured[f"{server}_{load}"]["requests_per_s"] * rows
    print("  ours batch (JSON records) ...", flush=True)
    measured["ours_batch_json"] = wrk(urls["ours"], files["ours", "batch_json"][0], seconds, CONCURRENCY)
    measured["ours_batch_json"]["rows_per_s"] = measured["ours_batch_json"]["requests_per_s"] * BATCH
    abused = abuse(ours_port, servers[0].pid)
    record = recording(ours, servers[0], recorded) if record else {}
    return {
        "record": record,
        "workers": workers,
        "concurrency": CONCURRENCY,
        "seconds": seconds,
        "loads": LOADS,
        "model": model_uri,
        "max_score_difference": max_difference,
        "measured": measured,
        "abuse": abused,
        "targets": {
            **load_targets(measured),
            **abuse_targets(abused),
            **(record_targets(record) if record else {}),
        },
    }


def recording(url: str, server: subprocess.Popen[bytes], folder: Path) -> dict[str, int]:
    """What this API scored, dropped from and wrote to its prediction record over the whole run (it writes what it
    holds when it stops)."""
    import pyarrow.parquet as pq
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as answer:
        samples = [s for f in text_string_to_metric_families(answer.read().decode()) for s in f.samples]
    scored = sum(s.value for s in samples if s.name == "predictions_total")
    dropped = sum(s.value for s in samples if s.name == "prediction_records_dropped_total")
    server.terminate()
    server.wait(timeout=120)
    written = sum(pq.ParquetFile(path).metadata.num_rows for path in folder.rglob("*.parquet"))
    return {"scored": int(scored), "dropped": int(dropped), "written": written}


def record_targets(record: dict[str, int]) -> dict[str, bool]:
    return {
        f"every scored row recorded ({record['written']:,} written of {record['scored']:,} scored, "
        f"{record['dropped']:,} dropped)": record["written"] == record["scored"] and record["dropped"] == 0
    }


#: The model's name in MLServer's repository.
MLSERVER_MODEL = "fraud"


def mlserver_model(work: Path, model_uri: str, port: int) -> Path:
    """A model repository for MLServer: the registered model's booster (its XGBoost runtime loads it) and the
    server's settings (one process: its parallel inference workers do not start under this Python's asyncio)."""
    import mlflow.sklearn

    folder = work / "mlserver"
    (folder / MLSERVER_MODEL).mkdir(parents=True)
    booster = mlflow.sklearn.load_model(model_uri).named_steps["model"].get_booster()
    booster.save_model(folder / MLSERVER_MODEL / "model.json")
    (folder / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": _free_ports(1)[0], "metrics_port": _free_ports(1)[0],
        "parallel_workers": 0, "debug": False,
    }))  # fmt: skip
    (folder / MLSERVER_MODEL / "model-settings.json").write_text(json.dumps({
        "name": MLSERVER_MODEL, "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": "./model.json", "version": "1"},
    }))  # fmt: skip
    return folder


def write_bodies(
    work: Path, records: list[dict[str, Any]], model_uri: str
) -> dict[tuple[str, str], tuple[Path, str]]:
    """Each server's request body for each load, as a file and its content type: this API's records and Arrow
    stream, MLflow's ``dataframe_split``, and one Open Inference Protocol tensor of the encoded features for
    MLServer (the model's own encoding: its XGBoost runtime takes the booster's input)."""
    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from ml.serve.model import Scorer

    scorer = Scorer(mlflow.sklearn.load_model(model_uri))

    def arrow(rows: list[dict[str, Any]]) -> bytes:
        table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return bytes(sink.getvalue().to_pybytes())

    def tensor(rows: list[dict[str, Any]]) -> bytes:
        matrix = scorer.matrix(rows)
        data = np.where(np.isnan(matrix), None, matrix).tolist()
        return json.dumps({"inputs": [{"name": "features", "shape": list(matrix.shape), "datatype": "FP32",
                                       "data": data}]}).encode()  # fmt: skip

    def split(rows: list[dict[str, Any]]) -> bytes:
        columns = list(rows[0])
        return json.dumps(
            {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}}
        ).encode()

    bodies: dict[tuple[str, str], tuple[bytes, str]] = {}
    for load, rows in LOADS.items():
        chosen = records[:rows]
        bodies["ours", load] = (json.dumps(chosen[0]).encode(), "") if rows == 1 else (arrow(chosen), ARROW)
        bodies["mlflow", load] = (split(chosen), "")
        bodies["mlserver", load] = (tensor(chosen), "")
    bodies["ours", "batch_json"] = (json.dumps({"instances": records[:BATCH]}).encode(), "")
    files = {}
    for (server, load), (body, content_type) in bodies.items():
        path = work / f"{server}-{load}.body"
        path.write_bytes(body)
        files[server, load] = (path, content_type)
    return files


def same_scores(urls: dict[str, str], files: dict[tuple[str, str], tuple[Path, str]]) -> float:
    """The largest difference between the servers' scores of the same 1,000 rows; exits when over 1e-6."""
    import numpy as np
    import pyarrow as pa

    def answer(server: str) -> bytes:
        path, content_type = files[server, "batch"]
        request = urllib.request.Request(urls[server], data=path.read_bytes(),
                                         headers={"Content-Type": content_type or "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as response:
            return bytes(response.read())

    ours = pa.ipc.open_stream(answer("ours")).read_all().column("probability").to_numpy()
    mlflow = np.array(json.loads(answer("mlflow"))["predictions"])[:, 1]
    mlserver = np.array(json.loads(answer("mlserver"))["outputs"][0]["data"], dtype=np.float64)
    difference = float(max(np.abs(ours - mlflow).max(), np.abs(ours - mlserver).max()))
    if difference > 1e-6:
        raise SystemExit(f"the servers disagree on scores (max difference {difference})")
    return difference


def load_targets(measured: dict[str, Any]) -> dict[str, bool]:
    ratio = measured["ours_single"]["requests_per_s"] / measured["mlflow_single"]["requests_per_s"]
    targets = {
        f"single-record throughput >= {MIN_THROUGHPUT_RATIO:.0f}x mlflow models serve ({ratio:.1f}x)": ratio
        >= MIN_THROUGHPUT_RATIO,
        f"single-record p99 <= {MAX_P99_MS:.0f} ms ({measured['ours_single']['p99_ms']:.2f} ms)": measured[
            "ours_single"
        ]["p99_ms"]
        <= MAX_P99_MS,
        f"{LARGE_BATCH:,}-row Arrow batches >= {MIN_ARROW_ROWS_PER_S:,} rows/s "
        f"({measured['ours_large']['rows_per_s']:,.0f})": measured["ours_large"]["rows_per_s"]
        >= MIN_ARROW_ROWS_PER_S,
    }
    for load, rows in LOADS.items():
        ours, theirs = measured[f"ours_{load}"]["rows_per_s"], measured[f"mlserver_{load}"]["rows_per_s"]
        targets[f"ahead of MLServer, {rows:,}-row requests ({ours / theirs:.2f}x)"] = ours > theirs
    return targets


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
    m = report["measured"]
    print(f"\n{report['workers']} worker(s), concurrency {report['concurrency']}, {report['seconds']} s per run; "
          f"scores agree to {report['max_score_difference']:.1e}\n")  # fmt: skip
    print("| Load | This API | `mlflow models serve` | MLServer (XGBoost runtime) |\n|---|---:|---:|---:|")
    row = " | ".join(f"{m[f'{s}_single']['requests_per_s']:,.0f}" for s in SERVERS)
    print(f"| single record: requests/s | {row} |")
    for percentile in ("p50", "p99"):
        row = " | ".join(f"{m[f'{s}_single'][f'{percentile}_ms']:.2f}" for s in SERVERS)
        print(f"| single record: {percentile} latency (ms) | {row} |")
    for load in ("batch", "large"):
        row = " | ".join(f"{m[f'{s}_{load}']['rows_per_s']:,.0f}" for s in SERVERS)
        print(f"| batches of {LOADS[load]:,}: rows/s (this API: Arrow) | {row} |")
    print(
        f"| batches of {BATCH:,}: rows/s, this API with JSON records | {m['ours_batch_json']['rows_per_s']:,.0f} | | |"
    )


if __name__ == "__main__":
    main()
