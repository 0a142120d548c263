#!/bin/sh
# `eraser` command inside the EraserWorker images: runs the CLI (assembly eraser.dll) with the shared
# runtime. The CLI is published next to the worker in /app unless its files clash with the worker's, in
# which case it has its own folder /app/cli (see docker/merge-publish.sh).
if [ -f /app/cli/eraser.dll ]; then
  exec dotnet /app/cli/eraser.dll "$@"
fi
exec dotnet /app/eraser.dll "$@"
