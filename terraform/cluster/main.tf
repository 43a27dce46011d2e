# The cluster the pipeline runs on: a VPC and an EKS cluster with a general node group and a GPU node group.
# The GPU group's label and taint are what the pods' node selector and toleration expect
# (plugins/mlops/platform.yaml, node_groups.gpu; a test keeps the two in step). It scales from zero.

provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

data "aws_availability_zones" "available" {
  state = "available"
}

locals {
  name = "${var.project}-${var.environment}"
  azs  = slice(data.aws_availability_zones.available.names, 0, 3)
  tags = {
    project     = var.project
    environment = var.environment
    managed-by  = "terraform"
    stack       = "cluster"
  }

  gpu_node_labels = {
    "node-group" = "gpu"
  }
  gpu_node_taint = {
    key    = "nvidia.com/gpu"
    value  = "true"
    effect = "NO_SCHEDULE"
  }
}

module "vpc" {
  source  = "terraform-aws-modules/vpc/aws"
  version = "5.21.0"

  name = local.name
  cidr = var.vpc_cidr
  azs  = local.azs

  private_subnets = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 4, i)]
  public_subnets  = [for i, _ in local.azs : cidrsubnet(var.vpc_cidr, 8, 48 + i)]

  enable_nat_gateway = true
  # One NAT gateway per zone in production, so a zone outage does not cut the others off.
  single_nat_gateway = var.environment != "prod"

  enable_flow_log                      = true
  create_flow_log_cloudwatch_log_group = true
  create_flow_log_cloudwatch_iam_role  = true

  public_subnet_tags  = { "kubernetes.io/role/elb" = 1 }
  private_subnet_tags = { "kubernetes.io/role/internal-elb" = 1 }
}

module "eks" {
  source  = "terraform-aws-modules/eks/aws"
  version = "20.37.1"

  cluster_name    = local.name
  cluster_version = var.kubernetes_version

  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets

  cluster_endpoint_public_access       = var.endpoint_public_access_cidrs != []
  cluster_endpoint_public_access_cidrs = var.endpoint_public_access_cidrs

  # IRSA: the OIDC provider that the service account roles of the data stack trust.
  enable_irsa                              = true
  enable_cluster_creator_admin_permissions = true
  cluster_enabled_log_types                = ["api", "audit", "authenticator"]

  cluster_addons = {
    coredns                = {}
    kube-proxy             = {}
    vpc-cni                = {}
    eks-pod-identity-agent = {}
  }

  eks_managed_node_groups = {
    general = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = var.general_instance_types
      min_size       = var.general_min_size
      max_size       = var.general_max_size
      desired_size   = var.general_min_size
      labels         = { "node-group" = "general" }
    }

    gpu = {
      ami_type       = "AL2023_x86_64_NVIDIA"
      instance_types = var.gpu_instance_types
      # Scales from zero: GPU nodes cost money only while a training pod waits for one.
      min_size     = 0
      max_size     = var.gpu_max_size
      desired_size = 0
      labels       = local.gpu_node_labels
      taints       = { gpu = local.gpu_node_taint }
      block_device_mappings = {
        xvda = {
          device_name = "/dev/xvda"
          ebs = {
            volume_size = 100
            volume_type = "gp3"
            encrypted   = true
          }
        }
      }
    }
  }
}
