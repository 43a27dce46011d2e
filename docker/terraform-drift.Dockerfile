# The Terraform drift check's image: the terraform CLI, the AWS CLI, Python 3 and the check
# (python -m mlops.drift.check), with the stacks of terraform/ at the paths platform.yaml names relative to the
# working directory.
#
#   docker build -f docker/terraform-drift.Dockerfile -t ghcr.io/airflow-mlops/terraform-drift:0.1.0 .
ARG PYTHON_VERSION=3.11

# The version the drift check is tested with (terraform >= 1.10: S3 state locking without DynamoDB).
FROM hashicorp/terraform:1.11.4 AS terraform

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG APP_UID=10001
RUN groupadd --gid "${APP_UID}" app \
    && useradd --uid "${APP_UID}" --gid app --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=terraform /bin/terraform /usr/local/bin/terraform
# The AWS CLI: refreshing the cluster stack signs in to the cluster's API with `aws eks get-token` (its Helm
# provider's exec), as the check's IRSA role.
ARG AWSCLI_VERSION=1.46.3
RUN pip install --no-cache-dir "awscli==${AWSCLI_VERSION}"
# The check and the contract need nothing but the standard library; both are importable from /app.
COPY contract/ /app/contract/
COPY plugins/mlops/__init__.py /app/mlops/__init__.py
COPY plugins/mlops/drift/ /app/mlops/drift/
COPY terraform/ /app/terraform/
ENV PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TF_IN_AUTOMATION=1
USER ${APP_UID}:${APP_UID}
HEALTHCHECK NONE
ENTRYPOINT ["python", "-m"]
CMD ["mlops.drift.check", "--help"]
