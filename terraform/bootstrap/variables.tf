variable "project" {
  type        = string
  description = "Project name, used in tags."
  default     = "airflow-mlops"
}

variable "region" {
  type        = string
  description = "AWS region of the state bucket."
  default     = "eu-west-1"
}

variable "state_bucket_name" {
  type        = string
  description = "Globally unique name of the bucket that holds the Terraform state of every stack."
}

variable "noncurrent_version_days" {
  type        = number
  description = "Days an overwritten state version is kept before it expires."
  default     = 90
}
