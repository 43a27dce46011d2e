output "state_bucket" {
  description = "Name of the state bucket: the `bucket` of the shared backend settings."
  value       = aws_s3_bucket.state.bucket
}

output "state_kms_key_arn" {
  description = "ARN of the key that encrypts the state: the data stack's state_kms_key_arn, and kms_key_id of the backends."
  value       = aws_kms_key.state.arn
}

output "backend_config" {
  description = "Backend settings shared by the stacks, as the drift check's Variable terraform_backend_config wants them."
  value = jsonencode({
    bucket = aws_s3_bucket.state.bucket
    region = var.region
    # Without it the backend writes the state with S3-managed keys, whatever the bucket's default.
    kms_key_id = aws_kms_key.state.arn
  })
}
