#!/usr/bin/env bash
# Offline install of the lineguard edge runtime from a wheelhouse (no network access needed).
#
# Usage: install.sh --wheelhouse DIR [--root DIR] [--python PATH] [--package NAME] [--start]
#   --wheelhouse DIR  folder with lineguard-*.whl and every dependency wheel (build it on a
#                     machine of the same arch/Python: make wheelhouse -> dist/wheelhouse, pinned by
#                     infra/edge/requirements.lock, which it carries and which is then enforced)
#   --root DIR        install below DIR instead of / (test mode: no user creation, no chown,
#                     no systemctl; used by tests and image builders)
#   --python PATH     interpreter for the venv (default: python3; must be >= 3.11)
#   --package NAME    distribution to install (default: lineguard)
#   --start           with --root /, also start the service now (default: enable only)
#
# Layout (below ROOT):
#   opt/lineguard/venv                  virtualenv with lineguard and its dependencies
#   etc/lineguard/{lineguard.env,line.yaml}  config (kept if present), 0640 root:lineguard
#   var/lib/lineguard                   data dir (spool, models, embedded DB), 0750 lineguard
#   var/log/lineguard                   log files, 0750 lineguard
#   etc/systemd/system/lineguard.service, etc/logrotate.d/lineguard
# Re-running upgrades the venv and the unit file and keeps existing config files.
set -euo pipefail

die() { echo "install.sh: error: $*" >&2; exit 2; }
log() { echo "install.sh: $*"; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="/"
wheelhouse=""
python="python3"
package="lineguard"
start=0
user="lineguard"

while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a directory"; root="$2"; shift 2 ;;
    --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a directory"; wheelhouse="$2"; shift 2 ;;
    --python) [ $# -ge 2 ] || die "--python needs a path"; python="$2"; shift 2 ;;
    --package) [ $# -ge 2 ] || die "--package needs a name"; package="$2"; shift 2 ;;
    --start) start=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

[ -n "$wheelhouse" ] || die "--wheelhouse DIR is required"
[ -d "$wheelhouse" ] || die "wheelhouse '$wheelhouse' is not a directory"
wheelhouse="$(cd "$wheelhouse" && pwd)"
compgen -G "$wheelhouse/*.whl" >/dev/null || die "wheelhouse '$wheelhouse' has no .whl files"
# Wheel file names spell the project name with underscores (PEP 427).
compgen -G "$wheelhouse/${package//-/_}-*.whl" >/dev/null \
  || die "wheelhouse '$wheelhouse' has no ${package//-/_}-*.whl (build it with: pip wheel . -w DIR)"
[ -d "$root" ] || die "root '$root' is not a directory"
root="$(cd "$root" && pwd)"
command -v "$python" >/dev/null || die "python '$python' not found"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$python is $("$python" -V 2>&1); lineguard needs Python >= 3.11"
for f in lineguard.service lineguard.logrotate line.example.yaml lineguard.env.example; do
  [ -f "$here/$f" ] || die "missing $here/$f (run install.sh from the infra/edge folder it ships in)"
done

# Test mode: anything other than the real root. Then we never touch users, ownership or systemd.
live=0
[ "$root" = "/" ] && live=1
is_root=0
[ "$(id -u)" = 0 ] && is_root=1
if [ "$live" = 1 ] && [ "$is_root" = 0 ]; then
  die "installing into / needs root (or use --root DIR for a staged install)"
fi
# ${root%/} keeps paths single-slashed when root is "/".
r="${root%/}"
venv="$r/opt/lineguard/venv"
etc="$r/etc/lineguard"
data="$r/var/lib/lineguard"
logs="$r/var/log/lineguard"

if [ "$live" = 1 ]; then
  if ! getent passwd "$user" >/dev/null; then
    log "creating system user $user"
    useradd --system --home-dir /var/lib/lineguard --no-create-home --shell /usr/sbin/nologin "$user"
  fi
  # USB cameras: /dev/video* belongs to the video group.
  if getent group video >/dev/null; then usermod -a -G video "$user"; fi
fi

log "creating directories below $root"
install -d -m 0755 "$r/opt/lineguard" "$r/etc/systemd/system" "$r/etc/logrotate.d"
install -d -m 0750 "$etc" "$data" "$logs"
if [ "$live" = 1 ]; then
  chown root:"$user" "$etc"
  chown "$user":"$user" "$data" "$logs"
fi

log "installing $package from $wheelhouse into $venv (offline)"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
# The wheelhouse from `make wheelhouse` carries requirements.lock: every dependency at the version
# the lock pins, so each box of a fleet runs the same set (a wheel at another version is refused).
constraint=()
if [ -f "$wheelhouse/requirements.lock" ]; then
  log "pinning dependencies to $wheelhouse/requirements.lock"
  constraint=(--constraint "$wheelhouse/requirements.lock")
fi
PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$venv/bin/python" -m pip install --quiet \
  --no-index --find-links "$wheelhouse" "${constraint[@]}" --upgrade "$package" \
  || die "pip could not install $package from $wheelhouse (are all dependency wheels there?)"
[ -x "$venv/bin/lineguard" ] || die "$package installed but $venv/bin/lineguard is missing"
# Sparkplug B payloads: pysparkplug pins paho-mqtt<2 but works with paho 2, so it is installed
# without its dependencies when the wheelhouse has it (see pyproject.toml).
if compgen -G "$wheelhouse/pysparkplug-*.whl" >/dev/null; then
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet --no-index --no-deps \
    --find-links "$wheelhouse" pysparkplug || die "pip could not install pysparkplug from $wheelhouse"
fi

# Config files are the operator's: install only when absent so upgrades keep local edits.
install_config() {  # install_config SRC DEST
  if [ -e "$2" ]; then
    log "keeping existing $2"
  else
    install -m 0640 "$1" "$2"
    if [ "$live" = 1 ]; then chown root:"$user" "$2"; fi
  fi
}
install_config "$here/lineguard.env.example" "$etc/lineguard.env"
install_config "$here/line.example.yaml" "$etc/line.yaml"

install -m 0644 "$here/lineguard.service" "$r/etc/systemd/system/lineguard.service"
install -m 0644 "$here/lineguard.logrotate" "$r/etc/logrotate.d/lineguard"

if [ "$live" = 1 ]; then
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable lineguard.service
    if [ "$start" = 1 ]; then systemctl restart lineguard.service; fi
  else
    log "systemd is not running here: enable lineguard.service yourself"
  fi
  log "done. Edit /etc/lineguard/lineguard.env and /etc/lineguard/line.yaml, then: systemctl start lineguard"
else
  log "done (staged into $root; users, ownership and systemd left untouched)"
fi
