# mail-proxy image. With no command it runs the embedded all-in-one instance (API, worker
# and beat in one container, SQLite under /data):
#
#   docker run -p 8000:8000 -e GMP_API_TOKEN=... -v data:/data --stop-timeout 120 IMAGE
#
# docker-compose.yml runs the same image as separate web, worker and beat services, each
# by its own command (see docs/deployment.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# A fixed uid, so files on volumes and bind mounts keep one owner across image versions.
RUN groupadd --system --gid 10001 mailproxy \
 && useradd --system --uid 10001 --gid mailproxy --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin mailproxy \
 && install -d -o mailproxy -g mailproxy -m 0750 /data /cache

# Dependencies first: this layer is rebuilt only when the pins change.
COPY requirements/base.txt requirements/base.txt
RUN pip install -r requirements/base.txt

COPY . .
# The admin's and Swagger UI's assets into GMP_STATIC_ROOT, part of the read-only image
# (not of the /data volume, which would keep an old version's files across upgrades);
# the web process serves them. The secrets are build-only dummies, passed so that
# settings do not generate real ones; what settings create in /data is removed again.
ENV GMP_STATIC_ROOT=/app/static
RUN python -m compileall -q /app \
 && DJANGO_SECRET_KEY=collectstatic-at-build-time-only-never-used-to-sign-anything \
    MAIL_PROXY_ENCRYPTION_KEY=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= \
    GMP_API_TOKEN=collectstatic-at-build-time-only-never-accepted \
    GMP_DATA_DIR=/tmp/build-data \
    python manage.py collectstatic --noinput --skip-checks -v 0 \
 && rm -rf /tmp/build-data

USER mailproxy
ENV GMP_DATA_DIR=/data

EXPOSE 8000
VOLUME /data

# No curl in the image: the interpreter fetches /health itself (any failure exits 1),
# with a Host header from ALLOWED_HOSTS so that restricting it does not fail the check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; hosts = [h.strip().lstrip('.') for h in os.environ.get('ALLOWED_HOSTS', '').split(',') if h.strip() and '*' not in h]; request = urllib.request.Request('http://127.0.0.1:8000/health', headers={'Host': hosts[0] if hosts else '127.0.0.1'}); sys.exit(0 if urllib.request.urlopen(request, timeout=4).status == 200 else 1)"]

# SIGTERM is the warm shutdown of every process here: gunicorn finishes its requests,
# a Celery worker finishes its SMTP transactions and gives its leases back.
STOPSIGNAL SIGTERM
CMD ["python", "manage.py", "serve", "--host", "0.0.0.0", "--port", "8000"]
