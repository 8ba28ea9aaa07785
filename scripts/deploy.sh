#!/usr/bin/env bash
# Deploy voltabuild to the AWS account of the current credentials (make deploy STAGE=dev).
# Prints the API URL on stdout; progress goes to stderr.
#
# Needs: the AWS CLI v2, credentials allowed to run CloudFormation with IAM resources, a
# region (AWS_REGION or AWS_DEFAULT_REGION), and `make package STAGE=<stage>` done first.
# Optional environment:
#   VPC_ID, SUBNET_IDS (comma separated)  where builds run; default: the default VPC and its
#                                         default subnets
#   DEPLOY_BUCKET                         S3 bucket for the Lambda zip; default:
#                                         voltabuild-deploy-<account>-<region>, created if missing
#   SHARED_RESOURCES=create|existing      "existing" when another stage in this account and
#                                         region already made the ECR repositories and log group
#   LOG_RETENTION_DAYS (30), SLACK_CHANNELS (default)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT

log() { printf '%s deploy: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# `aws ... --output text` prints "None" for a missing value
value_or_empty() {
  local v="$1"
  [[ "$v" == "None" ]] && v=""
  printf '%s' "$v"
}

stack_output() {
  local key="$1" out
  out="$(aws cloudformation describe-stacks --stack-name "$STACK" \
    --query "Stacks[0].Outputs[?OutputKey=='${key}'].OutputValue" --output text 2>/dev/null)" || out=""
  value_or_empty "$out"
}

default_network() {
  if [[ -z "${VPC_ID:-}" ]]; then
    VPC_ID="$(value_or_empty "$(aws ec2 describe-vpcs --filters Name=isDefault,Values=true \
      --query 'Vpcs[0].VpcId' --output text)")"
    [[ -n "$VPC_ID" ]] || die "no default VPC in $REGION: set VPC_ID and SUBNET_IDS"
  fi
  if [[ -z "${SUBNET_IDS:-}" ]]; then
    local subnets
    subnets="$(aws ec2 describe-subnets --filters "Name=vpc-id,Values=$VPC_ID" Name=default-for-az,Values=true \
      --query 'Subnets[].SubnetId' --output text)"
    SUBNET_IDS="$(value_or_empty "$(tr -s '[:space:]' ',' <<<"$subnets" | sed 's/^,//; s/,$//')")"
    [[ -n "$SUBNET_IDS" ]] || die "no default subnets in $VPC_ID: set SUBNET_IDS (subnets with outbound internet)"
  fi
  log "builds run in $VPC_ID, subnets $SUBNET_IDS"
}

ensure_bucket() {
  if aws s3api head-bucket --bucket "$BUCKET" >/dev/null 2>&1; then
    return
  fi
  log "creating the deployment bucket s3://$BUCKET"
  local create=(aws s3api create-bucket --bucket "$BUCKET")
  [[ "$REGION" == "us-east-1" ]] || create+=(--create-bucket-configuration "LocationConstraint=$REGION")
  "${create[@]}" >/dev/null
  aws s3api put-public-access-block --bucket "$BUCKET" --public-access-block-configuration \
    BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true >/dev/null
}

# Spot launches need EC2's service-linked role; an account that never used spot lacks it.
ensure_spot_role() {
  if aws iam get-role --role-name AWSServiceRoleForEC2Spot >/dev/null 2>&1; then
    return
  fi
  log "creating the EC2 Spot service-linked role"
  aws iam create-service-linked-role --aws-service-name spot.amazonaws.com >/dev/null
}

cfn_deploy() {
  local api_url="$1"
  local cmd=(aws cloudformation deploy
    --template-file "$DIST/packaged.json"
    --stack-name "$STACK"
    --capabilities CAPABILITY_IAM CAPABILITY_NAMED_IAM CAPABILITY_AUTO_EXPAND
    --no-fail-on-empty-changeset
    --tags "voltabuild:stage=$STAGE"
    --parameter-overrides
    "Stage=$STAGE" "VpcId=$VPC_ID" "SubnetIds=$SUBNET_IDS"
    "SharedResources=${SHARED_RESOURCES:-create}" "LogRetentionDays=${LOG_RETENTION_DAYS:-30}"
    "PublicApiUrl=$api_url" "CursorKey=$CURSOR_KEY" "VcsRef=$VCS_REF" "VcsUrl=$VCS_URL")
  # the alarms' e-mail subscription and host-failure threshold (README, Operating voltabuild);
  # unset, a redeployment keeps what the stack has
  [[ -z ${ALARM_EMAIL:-} ]] || cmd+=("AlarmEmail=$ALARM_EMAIL")
  [[ -z ${HOST_FAILURE_THRESHOLD:-} ]] || cmd+=("HostFailureThreshold=$HOST_FAILURE_THRESHOLD")
  "${cmd[@]}" >&2   # its progress is not the script's output
}

# A catalog build's context (its Dockerfile and its lock, issue 19) is fetched by the instance
# from the stage's contexts bucket under catalog/sha256/<digest>: `make package` wrote them to
# $DIST/contexts. Uploaded before the new code is deployed where the stack has the bucket
# already (no build finds its context missing), and again after (a first deployment makes it).
upload_catalog_contexts() {
  local bucket
  bucket="$(stack_output ContextsBucketName)"
  [[ -n "$bucket" ]] || return 0
  log "uploading the catalog's build contexts to s3://$bucket/catalog/"
  aws s3 sync "$DIST/contexts/catalog/" "s3://$bucket/catalog/" --only-show-errors >&2
}

check_slack_parameters() {
  local channel name
  local -a channels
  IFS=',' read -r -a channels <<<"${SLACK_CHANNELS:-default}"
  for channel in "${channels[@]}"; do
    name="/voltabuild/$STAGE/slack/$channel"
    if aws ssm get-parameter --name "$name" --query Parameter.Name --output text >/dev/null 2>&1; then
      log "Slack webhook for '$channel' is set ($name)"
    else
      log "Slack webhook for '$channel' is not set; CloudFormation cannot create SecureStrings, so run:"
      log "  aws ssm put-parameter --type SecureString --name $name --value 'https://hooks.slack.com/services/...'"
    fi
  done
}

show_api_key() {
  local key
  key="$(stack_output ApiKeyId)"
  [[ -n "$key" ]] || die "the stack has no ApiKeyId output"
  log "API key: aws apigateway get-api-key --api-key $key --include-value --query value --output text"
}

main() {
  STAGE="${STAGE:-dev}"
  [[ "$STAGE" =~ ^[a-z][a-z0-9]{1,15}$ ]] || die "STAGE must be lower-case letters and digits, got '$STAGE'"
  REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
  [[ -n "$REGION" ]] || die "set AWS_REGION (or AWS_DEFAULT_REGION)"
  export AWS_REGION="$REGION" AWS_DEFAULT_REGION="$REGION"
  command -v aws >/dev/null || die "the AWS CLI (aws) is not installed"
  DIST="$ROOT/dist/$STAGE"
  STACK="voltabuild-$STAGE"
  # signs the API's list cursors; a new one each deployment (see infra/deploy.yaml)
  CURSOR_KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  # the images' revision and source labels; an https URL without credentials, or nothing
  VCS_REF=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  VCS_URL=$(git -C "$ROOT" remote get-url origin 2>/dev/null || true)
  [[ $VCS_URL =~ ^https://[A-Za-z0-9./_~+-]+$ ]] || VCS_URL=""
  [[ -f "$DIST/sam.json" && -f "$DIST/deployment.zip" && -d "$DIST/contexts/catalog" ]] ||
    die "no package in $DIST: run make package STAGE=$STAGE"

  local account api_url new_url
  account="$(aws sts get-caller-identity --query Account --output text)"
  BUCKET="${DEPLOY_BUCKET:-voltabuild-deploy-$account-$REGION}"
  log "deploying stack $STACK to account $account in $REGION"
  default_network
  ensure_bucket
  ensure_spot_role

  aws cloudformation package --template-file "$DIST/sam.json" --s3-bucket "$BUCKET" \
    --s3-prefix "voltabuild/$STAGE" --output-template-file "$DIST/packaged.json" --use-json >/dev/null

  api_url="$(stack_output EndpointURL)"
  upload_catalog_contexts
  cfn_deploy "$api_url"
  new_url="$(stack_output EndpointURL)"
  if [[ "$new_url" != "$api_url" ]]; then
    log "second pass: telling the Lambdas their API URL ($new_url)"
    cfn_deploy "$new_url"
  fi
  upload_catalog_contexts

  check_slack_parameters
  show_api_key
  log "done: API $new_url"
  printf '%s\n' "$new_url"
}

main "$@"
