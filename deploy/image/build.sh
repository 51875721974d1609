#!/usr/bin/env bash
# Builds tollgate's container image without a Docker engine: an OCI image layout and the same
# image as one tar file, reproducible from the same sources (deploy/image/README.md).
#
#   deploy/image/build.sh [--out DIR] [--push REF]
#
#   --out DIR    where the image goes (default: <cargo target dir>/image); the script prints
#                DIR/oci (the OCI image layout) as its last line
#   --push REF   then push it, e.g. ghcr.io/tollgate/tollgate:0.1.0, with crane's credentials
#                (~/.docker/config.json; `crane auth login ghcr.io -u USER --password-stdin`)
#
# Steps: `cargo build --release --locked --bin tollgate`; deploy/image/rootfs.sh stages the
# binary (stripped) and the Debian 12 packages it needs; one layer with sorted entries, fixed
# owners, modes and mtimes (SOURCE_DATE_EPOCH, default: the last commit's time); crane (built
# from the pinned module deploy/image/crane) assembles the image through a registry it serves
# on 127.0.0.1 for the length of the build, with USER, EXPOSE, ENTRYPOINT, CMD and ENV read
# from deploy/Dockerfile and the repository from the Helm chart's default image.
#
# Environment: TOLLGATE_TEST_CACHE (default ~/.cache/tollgate-test) holds crane and the .debs;
# IMAGE_SOURCE overrides the org.opencontainers.image.source label.
set -euo pipefail
cd "$(dirname "$0")/../.."

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

out=""
push=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --out) [ "$#" -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --push) [ "$#" -ge 2 ] || die "--push needs an image reference"; push=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

start=$(date +%s)
CACHE=${TOLLGATE_TEST_CACHE:-$HOME/.cache/tollgate-test}
if ! command -v go > /dev/null 2>&1; then export PATH="/usr/local/go/bin:$PATH"; fi

# What cargo knows: version, description, licence and the target folder.
version="" description="" license="" target_dir=""
eval "$(cargo metadata --no-deps --format-version 1 --locked | python3 -c '
import json, shlex, sys
meta = json.load(sys.stdin)
pkg = next(p for p in meta["packages"] if p["name"] == "tollgate")
for key, value in [("version", pkg["version"]), ("description", pkg["description"]),
                   ("license", pkg["license"]), ("target_dir", meta["target_directory"])]:
    print(f"{key}={shlex.quote(value)}")
')"
out=${out:-$target_dir/image}
mkdir -p "$out"
out=$(cd "$out" && pwd -P)

arch=$(dpkg --print-architecture)
case "$arch" in amd64|arm64) ;; *) die "no image platform for Debian architecture $arch" ;; esac

# The image's name (only recorded in the layout's index) is the Helm chart's default.
repository=$(awk '/^image:/ {img=1; next} img && /^[^ ]/ {img=0} img && $1 == "repository:" {print $2; exit}' \
  deploy/helm/tollgate/values.yaml)
[ -n "$repository" ] || die "no image.repository in deploy/helm/tollgate/values.yaml"

if git rev-parse --git-dir > /dev/null 2>&1; then
  revision=$(git rev-parse HEAD)
  [ -z "$(git status --porcelain --untracked-files=no)" ] || revision=""
  export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
else
  revision=""
  export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
fi

log "cargo build --release --locked --bin tollgate (target: $target_dir)"
cargo build --release --locked --bin tollgate >&2
binary=$target_dir/release/tollgate

crane=$(bash tests/peers/go-build.sh deploy/image/crane github.com/google/go-containerregistry/cmd/crane crane | tail -1)

