#!/usr/bin/env bash
# voltabuild host script: the user-data of one build instance, rendered per build attempt by
# chalicelib/launching/hostscript.py. It prepares the host, builds the image, smoke-tests it on the GPU,
# pushes every tag only when the test passed, reports each step to the API and, whatever
# happens, ends the instance (trap on EXIT/ERR/INT/TERM + a hard-deadline shutdown watchdog).
#
# A split build (issue 23) runs it twice, on two instances, by STAGE_ROLE (rendered):
#   all    the whole build on one GPU instance (the default, as above);
#   build  a CPU instance: no NVIDIA preparation or GPU check; build, measure, push the
#          candidate to $IMAGE:$CANDIDATE_TAG only, report BUILT with its digest;
#   test   a GPU instance: pull $IMAGE@$CANDIDATE_DIGEST, GPU health check, smoke test, then
#          promote: every requested tag gets the candidate's very manifest (ECR batch-get-image
#          + put-image; a local registry: GET the manifest by digest, PUT it under each tag),
#          so the digest that was tested is the digest that ships; the candidate tag is then
#          removed (ECR batch-delete-image; docker/distribution 2.x cannot delete a tag, so
#          there it stays, on the same digest). A failed smoke test touches no requested tag.
#
# Full-line comments like these are stripped when rendering (EC2 user-data must stay <16 KB).
#
# Environment switches (unset on a real instance; the local stack's executor sets them to run
# this very script on a developer machine):
#   VOLTABUILD_LOCAL=1       skip only the cloud-only steps: host preparation and driver
#                            install, the nvidia-smi health check and driver-version check,
#                            ECR login, the shutdown watchdog and self-termination; the smoke
#                            test runs without --gpus all. The log still goes to CloudWatch
#                            Logs (the emulated one, through AWS_ENDPOINT_URL) exactly as here.
#   VOLTABUILD_PUSH_LOCK=FILE
#                            push while holding flock(1) on FILE: the local executor passes one
#                            file for every instance it plays, because Debian's docker-registry
#                            loses a blob when two pushes upload the same layer at once (ECR
#                            does not; unset in the cloud).
#   VOLTABUILD_BUILDER=      docker (default): BuildKit via docker buildx, registry cache;
#                            buildah: buildah --storage-driver vfs bud --isolation chroot,
#                            smoke test in buildah from + buildah run, buildah push.
#   VOLTABUILD_REGISTRY_OVERRIDE=HOST[:PORT]
#                            push to this registry (plain HTTP allowed) instead of ECR.
#   VOLTABUILD_BUILD_ARG_OVERRIDES
#                            NAME=VALUE lines (local mode only) replacing build args this
#                            build already has; names [A-Z][A-Z0-9_]*, values
#                            [A-Za-z0-9._/:@+-]*, anything else stops the script.
#   VOLTABUILD_WORKDIR=DIR   where the context, the log and state files go
#                            (default /var/lib/voltabuild/<build id>).
#   VOLTABUILD_RETRY_SECONDS=N
#                            the first wait before retrying a failed push (default 10,
#                            doubling; a push is tried 3 times).
set -euo pipefail
set -o errtrace
umask 077

# ---- rendered values (shell-quoted by the renderer) ----
@@CONFIG@@

# cloud-init may run user-data without HOME (docker keeps its registry login under it)
export HOME=${HOME:-/root}
export PATH=$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LOCAL=${VOLTABUILD_LOCAL:-0}
BUILDER=${VOLTABUILD_BUILDER:-docker}
WORK=${VOLTABUILD_WORKDIR:-/var/lib/voltabuild/$BUILD_ID}
RETRY_SECONDS=${VOLTABUILD_RETRY_SECONDS:-10}
[[ $RETRY_SECONDS =~ ^[0-9]{1,3}$ ]] || RETRY_SECONDS=10
PUSH_TRIES=3
LOG_FILE=$WORK/build.log
AUTH_HEADER=$WORK/auth.header
PHASE=STARTING
REASON=""
CAUSE=""
RESULT_SENT=0
CHILD=""
HEARTBEAT_PID=""
INSTANCE_ID=""
HB_SLEEP=""
IMAGE=""
BUILT=""
DIGEST=""
IMAGE_SIZE=""
BASE_DIGEST=""
ARGS=()
OUT_TAGS=()
BUILD_CMD=()
CTX=""
COMMIT=""

