# Storage and identities: the bucket for pipeline data and MLflow artifacts, and the IAM roles that the
# cluster's service accounts assume through IRSA (no static AWS keys anywhere).

provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

data "aws_caller_identity" "current" {}

locals {
  name        = "${var.project}-${var.environment}"
  bucket_name = "${local.name}-data-${data.aws_caller_identity.current.account_id}"
  tags = {
    project     = var.project
    environment = var.environment
    managed-by  = "terraform"
    stack       = "data"
  }
  # Prefixes of the bucket: what the pipeline writes (mlops_data_root) and what the MLflow server stores.
  data_prefix     = "pipeline"
  artifact_prefix = "mlflow-artifacts"
}

resource "aws_kms_key" "data" {
  description         = "Encrypts the ${local.name} data bucket."
  enable_key_rotation = true
}

resource "aws_kms_alias" "data" {
  name          = "alias/${local.name}-data"
  target_key_id = aws_kms_key.data.key_id
}

# Access logs: see the state bucket in terraform/bootstrap.
#trivy:ignore:AVD-AWS-0089
resource "aws_s3_bucket" "data" {
  bucket = local.bucket_name
}

resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.data.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket                  = aws_s3_bucket.data.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.data.arn, "${aws_s3_bucket.data.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "data" {
  bucket = aws_s3_bucket.data.id
  policy = data.aws_iam_policy_document.tls_only.json
}

# Read and write under a prefix of the data bucket (and use its key).
data "aws_iam_policy_document" "read_write" {
  for_each = {
    pipeline = local.data_prefix
    mlflow   = local.artifact_prefix
  }
  statement {
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.data.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${each.value}/*"]
    }
  }
  statement {
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.data.arn}/${each.value}/*"]
  }
  statement {
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
  }
}

# The inference API reads models, and adds files to its prediction record (mlops_data_root/predictions: the
# monitoring DAG reads them); it reads nothing else and deletes nothing.
data "aws_iam_policy_document" "artifacts_read_only" {
  statement {
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.data.arn}/${local.artifact_prefix}/*"]
  }
  statement {
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.data.arn}/${local.data_prefix}/predictions/*"]
  }
  statement {
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
  }
}

# The drift check reads the Terraform state; refreshing reads the infrastructure (AWS ReadOnlyAccess).
data "aws_iam_policy_document" "state_read_only" {
  statement {
    actions   = ["s3:ListBucket"]
    resources = ["arn:aws:s3:::${var.state_bucket_name}"]
  }
  statement {
    actions   = ["s3:GetObject"]
    resources = ["arn:aws:s3:::${var.state_bucket_name}/*"]
  }
  # The state is encrypted with the bootstrap stack's key; the check plans with -lock=false, so it never writes.
  statement {
    actions   = ["kms:Decrypt"]
    resources = [var.state_kms_key_arn]
  }
}

resource "aws_iam_policy" "this" {
  for_each = {
    pipeline-data       = data.aws_iam_policy_document.read_write["pipeline"].json
    mlflow-artifacts    = data.aws_iam_policy_document.read_write["mlflow"].json
    inference-read-only = data.aws_iam_policy_document.artifacts_read_only.json
    state-read-only     = data.aws_iam_policy_document.state_read_only.json
  }
  name   = "${local.name}-${each.key}"
  policy = each.value
}

module "irsa" {
  source  = "terraform-aws-modules/iam/aws//modules/iam-role-for-service-accounts-eks"
  version = "5.58.0"

  for_each = {
    # The stage pods, and the train stage's own service account (it may also create Dask clusters).
    airflow-ml-pods = {
      service_accounts = [var.pipeline_service_account, var.trainer_service_account]
      policies         = { data = aws_iam_policy.this["pipeline-data"].arn }
    }
    mlflow-server = {
      service_accounts = [var.mlflow_service_account]
      policies         = { artifacts = aws_iam_policy.this["mlflow-artifacts"].arn }
    }
    inference-api = {
      service_accounts = [var.inference_service_account]
      policies         = { artifacts = aws_iam_policy.this["inference-read-only"].arn }
    }
    terraform-drift = {
      service_accounts = [var.drift_check_service_account]
      policies = {
        state     = aws_iam_policy.this["state-read-only"].arn
        read_only = "arn:aws:iam::aws:policy/ReadOnlyAccess"
      }
    }
  }

  role_name        = "${local.name}-${each.key}"
  role_policy_arns = each.value.policies

  oidc_providers = {
    cluster = {
      provider_arn               = var.oidc_provider_arn
      namespace_service_accounts = each.value.service_accounts
    }
  }
}

# Refreshing the cluster stack reads its Helm releases, which Helm keeps as Secrets in their namespace: the drift
# check's role may read that namespace, Secrets included, and nothing else in the cluster (EKS's AdminView access
# policy is read-only; its scope is the one namespace). It signs in with `aws eks get-token`, the AWS CLI of its
# image, as the cluster stack's Helm provider does.
resource "aws_eks_access_entry" "drift_check" {
  cluster_name  = var.cluster_name
  principal_arn = module.irsa["terraform-drift"].iam_role_arn
}

resource "aws_eks_access_policy_association" "drift_check" {
  cluster_name  = var.cluster_name
  principal_arn = aws_eks_access_entry.drift_check.principal_arn
  policy_arn    = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSAdminViewPolicy"

  access_scope {
    type       = "namespace"
    namespaces = [var.cluster_addons_namespace]
  }
}
