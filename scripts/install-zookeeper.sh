#!/usr/bin/env bash
# Installs ZooKeeper (Debian's package, with a Java runtime) for the replicated-cluster tests
# (tests/cluster.rs starts it as a plain Java process: no service is enabled or started here).
# Idempotent: does nothing when the jar is already there.
set -euo pipefail

JAR=/usr/share/java/zookeeper.jar
if [ -f "$JAR" ] && command -v java >/dev/null 2>&1; then
    echo "zookeeper already installed: $JAR"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq zookeeper
ls "$JAR"
