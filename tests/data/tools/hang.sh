#!/bin/sh
# A tool that never answers: it starts a child that holds stdout open and
# waits for it. Only killing the whole process group ends it.
sleep 600 &
wait