log() { printf '%s voltabuild[%s]: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$PHASE" "$*" >&2; }
die() { REASON=$*; log "ERROR: $*"; exit 1; }
is_local() { [[ $LOCAL == 1 ]]; }

# A JSON string of $1 (printable ASCII only, so the body is always valid JSON).
json_str() {
  local s
  s=$(printf '%s' "$1" | LC_ALL=C tr -cd '\11\12\40-\176')
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/\\t}
  s=${s//$'\n'/\\n}
  printf '"%s"' "$s"
}

# POST one report to the API; a report that cannot be delivered never stops the build.
# It names this instance (when known) so the API can record an instance whose launch
# was never recorded.
report() {
  local body=$1
  [[ -n $INSTANCE_ID ]] && body="${body%\}},\"instance_id\":\"$INSTANCE_ID\"}"
  curl -fsS --retry 4 --retry-connrefused --retry-delay 2 --max-time 20 -o /dev/null \
    -H "@$AUTH_HEADER" -H 'Content-Type: application/json' --data-binary "$body" \
    "$API_URL/builds/$BUILD_ID/events" || { log "could not deliver a report to the API"; return 1; }
}

phase() {
  local stage=""
  PHASE=$1
  log "$2"
  [[ $STAGE_ROLE == all ]] || stage=",\"stage\":\"$STAGE_ROLE\""
  report "{\"type\":\"phase\",\"phase\":\"$1\",\"message\":$(json_str "$2")$stage}" || true
}

# Run a long command in the background and wait, so INT/TERM are handled at once.
run() {
  local rc=0
  "$@" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}

heartbeat_loop() {
  trap - ERR INT EXIT
  trap 'kill "$HB_SLEEP" 2>/dev/null; exit 0' TERM
  while :; do
    sleep "$HEARTBEAT_SECONDS" &
    HB_SLEEP=$!
    wait "$HB_SLEEP"
    report '{"type":"heartbeat"}' || true
    ship_logs || true
  done
}

# Ship the log lines not shipped yet to CloudWatch Logs (one stream per build). The
# heartbeat loop and the main script both ship: a lock keeps them from sending a line twice.
ship_logs() {
  (flock 9 && ship_new_lines) 9>"$WORK/ship.lock"
}

ship_new_lines() {
  local done_n total ms f
  wait_log_stream
  done_n=$(cat "$WORK/shipped" 2>/dev/null || echo 0)
  total=$(wc -l <"$LOG_FILE")
  ((total > done_n)) || return 0
  ms=$(date +%s%3N)
  rm -f "$WORK"/events-*.json
  sed -n "$((done_n + 1)),${total}p" "$LOG_FILE" | LC_ALL=C tr -cd '\11\12\40-\176' |
    awk -v ms="$ms" -v dir="$WORK" '
      function flush() { if (n) { print "]" > f; close(f) } n = 0; size = 0 }
      {
        gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\t/, "\\t"); if ($0 == "") $0 = " "
        if (n == 0) { f = sprintf("%s/events-%05d.json", dir, ++k); printf "[" > f }
        else printf "," > f
        printf "{\"timestamp\":%s,\"message\":\"%s\"}", ms, substr($0, 1, 8000) > f
        n++; size += length($0) + 26
        if (n >= 5000 || size > 800000) flush()
      }
      END { flush() }'
  for f in "$WORK"/events-*.json; do
    [[ -e $f ]] || continue
    aws logs put-log-events --region "$REGION" --log-group-name "$LOG_GROUP" \
      --log-stream-name "$BUILD_ID" --log-events "file://$f" >/dev/null || return 1
  done
  echo "$total" >"$WORK/shipped"
}

