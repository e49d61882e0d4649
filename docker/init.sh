#!/bin/sh
# The compose deployment's one-shot set-up (service "init", before redis,
# api and workers; it runs at every `up` and changes nothing that is there):
#  - the Redis password: .env's REDIS_PASSWORD, or one made at random on
#    first start and kept in the secrets volume, written as redis.conf for
#    redis and as a redis:// URL for api and workers (mode 0400, root),
#    and as the redis-sentinel:// URL of the ha profile's sentinels;
#  - with REDIS_TLS=1 (compose.redis-tls.yaml): the certificates of Redis's
#    published TLS port, the operator's own from /run/pyrunner-tls-in
#    (REDIS_TLS_DIR) or, once, a CA and a certificate for REDIS_TLS_NAMES
#    made by pyrunner-redis-tls (docker/redis-tls.sh), and redis-tls.conf,
#    which that file's redis includes;
#  - the demo SQLite K-lines, when the klines volume has none yet.
set -eu
umask 077
secrets=/run/pyrunner-secrets
if [ -n "${REDIS_PASSWORD:-}" ]; then
  pass=$REDIS_PASSWORD
elif [ -s "$secrets/redis.pass" ]; then
  pass=$(cat "$secrets/redis.pass")
else
  pass=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
fi
case $pass in *[!A-Za-z0-9._~-]*)
  echo "init: REDIS_PASSWORD may hold only letters, digits and . _ ~ - (it goes into a URL)" >&2; exit 1;;
esac
printf '%s' "$pass" > "$secrets/redis.pass"
# masterauth: any Redis of the ha profile may be a replica after a failover.
printf 'requirepass %s\nmasterauth %s\n' "$pass" "$pass" > "$secrets/redis.conf"
printf 'redis://:%s@redis:6379/0' "$pass" > "$secrets/redis.url"
printf 'redis-sentinel://:%s@sentinel-1:26379,sentinel-2:26379,sentinel-3:26379?master=pyrunner' "$pass" > "$secrets/redis-sentinel.url"
if [ "${REDIS_TLS:-}" = 1 ]; then
  tls=$secrets/tls
  mkdir -p "$tls"
  if [ -s /run/pyrunner-tls-in/redis.crt ]; then
    for f in ca.crt redis.crt redis.key; do
      [ -s "/run/pyrunner-tls-in/$f" ] || { echo "init: REDIS_TLS_DIR has redis.crt but no $f" >&2; exit 1; }
      cp "/run/pyrunner-tls-in/$f" "$tls/$f"
    done
  else
    pyrunner-redis-tls "$tls" "${REDIS_TLS_NAMES:-localhost,127.0.0.1}"
  fi
  chmod 0444 "$tls/ca.crt"
  # TLS on 6380 only; 6379 stays plain for the api and the local workers.
  # A client certificate is checked when a worker sends one.
  printf 'tls-port 6380\ntls-cert-file %s/redis.crt\ntls-key-file %s/redis.key\ntls-ca-cert-file %s/ca.crt\ntls-auth-clients optional\n' \
    "$tls" "$tls" "$tls" > "$secrets/redis-tls.conf"
fi
umask 022
mkdir -p /var/lib/pyrunner/klines
exec pyrunner-demodata --sqlite /var/lib/pyrunner/klines/exchange.db --if-missing
