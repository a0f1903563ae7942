#!/bin/bash
# videoproc instance bootstrap: the user data of every launch template (deploy/cloudformation.yaml).
# `python -m deploy.stack render` embeds this file after a header the template fills in:
#   VIDEOPROC_ROLE   web | worker | ops
#   AWS_REGION       the stack's region
#   RELEASE_BUCKET, RELEASE_KEY   where `make deploy` put the release (deploy/release.py)
#   RELEASE_SHA256   its checksum: checked before anything in it is unpacked
#   INSTANCE_CONFIG  the SSM parameter with the stack's resource names (deploy/envfile.py)
# It installs FFmpeg (and nginx on web instances), the release into a virtualenv, writes the
# environment from the stack's parameter and secrets, and enables the role's systemd units.
# For tests: BOOTSTRAP_ROOT (a scratch root for every path), BOOTSTRAP_DIRECT=1 (start the units'
# commands without systemd), AWS_ENDPOINT_URL (local AWS), BOOTSTRAP_PYTHON (the python to use).
set -euo pipefail

ROOT=${BOOTSTRAP_ROOT:-}
APP=$ROOT/opt/videoproc
ETC=$ROOT/etc/videoproc
PYTHON=${BOOTSTRAP_PYTHON:-python3}
: "${VIDEOPROC_ROLE:?}" "${AWS_REGION:?}" "${RELEASE_BUCKET:?}" "${RELEASE_KEY:?}" "${RELEASE_SHA256:?}"
: "${INSTANCE_CONFIG:?}"
export AWS_REGION AWS_DEFAULT_REGION=$AWS_REGION

step() { echo "bootstrap[$VIDEOPROC_ROLE]: $*"; }
# A failed bootstrap abandons its launch hook (LAUNCH_GROUP, LAUNCH_HOOK): the group replaces the
# instance now rather than after the hook's timeout (once the virtualenv can say so).
abandon() {
    local status=$?
    if [ "$status" -ne 0 ] && [ -x "$APP/venv/bin/python" ] && [ -n "${LAUNCH_GROUP:-}" ]; then
        "$APP/venv/bin/python" -m deploy.launched --role "$VIDEOPROC_ROLE" --abandon || true
    fi
}
trap abandon EXIT

# 1. System packages: FFmpeg everywhere (ffprobe validates uploads on the web too) and the jail it runs in
#    (bubblewrap, media/jail.py), nginx on the web.
packages=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || packages+=(ffmpeg)
command -v bwrap >/dev/null || packages+=(bubblewrap)
if [ "$VIDEOPROC_ROLE" = web ] && ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    packages+=(nginx-light)
fi
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)
"$PYTHON" -c 'import boto3' 2>/dev/null || packages+=(python3-boto3)  # fetches the release (step 3)
if [ ${#packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: missing ${packages[*]} and not root to install them" >&2
        exit 1
    fi
    step "installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${packages[@]}"
fi

# 2. The service user (not in a scratch root: there everything runs as the caller).
if [ -z "$ROOT" ] && ! id videoproc >/dev/null 2>&1; then
    useradd --system --home-dir /opt/videoproc --shell /usr/sbin/nologin videoproc
fi

# 3. The release, fetched with the instance role by Debian's boto3, checked, then installed into a
#    fresh virtualenv from its own wheels only: no package index, and every wheel's hash checked.
step "installing $RELEASE_KEY from $RELEASE_BUCKET"
mkdir -p "$APP/release" "$ETC"
cd "$APP"  # the release's modules, never a checkout's
"$PYTHON" - "$APP/release" <<'PY'
import hashlib, io, os, sys, tarfile, boto3
s3 = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
body = s3.get_object(Bucket=os.environ["RELEASE_BUCKET"], Key=os.environ["RELEASE_KEY"])["Body"].read()
if hashlib.sha256(body).hexdigest() != os.environ["RELEASE_SHA256"].lower():
    sys.exit(f"bootstrap: {os.environ['RELEASE_KEY']} is not the release deployed (its SHA-256 differs)")
dest = os.path.realpath(sys.argv[1])


def plain(members):
    """Only files and folders inside dest: what filter="data" allows, on a Python without it."""
    for member in members:
        inside = os.path.commonpath([dest, os.path.realpath(os.path.join(dest, member.name))]) == dest
        if not (member.isfile() or member.isdir()) or not inside:
            sys.exit(f"bootstrap: the release holds {member.name!r}, which is not a plain file inside it")
        member.mode &= 0o755
        yield member


with tarfile.open(fileobj=io.BytesIO(body)) as tar:
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
    else:  # Debian 12's own python3.11 is 3.11.2: extraction filters came in 3.11.4
        tar.extractall(dest, members=plain(tar.getmembers()))
PY
"$PYTHON" -m venv "$APP/venv"
offline=(--quiet --disable-pip-version-check --no-index --find-links "$APP/release/wheels")
"$APP/venv/bin/pip" install "${offline[@]}" --require-hashes -r "$APP/release/requirements.lock"
"$APP/venv/bin/pip" install "${offline[@]}" --no-deps "$APP"/release/videoproc-*.whl
# Flower reads flowerconfig.py from its working directory.
ln -sf "$("$APP/venv/bin/python" -c 'import flowerconfig; print(flowerconfig.__file__)')" "$APP/flowerconfig.py"

# 4. The environment: the stack's resource names and its secrets (never in this user data).
step "writing $ETC/env from $INSTANCE_CONFIG"
"$APP/venv/bin/python" -m deploy.envfile --role "$VIDEOPROC_ROLE" --parameter "$INSTANCE_CONFIG" --out "$ETC/env"
mkdir -p "$ROOT/var/lib/videoproc/scratch"  # WORKER_TMP_DIR of the worker unit
if [ -z "$ROOT" ]; then
    # The code stays root's, read-only to the service user: a compromise of it can't persist there.
    chown -R videoproc: /var/lib/videoproc
fi

# 5. The role's units.
step "starting the $VIDEOPROC_ROLE units"
args=(install "$VIDEOPROC_ROLE")
[ -n "$ROOT" ] && args+=(--root "$ROOT")
[ "${BOOTSTRAP_DIRECT:-0}" = 1 ] && args+=(--direct)
"$APP/venv/bin/python" -m deploy.units "${args[@]}"

# 6. The operators' agents, on EC2 only (not in a scratch root, not against a local AWS):
#    SSM (shell and port forwarding) and CloudWatch (cloud-init's and the journal's lines).
if [ -z "$ROOT" ] && [ -z "${AWS_ENDPOINT_URL:-}" ]; then
    step "installing the SSM and CloudWatch agents"
    # A missing agent costs the operators' view, not the instance: the boot goes on.
    "$APP/venv/bin/python" -m deploy.agents --env-file "$ETC/env" || step "the agents were not installed (see above)"
fi

# 7. InService only now: once the role answers, the launch hook is completed (deploy/launched.py).
step "waiting for the $VIDEOPROC_ROLE role to answer"
"$APP/venv/bin/python" -m deploy.launched --role "$VIDEOPROC_ROLE" ${ROOT:+--root "$ROOT"}
step done