spot_interrupted() {
  is_local && return 1
  local t
  t=$(curl -fsS -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
    http://169.254.169.254/latest/api/token) || return 1
  curl -fsS -m 2 -o /dev/null -H "X-aws-ec2-metadata-token: $t" \
    http://169.254.169.254/latest/meta-data/spot/instance-action
}

# This instance's id from IMDSv2; empty off EC2 or when IMDS does not answer.
instance_identity() {
  is_local && return 0
  local t id
  t=$(curl -fsS -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' \
    http://169.254.169.254/latest/api/token) || return 0
  id=$(curl -fsS -m 2 -H "X-aws-ec2-metadata-token: $t" http://169.254.169.254/latest/meta-data/instance-id) ||
    return 0
  [[ $id =~ ^i-[0-9a-f]{8,17}$ ]] && printf '%s' "$id"
  return 0
}

on_err() { [[ -n $REASON ]] || REASON="'$2' failed with status $1 (line $3)"; }

on_signal() {
  REASON="interrupted by SIG$1 during $PHASE"
  exit "$2"
}

on_exit() {
  local rc=$? tail_lines
  trap '' INT TERM
  trap - ERR
  set +e
  trap '' PIPE
  [[ -n $CHILD ]] && kill -TERM "$CHILD" 2>/dev/null
  [[ -n $HEARTBEAT_PID ]] && kill "$HEARTBEAT_PID" 2>/dev/null
  if ((RESULT_SENT == 0)); then
    [[ -n $REASON ]] || REASON="the host script ended (status $rc) without a result during $PHASE"
    if spot_interrupted; then
      log "spot interruption notice: leaving the retry to the service"
    else
      log "FAILED: $REASON"
      ship_logs  # before the result: a follower that sees the build end has every line
      tail_lines=$(tail -n 30 "$LOG_FILE" 2>/dev/null | tail -c 3000)
      report "{\"type\":\"result\",\"status\":\"FAILED\",\"reason\":$(json_str "$REASON"),\"log_tail\":$(json_str "$tail_lines")${CAUSE:+,\"cause\":\"$CAUSE\"}}"
    fi
  fi
  ship_logs
  if ! is_local; then
    log "shutting the instance down"
    shutdown -h now
  fi
  ((rc == 0)) || exit "$rc"
  exit 0
}

# ---- host ----
start_watchdog() {
  is_local && return 0
  log "hard deadline: the instance halts (and terminates) in $WATCHDOG_MINUTES minutes"
  shutdown -h "+$WATCHDOG_MINUTES" || die "could not schedule the deadline shutdown"
}

install_docker() {
  log "no docker: installing docker.io and docker-buildx"
  apt-get update -q && apt-get install -yq docker.io docker-buildx && systemctl enable --now docker
}

# Stock Ubuntu has no AWS CLI (the DLAMIs do): Ubuntu's awscli has `ecr get-login-password`.
install_awscli() {
  log "no AWS CLI: installing awscli"
  DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -yq --no-install-recommends awscli
}

# A stock Ubuntu host (no nvidia-smi): Ubuntu's proprietary server driver of the branch the
# hardware table names for this instance family (R580 for Volta, which NVIDIA's open kernel
# modules do not support), with nvidia-utils so nvidia-smi exists. DKMS builds the module for
# the running kernel, so no reboot is needed; a module that does not load is a host failure.
install_driver() {
  local pkgs=("nvidia-driver-$DRIVER_BRANCH-server" "nvidia-utils-$DRIVER_BRANCH-server" "linux-headers-$(uname -r)")
  log "no NVIDIA driver: installing the proprietary $DRIVER_BRANCH server driver (${pkgs[*]})"
  DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -yq --no-install-recommends "${pkgs[@]}" || return 1
  modprobe nvidia || { log "the nvidia kernel module did not load"; return 1; }
}

install_toolkit() {
  local key=/usr/share/keyrings/nvidia-container-toolkit.gpg url=https://nvidia.github.io/libnvidia-container
  log "no NVIDIA container toolkit: installing it"
  curl -fsSL "$url/gpgkey" | gpg --batch --yes --dearmor -o "$key"
  curl -fsSL "$url/stable/deb/nvidia-container-toolkit.list" |
    sed "s#deb https://#deb [signed-by=$key] https://#" >/etc/apt/sources.list.d/nvidia-container-toolkit.list
  apt-get update -q && apt-get install -yq nvidia-container-toolkit &&
    nvidia-ctk runtime configure --runtime=docker && systemctl restart docker
}

# A failure of this host (its driver, its GPU) rather than of the build: reported with
# cause "host", so the service tries the next instance type as a new attempt.
host_fail() {
  CAUSE=host
  die "$@"
}

# One CloudWatch Logs stream per build, named after it; a relaunch finds it there already.
create_log_stream() {
  aws logs create-log-stream --region "$REGION" --log-group-name "$LOG_GROUP" \
    --log-stream-name "$BUILD_ID" >/dev/null 2>&1 || true
}

# The stream is made beside the host's preparation (the AWS CLI takes a second or two to
# start): the first ship_logs waits for it.
wait_log_stream() {
  [[ -n ${LOG_STREAM_PID:-} ]] || return 0
  wait "$LOG_STREAM_PID" 2>/dev/null || true
  LOG_STREAM_PID=""
}

prepare_host() {
  create_log_stream &
  LOG_STREAM_PID=$!
  if is_local; then
    log "local mode: no host preparation, GPU check or ECR login"
    return 0
  fi
  if ! command -v docker >/dev/null || ! docker buildx version >/dev/null 2>&1; then
    install_docker || die "could not install docker and docker buildx"
  fi
  if ! command -v aws >/dev/null; then
    install_awscli || die "could not install the AWS CLI"
    wait_log_stream
    create_log_stream  # the first try had no AWS CLI to make it
  fi
  if [[ $STAGE_ROLE == build ]]; then
    log "build stage on a CPU host: no NVIDIA driver, toolkit or GPU check"
    docker info >/dev/null || die "the docker engine does not answer"
    ecr_login
    return 0
  fi
  if ! command -v nvidia-smi >/dev/null; then
    [[ -n $DRIVER_BRANCH ]] || host_fail "no nvidia-smi on this $INSTANCE_TYPE host and no driver branch to install"
    install_driver || host_fail "could not install the NVIDIA $DRIVER_BRANCH driver on this $INSTANCE_TYPE host"
  fi
  if ! command -v nvidia-ctk >/dev/null; then
    install_toolkit || die "could not install the NVIDIA container toolkit"
  fi
  docker info >/dev/null || die "the docker engine does not answer"
  nvidia-smi || host_fail "nvidia-smi sees no GPU on this $INSTANCE_TYPE host"
  check_driver
  if [[ $CUDA != none ]]; then
    run docker run --rm --gpus all "$HEALTH_IMAGE" nvidia-smi ||
      host_fail "health check failed: nvidia-smi in $HEALTH_IMAGE could not reach the GPU of this $INSTANCE_TYPE host"
  fi
  ecr_login
}

ecr_login() {
  aws ecr get-login-password --region "$REGION" |
    docker login --username AWS --password-stdin "$REGISTRY" || die "docker login to $REGISTRY failed"
}

check_driver() {
  [[ $CUDA == none ]] && return 0
  local have
  have=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1 | tr -d ' ')
  [[ $have =~ ^[0-9]+(\.[0-9]+)*$ ]] || host_fail "could not read the NVIDIA driver version (got '$have')"
  if [[ $(printf '%s\n%s\n' "$MIN_DRIVER" "$have" | sort -V | head -n 1) != "$MIN_DRIVER" ]]; then
    host_fail "NVIDIA driver $have is too old for CUDA $CUDA, which needs $MIN_DRIVER or newer; use an AMI with a newer driver"
  fi
  log "NVIDIA driver $have (CUDA $CUDA needs $MIN_DRIVER or newer)"
}

# ---- the build ----
apply_overrides() {
  local line name value i found
  [[ -n ${VOLTABUILD_BUILD_ARG_OVERRIDES:-} ]] || return 0
  is_local || die "VOLTABUILD_BUILD_ARG_OVERRIDES is only honoured with VOLTABUILD_LOCAL=1"
  while IFS= read -r line; do
    [[ -z $line ]] && continue
    [[ $line =~ ^([A-Z][A-Z0-9_]{0,63})=([A-Za-z0-9._/:@+-]{0,255})$ ]] ||
      die "VOLTABUILD_BUILD_ARG_OVERRIDES: not a NAME=VALUE line with an allowed value"
    name=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]} found=0
    for i in "${!ARGS[@]}"; do
      if [[ ${ARGS[i]%%=*} == "$name" ]]; then
        ARGS[i]="$name=$value" found=1
      fi
    done
    ((found)) || die "VOLTABUILD_BUILD_ARG_OVERRIDES: $name is not a build arg of this build"
    log "build arg override: $name=$value"
  done <<<"$VOLTABUILD_BUILD_ARG_OVERRIDES"
}

