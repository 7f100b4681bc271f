# syntax=docker/dockerfile:1
#
# One image for every role of docker-compose.yml: the Ray head (which also hosts
# the Ray Serve HTTP proxy of the API on port 5000), the Ray workers, and the
# one-shot job that submits `python -m itm.run` to the head.
#
# Base: python:3.11-slim, not rayproject/ray:2.60.0-py311. The Ray image carries
# Anaconda and Ray's optional extras (several GB) and its own Python packages;
# here the only Python packages are the ones pyproject.toml resolves, Ray pinned
# there (ray[serve]==2.60.0, which brings the dashboard), so the image and
# `pip install .` on a laptop or a `ray up` node run the same code.
#
# Two stages: the first builds a virtualenv in /opt/itm; the second copies only
# that virtualenv onto a fresh slim base. Every dependency ships manylinux wheels,
# so no compiler is installed in either stage; pip's caches, the source tree and
# the build metadata stay behind in the first stage.

FROM python:3.11-slim-bookworm AS build

# pip compiles the bytecode of what it installs (the runtime user could not write
# it into /opt/itm, and every Ray worker process would compile Ray again).
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/itm/bin:$PATH

RUN python -m venv /opt/itm

WORKDIR /src

# The dependencies first, in a layer of their own, keyed only on pyproject.toml:
# a change to itm's code then reinstalls itm alone, not Ray and its friends.
# (A stub package lets pip resolve the project's dependencies; it is removed with
# its build tree, whose stale copy would otherwise win over the real code below.)
COPY pyproject.toml README.md ./
RUN mkdir itm \
    && touch itm/__init__.py \
    && pip install --no-cache-dir . \
    && pip uninstall --yes itm \
    && rm -rf itm build ./*.egg-info

COPY itm ./itm
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import itm, itm.run, ray; assert ray.__version__ == '2.60.0', ray.__version__"

# What itm never runs, out of the image (about 110 MB of the venv's 600): Ray's
# Java jars; the Ray libraries whose own requirements are not in the pinned set,
# so that they cannot be imported here anyway (ray.air, data, train and tune need
# pandas or pyarrow, rllib needs gymnasium, ray.workflow only raises); the test
# suites that wheels ship; pip and setuptools (nothing is installed at run time).
# Then the modules that do run must still import: the job, the API, Serve and
# the dashboard.
RUN site=/opt/itm/lib/python3.11/site-packages \
    && rm -rf "$site/ray/jars" "$site/ray/air" "$site/ray/data" "$site/ray/rllib" \
        "$site/ray/train" "$site/ray/tune" "$site/ray/workflow" \
    && find "$site" -mindepth 2 -maxdepth 4 -type d -name tests -prune -exec rm -rf {} + \
    && python -m pip uninstall --yes --quiet pip setuptools \
    && python -c "import itm.run, itm.api.serving, ray.serve.scripts, ray.dashboard.dashboard"


FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="itm" \
      org.opencontainers.image.description="Image to MongoDB on Ray: job, Ray head/worker and API" \
      org.opencontainers.image.licenses="Apache-2.0"

# ITM_HOST: in a container the API must listen on every interface to be reached
# through a published port. RAY_USAGE_STATS_ENABLED: no usage reports.
ENV PATH=/opt/itm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    ITM_HOST=0.0.0.0

# A fixed, unprivileged user (uid 1000, like the Ray images). /app, where Ray is
# started and so the job's working directory, is the user's; the files in it
# stay root's, read-only for the user.
RUN groupadd --gid 1000 itm \
    && useradd --uid 1000 --gid itm --create-home --shell /bin/bash itm \
    && install -d -o itm -g itm /app

COPY --from=build /opt/itm /opt/itm

WORKDIR /app
COPY urls.txt serve_app.py serve_config.yaml ./

# Numeric, so that a runtime can check it is not root without reading /etc/passwd.
USER 1000:1000

# 5000: the API (Ray Serve HTTP proxy); 6379: Ray GCS; 8265: Ray dashboard and
# Jobs API; 8080: Ray's Prometheus metrics export (as docker-compose.yml sets it).
EXPOSE 5000 6379 8265 8080

CMD ["python", "-m", "itm.run", "--help"]
