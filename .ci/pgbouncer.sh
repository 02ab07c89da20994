#!/usr/bin/env bash
# Make a PgBouncer of version 1.21 or newer available as `pgbouncer` on PATH (notebook 14 needs
# max_prepared_statements, added in 1.21). Debian 12 ships 1.18, so when the one found is older,
# this builds Debian 13's pgbouncer source package (from Debian's own archive, with apt-get source)
# into /usr/local and links /usr/local/bin/pgbouncer. Needs root; takes about a minute.
#
#   bash .ci/pgbouncer.sh        # prints the version it leaves on PATH
set -euo pipefail

version_ok() {  # version_ok BINARY: true when BINARY reports PgBouncer 1.21 or newer
  "$1" --version 2>/dev/null | head -1 \
    | awk '{split($2, v, "."); exit !(v[1] > 1 || (v[1] == 1 && v[2] >= 21))}'
}

found=$(command -v pgbouncer || true)
if [[ -n $found ]] && version_ok "$found"; then
  "$found" --version | head -1
  exit 0
fi

work=$(mktemp -d /tmp/pgbouncer-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial"
echo "deb-src http://deb.debian.org/debian trixie main" >"$work/sources.list"
apt_options=(-o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=/nonexistent"
  -o "Dir::State::Lists=$work/lists" -o "APT::Sandbox::User=root")
apt-get "${apt_options[@]}" update -qq
(cd "$work" && apt-get "${apt_options[@]}" source --download-only -qq pgbouncer)
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential pkg-config libevent-dev libssl-dev >/dev/null
tar -xzf "$work"/pgbouncer_*.orig.tar.gz -C "$work"
cd "$work"/pgbouncer-*/
./configure --prefix=/usr/local --without-cares >/dev/null
make -j"$(nproc)" >/dev/null
make install >/dev/null
/usr/local/bin/pgbouncer --version | head -1
