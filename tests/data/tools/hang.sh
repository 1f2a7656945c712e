#!/bin/sh
# A tool that never answers: it starts a child that holds stdout open and
# waits for it. Only killing the whole process group ends it. With a file
# path as its argument it writes the child's pid there.
sleep 600 &
if [ -n "$1" ]; then echo $! > "$1"; fi
wait
