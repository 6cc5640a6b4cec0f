#!/usr/bin/env bash
# Makes an S3 key pair for deploy/docker/scale-out.yml: DIR/s3.json for the
# SeaweedFS gateway, DIR/s3.toml for the registries (both 0600).
set -euo pipefail
dir=${1:?usage: make-s3-credentials.sh DIR}
install -d -m 0700 "$dir"
umask 077
access=$(od -An -N10 -tx1 /dev/urandom | tr -d ' \n')
secret=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
for f in s3.json s3.toml; do
    [ -e "$dir/$f" ] && { echo "$dir/$f exists; not overwritten" >&2; exit 1; }
done
printf '{"identities":[{"name":"registry","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
    "$access" "$secret" >"$dir/s3.json"
printf 'access_key_id = "%s"\nsecret_access_key = "%s"\n' "$access" "$secret" >"$dir/s3.toml"
echo "wrote $dir/s3.json and $dir/s3.toml"
