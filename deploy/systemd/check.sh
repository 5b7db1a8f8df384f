#!/usr/bin/env bash
# Rates deploy/systemd/outpost.service with systemd's own analysis and fails when its
# exposure score rises above the one stated in docs/deploy.md (lower is better).
#   deploy/systemd/check.sh
set -euo pipefail
cd "$(dirname "$0")"
limit="1.4"
out=$(systemd-analyze security --offline=true --no-pager outpost.service 2>&1)
score=$(sed -n 's/.*Overall exposure level for outpost.service: \([0-9.]*\).*/\1/p' <<<"$out")
if [[ -z "$score" ]]; then
  echo "$out" >&2
  echo "systemd-analyze gave no exposure score" >&2
  exit 1
fi
if awk -v s="$score" -v l="$limit" 'BEGIN { exit !(s > l) }'; then
  echo "$out" | grep '✗' >&2 || true
  echo "outpost.service exposure $score is above $limit" >&2
  exit 1
fi
echo "outpost.service exposure $score (at most $limit)"
