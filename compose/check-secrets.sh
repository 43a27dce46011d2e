#!/bin/sh
# One-shot of docker-compose.yaml (`secrets-check`): refuses to start the stack while a secret it was given still
# holds .env.example's placeholder (a value starting with `change-me`), naming each such variable. Every service
# that takes a secret waits for it to complete. POSIX sh: it runs in any image.
set -eu

placeholders=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=change-me.*$/\1/p' | sort)
if [ -n "${placeholders}" ]; then
  for name in ${placeholders}; do
    echo "${name} still holds the placeholder of .env.example: set a real value in .env" >&2
  done
  exit 1
fi
echo "no placeholder secrets"
