#!/bin/sh
# The platform's `default` user gets the password in REDIS_URL (redis://:<password>@redis:6379/0)
# at every start, so rotating it is: change REDIS_URL, restart. Tenants' users in the ACL file
# are kept. Then the image's own entrypoint starts Redis as the redis user.
set -eu
fail() {
  echo "entrypoint.sh: REDIS_URL must carry a real password (redis://:<password>@redis:6379/0)" >&2
  exit 1
}
case $REDIS_URL in
  *://*@*) ;;
  *) fail ;;
esac
info=${REDIS_URL#*://}
info=${info%%@*}
case $info in
  *:*) password=${info#*:} ;;
  *) fail ;;
esac
case $password in
  "" | *__PASS__* | *change-me*) fail ;;
esac
acl=/data/users.acl
touch "$acl"
hash=$(printf %s "$password" | sha256sum | cut -d' ' -f1)
{
  echo "user default on #$hash ~* &* +@all"
  grep -v '^user default ' "$acl" || true
} >"$acl.new"
chmod 600 "$acl.new"
mv "$acl.new" "$acl"
exec docker-entrypoint.sh redis-server /usr/local/etc/redis/redis.conf