unpack_context() {
  mkdir -p "$WORK/context"
  printf '%s' "$CONTEXT_B64" | base64 -d | tar -xz --no-same-owner -C "$WORK/context"
}

# ---- the build's source (issue 20) ----
# A catalog build's context is inside this script; a user's context, git repository or
# extension is fetched by fetch_user_source from templates/sources.sh, rendered in here
# only for them.
fetch_source() {
  CTX=$WORK/context
  if declare -F fetch_user_source >/dev/null; then fetch_user_source; else unpack_context; fi
}
@@SOURCES@@

build_image() {
  local a t
  if [[ $BUILDER == buildah ]]; then
    BUILD_CMD=(buildah --storage-driver vfs bud --isolation chroot)
  elif is_local; then
    BUILD_CMD=(docker buildx build --builder default --progress plain)
  else
    docker buildx inspect voltabuild >/dev/null 2>&1 ||
      docker buildx create --name voltabuild --driver docker-container >/dev/null
    BUILD_CMD=(docker buildx build --builder voltabuild --progress plain
      --cache-from "type=registry,ref=$IMAGE:$CACHE_TAG")
  fi
  BUILD_CMD+=(--file "$CTX/$DOCKERFILE")
  [[ -n $TARGET ]] && BUILD_CMD+=(--target "$TARGET")
  for a in "${ARGS[@]}"; do BUILD_CMD+=(--build-arg "$a"); done
  if [[ $BUILDER == buildah ]] || is_local; then
    # one image store for every build on this machine: a name of this attempt's own
    BUILD_CMD+=(--tag "$BUILT")
  else
    for t in "${OUT_TAGS[@]}"; do BUILD_CMD+=(--tag "$IMAGE:$t"); done
  fi
  if [[ $BUILDER == buildah ]]; then
    run "${BUILD_CMD[@]}" "$CTX" || die "the image build failed"
  elif is_local; then
    run "${BUILD_CMD[@]}" --load "$CTX" || die "the image build failed"
  else
    run "${BUILD_CMD[@]}" --load \
      --cache-to "type=registry,ref=$IMAGE:$CACHE_TAG,mode=max,image-manifest=true,oci-mediatypes=true" \
      "$CTX" || die "the image build failed"
  fi
}

