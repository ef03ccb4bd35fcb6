# circuit-serve on an NVIDIA GPU: CUDA runtime, Python 3.11, the project with the CUDA vLLM.
#   docker build -t circuit-serve .
#   docker run --gpus all -p 50051:50051 -p 9090:9090 -v /models/my-model:/model circuit-serve [serve flags]
# With TLS (and mTLS) mount the PEM files and name them in the environment; the server reads
# CIRCUIT_TLS_*, and the HEALTHCHECK's `circuit health` reads CIRCUIT_CA_CERT, CIRCUIT_CLIENT_*
# and CIRCUIT_SERVER_NAME (a name in the server certificate, which need not list 127.0.0.1):
#   docker run ... -v /etc/circuit:/certs:ro \
#     -e CIRCUIT_TLS_CERT=/certs/server.pem -e CIRCUIT_TLS_KEY=/certs/server.key \
#     -e CIRCUIT_TLS_CLIENT_CA=/certs/ca.pem -e CIRCUIT_AUTH_TOKENS=/certs/tokens.yaml \
#     -e CIRCUIT_CA_CERT=/certs/ca.pem -e CIRCUIT_CLIENT_CERT=/certs/health.pem \
#     -e CIRCUIT_CLIENT_KEY=/certs/health.key -e CIRCUIT_SERVER_NAME=serve.example circuit-serve
# The server runs as the unprivileged user `circuit` (uid 10001): mounted files must be readable by it.
FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CIRCUIT_MODEL=/model

# DL3008 (pin apt versions) ignored: the CUDA base image tag fixes the Ubuntu release, and Ubuntu drops
# superseded package versions from its archive, so exact pins would break rebuilds at each security update.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY client ./client
COPY server ./server
# The same install script the README and CI use, told to take the CUDA build of vLLM.
RUN CIRCUIT_VLLM=gpu server/scripts/setup.sh

# Run unprivileged: the installed code stays root-owned and read-only to the server.
RUN useradd --system --uid 10001 --create-home --home-dir /home/circuit --shell /usr/sbin/nologin circuit
ENV HOME=/home/circuit
# numeric, so the kubelet can verify runAsNonRoot without looking the name up
USER 10001

EXPOSE 50051 9090
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
  CMD ["/app/.venv/bin/circuit", "health", "--target", "127.0.0.1:50051", "--timeout", "5"]
ENTRYPOINT ["/app/.venv/bin/circuit-serve", "serve", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9090"]
CMD []