work=$(mktemp -d "$out/.build.XXXXXX")
registry_pid=""
cleanup() {
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2> /dev/null || true; wait "$registry_pid" 2> /dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

bash deploy/image/rootfs.sh "$binary" "$work/rootfs" "$CACHE/debs"

# One layer: entries sorted by name, owned by root except /home/nonroot, no user or group
# names, every mtime SOURCE_DATE_EPOCH; gzip without a name or time in its header.
python3 - "$work/rootfs" "$work/layer.tar.gz" <<'PY'
import gzip, os, sys, tarfile
root, target = sys.argv[1], sys.argv[2]
mtime = int(os.environ["SOURCE_DATE_EPOCH"])
owned = {"home/nonroot": 65532}
paths = []
for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
        paths.append(os.path.relpath(os.path.join(dirpath, name), root))
paths.sort(key=lambda p: p.encode())
with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
    with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            info = tar.gettarinfo(os.path.join(root, path), arcname=path)
            info.uid = info.gid = owned.get(path, 0)
            info.uname = info.gname = ""
            info.mtime = mtime
            if info.isreg():
                with open(os.path.join(root, path), "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
PY

# The container settings, from deploy/Dockerfile's last stage.
user="" ports="" entrypoint="" cmd="" env=()
eval "$(python3 - deploy/Dockerfile <<'PY'
import json, shlex, sys
lines = open(sys.argv[1]).read().splitlines()
last = max(i for i, l in enumerate(lines) if l.split()[:1] == ["FROM"])
found = {}
for line in lines[last:]:
    word, _, rest = line.strip().partition(" ")
    if word in ("USER", "EXPOSE"):
        found[word] = rest.split()
    elif word == "ENV":
        found.setdefault("ENV", []).extend(rest.split())  # KEY=value pairs, no spaces in values
    elif word in ("ENTRYPOINT", "CMD"):
        found[word] = json.loads(rest)  # exec form only
for word in ("USER", "EXPOSE", "ENTRYPOINT", "CMD"):
    if word not in found:
        sys.exit(f"deploy/Dockerfile: no {word} in the last stage")
    if any("," in v for v in found[word]):
        sys.exit(f"deploy/Dockerfile: {word} has a comma, which crane's flags cannot take")
ports = [p if "/" in p else p + "/tcp" for p in found["EXPOSE"]]
print("user=" + shlex.quote(found["USER"][0]))
print("ports=" + shlex.quote(",".join(ports)))
print("entrypoint=" + shlex.quote(",".join(found["ENTRYPOINT"])))
print("cmd=" + shlex.quote(",".join(found["CMD"])))
if not all("=" in e for e in found.get("ENV", [])):
    sys.exit("deploy/Dockerfile: write ENV as KEY=value pairs")
print("env=(" + " ".join(shlex.quote(a) for e in found.get("ENV", []) for a in ("--env", e)) + ")")
PY
)"

# A registry in this process's care, on a free port of 127.0.0.1: crane edits images there.
"$crane" registry serve --address 127.0.0.1:0 2> "$work/registry.log" &
registry_pid=$!
for _ in $(seq 100); do
  port=$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$work/registry.log")
  [ -z "$port" ] || break
  kill -0 "$registry_pid" 2> /dev/null || die "crane registry serve exited: $(cat "$work/registry.log")"
  sleep 0.1
done
[ -n "$port" ] || die "crane registry serve did not start: $(cat "$work/registry.log")"
local_ref=127.0.0.1:$port/tollgate

quiet() { "$@" > "$work/cmd.log" 2>&1 || { cat "$work/cmd.log" >&2; die "failed: $*"; }; }
quiet "$crane" append --oci-empty-base --new_layer "$work/layer.tar.gz" --new_tag "$local_ref:layer"
labels=(
  --label "org.opencontainers.image.title=tollgate"
  --label "org.opencontainers.image.description=$description"
  --label "org.opencontainers.image.version=$version"
  --label "org.opencontainers.image.source=${IMAGE_SOURCE:-https://github.com/tollgate/tollgate}"
  --label "org.opencontainers.image.licenses=$license"
)
if [ -n "$revision" ]; then labels+=(--label "org.opencontainers.image.revision=$revision"); fi
quiet "$crane" mutate "$local_ref:layer" --tag "$local_ref:$version" \
  --set-platform "linux/$arch" --user "$user" --exposed-ports "$ports" \
  --entrypoint "$entrypoint" --cmd "$cmd" "${env[@]}" "${labels[@]}"
quiet "$crane" pull --format oci "$local_ref:$version" "$work/oci"

# Name the image in the index as containerd does (docker and podman load it with this name); an
# image, not an artifact: no artifactType (crane copies the config's media type there).
chmod -R u=rwX,go=rX "$work/oci"
python3 - "$work/oci/index.json" "$repository:$version" "$version" <<'PY'
import json, sys
path, name, tag = sys.argv[1:]
index = json.load(open(path))
[manifest] = index["manifests"]
manifest.pop("artifactType", None)
manifest["annotations"] = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}
with open(path, "w") as f:
    json.dump(index, f, separators=(",", ":"))
PY

# The same layout as one file (an OCI archive), entries sorted, fixed owners and mtimes.
archive=tollgate-$version-linux-$arch.oci.tar
python3 - "$work/oci" "$work/$archive" <<'PY'
import os, sys, tarfile
root, target = sys.argv[1], sys.argv[2]
paths = []
for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
        paths.append(os.path.relpath(os.path.join(dirpath, name), root))
with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
    for path in sorted(paths, key=lambda p: p.encode()):
        info = tar.gettarinfo(os.path.join(root, path), arcname=path)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = int(os.environ["SOURCE_DATE_EPOCH"])
        info.mode = 0o755 if info.isdir() else 0o644
        if info.isreg():
            with open(os.path.join(root, path), "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)
PY

rm -rf "${out:?}/oci" "${out:?}/$archive"
mv "$work/oci" "$out/oci"
mv "$work/$archive" "$out/$archive"
digest=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$out/oci/index.json")
size=$(du -sh "$out/$archive" | cut -f1)
log "built $repository:$version ($digest, linux/$arch, $size) in $(( $(date +%s) - start ))s"
log "  OCI archive: $out/$archive"

if [ -n "$push" ]; then
  log "pushing to $push"
  "$crane" push "$out/oci" "$push" >&2
fi
echo "$out/oci"
