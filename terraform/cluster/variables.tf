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
  description = "AWS region of the cluster."
  default     = "eu-west-1"
}

variable "vpc_cidr" {
  type        = string
  description = "CIDR block of the VPC."
  default     = "10.40.0.0/16"
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes version of the EKS control plane."
  default     = "1.33"
}

variable "endpoint_public_access_cidrs" {
  type        = list(string)
  description = "CIDR blocks allowed to reach the public API endpoint; empty keeps the endpoint private."
  default     = []
}

variable "general_instance_types" {
  type        = list(string)
  description = "Instance types of the general node group (Airflow, MLflow, CPU stages, the inference API)."
  default     = ["m6i.xlarge"]
}

variable "general_min_size" {
  type        = number
  description = "Smallest size of the general node group."
  default     = 2
}

variable "general_max_size" {
  type        = number
  description = "Largest size of the general node group."
  default     = 6
}

variable "gpu_instance_types" {
  type        = list(string)
  description = "Instance types of the GPU node group (NVIDIA, for the training stage), all with the same number of GPUs."
  default     = ["g5.xlarge"]

  validation {
    condition     = length(var.gpu_instance_types) > 0
    error_message = "gpu_instance_types needs at least one instance type."
  }
}

variable "gpu_max_size" {
  type        = number
  description = "Largest size of the GPU node group (its smallest is zero): a distributed training (distributed: dask) takes a node for its train pod and one per Dask worker."
  default     = 3
}

variable "cluster_autoscaler_chart_version" {
  type        = string
  description = "Version of the cluster-autoscaler chart (kubernetes.github.io/autoscaler). Its cluster autoscaler's minor version must be kubernetes_version's: 9.51.0 runs 1.33."
  default     = "9.51.0"

  validation {
    condition     = can(regex("^\\d+\\.\\d+\\.\\d+$", var.cluster_autoscaler_chart_version))
    error_message = "cluster_autoscaler_chart_version must be an exact version (x.y.z), not a range."
  }
}

variable "nvidia_device_plugin_chart_version" {
  type        = string
  description = "Version of the nvidia-device-plugin chart (nvidia.github.io/k8s-device-plugin)."
  default     = "0.17.4"

  validation {
    condition     = can(regex("^\\d+\\.\\d+\\.\\d+$", var.nvidia_device_plugin_chart_version))
    error_message = "nvidia_device_plugin_chart_version must be an exact version (x.y.z), not a range."
  }
}
