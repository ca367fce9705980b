# mrfengine in a container: the `mrfengine` command with the portable C++/OpenMP extension
# (run-time dispatch to AVX2 / AVX-512 kernels: the image runs on any x86-64 CPU), PyTorch (CPU)
# and, by default, ANTs for the register and segment stages.
#
#   docker build -t mrfengine .                            # extras "ants" (the default)
#   docker build -t mrfengine:dev --build-arg EXTRAS=dev .  # the test and benchmark dependencies too
#   docker run --rm mrfengine info                         # versions, backends, the kernels' ISA level
#   docker run --rm -v "$PWD:/data" mrfengine batch ...    # /data: the working directory
#
# The extension is compiled in the build stage (a failed build fails the image:
# MRFENGINE_REQUIRE_EXT=1); the runtime stage has no compiler.

ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE CITATION.cff ./
COPY csrc csrc
COPY mrfengine mrfengine
ENV MRFENGINE_REQUIRE_EXT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:${PYTHON}-slim
ARG TORCH=2.13.0
ARG EXTRAS=ants
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libstdc++6 \
    && rm -rf /var/lib/apt/lists/*
# PyTorch's CPU build (the PyPI wheel for Linux pulls in the CUDA libraries).
RUN pip install --no-cache-dir "torch==${TORCH}" --index-url https://download.pytorch.org/whl/cpu
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/mrfengine-*.whl)[${EXTRAS}]" \
    && rm -rf /wheels \
    && python -c "import mrfengine._ext as e; print('mrfengine._ext kernels:', e.isa())"
RUN useradd --create-home mrf
USER mrf
WORKDIR /data
ENTRYPOINT ["mrfengine"]
CMD ["--help"]
