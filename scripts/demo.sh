#!/bin/sh
# The main job: builds, then generates text from the small shared model.
set -eu
cd "$(dirname "$0")/.."
MODEL=${MODEL:-../shared/models/stories260K.gguf}
./build/mcai generate -m "$MODEL" -p "Once upon a time" -n 64
