# A check block that fails while nothing has drifted: a finding to list, not drift to alert on.
terraform {
  required_version = ">= 1.5"
  backend "local" {}
}

resource "terraform_data" "release" {
  input = { version = "1.0.0" }
}

check "release_is_current" {
  assert {
    condition     = terraform_data.release.output.version == "2.0.0"
    error_message = "release 1.0.0 is out of date"
  }
}
