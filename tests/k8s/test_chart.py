"""The inference API chart: lint, render with each strategy, validate against the Kubernetes schema, and agree
with the values schema, the platform settings and the API's own metrics.

Rendering and linting use Helm's own Go SDK (helm-python-sdk); no cluster runs here, so objects are validated
against the Kubernetes 1.33 OpenAPI schema. kubernetes-validate does not know Argo's or the Prometheus
Operator's CRDs: the Rollout's pod template is validated as the template of a Deployment here, the Argo objects
against Argo's own CRD schemas in ``test_argo_crds.py``, and the Prometheus Operator's objects field by field.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from ml.release import chart
from ml.serve import metrics
from mlops.models import load_models
from mlops.platform_config import load_platform
from standins.render import RenderError
from standins.render import render as render_chart
from standins.rollouts import analysis

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "helm" / "inference-api"
KUBERNETES_VERSION = "1.33.0"
PLATFORM = load_platform()
#: The card-fraud model's release (its model file): the name and namespace the chart is rendered with.
RELEASE = load_models().get("card_fraud").release
CRD_KINDS = {"Rollout", "AnalysisTemplate", "ServiceMonitor", "PrometheusRule"}
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
#: Value sets the chart must render: the default canary, blue-green, a plain Deployment, and everything off.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "canary": {},
    "blue-green": {"workload": {"strategy": "blueGreen"}},
    "deployment": {"workload": {"kind": "deployment"}},
    "minimal": {
        "workload": {"kind": "deployment", "replicas": 2},
        "autoscaling": {"enabled": False},
        "monitoring": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "ingress": {"enabled": False},
        "serviceAccount": {"create": False, "name": "existing"},
        "topologySpread": {"enabled": False},
    },
    "tracing-and-secrets": {
        "tracing": {"enabled": True},
        "secrets": {"envFromSecret": "inference-api-env", "adminTokenSecret": "inference-api-admin"},
        "imagePullSecrets": ["registry"],
    },
    "vault": {"secrets": {"vault": {"enabled": True}, "adminTokenSecret": "inference-api-admin"}},
}


def render(values: dict[str, Any] | None = None, revision: int = 1) -> list[dict[str, Any]]:
    return render_chart(
        CHART, values or {}, release=RELEASE.name, namespace=RELEASE.namespace, revision=revision
    )


def kinds(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    return by_kind


def pod_template(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return chart.workload(objects)["spec"]["template"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_chart_lints_clean(name: str) -> None:
    report = helm_python.lint(CHART, VALUE_SETS[name], strict=True, namespace=RELEASE.namespace)
    assert [m for m in report["messages"] if m["severity"] >= 2] == [] and report["errors"] == []


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_core_object_validates_strictly_against_kubernetes(name: str) -> None:
    objects = render(VALUE_SETS[name])
    core = [obj for obj in objects if obj["kind"] not in CRD_KINDS]
    assert core
    for obj in core:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", ["canary", "blue-green"])
def test_the_rollouts_pod_template_validates_as_a_deployments(name: str) -> None:
    """The Rollout embeds a core PodTemplateSpec: validated by wrapping it in a Deployment with its selector."""
    rollout = kinds(render(VALUE_SETS[name]))["Rollout"][0]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": rollout["metadata"],
        "spec": {"selector": rollout["spec"]["selector"], "template": rollout["spec"]["template"]},
    }
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_default_release_is_an_analysed_canary_in_the_charts_steps() -> None:
    by_kind = kinds(render())
    assert set(by_kind) >= {
        "Rollout", "AnalysisTemplate", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceAccount",
        "ConfigMap", "Ingress", "ServiceMonitor", "PrometheusRule", "NetworkPolicy", "Service",
    }  # fmt: skip
    assert "Deployment" not in by_kind and "Secret" not in by_kind
    canary = by_kind["Rollout"][0]["spec"]["strategy"]["canary"]
    assert canary["steps"] == VALUES["canary"]["steps"]
    assert [s["setWeight"] for s in canary["steps"] if "setWeight" in s] == [10, 30, 60, 100]
    assert canary["trafficRouting"] == {"nginx": {"stableIngress": by_kind["Ingress"][0]["metadata"]["name"]}}
    services = {s["metadata"]["name"] for s in by_kind["Service"]}
    assert {canary["stableService"], canary["canaryService"]} <= services
    assert by_kind["Rollout"][0]["spec"]["rollbackWindow"] == {
        "revisions": VALUES["workload"]["rollbackWindow"]
    }
    template = canary["analysis"]["templates"][0]["templateName"]
    assert template == by_kind["AnalysisTemplate"][0]["metadata"]["name"]
    assert canary["analysis"]["startingStep"] == VALUES["analysis"]["startingStep"]


def test_a_value_switches_to_blue_green_and_one_to_a_plain_deployment() -> None:
    blue_green = kinds(render(VALUE_SETS["blue-green"]))["Rollout"][0]["spec"]["strategy"]["blueGreen"]
    assert blue_green["prePromotionAnalysis"]["templates"][0]["templateName"]
    assert blue_green["previewService"] != blue_green["activeService"]
    plain = kinds(render(VALUE_SETS["deployment"]))
    assert "Rollout" not in plain and "AnalysisTemplate" not in plain
    assert plain["HorizontalPodAutoscaler"][0]["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert len(plain["Service"]) == 2  # the Service and the metrics Service; no canary or preview Service


def test_the_local_canary_reads_the_analysis_thresholds_from_the_rendered_template() -> None:
    template = kinds(render())["AnalysisTemplate"][0]
    given = VALUES["analysis"]
    thresholds = {
        m.name: (m.success.op, m.threshold, m.failure.op, m.min_requests)
        for m in analysis.metrics_of(template)
    }
    minimum = given["minRequests"]
    assert thresholds == {
        "success-rate": (">=", given["minSuccessRate"], "<", minimum),
        "latency-p99": ("<=", given["maxLatencyP99Seconds"], ">", minimum),
        "latency-p99-vs-stable": ("<=", given["maxLatencyP99Ratio"], ">", minimum),
        "client-errors": ("<=", given["maxClientErrorShareIncrease"], ">", minimum),
        "positive-share-shift": ("<=", given["positiveShare"]["maxZ"], ">", minimum),
    }
    stricter = kinds(render({"analysis": {"minSuccessRate": 0.999, "minRequests": 7}}))["AnalysisTemplate"][0]
    assert analysis.metrics_of(stricter)[0].threshold == 0.999
    assert analysis.metrics_of(stricter)[0].min_requests == 7


def test_the_champion_check_runs_before_the_last_canary_step_and_before_a_blue_green_switch() -> None:
    checked = {
        "model": {"uri": "models:/fraud/7"},
        "championCheck": {"alias": "champion", "expectedVersion": "5", "revision": 1},
    }
    by_kind = kinds(render(checked))
    steps = by_kind["Rollout"][0]["spec"]["strategy"]["canary"]["steps"]
    champion_template = f"{by_kind['Rollout'][0]['metadata']['name']}-champion"
    assert steps[:-1] == [
        *VALUES["canary"]["steps"][:-1],
        {"analysis": {"templates": [{"templateName": champion_template}]}},
    ]
    assert steps[-1] == VALUES["canary"]["steps"][-1]
    (template,) = [t for t in by_kind["AnalysisTemplate"] if t["metadata"]["name"] == champion_template]
    (check,) = analysis.metrics_of(template)
    assert (
        check.web["url"]
        == f"{VALUES['mlflow']['trackingUri']}/api/2.0/mlflow/registered-models/alias?name=fraud&alias=champion"
    )
    # Still the champion it was compared with, or already this model (a rollback to the champion's revision
    # restores this template): go on; anything else: the champion moved, abort.
    assert check.phase("5") == "Successful" and check.phase("7") == "Successful"
    assert check.phase("6") == "Failed" and check.phase("error: 401") == "Failed"
    blue_green = kinds(render({**checked, **VALUE_SETS["blue-green"]}))["Rollout"][0]["spec"]["strategy"][
        "blueGreen"
    ]
    assert [t["templateName"] for t in blue_green["prePromotionAnalysis"]["templates"]][
        -1
    ] == champion_template
    assert len(kinds(render())["AnalysisTemplate"]) == 1  # no expected version, no check


def test_a_champion_check_is_run_only_by_the_revision_that_armed_it() -> None:
    """Values reused from the armed revision (CI/CD's image upgrade with --reset-then-reuse-values, a deploy
    without --champion-alias) re-render as a later revision: they must not bring the old check along, which would
    compare today's champion with the version an earlier release expected and abort a good rollout."""
    armed = {
        "model": {"uri": "models:/fraud/12"},
        "championCheck": {"alias": "champion", "expectedVersion": "6", "revision": 4},
    }

    def champion_checks(objects: list[dict[str, Any]]) -> list[str]:
        steps = kinds(objects)["Rollout"][0]["spec"]["strategy"]["canary"]["steps"]
        templates = [t["metadata"]["name"] for t in kinds(objects)["AnalysisTemplate"]]
        return [name for name in templates if name.endswith("-champion")] + [
            str(step) for step in steps if "analysis" in step
        ]

    assert len(champion_checks(render(armed, revision=4))) == 2  # the template and the step before 100 %
    image_upgrade = {**armed, "image": {"tag": "ci-sha-1234"}}
    assert champion_checks(render(image_upgrade, revision=5)) == []
    assert champion_checks(render({**armed, "model": {"uri": "models:/fraud/13"}}, revision=7)) == []
    # Nothing is checked against a model that no longer pins a version once the check is inherited.
    assert champion_checks(render({**armed, "model": {"uri": "models:/fraud@champion"}}, revision=5)) == []
    with pytest.raises(
        RenderError, match=re.escape("championCheck.revision 4 is ahead of this release's revision 3")
    ):
        render(armed, revision=3)


