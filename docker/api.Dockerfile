# pyrunner-api: the API binary on Debian slim (curl for the healthcheck).
# The base images are build args so that a machine without a registry
# can build from local stand-ins (make test-compose); the defaults are
# the real images.
ARG GO_IMAGE=golang:1.26-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${GO_IMAGE} AS build
# The builder's module proxy setting, passed through (empty: Go's default).
ARG GOPROXY
ENV GOPROXY=${GOPROXY} GOFLAGS=-buildvcs=false
WORKDIR /src
COPY go.mod go.sum ./
# The dependencies, compiled in a layer of their own that a source change
# does not invalidate.
RUN go mod download && CGO_ENABLED=0 go build -trimpath github.com/labstack/echo/v4 github.com/getkin/kin-openapi/openapi3 \
      github.com/hibiken/asynqmon github.com/hibiken/asynq github.com/redis/go-redis/v9 github.com/golang-jwt/jwt/v5 \
      github.com/prometheus/client_golang/prometheus/promhttp gopkg.in/yaml.v3 github.com/spf13/pflag
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/pyrunner-api ./api

FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/pyrunner-api /usr/local/bin/pyrunner-api
ENV PYRUNNER_LISTEN=:9000
EXPOSE 9000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s CMD curl -fsS http://127.0.0.1:9000/health >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/pyrunner-api"]
