#!/bin/sh
# A sentinel of compose's `ha` profile. It watches the primary (the redis
# service at first) with the deployment's Redis password, which is also
# its own (PYRUNNER_REDIS_SENTINEL_PASSWORD_FILE points the api and the
# workers at the same secret), and keeps its config (which it rewrites as
# the set changes) in its own volume.
#
# SENTINEL_DOWN_AFTER_MS (default 1000): how long the primary may be silent
# before a failover starts. A failover must complete within the workers'
# fence (6 s) for scripts to run on through it: about 3 s after this.
set -eu
pass=$(cat /run/pyrunner-secrets/redis.pass)
conf=/data/sentinel.conf
# The first primary by its address: during a failover no sentinel waits
# on a name lookup (the dead primary's name is gone with its container).
primary=$(getent hosts redis | awk '{print $1; exit}')
[ -n "$primary" ] || { echo "sentinel: cannot resolve the redis service" >&2; exit 1; }
if [ ! -s "$conf" ]; then
  cat > "$conf" <<CONF
port 26379
dir /data
requirepass $pass
sentinel sentinel-pass $pass
sentinel monitor pyrunner $primary 6379 2
sentinel auth-pass pyrunner $pass
sentinel down-after-milliseconds pyrunner ${SENTINEL_DOWN_AFTER_MS:-1000}
sentinel failover-timeout pyrunner 10000
sentinel parallel-syncs pyrunner 1
CONF
fi
exec redis-server "$conf" --sentinel
