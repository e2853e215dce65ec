#!/usr/bin/env bash
# System packages the tests drive: Chromium (HTML screenshot test) and OpenSSH (device tests).
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium fonts-dejavu-core)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server openssh-client)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
