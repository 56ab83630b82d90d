#!/bin/sh
# PING as the platform's user; the password goes through the environment, never argv.
set -eu
info=${REDIS_URL#*://}
info=${info%%@*}
REDISCLI_AUTH=${info#*:}
export REDISCLI_AUTH
redis-cli ping | grep -q PONG