smoke_test() {
  local ref=$IMAGE:${TAGS[0]} ctr gpus=(--gpus all) fail="the smoke test failed: nothing was pushed"
  if [[ $BUILDER == buildah ]] || is_local; then ref=$BUILT; fi
  if [[ $STAGE_ROLE == test ]]; then
    ref=$IMAGE@$CANDIDATE_DIGEST
    fail="the smoke test of $ref failed: no requested tag was touched"
  fi
  if [[ $BUILDER == buildah ]]; then
    ctr=$(buildah --storage-driver vfs from --pull=never "$ref") || die "buildah from $ref failed"
    if ! run buildah --storage-driver vfs run --isolation chroot "$ctr" -- "${SMOKE_TEST[@]}"; then
      buildah --storage-driver vfs rm "$ctr" >/dev/null || true
      die "$fail"
    fi
    buildah --storage-driver vfs rm "$ctr" >/dev/null || true
  else
    # only an image built for CUDA gets the GPUs (the canary, cuda none, runs without them)
    # (a user's own Dockerfile, SMOKE_GPUS=1, always gets them: its CUDA is its own business)
    if is_local || [[ $CUDA == none && $SMOKE_GPUS != 1 ]]; then gpus=(); fi
    run docker run --rm "${gpus[@]}" "$ref" "${SMOKE_TEST[@]}" || die "$fail"
  fi
}

# Registries drop an upload now and then (ECR throttling, a network blip, two pushes of
# one layer racing): a push is tried again, after a wait that doubles, before the build
# is given up. Rebuilding costs far more than waiting.
retry() {
  local tries=$1 n=1 wait=$RETRY_SECONDS
  shift
  until run "$@"; do
    ((n < tries)) || return 1
    log "attempt $n of $tries failed; trying again in ${wait} s"
    run sleep "$wait"
    n=$((n + 1))
    wait=$((wait * 2))
  done
}

