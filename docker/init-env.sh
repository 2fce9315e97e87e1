#!/bin/sh
# Create .env from .env.example, with a fresh random value (36 hex digits) for every secret
# left empty there (a line `NAME=`). Never overwrites an existing .env.
#
#   docker/init-env.sh && docker compose up
set -eu
cd "$(dirname "$0")/.."

if [ -e .env ]; then
    echo "init-env: .env exists; not overwriting it (delete it to start again)" >&2
    exit 1
fi
umask 077 # .env holds passwords: readable by its owner only
while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
        [A-Z]*=) printf '%s%s\n' "$line" "$(od -An -tx1 -N18 /dev/urandom | tr -d ' \n')" ;;
        *) printf '%s\n' "$line" ;;
    esac
done <.env.example >.env
echo "init-env: wrote .env with generated secrets; review COMPOSE_PROFILES (gpu or cpu)"
