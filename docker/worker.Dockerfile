# pyrunner-worker on miniconda with the conda env "pyrunner" that
# python-runner shipped (numpy pandas scipy matplotlib seaborn plotly
# statsmodels scikit-learn numba ta-lib ta empyrical backtrader).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o /out/pyrunner-worker ./worker

FROM continuumio/miniconda3
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap && rm -rf /var/lib/apt/lists/*
RUN conda create -y -n pyrunner -c conda-forge python=3.11 \
      numpy pandas scipy matplotlib seaborn plotly statsmodels scikit-learn numba \
      ta-lib ta empyrical backtrader \
    && conda clean -afy
COPY --from=build /out/pyrunner-worker /usr/local/bin/pyrunner-worker
ENV PYRUNNER_PYTHON=/opt/conda/envs/pyrunner/bin/python \
    PYRUNNER_WORK_DIR=/tmp/pyrunner \
    SCRIPT_SCRIPTS_PATH=/scripts \
    SCRIPT_STATE_DIR=/var/lib/pyrunner
VOLUME ["/scripts", "/var/lib/pyrunner"]
ENTRYPOINT ["/usr/local/bin/pyrunner-worker"]
