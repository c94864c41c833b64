#!/usr/bin/env bash
# An MLflow tracking server on a real database, for runs from many Ray nodes.
#
#   cluster/mlflow_server.sh [--backend URI] [--artifacts DIR|s3://BUCKET/PREFIX]
#                            [--host ADDR] [--port N] [--workers N] [-- MLFLOW-SERVER-OPTIONS]
#
#   --backend    the run store. Default: $MLFLOW_BACKEND_STORE_URI if set, else SQLite at
#                sqlite:///$PWD/mlflow.db (the file xalign uses when no server is given, so
#                runs made before the server started are served too). SQLite is for one
#                machine; PostgreSQL for a shared server: give its postgresql:// URI in the
#                environment (MLFLOW_BACKEND_STORE_URI), never on the command line, which
#                every user of the machine can read in `ps`; put the password in ~/.pgpass
#                or PGPASSWORD rather than in the URI. The URI is printed with its password
#                masked.
#   --artifacts  where artifacts (configs, eval records, plots) go: a local directory or an
#                s3:// (gs://, ...) URI. Default: $PWD/mlartifacts. The server proxies
#                uploads and downloads (--serve-artifacts), so clients need no credentials
#                for that store.
#   --host       the interface to listen on. Default 127.0.0.1 (this machine only). On a
#                multi-machine cluster, the head node's PRIVATE address; the server has no
#                login of its own, so keep that address behind the cluster's firewall.
#   --port       default 5000.
#   --workers    server processes. Default 1 with SQLite (one writer at a time), 4 otherwise.
#   after --     passed to `mlflow server` as they are, e.g. --allowed-hosts mlflow.ns.svc:5000
#
# The script ends by exec'ing `mlflow server` (the first `mlflow` on PATH: activate the
# venv first), so its process id is the server's; `kill -- -PID` stops the server and its
# worker processes when it was started in its own process group (setsid), `kill PID`
# otherwise. Clients: MLFLOW_TRACKING_URI=http://HOST:PORT.
set -euo pipefail

usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "mlflow_server.sh: $*" >&2; exit 2; }
# postgresql://user:secret@host/db -> postgresql://user:***@host/db (never print a password)
mask() { printf '%s' "$1" | sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#'; }

backend="${MLFLOW_BACKEND_STORE_URI:-}"
artifacts="$PWD/mlartifacts"
host=127.0.0.1
port=5000
workers=
while [ $# -gt 0 ]; do
    case "$1" in
        --backend) [ $# -ge 2 ] || die "--backend needs a URI"; backend="$2"; shift 2 ;;
        --artifacts) [ $# -ge 2 ] || die "--artifacts needs a directory or URI"; artifacts="$2"; shift 2 ;;
        --host) [ $# -ge 2 ] || die "--host needs an address"; host="$2"; shift 2 ;;
        --port) [ $# -ge 2 ] || die "--port needs a number"; port="$2"; shift 2 ;;
        --workers) [ $# -ge 2 ] || die "--workers needs a number"; workers="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        *) die "unknown option '$1' (see --help; options for mlflow server go after --)" ;;
    esac
done

case "$port" in ''|*[!0-9]*) die "--port must be a number, got '$port'" ;; esac
[ -z "$workers" ] || case "$workers" in *[!0-9]*|0) die "--workers must be a positive number, got '$workers'" ;; esac

command -v mlflow >/dev/null || die "no 'mlflow' on PATH (activate the venv that has xalign installed)"
py="$(dirname "$(command -v mlflow)")/python"
[ -x "$py" ] || py=python3

if [ -z "$backend" ]; then
    backend="sqlite:///$PWD/mlflow.db"
fi
case "$backend" in
    sqlite:////*) ;;
    sqlite:///*) backend="sqlite:///$PWD/${backend#sqlite:///}" ;;  # absolute: the server's cwd may change
esac
case "$backend" in
    sqlite:*)
        mkdir -p "$(dirname "${backend#sqlite:///}")"
        : "${workers:=1}" ;;
    postgresql:*|postgresql+*:*|mysql:*|mysql+*:*|mssql:*|mssql+*:*)
        # The URI came from the environment or the command line; pass it to mlflow through
        # the environment only.
        if ! "$py" -c "import psycopg2" 2>/dev/null && ! "$py" -c "import psycopg" 2>/dev/null \
            && [ "${backend%%:*}" = postgresql ]; then
            echo "mlflow_server.sh: warning: no PostgreSQL driver next to mlflow ($py);" \
                 "install one with: pip install 'mlflow[db]' (or psycopg2-binary)" >&2
        fi
        : "${workers:=4}" ;;
    *) die "--backend must be a sqlite:/// or a database URI (postgresql://...), got '$(mask "$backend")'" ;;
esac

case "$artifacts" in
    *://*) ;;
    /*) mkdir -p "$artifacts" ;;
    *) artifacts="$PWD/$artifacts"; mkdir -p "$artifacts" ;;
esac

case "$host" in
    127.*|localhost|::1) ;;
    *) echo "mlflow_server.sh: listening on $host: MLflow has no login here; make sure only" \
            "the cluster's nodes can reach port $port (firewall / security group)" >&2 ;;
esac

# xalign uses tracking only. MLflow's job runner (GenAI jobs: scorers, prompt optimisation)
# adds seven huey consumer processes, which in our runs kept running, busy, after the server
# was stopped with SIGTERM; it stays off unless asked for.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

echo "MLflow server: backend $(mask "$backend"), artifacts $artifacts, http://$host:$port ($workers workers)" >&2
export MLFLOW_BACKEND_STORE_URI="$backend"
exec mlflow server \
    --artifacts-destination "$artifacts" \
    --serve-artifacts \
    --host "$host" \
    --port "$port" \
    --workers "$workers" \
    "$@"
