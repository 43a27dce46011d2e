output "state_bucket" {
  description = "Name of the state bucket: the `bucket` of the shared backend settings."
  value       = aws_s3_bucket.state.bucket
}

output "backend_config" {
  description = "Backend settings shared by the stacks, as the drift check's Variable terraform_backend_config wants them."
  value       = jsonencode({ bucket = aws_s3_bucket.state.bucket, region = var.region })
}
