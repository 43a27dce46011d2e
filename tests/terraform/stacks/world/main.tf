# Objects of the test provider's fake world, which tests change "outside Terraform" by editing its files.
terraform {
  required_version = ">= 1.5"
  required_providers {
    world = {
      source  = "example.test/fixtures/world"
      version = "1.0.0"
    }
  }
  backend "local" {}
}

variable "world_root" {
  type        = string
  description = "Folder of the fake world's objects."
}

variable "api_token" {
  type        = string
  description = "A secret that must never appear in a report or a log."
  sensitive   = true
}

provider "world" {
  root = var.world_root
}

resource "world_object" "bucket" {
  name = "bucket"
  size = "small"
  tags = { team = "ml", cost_center = "42" }
}

resource "world_object" "credentials" {
  name   = "credentials"
  size   = "tiny"
  secret = var.api_token
}
