# State in the bootstrap stack's bucket, locked with an S3 lock file (no DynamoDB table needed). The bucket,
# region, key and kms_key_id (the state's own KMS key) come from `-backend-config` (the bootstrap stack's output
# backend_config; see plugins/mlops/platform.yaml, terraform_drift.stacks).
terraform {
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }
}