def test_promql_names_only_metrics_and_labels_the_api_exports() -> None:
    """The queries and alerts use the names in ml/serve/metrics.py, not copies that could drift apart."""
    exported = {"up"}  # Prometheus's own
    labels = {"namespace", "service", "le", "rollouts_pod_template_hash"}  # from the scrape and the histogram
    for collector in (
        metrics.HTTP_REQUESTS,
        metrics.HTTP_DURATION,
        metrics.PREDICTION_SCORE,
        metrics.PREDICTIONS,
        metrics.MODEL_INFO,
        metrics.RECORDS_DROPPED,
        metrics.RECORD_WRITE_ERRORS,
    ):
        name, kind = collector._name, collector._type
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}[kind]
        exported |= {name + suffix for suffix in suffixes}
        labels |= set(collector._labelnames)
    by_kind = kinds(render())
    queries = [
        m["provider"]["prometheus"]["query"] for m in by_kind["AnalysisTemplate"][0]["spec"]["metrics"]
    ]
    queries += [r["expr"] for g in by_kind["PrometheusRule"][0]["spec"]["groups"] for r in g["rules"]]
    used = {name for query in queries for name in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", query)}
    used_labels = {
        label for query in queries for label in re.findall(r"[{,]\s*([a-z_]+)\s*(?:=|!=|=~|!~)", query)
    }
    assert used and used <= exported, used - exported
    assert used_labels and used_labels <= labels, used_labels - labels


def alert_rules() -> list[dict[str, Any]]:
    groups = kinds(render())["PrometheusRule"][0]["spec"]["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_a_severity_a_description_and_a_runbook_in_the_repository() -> None:
    rules = alert_rules()
    assert sorted({r["alert"] for r in rules}) == [
        "InferenceApiAvailabilityBudgetBurn", "InferenceApiDown", "InferenceApiLatencyBudgetBurn",
        "InferenceApiPredictionDrift", "InferenceApiPredictionRecordsLost",
    ]  # fmt: skip
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        url = rule["annotations"]["runbook_url"]
        assert url == f"{VALUES['monitoring']['runbookBaseUrl']}/{rule['alert']}.md"
        runbook = ROOT / "docs" / "runbooks" / f"{rule['alert']}.md"
        text = runbook.read_text()
        for part in ("**What it means.**", "**Confirm.**", "**Mitigate.**", "Pause releases"):
            assert part.lower() in text.lower(), f"{runbook.name} has no {part}"
    assert (ROOT / "docs" / "incident.md").exists()


def test_burn_rate_alerts_pair_a_long_and_a_short_window_at_thresholds_from_the_values() -> None:
    slo = VALUES["monitoring"]["slo"]
    recorded = {
        rule["record"]
        for group in kinds(render())["PrometheusRule"][0]["spec"]["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    burns = [r for r in alert_rules() if r["alert"].endswith("BudgetBurn")]
    pairs = {(r["alert"], r["labels"]["burn"]): r["expr"] for r in burns}
    objectives = {"InferenceApiAvailabilityBudgetBurn": ("errors", slo["availability"]),
                  "InferenceApiLatencyBudgetBurn": ("slow", slo["latency"])}  # fmt: skip
    windows = {"fast": ("1h", "5m", slo["fastBurnRate"]), "slow": ("6h", "30m", slo["slowBurnRate"])}
    assert set(pairs) == {(a, b) for a in objectives for b in windows}
    for (alert, speed), expr in pairs.items():
        sli, objective = objectives[alert]
        long, short, rate = windows[speed]
        threshold = re.findall(r"> ([0-9.e-]+)", expr)
        assert len(threshold) == 2 and all(
            float(t) == pytest.approx(rate * (1 - objective)) for t in threshold
        )
        used = set(re.findall(r"inference_api:slo_[a-z]+:ratio_rate[0-9a-z]+", expr))
        assert used == {
            f"inference_api:slo_{sli}:ratio_rate{long}",
            f"inference_api:slo_{sli}:ratio_rate{short}",
        }
        assert used <= recorded
    # The budget's own window, for what reads the budget left.
    assert f"inference_api:slo_errors:ratio_rate{slo['windowDays']}d" in recorded


def test_every_query_and_rule_of_the_chart_is_valid_promql() -> None:
    """Parsed by a port of Prometheus's own grammar (a typo, an unclosed bracket or a bad regex fails here, not
    when Prometheus loads the rules); the analysis's arguments are filled in as Argo Rollouts fills them."""
    import promql_parser

    by_kind = kinds(render())
    queries = [
        m["provider"]["prometheus"]["query"] for m in by_kind["AnalysisTemplate"][0]["spec"]["metrics"]
    ]
    queries += [r["expr"] for g in by_kind["PrometheusRule"][0]["spec"]["groups"] for r in g["rules"]]
    args = {"{{args.min-requests}}": "50", "{{args.new-hash}}": "abc", "{{args.stable-hash}}": "def"}
    for query in queries:
        for arg, value in args.items():
            query = query.replace(arg, value)
        promql_parser.parse(query)
    with pytest.raises(Exception, match="unclosed"):
        promql_parser.parse("sum(rate(http_requests_total[5m])")


def test_the_slos_count_every_scoring_path_and_nothing_else() -> None:
    """Requests scored through MLflow's or the Open Inference Protocol's paths spend the error budget as /predict
    does; the probes and /metrics do not."""
    expr = next(
        r["expr"]
        for g in kinds(render())["PrometheusRule"][0]["spec"]["groups"]
        for r in g["rules"]
        if r.get("record") == "inference_api:slo_errors:ratio_rate5m"
    )
    pattern = re.search(r'path=~"([^"]+)"', expr)
    assert pattern is not None
    labels = {*metrics.KNOWN_PATHS, metrics.V2_INFER, "other"}
    # Prometheus anchors a label regex at both ends, as fullmatch does.
    assert {label for label in labels if re.fullmatch(pattern.group(1), label)} == metrics.SCORING_PATHS
    assert "sum by (namespace, service)" in expr  # one series per release, never two releases' sums in one


def test_with_vault_the_agent_renders_one_secret_as_the_apis_environment_file() -> None:
    """The injector's annotations, the token its agent logs in with (the API's container mounts none), and the file
    the API loads first; without vault, none of it."""
    from ml.serve.settings import ENV_FILE_VARIABLE

    pod = kinds(render(VALUE_SETS["vault"]))["Rollout"][0]["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    vault = VALUES["secrets"]["vault"]
    assert annotations["vault.hashicorp.com/agent-inject"] == "true"
    assert annotations["vault.hashicorp.com/role"] == vault["role"]
    assert annotations["vault.hashicorp.com/agent-pre-populate-only"] == "true"
    assert annotations["vault.hashicorp.com/agent-inject-secret-env"] == vault["envPath"]
    template = annotations["vault.hashicorp.com/agent-inject-template-env"]
    assert f'{{{{- with secret "{vault["envPath"]}" -}}}}' in template and "{{ $value | toJSON }}" in template
    token = annotations["vault.hashicorp.com/agent-service-account-token-volume-name"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == token)
    assert volume["projected"]["sources"][0]["serviceAccountToken"]
    (api,) = pod["spec"]["containers"]
    assert (
        token not in {m["name"] for m in api["volumeMounts"]}
        and pod["spec"]["automountServiceAccountToken"] is False
    )
    env = {e["name"]: e for e in api["env"]}
    assert env[ENV_FILE_VARIABLE]["value"] == "/vault/secrets/env" and "SERVE_ADMIN_TOKEN" in env
    plain = kinds(render())["Rollout"][0]["spec"]["template"]
    assert not any(key.startswith("vault.hashicorp.com/") for key in plain["metadata"]["annotations"])
    assert "env" not in plain["spec"]["containers"][0]


def test_the_latency_objective_is_one_of_the_apis_histogram_buckets() -> None:
    """The latency SLI counts the requests under the objective from the histogram's bucket with that bound: a
    bound the API does not export would count none, and the alert would fire or stay silent for no reason."""
    from prometheus_client.utils import floatToGoString

    seconds = VALUES["monitoring"]["slo"]["latencySeconds"]
    bounds = [floatToGoString(b) for b in metrics.HTTP_DURATION._kwargs["buckets"]]
    assert floatToGoString(seconds) in bounds
    expr = next(
        r["expr"]
        for g in kinds(render())["PrometheusRule"][0]["spec"]["groups"]
        for r in g["rules"]
        if r.get("record") == "inference_api:slo_slow:ratio_rate5m"
    )
    assert f'le="{floatToGoString(seconds)}"' in expr


def test_the_autoscaler_follows_cpu_memory_and_requests_per_pod() -> None:
    hpa = kinds(render())["HorizontalPodAutoscaler"][0]["spec"]
    auto = VALUES["autoscaling"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 20) == (auto["minReplicas"], auto["maxReplicas"])
    targets = {
        m.get("resource", {}).get("name") or m["pods"]["metric"]["name"]: m.get("resource", m.get("pods"))[
            "target"
        ]
        for m in hpa["metrics"]
    }
    assert targets["cpu"]["averageUtilization"] == 70
    assert targets["memory"]["averageUtilization"] == 80
    assert targets["http_requests_per_second"]["averageValue"] == "100"
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pods_meet_the_restricted_pod_security_standard_and_probe_health_and_ready(name: str) -> None:
    template = pod_template(render(VALUE_SETS[name]))["spec"]
    assert template["securityContext"]["runAsNonRoot"] is True
    assert template["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert not any(key.startswith("host") for key in template)
    assert all("hostPath" not in volume for volume in template["volumes"])
    for container in template["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
        assert context["runAsNonRoot"] is True and context["readOnlyRootFilesystem"] is True
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert "ports" in container and container["resources"]["limits"]


def test_secrets_are_only_referenced() -> None:
    objects = render(VALUE_SETS["tracing-and-secrets"])
    assert "Secret" not in kinds(objects)
    container = pod_template(objects)["spec"]["containers"][0]
    assert {"secretRef": {"name": "inference-api-env"}} in container["envFrom"]
    (token,) = container["env"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "inference-api-admin", "key": "admin-token"}
    assert kinds(objects)["Ingress"][0]["spec"]["tls"][0]["secretName"] == VALUES["ingress"]["tlsSecret"]


def test_network_policy_lets_in_only_the_ingress_controller_and_prometheus() -> None:
    policy = kinds(render(VALUE_SETS["tracing-and-secrets"]))["NetworkPolicy"][0]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    sources = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in ingress["from"]
    }
    assert sources == {
        VALUES["networkPolicy"]["ingressControllerNamespace"],
        VALUES["networkPolicy"]["prometheusNamespace"],
    }
    destinations = []
    for rule in policy["egress"]:
        for peer in rule["to"]:
            if "ipBlock" in peer:
                destinations.append(("s3", tuple(p["port"] for p in rule["ports"])))
            else:
                namespace = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                destinations.append((namespace, tuple(p["port"] for p in rule["ports"])))
    assert sorted(destinations) == sorted([
        ("kube-system", (53, 53)), (VALUES["mlflow"]["namespace"], (VALUES["mlflow"]["port"],)),
        ("s3", (443,)), (VALUES["tracing"]["namespace"], (VALUES["tracing"]["port"],)),
    ])  # fmt: skip
    without_tracing = kinds(render())["NetworkPolicy"][0]["spec"]["egress"]
    assert len(without_tracing) == 3


def test_a_model_or_setting_change_changes_the_pod_template_and_starts_a_rollout() -> None:
    first = pod_template(render({"model": {"uri": "models:/m/1"}}))
    second = pod_template(render({"model": {"uri": "models:/m/2"}}))
    assert (
        first["metadata"]["annotations"]["checksum/config"]
        != second["metadata"]["annotations"]["checksum/config"]
    )
    assert pod_template(render({"model": {"uri": "models:/m/1"}})) == first


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ingress": {"enabled": False}}, "splits traffic at the nginx ingress"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 4}}, "maxReplicas must be at least"),
        ({"analysis": {"startingStep": 7}}, "startingStep must name one of canary.steps"),
        ({"autoscaling": {"enabled": False}, "workload": {"replicas": 1}}, "every pod may be evicted"),
        ({"ingress": {"tlsSecret": ""}}, "served over TLS only"),
        ({"workload": {"strategy": "linear"}}, "value must be one of 'canary', 'blueGreen'"),
        ({"canary": {"steps": [{"setWeight": 150}]}}, "maximum: got 150"),
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        (
            {"championCheck": {"alias": "champion", "expectedVersion": "5", "revision": 1}},
            "needs model.uri to pin a version",
        ),
        (
            {"model": {"uri": "models:/m/7"}, "championCheck": {"expectedVersion": "5", "revision": 1}},
            "needs championCheck.alias",
        ),
        (
            {"model": {"uri": "models:/m/7"}, "championCheck": {"alias": "champion", "expectedVersion": "5"}},
            "needs championCheck.revision: the release revision that arms the check (this one is 1)",
        ),
    ],
)
def test_bad_values_fail_at_render_time_with_a_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        render(values)


def test_values_yaml_validates_against_its_schema_and_every_key_is_described() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.validate(VALUES, SCHEMA)

    def walk(value: Any, schema: dict[str, Any], path: str) -> None:
        assert schema.get("description"), f"{path or '(root)'} has no description in values.schema.json"
        if path:
            assert schema.get("default") == value or isinstance(value, dict), f"{path}: default differs"
        if isinstance(value, dict) and schema.get("type") == "object" and "properties" in schema:
            assert schema.get("additionalProperties") is False, f"{path} accepts unknown keys"
            assert set(schema["properties"]) == set(value), f"{path}: schema and values.yaml keys differ"
            for key, item in value.items():
                walk(item, schema["properties"][key], f"{path}.{key}".lstrip("."))

    walk(VALUES, SCHEMA, "")


def test_a_value_added_without_its_schema_fails() -> None:
    """The rule the schema enforces on contributors: a new key in values.yaml needs its schema entry."""
    values = copy.deepcopy(VALUES)
    values["serve"]["newSetting"] = 1
    with pytest.raises(jsonschema.ValidationError, match="'newSetting' was unexpected"):
        jsonschema.validate(values, SCHEMA)


def test_every_key_of_values_yaml_has_a_comment_above_it() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z][A-Za-z0-9]*:", line) and not re.match(r"^\s*-", line):
            previous = lines[number - 1].strip() if number else ""
            parent_is_free_map = line.startswith("    release:")  # a label value inside monitoring.labels
            assert previous.startswith("#") or parent_is_free_map, (
                f"values.yaml line {number + 1}: {line.strip()}"
            )


def test_the_chart_deploys_the_image_the_platform_names() -> None:
    repository, tag = PLATFORM.images.inference_api_repository_tag
    assert VALUES["image"]["repository"] == repository
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == tag
    container = pod_template(render())["spec"]["containers"][0]
    assert container["image"] == f"{repository}:{tag}"
    assert pod_template(render())["spec"]["securityContext"]["runAsUser"] == PLATFORM.kubernetes.run_as_user


#: Environment values files kept in the repository (the chart's own defaults are rendered by every other test);
#: k8s/dask-operator/ and k8s/airflow/ hold other charts' (tests/k8s/test_cluster_objects.py renders the first,
#: tests/plugins/test_vault_secrets.py runs the second's secrets backend).
ENVIRONMENT_VALUES = sorted(
    p
    for p in ROOT.glob("k8s/**/*values.yaml")
    if p != CHART / "values.yaml" and not {"dask-operator", "airflow"} & set(p.relative_to(ROOT).parts)
)


def test_the_kind_cluster_has_its_values_file() -> None:
    assert ROOT / "k8s" / "kind" / "inference-api-values.yaml" in ENVIRONMENT_VALUES


@pytest.mark.parametrize("values_file", ENVIRONMENT_VALUES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_values_file_in_the_repository_renders_valid_objects(values_file: Path) -> None:
    """The kind cluster's values (and any other environment's) pass the schema and render valid objects."""
    values = yaml.safe_load(values_file.read_text()) or {}
    objects = render_chart(CHART, values, release=RELEASE.name, namespace=RELEASE.namespace)
    for obj in objects:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
