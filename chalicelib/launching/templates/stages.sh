#!/usr/bin/env bash
# shellcheck shell=bash disable=SC2154
# The stages of a split build (issue 23), rendered into host.sh (at @@STAGES@@) only for a
# build or test stage (STAGE_ROLE=build|test): a whole build's user-data stays smaller. The
# variables and functions it uses (IMAGE, TAGS, run, retry, die, ...) are host.sh's.
# ---- the test stage of a split build (issue 23) ----
pull_candidate() {
  local ref=$IMAGE@$CANDIDATE_DIGEST
  if [[ $BUILDER == buildah ]]; then
    retry "$PUSH_TRIES" buildah --storage-driver vfs pull --quiet --tls-verify="$(is_local && echo false || echo true)" \
      "docker://$ref" >/dev/null || die "could not pull the candidate $ref"
  else
    retry "$PUSH_TRIES" docker pull "$ref" || die "could not pull the candidate $ref"
  fi
}

# The sha256 of a file, as a registry names a manifest (sha256:<hex>).
file_digest() { printf 'sha256:%s' "$(sha256sum "$1" | cut -d' ' -f1)"; }

# Every requested tag gets the candidate's manifest, byte for byte: the same digest.
promote() {
  if is_local; then promote_registry; else promote_ecr; fi
  log "promoted ${TAGS[*]} to $IMAGE@$CANDIDATE_DIGEST"
}

promote_ecr() {
  local manifest=$WORK/manifest mtype t out
  aws ecr batch-get-image --region "$REGION" --repository-name "$REPOSITORY" \
    --image-ids "imageDigest=$CANDIDATE_DIGEST" --output json >"$WORK/candidate.json" ||
    die "could not read the candidate's manifest (ecr batch-get-image)"
  mtype=$(python3 - "$WORK/candidate.json" "$manifest" <<'PY'
import json, sys
images = json.load(open(sys.argv[1])).get("images") or [{}]
with open(sys.argv[2], "w", encoding="utf-8", newline="") as f:
    f.write(images[0].get("imageManifest", ""))
print(images[0].get("imageManifestMediaType", ""))
PY
) || die "could not read the candidate's manifest"
  [[ $(file_digest "$manifest") == "$CANDIDATE_DIGEST" ]] || die "the registry has no manifest $CANDIDATE_DIGEST"
  for t in "${TAGS[@]}"; do
    if ! out=$(aws ecr put-image --region "$REGION" --repository-name "$REPOSITORY" --image-tag "$t" \
      --image-digest "$CANDIDATE_DIGEST" --image-manifest "file://$manifest" \
      ${mtype:+--image-manifest-media-type "$mtype"} 2>&1 >/dev/null); then
      [[ $out == *ImageAlreadyExistsException* ]] || die "could not promote $IMAGE:$t (ecr put-image): $out"
    fi
  done
  # ECR's lifecycle policy expires an image any of whose tags starts with candidate-: the
  # promoted image must not keep the candidate tag (removing a tag keeps an image that has others)
  retry "$PUSH_TRIES" aws ecr batch-delete-image --region "$REGION" --repository-name "$REPOSITORY" \
    --image-ids "imageTag=$CANDIDATE_TAG" >/dev/null ||
    die "promoted ${TAGS[*]}, but could not remove the candidate tag $CANDIDATE_TAG (the lifecycle policy would expire the image): remove it by hand"
}

promote_registry() {
  local host=${IMAGE%%/*} manifest=$WORK/manifest ctype t code base
  base=http://$host/v2/$REPOSITORY
  curl -fsS -o "$manifest" -D "$WORK/manifest.headers" \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json' \
    "$base/manifests/$CANDIDATE_DIGEST" || die "could not read the candidate's manifest from $host"
  [[ $(file_digest "$manifest") == "$CANDIDATE_DIGEST" ]] || die "the registry has no manifest $CANDIDATE_DIGEST"
  ctype=$(awk -F': *' 'tolower($1) == "content-type" { print $2 }' "$WORK/manifest.headers" | tr -d '\r' | tail -n 1)
  [[ $ctype =~ ^application/[a-z0-9.+-]+$ ]] || die "the candidate's manifest has no media type (got '$ctype')"
  for t in "${TAGS[@]}"; do
    curl -fsS -o /dev/null -X PUT -H "Content-Type: $ctype" --data-binary "@$manifest" "$base/manifests/$t" ||
      die "could not promote $IMAGE:$t"
  done
  code=$(curl -sS -o /dev/null -w '%{http_code}' -X DELETE "$base/manifests/$CANDIDATE_TAG") || code=000
  if [[ $code == 2* ]]; then
    log "removed the candidate tag $CANDIDATE_TAG"
  else
    log "this registry does not delete tags (HTTP $code): the candidate tag $CANDIDATE_TAG stays, on the promoted digest"
  fi
}

build_stage() {
  phase PREPARING "preparing the build host ($INSTANCE_TYPE, CPU only)"
  prepare_host
  fetch_source

  phase BUILDING "building $IMAGE with $BUILDER${COMMIT:+ from $GIT_URL commit $COMMIT} (the GPU test follows on another instance)"
  build_image
  measure_image

  phase PUSHING "pushing the candidate $IMAGE:$CANDIDATE_TAG"
  push_image

  log "pushed the candidate $IMAGE@$DIGEST"
  result "{\"type\":\"result\",\"status\":\"BUILT\",\"digest\":\"$DIGEST\",\"image_size_bytes\":$IMAGE_SIZE${BASE_DIGEST:+,\"base_image_digest\":\"$BASE_DIGEST\"},\"message\":$(json_str "pushed the candidate $CANDIDATE_TAG")}"
}

test_stage() {
  [[ $CANDIDATE_DIGEST =~ ^sha256:[0-9a-f]{64}$ ]] || die "no candidate digest to test"
  phase PREPARING "preparing the GPU host ($INSTANCE_TYPE)"
  prepare_host

  phase TESTING "pulling the candidate $IMAGE@$CANDIDATE_DIGEST; smoke test: ${SMOKE_TEST[*]}"
  pull_candidate
  smoke_test

  phase PUSHING "promoting ${#TAGS[@]} tag(s) to the tested digest $CANDIDATE_DIGEST"
  promote
  DIGEST=$CANDIDATE_DIGEST
  result "{\"type\":\"result\",\"status\":\"SUCCEEDED\",\"digest\":\"$DIGEST\",\"message\":$(json_str "tested and promoted ${TAGS[*]}")}"
}

