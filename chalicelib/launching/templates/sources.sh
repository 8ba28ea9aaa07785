# shellcheck shell=bash
# voltabuild host script, the source part of a build of a user's own context, git repository
# or catalog image extension (issue 20), or of a catalog build whose context (with its lock,
# issue 19) comes from the contexts bucket: rendered into templates/host.sh at @@SOURCES@@ by
# chalicelib/launching/hostscript.py for those builds only (a catalog build with its context
# inline, the canary's, keeps its user-data under EC2's 16 KB without it). It uses host.sh's functions and the source variables the renderer
# assigns (SOURCE_KIND, CONTEXT_URL, CONTEXT_SHA256, GIT_URL, ...).
# shellcheck disable=SC2154
# An uploaded context comes through the presigned GET URL in this user-data (the instance
# has no S3 permission), is checked against its digest and unpacked by the python3 script
# in $UNPACKER, which refuses unsafe tarballs whole; the reason becomes the build's.
fetch_context() {
  local tarball=$WORK/context.tar have err=$WORK/unpack.err
  log "downloading the build context $CONTEXT_SHA256"
  run curl -fsS --retry 4 --retry-connrefused --retry-delay 2 --max-time 1800 \
    --max-filesize "$CONTEXT_MAX_BYTES" -o "$tarball" "$CONTEXT_URL" ||
    die "could not download the build context $CONTEXT_SHA256 (its link expired, or it is over $CONTEXT_MAX_BYTES bytes)"
  have=$(sha256sum "$tarball" | cut -d ' ' -f 1)
  [[ sha256:$have == "$CONTEXT_SHA256" ]] ||
    die "the downloaded build context has sha256:$have, not the $CONTEXT_SHA256 the build names"
  command -v python3 >/dev/null || die "no python3 on this host to unpack the build context"
  if ! python3 -c "$UNPACKER" "$tarball" "$WORK/context" "$CONTEXT_MAX_BYTES" "$UNPACK_MAX_FILES" 2>"$err"; then
    die "$(tail -n 1 "$err")"
  fi
  rm -f "$tarball"
}

# A shallow clone of one ref (branch, tag or commit) over https (plain http only to this
# machine, on the local stack); the commit built is reported in the build's timeline.
clone_source() {
  local src=$WORK/src protocols=(-c protocol.allow=never -c protocol.https.allow=always)
  is_local && protocols+=(-c protocol.http.allow=always)
  [[ $GIT_URL == https://* ]] || { is_local && [[ $GIT_URL == http://127.0.0.1:* ]]; } ||
    die "git: only https repository URLs"
  log "cloning $GIT_URL at $GIT_REF"
  mkdir -p "$src"
  git -C "$src" init -q || die "git init failed"
  git -C "$src" remote add origin "$GIT_URL" || die "git remote add failed"
  GIT_TERMINAL_PROMPT=0 run git "${protocols[@]}" -C "$src" fetch -q --depth 1 --no-tags origin "$GIT_REF" ||
    die "could not fetch $GIT_REF from $GIT_URL (a branch, tag or commit of a repository this host can read)"
  git -C "$src" -c advice.detachedHead=false checkout -q FETCH_HEAD || die "could not check out $GIT_REF"
  COMMIT=$(git -C "$src" rev-parse HEAD)
  CTX=$src${CONTEXT_PATH:+/$CONTEXT_PATH}
  [[ -d $CTX ]] || die "git: $CONTEXT_PATH is not a folder of $GIT_URL at $COMMIT"
  log "cloned $GIT_URL at $GIT_REF: commit $COMMIT"
}

fetch_user_source() {
  CTX=$WORK/context
  case $SOURCE_KIND in
    catalog | extend) if [[ -n $CONTEXT_URL ]]; then fetch_context; else unpack_context; fi ;;
    context) fetch_context ;;
    git) clone_source ;;
    *) die "unknown source kind $SOURCE_KIND" ;;
  esac
  local file root
  root=$(realpath -e "$CTX") || die "the build context is missing"
  file=$(realpath -e "$CTX/$DOCKERFILE") || die "no $DOCKERFILE in the build context"
  [[ $file == "$root"/* && -f $file ]] || die "$DOCKERFILE is not a file inside the build context"
  if [[ $SOURCE_KIND == extend ]]; then
    pull_base || die "the catalog image $BASE_IMAGE is not there (or cannot be pulled): build it first with voltabuild submit"
  fi
}

# An extension starts from its catalog image, which must have been built: pull it first
# so a missing one fails with that reason rather than a builder's error.
pull_base() {
  log "pulling the catalog image $BASE_IMAGE"
  if [[ $BUILDER == buildah ]]; then
    run buildah --storage-driver vfs pull --tls-verify=false --quiet "$BASE_IMAGE" >/dev/null
  else
    run docker pull --quiet "$BASE_IMAGE" >/dev/null
  fi
}

