#!/bin/sh
# A tool that prints something that is not JSON.
cat > /dev/null
echo "the weather is nice today"
