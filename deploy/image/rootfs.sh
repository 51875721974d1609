#!/usr/bin/env bash
# Stages the root filesystem of tollgate's container image in a directory: the stripped binary
# and what it needs at run time, taken from Debian 12 packages with `apt-get download` and
# `dpkg-deb -x` (nothing is installed on this machine).
#
#   deploy/image/rootfs.sh <tollgate binary> <rootfs dir> [<.deb cache dir>]
#
# Used by deploy/image/build.sh (no Docker engine) and by deploy/Dockerfile, so both images hold
# the same files. Contents, like distroless/cc-debian12:nonroot without libssl, libstdc++,
# libgomp and tzdata, which tollgate does not use:
#
#   /usr/local/bin/tollgate           the binary, stripped
#   libc6, libgcc-s1                  every file of both packages (ldd: libc, libm, libgcc_s, ld.so)
#   /etc/ssl/certs/ca-certificates.crt   the bundle update-ca-certificates would write from the
#                                     ca-certificates package (https discovery and JWKS)
#   /etc/passwd, /etc/group           root, nobody, nonroot (65532), as in distroless
#   /etc/nsswitch.conf                hosts: files dns (/etc/hosts before DNS)
#   /etc/os-release, /etc/debian_version    from base-files; with /var/lib/dpkg/status.d/<package>
#                                     (as in distroless) they tell image scanners what is inside
#   /home/nonroot (0700, 65532), /root (0700), /tmp (1777)
#
# No shell, no package manager. Owners are set only when run as root (the Dockerfile);
# build.sh sets them in the layer itself.
set -euo pipefail

die() { echo "rootfs.sh: error: $*" >&2; exit 1; }

[ "$#" -ge 2 ] && [ "$#" -le 3 ] || die "usage: $0 <tollgate binary> <rootfs dir> [<.deb cache dir>]"
binary=$1
root=$2
[ -f "$binary" ] || die "binary not found: $binary"
[ ! -e "$root" ] || [ -z "$(ls -A "$root")" ] || die "$root exists and is not empty"

# Debian 12 "bookworm", with its security updates: the versions current when this was written.
# Where the mirror no longer has a revision, the current one is taken, but its upstream version
# must be the same (a new upstream version is a decision to make here, not a surprise).
PACKAGES=(
  libc6=2.36-9+deb12u14
  libgcc-s1=12.2.0-14+deb12u1
  ca-certificates=20250419~deb12u2
  base-files=12.4+deb12u15
)

# The upstream part of a Debian version: no epoch, no Debian revision, and for native packages
# no stable-update suffix (12.4+deb12u15 -> 12.4, 20250419~deb12u2 -> 20250419).
upstream() {
  local v=${1#*:}
  case "$v" in *-*) v=${v%-*} ;; esac
  v=${v%%[~+]deb12u*}
  echo "$v"
}

arch=$(dpkg --print-architecture)
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
debs=${3:-$unpacked/debs}
mkdir -p "$debs" "$root"
debs=$(cd "$debs" && pwd -P)

apt_update() {
  if [ "$(id -u)" = 0 ]; then apt-get update > /dev/null; else sudo -n apt-get update > /dev/null; fi
}

# fetch <package> <version>: prints the path of the .deb (from the cache or downloaded).
fetch() {
  local pkg=$1 want=$2 deb log got
  for deb in "$debs/${pkg}_${want}_$arch.deb" "$debs/${pkg}_${want}_all.deb"; do
    if [ -f "$deb" ]; then echo "$deb"; return; fi
  done
  log=$(mktemp)
  local tmp
  tmp=$(mktemp -d "$debs/.fetch.XXXXXX")
  if ! (cd "$tmp" && { apt-get download "$pkg=$want" || apt-get download "$pkg"; }) > "$log" 2>&1; then
    # A fresh machine may have no package lists yet.
    apt_update
    (cd "$tmp" && { apt-get download "$pkg=$want" || apt-get download "$pkg"; }) > "$log" 2>&1 \
      || { cat "$log" >&2; rm -rf "$tmp" "$log"; die "apt-get download $pkg failed"; }
  fi
  rm -f "$log"
  deb=$(ls "$tmp"/"${pkg}"_*.deb)
  got=$(dpkg-deb -f "$deb" Version)
  if [ "$got" != "$want" ]; then
    if [ "$(upstream "$got")" != "$(upstream "$want")" ]; then
      rm -rf "$tmp"
      die "$pkg: wanted $want, the mirror has $got (another upstream version): update PACKAGES in $0"
    fi
    echo "rootfs.sh: $pkg $want is gone from the mirror, using $got" >&2
  fi
  mv "$deb" "$debs/"
  rmdir "$tmp"
  echo "$debs/$(basename "$deb")"
}

