#!/bin/sh
# Planted issues for shellcheck.
TARGET=$1
rm -rf $TARGET/build
cd $TARGET
echo "deployed to $TARGET" | grep -v '^$'
