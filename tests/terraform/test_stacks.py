"""The stacks in terraform/: formatted, pinned, described, and in step with the platform settings.

`terraform validate` needs the AWS provider and the registry modules, which cannot be installed offline;
these checks read the files instead (checkov scans them in `make terraform-check`).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mlops.platform_config import load_platform

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
STACK_DIRS = sorted(p for p in TERRAFORM.iterdir() if p.is_dir() and any(p.glob("*.tf")))
PLATFORM = load_platform()


def blocks(text: str, kind: str) -> dict[str, str]:
    """Top-level blocks of one kind (``variable``, ``output``) by name, as text."""
    found = {}
    for match in re.finditer(rf'^{kind} "([^"]+)" \{{\n(.*?)^\}}', text, re.M | re.S):
        found[match.group(1)] = match.group(2)
    return found


def test_the_stacks_are_the_ones_the_drift_check_and_the_readme_know() -> None:
    assert {p.name for p in STACK_DIRS} == {"bootstrap", "cluster", "data"}
    checked = {stack.dir for stack in PLATFORM.terraform_drift.stacks}
    assert checked == {"terraform/cluster", "terraform/data"}
    assert all((ROOT / d).is_dir() for d in checked)


def test_terraform_fmt_is_clean() -> None:
    result = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", "-diff", "terraform", "tests/terraform/stacks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("stack", STACK_DIRS, ids=lambda p: p.name)
def test_versions_are_required_and_providers_and_modules_pinned(stack: Path) -> None:
    versions = (stack / "versions.tf").read_text()
    assert re.search(r'required_version = ">= 1\.10, < 2\.0"', versions)
    for source, version in re.findall(r'source\s+= "([^"]+)"\s+version\s+= "([^"]+)"', versions):
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{source} is not pinned to an exact version"
    text = "".join(p.read_text() for p in stack.glob("*.tf"))
    for source, version in re.findall(
        r'module "[^"]+" \{\s+source\s+= "([^"]+)"\s+version\s+= "([^"]+)"', text
    ):
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"module {source} is not pinned"
    assert text.count('module "') == len(
        re.findall(r'module "[^"]+" \{\s+source\s+= "[^"]+"\s+version', text)
    )


@pytest.mark.parametrize("stack", STACK_DIRS, ids=lambda p: p.name)
def test_every_variable_and_output_is_typed_and_described(stack: Path) -> None:
    variables = blocks((stack / "variables.tf").read_text(), "variable")
    outputs = blocks((stack / "outputs.tf").read_text(), "output")
    assert variables and outputs
    for name, body in variables.items():
        assert re.search(r"^  type\s+=", body, re.M), f"variable {name} has no type"
        assert re.search(r'^  description\s+= "\S', body, re.M), f"variable {name} has no description"
    for name, body in outputs.items():
        assert re.search(r'^  description\s+= "\S', body, re.M), f"output {name} has no description"


@pytest.mark.parametrize("stack", ["cluster", "data"])
def test_remote_state_is_in_s3_with_locking(stack: str) -> None:
    backend = (TERRAFORM / stack / "backend.tf").read_text()
    assert 'backend "s3"' in backend
    assert re.search(r"use_lockfile\s+= true", backend) and re.search(r"encrypt\s+= true", backend)


def test_the_gpu_node_group_carries_the_label_and_taint_the_pods_expect() -> None:
    """The pods' node selector and toleration (platform.yaml) against the node group's labels and taint."""
    cluster = (TERRAFORM / "cluster" / "main.tf").read_text()
    gpu = PLATFORM.node_groups["gpu"]
    labels = dict(
        re.findall(
            r'"([^"]+)" = "([^"]+)"', re.search(r"gpu_node_labels = \{(.*?)\}", cluster, re.S).group(1)
        )
    )  # type: ignore[union-attr]
    assert labels == gpu.node_selector
    taint = dict(
        re.findall(r'(\w+)\s+= "([^"]+)"', re.search(r"gpu_node_taint = \{(.*?)\}", cluster, re.S).group(1))
    )  # type: ignore[union-attr]
    (toleration,) = gpu.tolerations
    assert taint["key"] == toleration.key
    # Kubernetes writes the effect NoSchedule; the EKS API NO_SCHEDULE.
    assert taint["effect"] == re.sub(r"(?<!^)(?=[A-Z])", "_", toleration.effect).upper()
    assert taint["value"] == "true" and toleration.operator == "Exists"
    gpu_group = cluster[cluster.index("    gpu = {") :]
    assert (
        re.search(r"min_size\s+= 0\b", gpu_group)
        and "taints       = { gpu = local.gpu_node_taint }" in gpu_group
    )
    assert "labels       = local.gpu_node_labels" in gpu_group


def test_service_account_roles_are_for_the_pods_service_accounts() -> None:
    variables = blocks((TERRAFORM / "data" / "variables.tf").read_text(), "variable")

    def default(name: str) -> str:
        return re.search(r'default\s+= "([^"]+)"', variables[name]).group(1)  # type: ignore[union-attr]

    namespace = PLATFORM.kubernetes.namespace
    assert default("pipeline_service_account") == f"{namespace}:{PLATFORM.kubernetes.service_account}"
    assert default("trainer_service_account") == f"{namespace}:{PLATFORM.stage('train').service_account}"
    assert default("drift_check_service_account") == f"{namespace}:{PLATFORM.terraform_drift.service_account}"


def test_the_drift_check_may_read_the_cluster_stacks_helm_releases_and_nothing_else_in_the_cluster() -> None:
    """Refreshing ``cluster`` reads its Helm releases, kept as Secrets in their namespace: the check's role has an
    access entry with a read-only policy scoped to that namespace, the one every release of the stack is in."""
    data = (TERRAFORM / "data" / "main.tf").read_text()
    cluster = (TERRAFORM / "cluster" / "main.tf").read_text()
    variables = blocks((TERRAFORM / "data" / "variables.tf").read_text(), "variable")
    namespace = re.search(r'default\s+= "([^"]+)"', variables["cluster_addons_namespace"]).group(1)  # type: ignore[union-attr]
    releases = blocks(cluster, 'resource "helm_release"')
    assert releases, "the cluster stack has no Helm release"
    in_namespace = {name: re.search(r"^  namespace\s+= (.+)$", body, re.M) for name, body in releases.items()}
    resolved = {
        name: cluster_namespace(found.group(1), cluster) if found else None
        for name, found in in_namespace.items()
    }
    assert set(resolved.values()) == {namespace}, resolved
    entry = blocks(data, 'resource "aws_eks_access_entry"')["drift_check"]
    assert 'principal_arn = module.irsa["terraform-drift"].iam_role_arn' in entry
    association = blocks(data, 'resource "aws_eks_access_policy_association"')["drift_check"]
    assert "principal_arn = aws_eks_access_entry.drift_check.principal_arn" in association
    assert re.search(
        r'policy_arn\s+= "arn:aws:eks::aws:cluster-access-policy/AmazonEKSAdminViewPolicy"', association
    )
    assert re.search(r'type\s+= "namespace"\s+namespaces = \[var\.cluster_addons_namespace\]', association)
    assert "cluster_name" in variables and "cluster_name" in blocks(
        (TERRAFORM / "cluster" / "outputs.tf").read_text(), "output"
    )


def cluster_namespace(expression: str, cluster: str) -> str:
    """A namespace of the cluster stack: a string, or the local it names."""
    expression = expression.strip()
    if expression.startswith('"'):
        return expression.strip('"')
    local = expression.removeprefix("local.")
    found = re.search(rf"^  {local.split('.')[0]} = \{{\n(.*?)^  \}}", cluster, re.M | re.S)
    assert found, f"no local {local} in the cluster stack"
    value = re.search(rf'{local.split(".")[1]}\s+= "([^"]+)"', found.group(1))
    assert value, f"no {local} in the cluster stack"
    return value.group(1)


def test_the_data_bucket_is_encrypted_versioned_and_private() -> None:
    data = (TERRAFORM / "data" / "main.tf").read_text()
    assert 'sse_algorithm     = "aws:kms"' in data and 'status = "Enabled"' in data
    for setting in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert re.search(rf"{setting}\s+= true", data), setting


def resource(text: str, kind: str, name: str) -> str:
    """The body of ``resource "<kind>" "<name>"``, or "" when the stack has none."""
    found = re.search(rf'^resource "{kind}" "{name}" \{{\n(.*?)^\}}', text, re.M | re.S)
    return found.group(1) if found else ""


def one_line(text: str) -> str:
    """HCL with every run of whitespace made one space, so alignment by `terraform fmt` does not matter."""
    return re.sub(r"\s+", " ", text)


def test_the_gpu_group_scales_from_zero_on_the_same_label_and_taint() -> None:
    """The autoscaler's node template and the device plugin take the GPU group's label and taint from its locals.

    With no GPU node up, the cluster autoscaler knows the group only by its Auto Scaling group's tags: a copy of
    the label or taint there that drifted from the group's would leave every GPU pod pending.
    """
    cluster = (TERRAFORM / "cluster" / "main.tf").read_text()
    flat = one_line(cluster)
    template = "k8s.io/cluster-autoscaler/node-template"
    assert f'for key, value in local.gpu_node_labels : "{template}/label/${{key}}" => value' in flat, (
        "the node template's labels are not the GPU group's labels"
    )
    assert (
        f'"{template}/taint/${{local.gpu_node_taint.key}}" = '
        '"${local.gpu_node_taint.value}:${local.gpu_node_taint_effect}"' in flat
    ), "the node template's taint is not the GPU group's taint"
    assert re.search(rf'"{template}/resources/nvidia\.com/gpu" = tostring\(', flat)
    # Kubernetes' spelling of the effect: the one the pods' toleration uses, and written nowhere else.
    (toleration,) = PLATFORM.node_groups["gpu"].tolerations
    effect = re.search(r"gpu_node_taint = \{[^}]*effect = \"(\w+)\"", flat).group(1)  # type: ignore[union-attr]
    assert f'{effect} = "{toleration.effect}"' in flat
    assert "gpu_node_taint_effect = local.kubernetes_taint_effects[local.gpu_node_taint.effect]" in flat
    assert cluster.count(f'"{toleration.effect}"') == 1 and f":{toleration.effect}" not in cluster

    tags = one_line(resource(cluster, "aws_autoscaling_group_tag", "gpu_node_template"))
    assert "for_each = local.gpu_node_template_tags" in tags
    assert 'module.eks.eks_managed_node_groups["gpu"].node_group_autoscaling_group_names' in tags

    plugin = one_line(resource(cluster, "helm_release", "nvidia_device_plugin"))
    assert "nodeSelector = local.gpu_node_labels" in plugin, "the device plugin does not select the GPU group"
    assert (
        'tolerations = [{ key = local.gpu_node_taint.key operator = "Exists" '
        "effect = local.gpu_node_taint_effect }]" in plugin
    ), "the device plugin does not tolerate the GPU group's taint"

    autoscaler = one_line(resource(cluster, "helm_release", "cluster_autoscaler"))
    assert "autoDiscovery = { clusterName = module.eks.cluster_name }" in autoscaler
    assert '"eks.amazonaws.com/role-arn" = module.cluster_autoscaler_irsa.iam_role_arn' in autoscaler
    role = one_line(blocks(cluster, "module")["cluster_autoscaler_irsa"])
    assert "attach_cluster_autoscaler_policy = true" in role
    assert "cluster_autoscaler_cluster_names = [module.eks.cluster_name]" in role


def test_the_helm_charts_are_pinned() -> None:
    cluster = (TERRAFORM / "cluster" / "main.tf").read_text()
    variables = blocks((TERRAFORM / "cluster" / "variables.tf").read_text(), "variable")
    releases = re.findall(r'^resource "helm_release" "([^"]+)"', cluster, re.M)
    assert set(releases) == {"cluster_autoscaler", "nvidia_device_plugin"}
    for release in releases:
        body = resource(cluster, "helm_release", release)
        assert re.search(r'^  repository\s+= "https://[^"]+"$', body, re.M), release
        version = re.search(r"^  version\s+= var\.(\w+)$", body, re.M)
        assert version, f"{release} has no chart version"
        default = re.search(r'default\s+= "([^"]+)"', variables[version.group(1)])
        assert default and re.fullmatch(r"\d+\.\d+\.\d+", default.group(1)), (
            f"{release}'s chart is not pinned"
        )


@pytest.mark.parametrize(("stack", "bucket"), [("bootstrap", "state"), ("data", "data")])
def test_each_bucket_is_encrypted_with_its_own_rotated_customer_managed_key(stack: str, bucket: str) -> None:
    main = (TERRAFORM / stack / "main.tf").read_text()
    assert re.search(r"enable_key_rotation\s+= true", resource(main, "aws_kms_key", bucket)), stack
    encryption = resource(main, "aws_s3_bucket_server_side_encryption_configuration", bucket)
    assert re.search(rf"kms_master_key_id\s+= aws_kms_key\.{bucket}\.arn", encryption), stack


def test_the_backends_encrypt_the_state_with_its_key_and_the_drift_check_may_decrypt_it() -> None:
    """The S3 backend writes with S3-managed keys unless kms_key_id is set, whatever the bucket's default."""
    outputs = (TERRAFORM / "bootstrap" / "outputs.tf").read_text()
    backend_config = blocks(outputs, "output")["backend_config"]
    assert re.search(r"kms_key_id\s+= aws_kms_key\.state\.arn", backend_config)
    state_read_only = (TERRAFORM / "data" / "main.tf").read_text().split('"state_read_only" {', 1)[1]
    state_read_only = state_read_only.split("\n}\n", 1)[0]
    assert 'actions   = ["kms:Decrypt"]' in state_read_only and "var.state_kms_key_arn" in state_read_only
