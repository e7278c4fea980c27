#!/usr/bin/env bash
# Submit one db3d sweep to a running Ray cluster as a Ray job.
#
#   RAY_ADDRESS=http://HEAD:8265 cluster/submit.sh [--no-wait] SWEEP OUT [overrides...]
#
# runs, from the repository root,
#
#   ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml --entrypoint-num-cpus 1 \
#       [--no-wait] -- db3d sweep sweep=SWEEP out=OUT [overrides...]
#
# See cluster/README.md for launching the cluster, following a job and resuming a sweep.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: RAY_ADDRESS=http://HEAD:8265 cluster/submit.sh [options] SWEEP OUT [overrides...]

Submit `db3d sweep sweep=SWEEP out=OUT [overrides...]` to the Ray cluster at RAY_ADDRESS
(the dashboard / job API, port 8265; after `ray dashboard cluster/ray-cluster.yaml` or a
kubectl port-forward it is http://127.0.0.1:8265). This checkout is uploaded as the job's
working directory; the cluster image provides the dependencies.

  SWEEP       a name in sweeps/ (demo, paper_eval, loss_weights) or a path to a sweep file
              inside this repository (it travels with the upload)
  OUT         where the sweep writes, as seen from the cluster: a URI (s3://bucket/prefix,
              gs://bucket/prefix) or an absolute path on shared storage (/mnt/shared/outputs/NAME).
              Submitting the same SWEEP and OUT again resumes that sweep.
  overrides   Hydra-style key=value applied to every trial, e.g. preset=smoke backbone=sd

options (passed to `ray job submit`):
  --no-wait                 return once submitted; follow with `ray job logs -f ID`
  --submission-id ID        name the job (default: Ray generates raysubmit_...)
  --OPTION=VALUE            any other `ray job submit` option, e.g. --entrypoint-num-gpus=0
  -h, --help                this text

Right after `ray up` the head's job agent can take a while: "No available agent to submit job"
is retried DB3D_SUBMIT_ATTEMPTS times (default 30), DB3D_SUBMIT_PAUSE seconds apart (default 4).

Auth: if RAY_AUTH_MODE is unset and a token is found (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token), RAY_AUTH_MODE=token is exported for the ray CLI.

examples:
  RAY_ADDRESS=http://127.0.0.1:8265 cluster/submit.sh demo /mnt/shared/outputs/demo preset=smoke
  RAY_ADDRESS=http://127.0.0.1:8265 cluster/submit.sh --no-wait paper_eval s3://my-bucket/db3d/paper_eval
EOF
}

die() {
    echo "cluster/submit.sh: $*" >&2
    echo "run cluster/submit.sh --help for usage" >&2
    exit 2
}

# 1. options for `ray job submit`, before the positional arguments
ray_opts=()
while (($#)); do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --no-wait)
            ray_opts+=("--no-wait")
            shift
            ;;
        --submission-id)
            (($# >= 2)) || die "--submission-id needs a value"
            ray_opts+=("--submission-id" "$2")
            shift 2
            ;;
        --*=*)
            ray_opts+=("$1")
            shift
            ;;
        --)
            shift
            break
            ;;
        -*)
            die "unknown option $1 (write ray job submit options as --OPTION=VALUE)"
            ;;
        *)
            break
            ;;
    esac
done

if (($# < 2)); then
    usage >&2
    exit 2
fi
sweep=$1
out=$2
shift 2

# 2. the repository root is the job's working directory (runtime_env.yaml says working_dir ".")
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# 3. check the arguments before anything is uploaded
[[ -n "$sweep" ]] || die "SWEEP is empty"
if [[ "$sweep" == */* || "$sweep" == *.yaml || "$sweep" == *.yml ]]; then
    [[ "$sweep" != /* ]] || die "SWEEP '$sweep' is an absolute path; the cluster only sees this repository: use a path relative to $repo"
    [[ -f "$sweep" ]] || die "sweep file '$sweep' not found under $repo"
elif [[ ! -f "sweeps/$sweep.yaml" && ! -f "sweeps/$sweep.yml" ]]; then
    echo "cluster/submit.sh: warning: no sweeps/$sweep.yaml here; db3d sweep will resolve the name" >&2
fi
[[ -n "$out" ]] || die "OUT is empty"
if [[ "$out" != *://* && "$out" != /* ]]; then
    die "OUT '$out' is a relative path: on the cluster it would land in the job's temporary working directory. Use a URI (s3://bucket/prefix) or an absolute path on shared storage (/mnt/shared/outputs/NAME)"
fi
if [[ -z "${RAY_ADDRESS:-}" && -z "${RAY_API_SERVER_ADDRESS:-}" ]]; then
    have_address=0
    for opt in "${ray_opts[@]+"${ray_opts[@]}"}"; do
        [[ "$opt" == --address=* ]] && have_address=1
    done
    ((have_address)) || die "set RAY_ADDRESS to the cluster's job API, e.g. RAY_ADDRESS=http://127.0.0.1:8265"
fi
command -v ray >/dev/null 2>&1 || die "'ray' not found on PATH: pip install 'ray[default]==2.60.0' (the job CLI needs ray[default])"

# 4. token auth: clients that name an address only send the token when RAY_AUTH_MODE=token
if [[ -z "${RAY_AUTH_MODE:-}" ]]; then
    if [[ -n "${RAY_AUTH_TOKEN:-}" || -n "${RAY_AUTH_TOKEN_PATH:-}" || -s "$HOME/.ray/auth_token" ]]; then
        export RAY_AUTH_MODE=token
        echo "cluster/submit.sh: found a Ray auth token; using RAY_AUTH_MODE=token" >&2
    fi
fi

# 5. submit
cmd=(ray job submit
    --working-dir .
    --runtime-env cluster/runtime_env.yaml
    --entrypoint-num-cpus 1
    "${ray_opts[@]+"${ray_opts[@]}"}"
    -- db3d sweep "sweep=$sweep" "out=$out" "$@")
printf -v shown ' %q' "${cmd[@]}"
echo "cluster/submit.sh: (cd $repo &&$shown)" >&2

# 6. right after `ray up` the head's job agent may not be up yet: Ray answers "No available agent
#    to submit job" and creates no job, so that answer (only that one) is retried, a bounded number
#    of times (DB3D_SUBMIT_ATTEMPTS, default 30, DB3D_SUBMIT_PAUSE seconds apart, default 4)
attempts=${DB3D_SUBMIT_ATTEMPTS:-30}
pause=${DB3D_SUBMIT_PAUSE:-4}
[[ "$attempts" =~ ^[1-9][0-9]*$ ]] || die "DB3D_SUBMIT_ATTEMPTS='$attempts' must be a positive whole number"
[[ "$pause" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "DB3D_SUBMIT_PAUSE='$pause' must be a number of seconds"
log=$(mktemp "${TMPDIR:-/tmp}/db3d-submit.XXXXXX")
trap 'rm -f "$log"' EXIT
for ((attempt = 1; ; attempt++)); do
    set +e
    "${cmd[@]}" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    if ((rc == 0)) || ! grep -q "No available agent to submit job" "$log"; then
        exit "$rc"
    fi
    if ((attempt >= attempts)); then
        echo "cluster/submit.sh: the head's job agent did not come up in $attempts attempts, ${pause}s apart; no job was submitted. Check the head with 'ray status' and its dashboard_agent.log (under /tmp/ray/session_latest/logs), then submit again" >&2
        exit "$rc"
    fi
    echo "cluster/submit.sh: the head's job agent is not up yet (attempt $attempt of $attempts); retrying in ${pause}s" >&2
    sleep "$pause"
done
