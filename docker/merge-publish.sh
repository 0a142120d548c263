#!/bin/sh
# Merges the worker's and the CLI's publish folders into one application folder.
#
#   merge-publish.sh WORKER_DIR CLI_DIR OUT_DIR
#
# Both are framework-dependent linux-x64 publishes of the same solution, so they share most files
# (EraserWorker.Core.dll, TorchSharp, ~0.5 GB of libtorch on CPU, several GB on CUDA): sharing one copy
# keeps the image small. A shared file name with different content (a transitive package resolved to
# another version, an appsettings.json of the CLI's own...) would make one of the two apps load a file
# it was not built with, so in that case nothing is shared: the CLI gets its own folder OUT_DIR/cli.
set -eu

worker="$1"
cli="$2"
out="$3"

mkdir -p "$out"
cp -a "$worker/." "$out/"

clashes=$(cd "$cli" && find . -type f | while IFS= read -r f; do
  if [ -e "$out/$f" ] && ! cmp -s "$cli/$f" "$out/$f"; then
    echo "$f"
  fi
done)

if [ -n "$clashes" ]; then
  echo "merge-publish: these CLI files differ from the worker's; publishing the CLI to $out/cli instead:" >&2
  echo "$clashes" | sed 's/^/  /' >&2
  mkdir -p "$out/cli"
  cp -a "$cli/." "$out/cli/"
else
  # No clash: shared files are byte-identical, so copying over them changes nothing; this adds the
  # CLI's own files (eraser.dll, eraser.deps.json, eraser.runtimeconfig.json, ...) next to the worker's.
  cp -a "$cli/." "$out/"
fi
