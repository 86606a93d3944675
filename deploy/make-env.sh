#!/bin/sh
# Write the secrets docker-compose.yml needs into a .env file (default: ./.env), once.
# Every value is random: with DEBUG off the product refuses short or sample secrets.
#   sh deploy/make-env.sh [FILE]
set -eu
target=${1:-.env}
for name in POSTGRES_PASSWORD GMP_API_TOKEN MAIL_PROXY_ENCRYPTION_KEY DJANGO_SECRET_KEY; do
  if [ -f "$target" ] && grep -Eq "^${name}=.+" "$target"; then
    echo "$target already sets $name: nothing written (edit it by hand)" >&2
    exit 1
  fi
done

random_hex() {  # random_hex BYTES
  if command -v openssl >/dev/null 2>&1; then openssl rand -hex "$1"
  else python3 -c "import secrets, sys; print(secrets.token_hex(int(sys.argv[1])))" "$1"; fi
}
random_key() {  # base64 of 32 random bytes: the AES-256 key of stored secrets
  if command -v openssl >/dev/null 2>&1; then openssl rand -base64 32
  else python3 -c "import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())"; fi
}

umask 077
{
  echo "# mail-proxy compose secrets, generated $(date -u +%Y-%m-%dT%H:%M:%SZ). Keep this file private;"
  echo "# losing MAIL_PROXY_ENCRYPTION_KEY makes the stored SMTP/IMAP passwords unreadable."
  echo "POSTGRES_PASSWORD=$(random_hex 24)"
  echo "GMP_API_TOKEN=$(random_hex 32)"
  echo "MAIL_PROXY_ENCRYPTION_KEY=$(random_key)"
  echo "DJANGO_SECRET_KEY=$(random_hex 32)"
} >> "$target"
echo "wrote the secrets to $target; the admin token is its GMP_API_TOKEN line" >&2