push_image() {
  local lock_fd
  if [[ -z ${VOLTABUILD_PUSH_LOCK:-} ]]; then
    push_tags
    return
  fi
  exec {lock_fd}>>"$VOLTABUILD_PUSH_LOCK" || die "cannot open the push lock $VOLTABUILD_PUSH_LOCK"
  log "waiting for the push lock"
  flock "$lock_fd" || die "cannot take the push lock $VOLTABUILD_PUSH_LOCK"
  push_tags
  exec {lock_fd}>&-
}

push_tags() {
  local t digest=""
  if [[ $BUILDER == buildah ]]; then
    for t in "${OUT_TAGS[@]}"; do
      retry "$PUSH_TRIES" buildah --storage-driver vfs push --tls-verify=false --digestfile "$WORK/digest" \
        "$BUILT" "docker://$IMAGE:$t" || die "pushing $IMAGE:$t failed"
    done
    digest=$(cat "$WORK/digest")
  elif is_local; then
    for t in "${OUT_TAGS[@]}"; do
      docker tag "$BUILT" "$IMAGE:$t" || die "could not tag $IMAGE:$t"
      retry "$PUSH_TRIES" docker push "$IMAGE:$t" || die "pushing $IMAGE:$t failed"
    done
    digest=$(docker inspect --format '{{index .RepoDigests 0}}' "$BUILT")
    digest=${digest##*@}
  else
    retry "$PUSH_TRIES" "${BUILD_CMD[@]}" --push --metadata-file "$WORK/metadata.json" "$CTX" ||
      die "pushing $IMAGE failed"
    digest=$(grep -o '"containerimage.digest": *"sha256:[0-9a-f]*"' "$WORK/metadata.json" | grep -o 'sha256:[0-9a-f]*')
  fi
  [[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || die "the push gave no image digest"
  DIGEST=$digest
}

# ---- measure (before the push) ----
# The image's compressed size as a registry stores it: the layer sizes in the manifest of an OCI
# layout with gzip layers (buildah push oci:, buildx --output type=oci; docker's own store has no
# OCI export, so there the saved layers are gzipped, level 6 like a push). Prints
# "<bytes> <base digest or -> <base name or ->" (the base from buildah's annotation and the
# org.opencontainers.image.base.name label).
oci_measure() {
  python3 - "$1" <<'PY'
import json, os, sys, tarfile, zlib
d = sys.argv[1]
if os.path.isdir(d):
    def blob(x):
        a, h = x["digest"].split(":")
        with open(os.path.join(d, "blobs", a, h)) as f:
            return json.load(f)
    with open(os.path.join(d, "index.json")) as f:
        m = blob(json.load(f)["manifests"][0])
    while "manifests" in m:  # an index: its image, not an attestation
        m = blob([x for x in m["manifests"] if "vnd.docker.reference.type" not in x.get("annotations", {})][0])
    size = sum(layer["size"] for layer in m["layers"])
    labels = blob(m["config"]).get("config", {}).get("Labels") or {}
    base = (m.get("annotations") or {}).get("org.opencontainers.image.base.digest")
else:
    t = tarfile.open(d + ".tar")
    top = json.load(t.extractfile("manifest.json"))[0]
    size = 0
    for name in top["Layers"]:
        f, z = t.extractfile(name), zlib.compressobj(6, zlib.DEFLATED, 31)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            size += len(z.compress(chunk))
        size += len(z.flush())
    labels = json.load(t.extractfile(top["Config"])).get("config", {}).get("Labels") or {}
    base = None
print(size, base or "-", labels.get("org.opencontainers.image.base.name") or "-")
PY
}

gb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e9 }'; }

# Fails the build (nothing pushed) when the image is over the buildspec's max_image_gb; sets
# IMAGE_SIZE and BASE_DIGEST (the digest the base name resolved to; empty when unknown).
measure_image() {
  local dir=$WORK/measure out size base name
  rm -rf "$dir" "$dir.tar"
  if [[ $BUILDER == buildah ]]; then
    run buildah --storage-driver vfs push --quiet "$BUILT" "oci:$dir" >/dev/null
  elif is_local; then
    run docker save -o "$dir.tar" "$BUILT"
  else
    run "${BUILD_CMD[@]}" --output "type=oci,dest=$dir,tar=false" "$CTX"
  fi || die "could not export the image to measure it"
  out=$(oci_measure "$dir") || die "could not read the image's size"
  rm -rf "$dir" "$dir.tar"
  read -r size base name <<<"$out"
  [[ $size =~ ^[0-9]+$ ]] || die "could not read the image's size (got '$out')"
  if [[ $base != sha256:* && $name == *@sha256:* ]]; then
    base=${name##*@}
  elif [[ $base != sha256:* && $name != - && $BUILDER == docker ]]; then
    if is_local; then
      base=$(docker image inspect --format '{{index .RepoDigests 0}}' "$name" 2>/dev/null) || base=""
      base=${base##*@}
    else
      base=$(docker buildx imagetools inspect "$name" 2>/dev/null | awk '/^Digest:/ { print $2; exit }') || base=""
    fi
  fi
  [[ $base =~ ^sha256:[0-9a-f]{64}$ ]] && BASE_DIGEST=$base
  IMAGE_SIZE=$size
  log "image: $(gb "$size") GB compressed ($size bytes; budget $(gb "$MAX_IMAGE_BYTES") GB); base ${name} ${BASE_DIGEST:-digest unknown}"
  ((size <= MAX_IMAGE_BYTES)) ||
    die "the image is $(gb "$size") GB compressed, over this buildspec's budget of $(gb "$MAX_IMAGE_BYTES") GB (max_image_gb): nothing was pushed"
}

@@STAGES@@
result() {
  ship_logs || true  # before the result: a follower that sees the build end has every line
  report "$1" || die "the image was pushed but the result could not be reported"
  RESULT_SENT=1
}

build_all() {
  phase PREPARING "preparing the host"
  prepare_host
  fetch_source

  phase BUILDING "building $IMAGE with $BUILDER${COMMIT:+ from $GIT_URL commit $COMMIT}"
  build_image

  phase TESTING "smoke test: ${SMOKE_TEST[*]}"
  smoke_test

  measure_image

  phase PUSHING "pushing ${#TAGS[@]} tag(s) to $IMAGE"
  push_image

  log "pushed $IMAGE@$DIGEST"
  result "{\"type\":\"result\",\"status\":\"SUCCEEDED\",\"digest\":\"$DIGEST\",\"image_size_bytes\":$IMAGE_SIZE${BASE_DIGEST:+,\"base_image_digest\":\"$BASE_DIGEST\"},\"message\":$(json_str "pushed ${TAGS[*]}")}"
}

main() {
  mkdir -p "$WORK"
  : >"$LOG_FILE"
  # tee ignores INT/TERM, so a signal to the whole process group cannot cut the log short
  exec > >(trap '' INT TERM; exec tee -a "$LOG_FILE") 2>&1
  trap 'on_exit' EXIT
  trap 'on_err "$?" "$BASH_COMMAND" "$LINENO"' ERR
  trap 'on_signal INT 130' INT
  trap 'on_signal TERM 143' TERM
  printf 'Authorization: Bearer %s\n' "$TOKEN" >"$AUTH_HEADER"
  log "build $BUILD_ID attempt $ATTEMPT ($STAGE, stage role $STAGE_ROLE): $REPOSITORY, tags ${TAGS[*]}"
  start_watchdog
  INSTANCE_ID=$(instance_identity)
  heartbeat_loop &
  HEARTBEAT_PID=$!
  local registry=${VOLTABUILD_REGISTRY_OVERRIDE:-$REGISTRY}
  [[ $registry =~ ^[A-Za-z0-9.-]+(:[0-9]{1,5})?$ ]] || die "VOLTABUILD_REGISTRY_OVERRIDE: not HOST[:PORT]"
  [[ $BUILDER == docker || $BUILDER == buildah ]] || die "VOLTABUILD_BUILDER: docker or buildah"
  IMAGE=$registry/$REPOSITORY
  BUILT=$IMAGE:build-$BUILD_ID-$ATTEMPT
  OUT_TAGS=("${TAGS[@]}")
  if [[ $STAGE_ROLE == build ]]; then OUT_TAGS=("$CANDIDATE_TAG"); fi
  ARGS=("${BUILD_ARGS[@]}")
  apply_overrides
  case $STAGE_ROLE in
    build) build_stage ;;
    test) test_stage ;;
    *) build_all ;;
  esac
}

main "$@"
