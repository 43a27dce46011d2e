terraform {
  # 1.10 brings S3-native state locking (use_lockfile), which the other stacks' backends rely on.
  required_version = ">= 1.10, < 2.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.100.0"
    }
  }
}
