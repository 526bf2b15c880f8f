# Sourced by the Makefile, CI and users' shells: the project's own tools first,
# the local file backend by default, and nothing reaching the internet by itself.
# shellcheck shell=bash
PGHA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PGHA_ROOT
export PATH="$PGHA_ROOT/.tools/bin:$PGHA_ROOT/.venv/bin:$PATH"
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export PULUMI_IGNORE_AMBIENT_PLUGINS="${PULUMI_IGNORE_AMBIENT_PLUGINS:-false}"
# A team on S3 or Pulumi Cloud sets PULUMI_BACKEND_URL (or runs `pulumi login`
# and sets PGHA_USE_PULUMI_LOGIN=1); otherwise state stays in the checkout.
if [[ -z "${PULUMI_BACKEND_URL:-}" && -z "${PGHA_USE_PULUMI_LOGIN:-}" ]]; then
    export PULUMI_BACKEND_URL="file://$PGHA_ROOT/.pulumi-state"
fi
# Local stacks read their passphrase from a 0600 file that `make setup` creates.
if [[ -z "${PULUMI_CONFIG_PASSPHRASE:-}" && -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]]; then
    export PULUMI_CONFIG_PASSPHRASE_FILE="$PGHA_ROOT/.pulumi-passphrase"
fi
