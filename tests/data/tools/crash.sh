#!/bin/sh
# A tool that fails: reads its arguments, complains on stderr, exits 1.
cat > /dev/null
echo "connecting to the lookup service" >&2
echo "lookup service unavailable" >&2
exit 1
