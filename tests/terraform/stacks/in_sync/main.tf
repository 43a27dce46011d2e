# In sync: the built-in provider only. terraform_data reads back exactly its state, so it never drifts.
terraform {
  required_version = ">= 1.5"
  backend "local" {}
}

variable "environment" {
  type        = string
  description = "Name of the environment."
  default     = "test"
}

resource "terraform_data" "settings" {
  input = { environment = var.environment, replicas = 2 }
}

output "settings" {
  description = "What was recorded."
  value       = terraform_data.settings.output
}
