# The bucket that holds every other stack's Terraform state. Applied once with local state, then migrated
# into the bucket itself (`terraform init -migrate-state` with backend.tf.example copied to backend.tf).

provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

locals {
  tags = {
    project    = var.project
    managed-by = "terraform"
    stack      = "bootstrap"
  }
}

# The state holds every stack's outputs and any secret a resource returns: it is encrypted with a key of its own,
# which the stacks' backends name (kms_key_id in output backend_config) and the drift check's role may only
# decrypt with (terraform/data).
resource "aws_kms_key" "state" {
  description         = "Encrypts the Terraform state in ${var.state_bucket_name}."
  enable_key_rotation = true
}

resource "aws_kms_alias" "state" {
  name          = "alias/${var.project}-terraform-state"
  target_key_id = aws_kms_key.state.key_id
}

# Access logs need a central log bucket, which belongs to the organisation's account setup (as for checkov's
# CKV_AWS_18 in terraform/.checkov.yaml); CloudTrail data events audit access meanwhile.
#trivy:ignore:AVD-AWS-0089
resource "aws_s3_bucket" "state" {
  bucket = var.state_bucket_name
}

# Every state version is kept, so a bad apply can be rolled back.
resource "aws_s3_bucket_versioning" "state" {
  bucket = aws_s3_bucket.state.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "state" {
  bucket = aws_s3_bucket.state.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.state.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "state" {
  bucket                  = aws_s3_bucket.state.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_lifecycle_configuration" "state" {
  bucket = aws_s3_bucket.state.id
  rule {
    id     = "expire-old-state-versions"
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
