# The cluster the pipeline runs on: a VPC and an EKS cluster with a general node group and a GPU node group.
# The GPU group's label and taint are what the pods' node selector and toleration expect
# (plugins/mlops/platform.yaml, node_groups.gpu; a test keeps the two in step). It scales from zero: the
# cluster autoscaler starts a GPU node for a pending pod that selects and tolerates the group, and the NVIDIA
# device plugin advertises the node's GPUs so that the pod's nvidia.com/gpu request fits.

provider "aws" {
  region = var.region
  default_tags {
    tags = local.tags
  }
}

# Authenticates with `aws eks get-token` (the AWS CLI where Terraform runs) rather than a token read once: the
# client asks again when the 15-minute token expires, as it can while the node groups are created.
provider "helm" {
  kubernetes = {
    host                   = module.eks.cluster_endpoint
    cluster_ca_certificate = base64decode(module.eks.cluster_certificate_authority_data)
    exec = {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
    }
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
  # The EKS API spells a taint's effect NO_SCHEDULE, Kubernetes (tolerations, the autoscaler's tags) NoSchedule.
  kubernetes_taint_effects = {
    NO_SCHEDULE        = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE         = "NoExecute"
  }
  gpu_node_taint_effect = local.kubernetes_taint_effects[local.gpu_node_taint.effect]

  # With no GPU node to look at, the cluster autoscaler learns from its Auto Scaling group's tags what a new
  # node would carry; without the label and taint it would never pick the group for a GPU pod.
  gpu_node_template_tags = merge(
    { for key, value in local.gpu_node_labels : "k8s.io/cluster-autoscaler/node-template/label/${key}" => value },
    {
      "k8s.io/cluster-autoscaler/node-template/taint/${local.gpu_node_taint.key}" = "${local.gpu_node_taint.value}:${local.gpu_node_taint_effect}"
      "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"          = tostring(max(local.gpus_per_node...))
    },
  )
  # GPUs of one node, read from the instance types rather than typed in, so it cannot disagree with them (one
  # count when the types agree; the tags' precondition says so).
  gpus_per_node = distinct([
    for instance in data.aws_ec2_instance_type.gpu : sum(concat([0], instance.gpus[*].count))
  ])

  cluster_autoscaler_service_account = {
    namespace = "kube-system"
    name      = "cluster-autoscaler"
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

data "aws_ec2_instance_type" "gpu" {
  for_each      = toset(var.gpu_instance_types)
  instance_type = each.value
}

# EKS tags a managed node group's Auto Scaling group for the autoscaler's auto-discovery
# (k8s.io/cluster-autoscaler/enabled and k8s.io/cluster-autoscaler/<cluster>) but does not copy the group's
# labels and taints onto it.
resource "aws_autoscaling_group_tag" "gpu_node_template" {
  for_each = local.gpu_node_template_tags

  autoscaling_group_name = one(module.eks.eks_managed_node_groups["gpu"].node_group_autoscaling_group_names)

  tag {
    key   = each.key
    value = each.value
    # For the autoscaler only; the nodes get the label and taint from the node group itself.
    propagate_at_launch = false
  }

  lifecycle {
    # The autoscaler sizes every node of a group like its first instance type.
    precondition {
      condition     = length(local.gpus_per_node) == 1 && local.gpus_per_node[0] > 0
      error_message = "gpu_instance_types must all be GPU instance types with the same number of GPUs."
    }
  }
}

module "cluster_autoscaler_irsa" {
  source  = "terraform-aws-modules/iam/aws//modules/iam-role-for-service-accounts-eks"
  version = "5.58.0"

  role_name = "${local.name}-cluster-autoscaler"
  # Changing sizes is allowed only on Auto Scaling groups tagged as owned by this cluster.
  attach_cluster_autoscaler_policy = true
  cluster_autoscaler_cluster_names = [module.eks.cluster_name]

  oidc_providers = {
    cluster = {
      provider_arn = module.eks.oidc_provider_arn
      namespace_service_accounts = [
        "${local.cluster_autoscaler_service_account.namespace}:${local.cluster_autoscaler_service_account.name}"
      ]
    }
  }
}

resource "helm_release" "cluster_autoscaler" {
  name       = "cluster-autoscaler"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = var.cluster_autoscaler_chart_version
  namespace  = local.cluster_autoscaler_service_account.namespace

  values = [yamlencode({
    cloudProvider = "aws"
    awsRegion     = var.region
    # Finds both node groups by the tags EKS puts on their Auto Scaling groups; their min and max sizes bound it.
    autoDiscovery = { clusterName = module.eks.cluster_name }
    rbac = {
      serviceAccount = {
        name        = local.cluster_autoscaler_service_account.name
        annotations = { "eks.amazonaws.com/role-arn" = module.cluster_autoscaler_irsa.iam_role_arn }
      }
    }
    # The restricted Pod Security Standard, like the pipeline's own pods; fsGroup lets it read its IRSA token.
    securityContext = {
      runAsNonRoot   = true
      runAsUser      = 65534
      runAsGroup     = 65534
      fsGroup        = 65534
      seccompProfile = { type = "RuntimeDefault" }
    }
    containerSecurityContext = {
      allowPrivilegeEscalation = false
      readOnlyRootFilesystem   = true
      capabilities             = { drop = ["ALL"] }
    }
  })]

  # Helm reaches the API as the cluster's creator, whose access entry the module makes after the cluster; and
  # the release waits for its pod, which needs the general node group.
  depends_on = [module.eks]
}

# The NVIDIA AMI brings the driver and the container runtime; the device plugin advertises the GPUs as the
# nvidia.com/gpu resource, without which a pod that requests one is never scheduled on the node.
resource "helm_release" "nvidia_device_plugin" {
  name       = "nvidia-device-plugin"
  repository = "https://nvidia.github.io/k8s-device-plugin"
  chart      = "nvidia-device-plugin"
  version    = var.nvidia_device_plugin_chart_version
  namespace  = "kube-system"

  values = [yamlencode({
    nodeSelector = local.gpu_node_labels
    # The chart's default affinity asks for node feature discovery's labels, which the GPU group's nodes do not
    # carry; the node selector above picks them instead.
    affinity = null
    tolerations = [{
      key      = local.gpu_node_taint.key
      operator = "Exists"
      effect   = local.gpu_node_taint_effect
    }]
  })]

  # Helm reaches the API as the cluster's creator (see the autoscaler's release).
  depends_on = [module.eks]
}
