#!/bin/bash
# Docker HEALTHCHECK for kairos-server, without curl in the image: one
# HTTP/1.0 request over bash's /dev/tcp, healthy when the answer is 200.
#
# Usage: kairos-healthcheck [PATH]   (default /health; /ready for readiness)
# Talks to 127.0.0.1:$PORT (default 8080), the port the server listens on.
set -euo pipefail

path="${1:-/health}"
port="${PORT:-8080}"

# The connection itself failing (nothing listening) ends the script here.
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3

status=""
# A server that accepts but never answers must not hang the check.
IFS= read -r -t 2 status <&3 || true
exec 3<&-

case "$status" in
  "HTTP/1."?" 200"*) exit 0 ;;
  *)
    echo "kairos-healthcheck: GET ${path} on port ${port}: ${status:-no answer}" >&2
    exit 1
    ;;
esac
