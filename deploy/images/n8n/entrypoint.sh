#!/bin/sh
# Same contract as the official image's docker-entrypoint.sh: arguments go to `n8n`
# (`worker`, `webhook`, or nothing for the main process).
set -e
if [ -d /opt/custom-certificates ]; then
  export NODE_OPTIONS="--use-openssl-ca $NODE_OPTIONS"
  export SSL_CERT_DIR=/opt/custom-certificates
fi
exec n8n "$@"
