output "bucket" {
  description = "Name of the data bucket: mlops_data_root is s3://<bucket>/pipeline, MLflow's artifact destination s3://<bucket>/mlflow-artifacts."
  value       = aws_s3_bucket.data.bucket
}

output "service_account_role_arns" {
  description = "IAM role ARN per service account, for the eks.amazonaws.com/role-arn annotation."
  value       = { for name, role in module.irsa : name => role.iam_role_arn }
}
