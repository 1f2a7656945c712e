#!/usr/bin/env python3
"""A tool that answers: reads {"city": ...} on stdin, prints the weather as JSON.

With a file path as its argument it first appends a line to that file, so a
test can count how often it ran.
"""
import json
import sys

args = json.load(sys.stdin)
if len(sys.argv) > 1:
    with open(sys.argv[1], "a", encoding="utf-8") as counter:
        counter.write(args["city"] + "\n")
print("looking the city up", file=sys.stderr)
print(json.dumps({"city": args["city"], "temp_c": 21, "sky": "clear"}))
