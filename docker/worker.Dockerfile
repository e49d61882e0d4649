# pyrunner-worker on miniconda3 with the conda env "pyrunner" built from
# docker/environment.yml (pinned, conda-forge only), bubblewrap for the
# sandbox, pyrunner-demodata and openssl (redis-tls.sh) for the compose init.
#
# The base images are build args so that a machine without a registry
# can build from local stand-ins; the defaults are the real images.
# PYTHON_ENV=debian (offline test builds only, where conda-forge cannot be
# reached) takes the same Python packages from Debian instead, at the same
# interpreter path; everything else is identical.
ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=continuumio/miniconda3:24.1.2-0

FROM ${GO_IMAGE} AS build
# The builder's module proxy setting, passed through (empty: Go's default).
ARG GOPROXY
ENV GOPROXY=${GOPROXY} GOFLAGS=-buildvcs=false
WORKDIR /src
COPY go.mod go.sum ./
# The dependencies, compiled in a layer of their own that a source change
# does not invalidate (sqlite's C alone takes a minute).
RUN go mod download && CGO_ENABLED=1 go build -trimpath github.com/mattn/go-sqlite3 gorm.io/driver/sqlite \
      gorm.io/driver/mysql github.com/hibiken/asynq github.com/redis/go-redis/v9 \
      github.com/prometheus/client_golang/prometheus/promhttp gopkg.in/yaml.v3 github.com/spf13/pflag
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o /out/pyrunner-worker ./worker \
    && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/pyrunner-keeper ./cmd/pyrunner-keeper \
    && CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o /out/pyrunner-demodata ./cmd/pyrunner-demodata

FROM ${BASE_IMAGE}
ARG PYTHON_ENV=conda
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap ca-certificates curl openssl \
    && rm -rf /var/lib/apt/lists/*
COPY docker/environment.yml /tmp/environment.yml
RUN set -eu; \
    if [ "$PYTHON_ENV" = conda ]; then \
      conda config --system --remove channels defaults 2>/dev/null || true; \
      conda config --system --add channels conda-forge; \
      conda config --system --set channel_priority strict; \
      conda env create -f /tmp/environment.yml; \
      conda clean -afy; \
    else \
      apt-get update; \
      apt-get install -y --no-install-recommends python3 python3-numpy python3-pandas python3-scipy \
        python3-matplotlib python3-seaborn python3-plotly python3-statsmodels python3-sklearn python3-numba; \
      rm -rf /var/lib/apt/lists/*; \
      mkdir -p /opt/conda/envs/pyrunner/bin; \
      ln -s /usr/bin/python3 /opt/conda/envs/pyrunner/bin/python; \
    fi; \
    /opt/conda/envs/pyrunner/bin/python -c 'import numpy, pandas, matplotlib'
COPY --from=build /out/pyrunner-worker /out/pyrunner-keeper /out/pyrunner-demodata /usr/local/bin/
COPY docker/init.sh /usr/local/bin/pyrunner-init
COPY docker/redis-tls.sh /usr/local/bin/pyrunner-redis-tls
ENV PYRUNNER_PYTHON=/opt/conda/envs/pyrunner/bin/python \
    PYRUNNER_WORK_DIR=/tmp/pyrunner \
    PYRUNNER_METRICS_LISTEN=:9101 \
    SCRIPT_SCRIPTS_PATH=/scripts \
    SCRIPT_STATE_DIR=/var/lib/pyrunner/state \
    MPLBACKEND=Agg
# /healthz answers 200 while the worker's heartbeats reach Redis.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s CMD curl -fsS http://127.0.0.1:9101/healthz >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/pyrunner-worker"]
