#!/usr/bin/env bash
# The README's first command: the seed's failover story on the local control plane.
#   hack/demo.sh                       # kickout and kickin after 10 s each
#   hack/demo.sh --kickout 30 --kickin 20 --workdir /tmp/demo
#   hack/demo.sh --fencing             # the partition story: held while it answers, then fenced
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
printf '\n== demo\n' >&2
exec .venv/bin/python -m asklepios_lab.demo "$@"
