output "cluster_name" {
  description = "Name of the EKS cluster (input of the data stack)."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "Endpoint of the cluster's API server."
  value       = module.eks.cluster_endpoint
}

output "oidc_provider_arn" {
  description = "ARN of the cluster's OIDC provider, which service account roles trust (input of the data stack)."
  value       = module.eks.oidc_provider_arn
}

output "vpc_id" {
  description = "ID of the VPC."
  value       = module.vpc.vpc_id
}
