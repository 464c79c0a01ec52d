# repo-manager inside NVIDIA's TensorRT image of the same NGC release as the tritonserver
# image (TRITON_RELEASE in .env): plans built here carry that release's TensorRT and load on
# the triton service; publish's compatibility guard checks it against the server.
ARG TRITON_RELEASE
FROM nvcr.io/nvidia/tensorrt:${TRITON_RELEASE}-py3

WORKDIR /src
COPY pyproject.toml README.md ./
COPY repo_manager ./repo_manager
COPY export ./export
# The image's own TensorRT Python bindings build the plans (no pip tensorrt on top).
RUN python3 -m pip install --no-cache-dir ".[export,s3]"

ENV YOLO_OFFLINE=1 \
    REPO_MANAGER_REPOSITORY=/models
WORKDIR /work
ENTRYPOINT ["repo-manager"]
CMD ["--help"]
