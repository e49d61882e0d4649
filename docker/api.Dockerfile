# pyrunner-api: a small static-ish image with the API binary only.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o /out/pyrunner-api ./api

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/pyrunner-api /usr/local/bin/pyrunner-api
ENV PYRUNNER_LISTEN=:9000
EXPOSE 9000
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:9000/health || exit 1
ENTRYPOINT ["/usr/local/bin/pyrunner-api"]
