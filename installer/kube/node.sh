#!/bin/sh
# Written by airlock: the Kubernetes part of this machine's first boot, run
# by cloud-init (runcmd). Every value it uses is in a file airlock wrote
# beside it (binaries.list, report.url, report.header, airlock-ca.crt);
# none is ever evaluated as shell text.
#
#   airlock-node.sh fetch             download each binary of binaries.list
#                                     from airlock, check its sha256, then
#                                     move it into /usr/local/bin
#   airlock-node.sh step NAME CMD...  run CMD (an argument list, no shell);
#                                     when it fails, report NAME and the tail
#                                     of its output to airlock, and skip
#                                     every later step
#   airlock-node.sh report            report that every step went well
#
# Each step's name goes to standard output (cloud-init shows it on the
# console), its output to /var/log/airlock-kubernetes.log; a failed step's
# last lines go to both.
#
# AIRLOCK_NODE_ROOT (empty on a node) prefixes every path, for tests.
set -u
root=${AIRLOCK_NODE_ROOT:-}
dir=$root/etc/kubernetes/airlock
bin=$root/usr/local/bin
log=$root/var/log/airlock-kubernetes.log
out=$dir/step.out
PATH=$bin:$PATH
export PATH

# post RESULT STEP: the tail of the last step's output to airlock, over
# TLS checked against airlock's CA, with this seed's single-use token.
post() {
  tail -c 8192 "$out" >"$dir/report.body" 2>/dev/null || : >"$dir/report.body"
  url=$(cat "$dir/report.url")
  curl -sS -f --retry 10 --retry-delay 3 --retry-all-errors --connect-timeout 10 --max-time 60 \
    --cacert "$dir/airlock-ca.crt" -H @"$dir/report.header" -H 'Content-Type: text/plain' \
    --data-binary @"$dir/report.body" --url "$url?result=$1&step=$2" </dev/null >>"$log" 2>&1
}

# failed STEP: record and report the failure, then stop.
failed() {
  cat "$out" >>"$log" 2>/dev/null
  printf '%s\n' "$1" >"$dir/failed"
  echo "airlock: step $1 failed" >>"$log"
  echo "airlock-node: step $1 failed:"
  tail -n 15 "$out" 2>/dev/null
  post failed "$1" || echo "airlock: could not report the failure of $1 to airlock" >>"$log"
  exit 1
}

fetch() {
  echo "airlock-node: download"
  : >"$out"
  mkdir -p "$bin" "$dir/download" >>"$out" 2>&1 || failed download
  while read -r name sum url; do
    dst=$bin/$name
    tmp=$dir/download/$name
    if [ -x "$dst" ] && echo "$sum  $dst" | sha256sum -c --status - 2>/dev/null; then
      continue
    fi
    echo "airlock: download $name from $url" >>"$out"
    curl -sS -f --retry 10 --retry-delay 2 --retry-all-errors --connect-timeout 10 --max-time 900 \
      -o "$tmp" --url "$url" </dev/null >>"$out" 2>&1 || failed download
    echo "$sum  $tmp" | sha256sum -c - >>"$out" 2>&1 || failed download
    chmod 0755 "$tmp" >>"$out" 2>&1 || failed download
    mv -f "$tmp" "$dst" >>"$out" 2>&1 || failed download
  done <"$dir/binaries.list"
  cat "$out" >>"$log"
}

step() {
  name=$1
  shift
  echo "airlock: $name: $*" >>"$log"
  echo "airlock-node: $name"
  "$@" >"$out" 2>&1 </dev/null || failed "$name"
  cat "$out" >>"$log"
}

if [ -e "$dir/failed" ]; then
  echo "airlock: skipping $*: step $(cat "$dir/failed") failed" >>"$log"
  exit 1
fi
case ${1:-} in
fetch) fetch ;;
step)
  shift
  step "$@"
  ;;
report)
  : >"$out"
  post ok done || exit 1
  echo "airlock-node: done, reported to airlock"
  ;;
*)
  echo "usage: airlock-node.sh fetch | step NAME COMMAND... | report" >&2
  exit 2
  ;;
esac
