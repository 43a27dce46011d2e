# State in the bootstrap stack's bucket, locked with an S3 lock file (no DynamoDB table needed). The bucket,
# region and key come from `-backend-config` (see plugins/mlops/platform.yaml, terraform_drift.stacks).
terraform {
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }
}
