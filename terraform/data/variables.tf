variable "project" {
  type        = string
  description = "Project name: prefix of resource names and a tag."
  default     = "airflow-mlops"
}

variable "environment" {
  type        = string
  description = "Environment name (dev, staging, prod): part of resource names and a tag."

  validation {
    condition     = contains(["dev", "staging", "prod"], var.environment)
    error_message = "environment must be dev, staging or prod."
  }
}

variable "region" {
  type        = string
  description = "AWS region of the bucket."
  default     = "eu-west-1"
}

variable "oidc_provider_arn" {
  type        = string
  description = "ARN of the cluster's OIDC provider (output oidc_provider_arn of the cluster stack)."
}

variable "cluster_name" {
  type        = string
  description = "Name of the EKS cluster (output cluster_name of the cluster stack), whose add-ons the drift check reads."
}

# The namespace of the cluster stack's Helm releases (the cluster autoscaler, the NVIDIA device plugin): Helm keeps
# each release as Secrets there, which the drift check reads when it refreshes that stack. A test keeps it in step
# with the stack.
variable "cluster_addons_namespace" {
  type        = string
  description = "Namespace of the cluster stack's Helm releases, which the drift check may read."
  default     = "kube-system"
}

variable "state_bucket_name" {
  type        = string
  description = "Bucket of the Terraform state (output state_bucket of the bootstrap stack), read by the drift check."
}

variable "state_kms_key_arn" {
  type        = string
  description = "ARN of the key that encrypts the Terraform state (output state_kms_key_arn of the bootstrap stack), used by the drift check."
}

variable "noncurrent_version_days" {
  type        = number
  description = "Days an overwritten or deleted object version is kept before it expires."
  default     = 30
}

# Service accounts as namespace:name. The first, the second and the last are the pods' service accounts in
# plugins/mlops/platform.yaml (kubernetes.service_account, stages.train.service_account,
# terraform_drift.service_account); a test keeps them in step.
variable "pipeline_service_account" {
  type        = string
  description = "Service account of the ML stage pods (namespace:name)."
  default     = "ml-pipelines:airflow-ml-pods"
}

variable "trainer_service_account" {
  type        = string
  description = "Service account of the train stage's pods, which read and write what the other stage pods do (namespace:name)."
  default     = "ml-pipelines:ml-trainer"
}

variable "mlflow_service_account" {
  type        = string
  description = "Service account of the MLflow tracking server (namespace:name)."
  default     = "mlflow:mlflow-server"
}

variable "inference_service_account" {
  type        = string
  description = "Service account of the inference API, which only reads models (namespace:name)."
  default     = "inference:inference-api"
}

variable "drift_check_service_account" {
  type        = string
  description = "Service account of the Terraform drift check pods (namespace:name)."
  default     = "ml-pipelines:terraform-drift"
}
