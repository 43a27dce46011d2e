# A broken configuration: it refers to a resource that does not exist, so terraform plan exits 1.
terraform {
  required_version = ">= 1.5"
  backend "local" {}
}

resource "terraform_data" "app" {
  input = terraform_data.missing.output
}