declare -A deb_of
for entry in "${PACKAGES[@]}"; do
  pkg=${entry%%=*}
  deb_of[$pkg]=$(fetch "$pkg" "${entry#*=}")
  [ "$(dpkg-deb -f "${deb_of[$pkg]}" Package)" = "$pkg" ] || die "${deb_of[$pkg]} is not $pkg"
  echo "rootfs.sh: $(basename "${deb_of[$pkg]}")" >&2
done

# The shared libraries: whole packages, as dpkg would install them.
dpkg-deb -x "${deb_of[libc6]}" "$root"
dpkg-deb -x "${deb_of[libgcc-s1]}" "$root"

# The CA bundle, as update-ca-certificates writes it on a fresh install: every certificate of
# the package in the order of /etc/ca-certificates.conf (which the package's postinst fills with
# the file names, sorted), each ending with a newline.
dpkg-deb -x "${deb_of[ca-certificates]}" "$unpacked/ca"
certs=$(cd "$unpacked/ca/usr/share/ca-certificates" && find . -type f -name '*.crt' -printf '%P\n' | LC_ALL=C sort)
[ "$(echo "$certs" | wc -l)" -ge 100 ] || die "fewer than 100 certificates in ${deb_of[ca-certificates]}"
mkdir -p "$root/etc/ssl/certs" "$root/usr/share/doc/ca-certificates"
while IFS= read -r cert; do
  # shellcheck disable=SC1003 # sed's "append": a newline where the file lacks one
  sed -e '$a\' "$unpacked/ca/usr/share/ca-certificates/$cert"
done <<< "$certs" > "$root/etc/ssl/certs/ca-certificates.crt"
cp "$unpacked/ca/usr/share/doc/ca-certificates/copyright" "$root/usr/share/doc/ca-certificates/"

# What identifies the distribution: os-release (and its /etc link) and debian_version.
dpkg-deb -x "${deb_of[base-files]}" "$unpacked/base"
mkdir -p "$root/usr/lib" "$root/usr/share/doc/base-files"
cp "$unpacked/base/usr/lib/os-release" "$root/usr/lib/os-release"
cp "$unpacked/base/etc/debian_version" "$root/etc/debian_version"
ln -s ../usr/lib/os-release "$root/etc/os-release"
cp "$unpacked/base/usr/share/doc/base-files/copyright" "$root/usr/share/doc/base-files/"

# Package records for scanners (distroless's layout): one control paragraph per package.
mkdir -p "$root/var/lib/dpkg/status.d"
for entry in "${PACKAGES[@]}"; do
  pkg=${entry%%=*}
  {
    echo "Package: $pkg"
    echo "Status: install ok installed"
    dpkg-deb -f "${deb_of[$pkg]}" | grep -v '^Package:'
  } > "$root/var/lib/dpkg/status.d/$pkg"
done

# Users and groups of distroless: tollgate runs as nonroot (65532).
cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat > "$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
cat > "$root/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
hosts: files dns
EOF

mkdir -p "$root/usr/local/bin" "$root/home/nonroot" "$root/root" "$root/tmp"
strip --strip-all -o "$root/usr/local/bin/tollgate" "$binary"

# Modes do not depend on the umask: directories 0755, files 0644 or 0755 (executable bit kept).
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f -perm /111 -exec chmod 0755 {} +
find "$root" -type f ! -perm /111 -exec chmod 0644 {} +
chmod 0700 "$root/home/nonroot" "$root/root"
chmod 1777 "$root/tmp"
if [ "$(id -u)" = 0 ]; then
  chown -R 0:0 "$root"
  chown 65532:65532 "$root/home/nonroot"
fi
