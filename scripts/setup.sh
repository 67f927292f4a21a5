#!/usr/bin/env bash
# Installs everything ledger-pipelines needs on a fresh machine, and is quick when run again:
#   Debian packages (JDK, Maven, PostgreSQL, Chromium) when missing,
#   the Python environment in .venv/ (with the ledger-pipelines command),
#   the Kafka broker jars from Maven Central into .stack/kafka/ (cached in ~/.m2),
#   the npm packages (anvil, solc) into node_modules/ (cached in ~/.npm).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
KAFKA_VERSION=4.4.0
CONNECT_VERSION=4.3.1          # Debezium 3.6 runs on Connect 4.3, not 4.4 (kafka/connect/pom.xml)
DEBEZIUM_VERSION=3.6.1.Final
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# -- Debian packages -----------------------------------------------------------------------------
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v node >/dev/null 2>&1 || need+=(nodejs npm)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  say "installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# -- Python ---------------------------------------------------------------------------------------
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  say "creating the Python environment in .venv/"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test,bench]'
  rm -f .venv/.installed-*; touch "$stamp"
fi

# -- Kafka broker jars ------------------------------------------------------------------------
lib=.stack/kafka/lib-$KAFKA_VERSION
if [ ! -f "$lib/kafka_2.13-$KAFKA_VERSION.jar" ]; then
  say "fetching Apache Kafka $KAFKA_VERSION from Maven Central"
  mkdir -p "$lib"
  mvn -q -B -f kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
      -Dkafka.version=$KAFKA_VERSION -DoutputDirectory="$ROOT/$lib"
fi

# -- Kafka Connect worker and the Debezium PostgreSQL plugin ---------------------------------------
connect_lib=.stack/connect/lib-$CONNECT_VERSION
if [ ! -f "$connect_lib/connect-runtime-$CONNECT_VERSION.jar" ]; then
  say "fetching Kafka Connect $CONNECT_VERSION from Maven Central"
  mkdir -p "$connect_lib"
  mvn -q -B -f kafka/connect/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$ROOT/$connect_lib"
fi
plugin=.stack/connect/plugins/debezium-postgres-$DEBEZIUM_VERSION
if [ ! -f "$plugin/debezium-connector-postgres-$DEBEZIUM_VERSION.jar" ]; then
  say "fetching the Debezium PostgreSQL connector $DEBEZIUM_VERSION from Maven Central"
  mkdir -p "$plugin"
  mvn -q -B -f kafka/debezium/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$ROOT/$plugin"
fi

# -- npm packages (anvil, solc) --------------------------------------------------------------------
if [ ! -x node_modules/.bin/anvil ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages (anvil, solc)"
  npm ci --no-audit --no-fund --loglevel=error
fi
node_modules/.bin/anvil --version >/dev/null

say "ready: .venv/bin/ledger-pipelines ($(.venv/bin/python -c 'import dagster; print("dagster", dagster.__version__)'))"
